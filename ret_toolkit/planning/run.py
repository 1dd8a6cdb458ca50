"""One planning study on a trained task model: accuracy, trajectories, horizon / branch / history.

    model dir (ret-train task) -> held-out task samples -> accuracy (see decode.py)
      -> trajectory store (path-finding: generate mode, the model's own path;
         grammar: forward mode over whole sentences)
      -> horizon curve, branch awareness (path-finding), history heatmap
      -> planning.json + planning.html

Check, then write: the output directory is checked before the model is loaded
(a run with other settings is refused unless ``overwrite``), and every file
(``trajectories.h5``, ``planning.json``, ``planning.html``) is written into a
staging folder and moved into place only when the whole run has succeeded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from activation_cache.errors import InputError, option
from activation_cache.extract_config import ExtractConfig, check_storage
from activation_cache.extraction import extract
from activation_cache.models import load_model
from activation_cache.outputs import OutputDir, with_options, write_json
from activation_cache.settings import placement_of
from ret_toolkit.planning.analysis import (
    branch_on_store,
    history_heatmap,
    horizon_curve,
    task_accuracy,
)
from ret_toolkit.planning.datamodule import make_task, task_settings
from ret_toolkit.planning.decode import task_accuracy_of
from ret_toolkit.planning.result import PlanningResult
from ret_toolkit.planning.settings import PlanningInputs, ProbeSettings
from ret_toolkit.tasks import TaskSample, prompt_records

log = logging.getLogger("ret_toolkit.planning")

#: What ``ret-planning`` writes into its output directory.
PLANNING_FILES = ("trajectories.h5", "planning.json", "planning.html")


def sentences(samples: list[TaskSample]) -> list[TaskSample]:
    """Whole texts (prompt + target) as prompts, for forward-mode extraction."""
    return [TaskSample(prompt=s.text, target="", meta=s.meta) for s in samples]


def planning_settings(model_dir: str | Path, task_name: str, n: int, path_nodes: int, settings: ProbeSettings,
                      seed: int) -> dict:
    """Everything that determines the outputs of a run (recorded in ``ret_runs.json``)."""
    return {"model": str(Path(model_dir).resolve()), "task": task_name,
            "path_nodes": path_nodes if task_name == "pathfinding" else None, "n": int(n), "seed": int(seed),
            "probe": asdict(settings)}


def run_planning(job: PlanningInputs, settings: ProbeSettings | None = None, *, seed: int = 1000,
                 progress: bool = True) -> PlanningResult:
    """Run the planning analyses of ``job.task`` on the model in ``job.model``; returns its :class:`PlanningResult`.

    ``job.out`` receives ``trajectories.h5``, ``planning.json`` and ``planning.html``
    (:class:`~ret_toolkit.planning.settings.PlanningInputs`: also ``n`` samples,
    ``path_nodes``, where the model runs and the store's format). ``seed`` draws the
    held-out samples. A directory that holds a ``ret-planning`` run with other settings
    (model, task, ``n``, ``path_nodes``, ``seed``, probe settings) is refused before the
    model is loaded, unless ``job.overwrite``: then its results are replaced. A rerun with
    the same settings recomputes and replaces them. Nothing in ``out`` changes unless the
    whole run succeeds.
    """
    s = settings or ProbeSettings()
    model_dir, task_name, out, n, path_nodes = job.model, job.task, Path(job.out), job.n, job.path_nodes
    dtype, compression = job.dtype, job.compression
    t0 = time.perf_counter()
    if n < 1:
        raise InputError(f"{option('n')} must be >= 1, got {n}")
    # a model trained on reversed paths (task.json of its export) is scored and analysed backwards
    task = make_task(task_name, path_nodes, reverse=bool(task_settings(model_dir).get("reverse", False)))
    check_storage(dtype, compression)
    record = with_options(planning_settings(model_dir, task_name, n, path_nodes, s, seed),
                          {"dtype": "auto", "compression": None}, {"dtype": dtype, "compression": compression})
    od = OutputDir(out, "ret-planning", record, files=PLANNING_FILES, overwrite=job.overwrite)
    samples = task.samples(n, seed)
    loaded = load_model(model_dir, **placement_of(job))
    if loaded.arch.n_layers < 2:
        raise InputError(f"{model_dir}: the planning analyses need a model with at least 2 layers")

    with od:
        # The store is an intermediate: traced afresh into the staging folder every run.
        store = od.stage("trajectories.h5")
        # path-finding: the model generates its own path; grammar: forward mode over whole sentences
        paths = task_name == "pathfinding"
        cfg = ExtractConfig(prompts=prompt_records(samples if paths else sentences(samples)), out=str(store),
                            model=model_dir, layers="all", generate=path_nodes + 2 if paths else 0, batch_size=64,
                            dtype=dtype, compression=compression)
        log.info("extract %d %s samples -> %s", n, task_name, od.final("trajectories.h5"))
        extract(cfg, loaded=loaded, progress=progress)
        if task_name == "pathfinding":
            from activation_cache.reader import TrajectoryStore

            with TrajectoryStore(store) as st:
                answered = sum(bool(st.generated(i).any()) for i in range(st.n_sequences))
            if answered < 20:
                raise InputError(f"{model_dir}: the model answered only {answered} of {n} prompts with any token "
                                 "(it ends at once); train it longer before analysing it")

        result: dict = {"task": task_name, "path_nodes": path_nodes if task_name == "pathfinding" else None,
                        "model": model_dir, "n_samples": n, "settings": s.__dict__}
        if task_name == "pathfinding":
            result["accuracy"] = task_accuracy(str(store), task, samples)
        else:
            result["accuracy"] = task_accuracy_of(loaded.model, loaded.tokenizer, task, samples[: min(n, 500)])
        log.info("accuracy %.3f; horizon curve", result["accuracy"]["accuracy"])
        anchor = "prompt_end" if task_name == "pathfinding" else "all"
        result["horizon"] = horizon_curve(str(store), s, anchor=anchor)
        if task_name == "pathfinding":
            log.info("branch awareness")
            result["branch"] = branch_on_store(str(store), s)
        log.info("history heatmap")
        result["history"] = history_heatmap(str(store), s, anchor=anchor)
        result["seconds"] = time.perf_counter() - t0
        write_json(od.stage("planning.json"), result, indent=2)
        from ret_toolkit.viz.planning import write_planning_report

        write_planning_report(od.stage("planning.html"), [result])
    return PlanningResult(result)
