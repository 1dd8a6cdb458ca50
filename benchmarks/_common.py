"""Shared helpers for benchmarks: result JSON and the closing `name: value` line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ret_toolkit import environment_record, lock_differences

RESULTS = Path(__file__).resolve().parent / "results"
LOCK = RESULTS.parent.parent / "constraints.txt"


def add_threads_arg(ap, default: int = 1) -> None:
    """``--threads``: torch threads for generation benchmarks (apply with ``torch.set_num_threads``)."""
    ap.add_argument("--threads", type=int, default=default,
                    help=f"torch threads (default {default}; on a shared 2-core machine a second OpenMP thread "
                         "spins and generation ran 12x slower, 0.2 vs 2.5 tok/s, in our measurement)")


def report(name: str, key: str, value: float, details: dict) -> None:
    """Write benchmarks/results/<name>.json and print the key figure as the last line.

    The file records where the figure comes from: ``environment`` (package
    versions, machine, CPU kernels, threads) and ``lock``, the ways the
    environment differed from constraints.txt (empty: the locked one).
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        key: value,
        "details": details,
        "environment": environment_record(),
        "lock": lock_differences(LOCK),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"{key}: {value:.4g}")


def untrained_task_model(task: str, path_nodes: int, n_layer: int, n_embd: int, out: Path) -> str:
    """The baseline of the planning benchmarks: a task model of the trained ones' shape, seed 0, never trained."""
    from ret_toolkit.planning import TaskDataModule, TaskLM
    from ret_toolkit.planning.datamodule import export_task_model

    torch.manual_seed(0)
    dm = TaskDataModule(task, path_nodes=path_nodes)
    m = TaskLM(vocab_size=dm.vocab_size, bos_id=dm.bos_id, eos_id=dm.eos_id, pad_id=dm.pad_id,
               n_layer=n_layer, n_embd=n_embd)
    return str(export_task_model(m, dm.tokenizer, out, task=dm.hparams))
