"""The main job, end to end on the embedded model (``ret-demo`` / ``make demo``).

    extract (generate mode, built-in reasoning prompts, chat template)
      -> train the RET encoder (Lightning)
      -> macrostates: encode, k-means, summaries
      -> held-out evaluation against baselines
      -> report.html + metrics.json

Everything lands in one output directory; rerunning resumes the extraction.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from activation_cache.extract import ExtractConfig, extract
from activation_cache.prompts import read_prompts

log = logging.getLogger("ret_toolkit.demo")


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo run. ``quick`` fits in about 3 minutes on 2 CPU cores."""

    n_prompts: int = 276
    generate: int = 48
    epochs: int = 8
    batch_size: int = 16
    k: int = 12
    layer: str = "middle"

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(n_prompts=72, generate=24, epochs=3)


def _prompt_subset(out: Path, n: int) -> str:
    """Every k-th built-in prompt, so a small subset still spans all categories."""
    prompts = read_prompts("reasoning")
    step = max(len(prompts) / n, 1.0)
    picked = [prompts[int(i * step)] for i in range(min(n, len(prompts)))]
    path = out / "prompts.jsonl"
    with path.open("w") as f:
        for p in picked:
            f.write(json.dumps({"id": p.prompt_id, "text": p.text, **p.meta}) + "\n")
    return str(path)


def _layer_index(layer: str, n_layers: int) -> str:
    return str(n_layers // 2) if layer == "middle" else layer


def run_demo(out: str | Path, quick: bool = False, model: str | None = None, settings: DemoSettings | None = None,
             progress: bool = True) -> dict:
    """Run the whole pipeline into ``out``; returns the metrics dict."""
    from activation_cache.models import load_model
    from ret_toolkit.cli.train import macro_cli
    from ret_toolkit.macro.pipeline import build_macrostates
    from ret_toolkit.viz.report import write_report

    s = settings or (DemoSettings.quick() if quick else DemoSettings())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    log.info("1/4 extract: %d prompts, generate %d tokens each", s.n_prompts, s.generate)
    loaded = load_model(model)
    layer = _layer_index(s.layer, loaded.arch.n_layers)
    store = out / "trajectories.h5"
    cfg = ExtractConfig(prompts=_prompt_subset(out, s.n_prompts), out=str(store), model=model, layers=layer,
                        generate=s.generate, batch_size=s.batch_size, chat=True)
    r = extract(cfg, loaded=loaded, progress=progress)
    log.info("   %d sequences, %d tokens -> %s", r.n_sequences, r.n_tokens, store)

    log.info("2/4 train RET encoder: %d epochs", s.epochs)
    runs = out / "runs"
    cli = macro_cli([
        "fit", f"--data.stores=[{store}]", f"--data.layers={layer}", f"--trainer.max_epochs={s.epochs}",
        f"--trainer.default_root_dir={runs}", f"--trainer.logger.init_args.save_dir={runs}",
        f"--trainer.enable_progress_bar={str(progress).lower()}", "--trainer.enable_model_summary=false",
    ])
    if cli.model.collapse_message:
        from activation_cache.errors import InputError

        raise InputError(cli.model.collapse_message)
    ckpt = cli.trainer.checkpoint_callback.last_model_path

    log.info("3/4 macrostates: k=%d, held-out evaluation", s.k)
    res = build_macrostates(ckpt, store, out, k=s.k, progress=progress)

    log.info("4/4 report")
    res.metrics["demo"] = {"quick": quick, "settings": s.__dict__, "seconds": time.perf_counter() - t0,
                           "checkpoint": str(res.checkpoint)}
    (out / "metrics.json").write_text(json.dumps(res.metrics, indent=1))
    write_report(out / "report.html", res.metrics, res.summary, res.trajectories)
    log.info("done in %.0f s: %s, %s", time.perf_counter() - t0, out / "report.html", out / "metrics.json")
    return res.metrics
