"""Sycophancy forecasting at full size: the shipped bank on the embedded SmolLM2-135M-Instruct.

In one run:
  1. turn 1 (question -> first answer) for every bank item, traced in generate mode;
     first answers labelled, wrong / unclear ones excluded and counted;
  2. turn 2 (question, first answer, pushback -> reply) under every pushback template
     (``--pushbacks all``: 7 sequences per conversation), traced in generate mode;
     replies labelled caved / held / unclear;
  3. features at k = 0 (end of the pushback prompt) and after k = 1, 2, 4, 8, 16 reply tokens:
     RET (demo checkpoint) vs raw-hidden-state PCA probe vs prompt length vs the design factors
     (pushback template + item kind) vs majority class; grouped stratified CV by conversation,
     AUROC with bootstrap CIs and RET's paired differences with every baseline;
  4. the in-domain RET (``--in-domain``, on by default): one encoder per outer fold of the first
     repeat, trained on that fold's training conversations only, with its paired differences.
Prints the caving rate, exclusions by reason, caving rate per pushback template, the AUROC
table and ends with ``sycophancy_auroc_k0_ret: <value>``.

    make demo     # once: demo_out/ret_macro.ckpt (RET on the embedded model, middle layer)
    .venv/bin/python benchmarks/bench_sycophancy.py [--n-items 337] [--pushbacks all]
Writes benchmarks/results/bench_sycophancy.json and benchmarks/results/sycophancy.html;
the stores go to --work (rerunning reuses them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, add_threads_arg, report  # noqa: E402

from activation_cache import (
    load_model,  # noqa: E402
    open_store,  # noqa: E402
)
from ret_toolkit.sycophancy import (  # noqa: E402
    ForecastSettings,
    load_bank,  # noqa: E402
    run_forecast,
)


def by_template(store: str) -> dict[str, dict]:
    """Caving rate among kept sequences, and unclear count, per pushback template."""
    with open_store(store) as st:
        rows = list(zip(st.meta_column("pushback"), st.meta_column("pressure_level"), st.meta_column("label")))
    out = {}
    for name in dict.fromkeys(r[0] for r in rows):
        c = Counter(lab for t, _, lab in rows if t == name)
        kept = c["caved"] + c["held"]
        level = next(lvl for t, lvl, _ in rows if t == name)
        out[name] = {"level": int(level), "caved": c["caved"], "held": c["held"], "unclear": c["unclear"],
                     "caving_rate": c["caved"] / kept if kept else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--macro-ckpt", default="demo_out/ret_macro.ckpt", help="RET checkpoint with centroids (make demo)")
    ap.add_argument("--n-items", type=int, default=None, help="bank items (default: all)")
    ap.add_argument("--pushbacks", default="all", choices=["seeded", "all"])
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bootstrap", type=int, default=300, help="refitting-bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-in-domain", dest="in_domain", action="store_false", help="skip the in-domain RET")
    add_threads_arg(ap, default=2)
    ap.add_argument("--work", default="benchmarks/results/sycophancy_run")
    args = ap.parse_args()
    if not Path(args.macro_ckpt).is_file():
        sys.exit(f"bench_sycophancy: {args.macro_ckpt} not found: run `make demo` first (or pass --macro-ckpt)")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    bank = load_bank(seed=args.seed)
    loaded = load_model(None)
    settings = ForecastSettings(n_items=args.n_items, max_new_tokens=args.max_new_tokens, pushbacks=args.pushbacks,
                                seed=args.seed, batch_size=args.batch_size, repeats=args.repeats, n_boot=args.bootstrap,
                                in_domain=args.in_domain, overwrite=True)  # the stores are reused where they fit
    print(f"bench_sycophancy: bank of {len(bank)} items (seed {args.seed}), pushbacks={args.pushbacks}, "
          f"{args.max_new_tokens} new tokens per turn, RET checkpoint {args.macro_ckpt}", flush=True)
    r = run_forecast(bank, args.work, args.macro_ckpt, settings=settings, loaded=loaded, progress=True, dataset_name="bank")
    d = r["data"]
    templates = by_template(r["config"]["store"])

    print(f"\nmodel {r['config']['model']} ({r['config']['model_revision']}), RET layer {','.join(r['config']['ret_layers'])}, "
          f"z_dim {r['config']['z_dim']}, {r['config']['n_macrostates']} macrostates; raw baseline layer {r['config']['raw_layer']}")
    ft = d["first_turn"]
    print(f"items: {d['n_items']}; first answers correct {ft['correct']}, wrong {ft['wrong']}, unclear {ft['unclear']}")
    print(f"candidates (item x pushback): {d['n_candidates']}; second-turn sequences traced: {d['n_sequences']}")
    print(f"kept: {d['n_kept']} sequences in {r['n_conversations']} conversations: caved {d['n_positive']}, "
          f"held {d['n_negative']}; caving rate {d['caving_rate']:.3f}")
    print("excluded: " + ", ".join(f"{k} {v}" for k, v in d["exclusions"].items()) + f" (total {d['n_excluded']})")
    print("replies shorter than the lead (their last token is used): "
          + ", ".join(f"lead={k}: {v}" for k, v in d["short_replies"].items()))
    print("\ncaving rate per pushback template (kept sequences):")
    for name, t in templates.items():
        rate = "n/a" if t["caving_rate"] is None else f"{t['caving_rate']:.3f}"
        print(f"  {name:<11} level {t['level']}  caved {t['caved']:>3}  held {t['held']:>3}  unclear {t['unclear']:>3}  rate {rate}")
    f = r["forecast"]
    print(f"\nAUROC (caved vs held), mean over {f['n_splits']}-fold x {f['repeats']} grouped stratified CV, "
          f"95% CI from a refitting bootstrap over conversations ({f['n_boot']} resamples, each reruns the CV); features: {f['n_features']}, "
          f"PCA dims {f['pca_dims']}")
    print(r.table())
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(args.work) / "forecast.html", RESULTS / "sycophancy.html")
    k0 = r["auroc"]["ret"]["0"]
    print(f"\nRET at lead 0: {k0['mean']:.3f} [{k0['ci_low']:.3f}, {k0['ci_high']:.3f}]; "
          f"raw PCA at lead 0: {r['auroc']['raw_pca']['0']['mean']:.3f}; total {time.perf_counter() - t0:.0f} s")
    report("bench_sycophancy", "sycophancy_auroc_k0_ret", k0["mean"],
           {"result": r.to_json(), "by_template": templates, "args": vars(args), "seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
