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
from dataclasses import asdict
from pathlib import Path

from activation_cache.extract_config import ExtractConfig, check_storage
from activation_cache.extraction import extract
from activation_cache.layers import layer_spec, parse_layers
from activation_cache.outputs import OutputDir, with_options
from activation_cache.prompts import Prompt, read_prompts
from activation_cache.settings import placement_of
from ret_toolkit.demo_settings import DemoInputs, DemoSettings
from ret_toolkit.macro.pipeline import MACRO_FILES, MacroResult

__all__ = ["demo_prompts", "run_demo"]

log = logging.getLogger("ret_toolkit.demo")


#: What the demo writes into its output directory (besides ``runs/`` of Lightning).
DEMO_FILES = ("trajectories.h5", *MACRO_FILES)


def demo_prompts(n: int) -> list[Prompt]:
    """Every k-th built-in reasoning prompt, so a small subset still spans all categories."""
    prompts = read_prompts("reasoning")
    step = max(len(prompts) / n, 1.0)
    return [prompts[int(i * step)] for i in range(min(n, len(prompts)))]


def run_demo(job: DemoInputs | str | Path | None = None, settings: DemoSettings | None = None,
             progress: bool = True) -> MacroResult:
    """Run the whole pipeline into ``job.out``; returns the :class:`~ret_toolkit.macro.pipeline.MacroResult`
    (its ``metrics`` are ``metrics.json``, with a ``demo`` block; ``.table()`` is what ``ret-demo`` prints).

    ``job`` (:class:`~ret_toolkit.demo_settings.DemoInputs`, or just the output directory)
    names the model (None: the embedded SmolLM2), where it runs (RET trains on
    Lightning's ``auto`` accelerator), the chat template for a model whose tokenizer has
    none and the store's format. ``settings`` sizes the run (default: the full run, or
    :meth:`DemoSettings.quick` with ``job.quick``).

    Rerunning with the same settings resumes the extraction and retrains. A
    directory that holds a demo run with other settings (``--quick`` vs the
    full run, another model) is refused before anything is written, unless
    ``job.overwrite``: then its store and ``runs/`` are replaced once the new run
    has succeeded (a failed or killed one leaves them as they were).
    """
    job = job if isinstance(job, DemoInputs) else DemoInputs(out=None if job is None else str(job))
    from activation_cache.models import load_model
    from ret_toolkit.macro.pipeline import MacroInputs, macrostates_into, write_macro_files
    from ret_toolkit.macro.train import train

    s = settings or (DemoSettings.quick() if job.quick else DemoSettings())
    out = Path(job.out_dir)
    check_storage(job.dtype, job.compression)
    record = with_options({**asdict(s), "model": job.model, "model_dtype": job.model_dtype},
                          {"chat_template": None, "dtype": "auto", "compression": None},
                          {"chat_template": job.chat_template, "dtype": job.dtype, "compression": job.compression})
    od = OutputDir(out, "ret-demo", record, files=DEMO_FILES, overwrite=job.overwrite)
    t0 = time.perf_counter()

    log.info("1/4 extract: %d prompts, generate %d tokens each", s.n_prompts, s.generate)
    loaded = load_model(job.model, **placement_of(job), chat_template=job.chat_template, progress=progress)
    layer = layer_spec(parse_layers(s.layer, loaded.arch.n_layers, sort=False))
    store = out / "trajectories.h5"
    cfg = ExtractConfig(prompts=demo_prompts(s.n_prompts), out=str(store), model=job.model, layers=layer,
                        generate=s.generate, batch_size=s.batch_size, chat=True, chat_template=job.chat_template,
                        dtype=job.dtype, compression=job.compression, overwrite=job.overwrite)
    runs = out / "runs"
    # --overwrite: earlier training runs go only once this run has succeeded
    earlier = sorted(runs.glob("*/version_*")) if job.overwrite else []
    with od:
        r = extract(cfg, loaded=loaded, progress=progress)
        log.info("   %d sequences, %d tokens -> %s", r.n_sequences, r.n_tokens, store)

        log.info("2/4 train RET encoder: %d epochs", s.epochs)
        ckpt = train([store], layers=layer, max_epochs=s.epochs, root_dir=runs, progress=progress).checkpoint

        log.info("3/4 %d macrostates, held-out evaluation; 4/4 report", s.n_macrostates)
        res = macrostates_into(od, MacroInputs.checked(ckpt, store, s.n_macrostates), progress=progress)
        res.metrics["demo"] = {"quick": job.quick, "settings": asdict(s), "seconds": time.perf_counter() - t0,
                               "checkpoint": str(res.checkpoint)}
        write_macro_files(od, res)
    for run in earlier:
        shutil.rmtree(run, ignore_errors=True)
    log.info("done in %.0f s: %s, %s", time.perf_counter() - t0, out / "report.html", out / "metrics.json")
    return res
