"""The main job, end to end on the embedded model (``ret-demo`` / ``make demo``).

    extract (generate mode, built-in reasoning prompts, chat template)
      -> train the RET encoder (Lightning)
      -> macrostates: encode, k-means, summaries
      -> held-out evaluation against baselines
      -> report.html + metrics.json

Everything lands in one output directory; rerunning resumes the extraction. A
run with other settings is refused before it writes anything (``overwrite``
replaces the directory's results).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from activation_cache.extraction import ExtractConfig, check_storage, extract
from activation_cache.layers import layer_spec, parse_layers
from activation_cache.outputs import OutputDir, with_options, write_json
from activation_cache.prompts import Prompt, read_prompts
from ret_toolkit.macro.pipeline import MACRO_FILES

log = logging.getLogger("ret_toolkit.demo")


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo run. ``quick`` takes about a minute on 2 CPU cores (see the README)."""

    n_prompts: int = 276
    generate: int = 48
    epochs: int = 8
    batch_size: int = 16
    k: int = 12
    layer: str = "middle"

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(n_prompts=72, generate=24, epochs=3)


#: What the demo writes into its output directory (besides ``runs/`` of Lightning).
DEMO_FILES = ("trajectories.h5", *MACRO_FILES)


def demo_prompts(n: int) -> list[Prompt]:
    """Every k-th built-in reasoning prompt, so a small subset still spans all categories."""
    prompts = read_prompts("reasoning")
    step = max(len(prompts) / n, 1.0)
    return [prompts[int(i * step)] for i in range(min(n, len(prompts)))]


def run_demo(out: str | Path, quick: bool = False, model_spec: str | None = None, settings: DemoSettings | None = None,
             progress: bool = True, overwrite: bool = False, *, device: str | None = "auto",
             model_dtype: str | None = "auto", device_map: str | dict | None = None,
             chat_template: str | None = None, dtype: str = "auto", compression: str | None = None) -> dict:
    """Run the whole pipeline into ``out``; returns the metrics dict.

    ``model_spec`` names the model (a hub id or local path; None: the embedded
    SmolLM2). ``device``, ``model_dtype`` and ``device_map`` place the model as
    :func:`~activation_cache.models.load_model` does; RET trains on
    Lightning's ``auto`` accelerator. ``chat_template`` (a Jinja file or the
    template text) renders the prompts for a model whose tokenizer has none;
    ``dtype`` and ``compression`` are the store's (as ``ret-extract``'s flags).

    Rerunning with the same settings resumes the extraction and retrains. A
    directory that holds a demo run with other settings (``--quick`` vs the
    full run, another model) is refused before anything is written, unless
    ``overwrite``: then its store and ``runs/`` are replaced once the new run
    has succeeded (a failed or killed one leaves them as they were).
    """
    from activation_cache.models import load_model
    from ret_toolkit.macro.pipeline import build_macrostates
    from ret_toolkit.macro.train import train

    s = settings or (DemoSettings.quick() if quick else DemoSettings())
    out = Path(out)
    check_storage(dtype, compression)
    record = with_options({**asdict(s), "model": model_spec, "model_dtype": model_dtype},
                          {"chat_template": None, "dtype": "auto", "compression": None},
                          {"chat_template": chat_template, "dtype": dtype, "compression": compression})
    od = OutputDir(out, "ret-demo", record, files=DEMO_FILES, overwrite=overwrite)
    t0 = time.perf_counter()

    log.info("1/4 extract: %d prompts, generate %d tokens each", s.n_prompts, s.generate)
    loaded = load_model(model_spec, device=device, dtype=model_dtype, device_map=device_map, chat_template=chat_template,
                        progress=progress)
    layer = layer_spec(parse_layers(s.layer, loaded.arch.n_layers, sort=False))
    store = out / "trajectories.h5"
    cfg = ExtractConfig(prompts=demo_prompts(s.n_prompts), out=str(store), model=model_spec, layers=layer,
                        generate=s.generate, batch_size=s.batch_size, chat=True, chat_template=chat_template,
                        dtype=dtype, compression=compression, overwrite=overwrite)
    runs = out / "runs"
    # --overwrite: earlier training runs go only once this run has succeeded
    earlier = sorted(runs.glob("*/version_*")) if overwrite else []
    with od:
        r = extract(cfg, loaded=loaded, progress=progress)
        log.info("   %d sequences, %d tokens -> %s", r.n_sequences, r.n_tokens, store)

        log.info("2/4 train RET encoder: %d epochs", s.epochs)
        ckpt = train([store], layers=layer, max_epochs=s.epochs, root_dir=runs, progress=progress).checkpoint

        log.info("3/4 macrostates: k=%d, held-out evaluation; 4/4 report", s.k)
        res = build_macrostates(ckpt, store, od, k=s.k, progress=progress)
        res.metrics["demo"] = {"quick": quick, "settings": asdict(s), "seconds": time.perf_counter() - t0,
                               "checkpoint": str(res.checkpoint)}
        write_json(od.stage("metrics.json"), res.metrics)
    for run in earlier:
        shutil.rmtree(run, ignore_errors=True)
    log.info("done in %.0f s: %s, %s", time.perf_counter() - t0, out / "report.html", out / "metrics.json")
    return res.metrics
