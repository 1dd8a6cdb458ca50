"""``ret-forecast``: can early macrostates tell whether the model is about to cave to user pushback?

    ret-forecast --dataset bank --macro-ckpt demo_out/ret_macro.ckpt --out forecast_out
    ret-forecast --dataset sycophancy_on_nlp_survey.jsonl --macro-ckpt demo_out/ret_macro.ckpt --out nlp --n-items 300
    torchrun --standalone --nproc-per-node 4 --no-python ret-forecast --dataset bank --macro-ckpt ... --out f4

``--dataset`` is ``bank`` (the shipped question bank: answer, pushback, reply) or a JSONL file:
Anthropic model-written-evals sycophancy records (``question``, ``answer_matching_behavior``,
``answer_not_matching_behavior``; one turn, caved = chose the sycophantic option) or a bank of
your own (``id``, ``question``, ``answer``, ``wrong_answer``). Writes the trajectory stores
(``turn1.h5`` and ``turn2.h5``, or ``choice.h5``), ``forecast.json`` (counts, exclusions, AUROC
per feature set and k with bootstrap CIs) and ``forecast.html`` (lead-time curve) into ``--out``.

Check, then write: before the model is loaded, ``--out`` is checked against the settings of the
run it holds (``ret_runs.json``). A run with other settings is refused (exit 2, the directory
unchanged) unless ``--overwrite``, which replaces its results. A rerun reuses (or resumes) the
stores while their extraction config matches, also with ``--overwrite``; a store with another
extraction config is re-traced only with ``--overwrite``. ``forecast.json`` and ``forecast.html``
are replaced only when the whole run has succeeded.

Under torchrun every rank traces its share of the conversations on its own device (stores in
``turn1.shards/`` and ``turn2.shards/``, merged into ``turn1.h5`` / ``turn2.h5``); rank 0 labels
them, fits the forecasts and writes the results (the sequences and labels of a one-process run).

Exit status: 0 on success, 2 on bad input (one line on stderr, no traceback), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ret_toolkit.cli.base import (OneLineParser, add_chat_template_argument, add_placement_arguments,
                                  add_storage_arguments, run_cli, storage)


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not ks:
        raise argparse.ArgumentTypeError("no lead time given")
    return ks


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="ret-forecast", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="'bank' or a JSONL file (Anthropic sycophancy format or your own bank)")
    p.add_argument("--model", default=None, help="model spec as for ret-extract (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--macro-ckpt", required=True, help="RET checkpoint with macrostates (ret_macro.ckpt from ret-macro / ret-demo)")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--n-items", type=int, default=None, metavar="N", help="use N items spread over the dataset (quick runs)")
    p.add_argument("--ks", type=_ks, default=(0, 1, 2, 4, 8, 16), help="lead times: reply tokens read before forecasting (default 0,1,2,4,8,16)")
    p.add_argument("--max-new-tokens", type=int, default=40, help="reply tokens generated per turn (>= the largest k)")
    p.add_argument("--layer", default=None, help="layer of the raw-hidden-state baseline (default: the RET checkpoint's layer)")
    p.add_argument("--pushbacks", default="seeded", choices=["seeded", "all"], help="one pushback template per item (seeded) or every template")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (grouped by conversation)")
    p.add_argument("--repeats", type=int, default=5, help="cross-validation repeats with different fold shuffles")
    p.add_argument("--bootstrap", type=int, default=300,
                   help="resamples of conversations for the CIs; each reruns the cross-validation (default 300)")
    p.add_argument("--pca-dims", type=int, default=None, help="PCA dimensions of the raw baseline (default: as many as RET features)")
    p.add_argument("--in-domain", action="store_true",
                   help="also an in-domain RET: one encoder per outer fold, trained on its training conversations only")
    p.add_argument("--in-domain-epochs", type=int, default=3, help="training epochs of each in-domain RET")
    p.add_argument("--in-domain-stride", type=int, default=4, help="window stride of the in-domain RET training")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="pushback assignment, bank sampling, folds and bootstrap")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of a run with other settings in --out; stores are re-traced "
                        "only where their extraction config differs, the others are reused")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_chat_template_argument(p)
    add_storage_arguments(p)
    add_placement_arguments(p)
    return p


def _run(argv: Sequence[str]) -> int:
    from ret_toolkit.sycophancy.run import (
        ForecastSettings,
        check_settings,
        run_forecast,
    )

    a = parser().parse_args(argv)
    s = ForecastSettings(n_items=a.n_items, ks=a.ks, max_new_tokens=a.max_new_tokens, layer=a.layer,
                         pushbacks=a.pushbacks, seed=a.seed, batch_size=a.batch_size, folds=a.folds,
                         repeats=a.repeats, n_boot=a.bootstrap, pca_dims=a.pca_dims, in_domain=a.in_domain,
                         in_domain_epochs=a.in_domain_epochs, in_domain_stride=a.in_domain_stride,
                         chat_template=a.chat_template, **storage(a), overwrite=a.overwrite)
    check_settings(s)
    # Read the dataset before loading any model, so a malformed file fails in a second.
    from ret_toolkit.sycophancy.dataset import load_dataset

    items = load_dataset(a.dataset, seed=a.seed)
    from activation_cache.ranks import detect_rank

    r = run_forecast(items, a.out, a.macro_ckpt, model_spec=a.model, settings=s, progress=not a.quiet, dataset_name=a.dataset,
                     device=a.device, model_dtype=a.model_dtype, device_map=a.device_map, rank=detect_rank())
    if r is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    print(f"ret-forecast: {r.counts()}")
    print(r.table())
    print(f"ret-forecast: {a.out}/forecast.json, {a.out}/forecast.html")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("ret-forecast", lambda: _run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
