"""RET training throughput: the store's data path versus an in-memory tensor, and versus the per-window loader it replaced.

Same RET module, same windows, batches of at most the same size, in one run:
  A. windows gathered into one in-memory tensor, shuffled DataLoader;
  B. the real data path, as ``TrajectoryDataModule`` uses it: ``WindowBatches`` +
     ``WindowBatchSampler`` (whole-chunk batches sent as their rows, windows cut by the module);
  C. the per-window loader it replaced: ``TokenWindows`` + ``ChunkShuffleSampler``.
Each trains for the same number of steps (after a warm-up), windows counted as they pass;
the sides alternate within each repetition, and each ratio of windows/s is reported as the
median over repetitions with its range: B / A says whether the data path is the
bottleneck, B / C whether the new loader is slower than the old.

    .venv/bin/python benchmarks/bench_ret_train.py [--store demo_out/trajectories.h5]
Without --store, a store is extracted from the embedded model first
(forward mode, middle layer). Last line: `ret_train_hdf5_vs_memory: <ratio>` (target >= 0.8).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from activation_cache import (  # noqa: E402
    ChunkShuffleSampler,
    ExtractConfig,
    TokenWindows,
    extract,
    open_store,  # noqa: E402
    standardization_stats,
)
from activation_cache.window_batches import WindowBatchSampler, WindowBatches  # noqa: E402
from ret_toolkit.macro import RETModule  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402


class CountWindows(pl.Callback):
    """Windows trained on, whatever the batch's form."""

    def __init__(self):
        self.n = 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.n += len(batch["starts"]) if isinstance(batch, dict) else len(unwrap(batch))


def train_speed(module: RETModule, loader: DataLoader, steps: int) -> float:
    """Windows per second over `steps` optimizer steps (after 5 warm-up steps)."""
    trainer = pl.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, loader)
    count = CountWindows()
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[count])
    t0 = time.perf_counter()
    trainer.fit(module, loader)
    return count.n / (time.perf_counter() - t0)


def unwrap(batch):
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=None)
    ap.add_argument("--layer", default="15")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    store = a.store
    if store is None:
        store = str(Path(tempfile.mkdtemp(prefix="bench_ret_")) / "traj.h5")
        extract(ExtractConfig(prompts="reasoning", out=store, layers=a.layer, chat=True, batch_size=16), progress=False)
    with open_store(store) as st:
        n_tokens = st.n_tokens
    window, horizon = 8, 4
    ds = TokenWindows(store, [a.layer], window + horizon)
    mean, std = standardization_stats(store, [a.layer])
    print(f"store {store}: {n_tokens} tokens, {len(ds)} windows of {window + horizon}")

    def fresh() -> RETModule:
        torch.manual_seed(0)
        m = RETModule(d_input=ds.n_features, window=window, max_horizon=horizon, collapse_threshold=0)
        m.set_standardization(mean, std)
        return m

    t0 = time.perf_counter()
    memory = torch.stack([ds[i] for i in range(len(ds))])
    print(f"gathered {tuple(memory.shape)} in memory in {time.perf_counter() - t0:.1f} s")
    mem_loader = DataLoader(TensorDataset(memory), batch_size=a.batch_size, shuffle=True, drop_last=True)
    h5_loader = DataLoader(ds, batch_size=a.batch_size, sampler=ChunkShuffleSampler(ds, seed=0), drop_last=True)

    new_loader = DataLoader(WindowBatches(ds), batch_size=None, sampler=WindowBatchSampler(ds, a.batch_size, seed=0))

    speeds = {"memory": [], "hdf5": [], "per_window": []}
    for _ in range(a.repeats):  # interleaved
        speeds["memory"].append(train_speed(fresh(), mem_loader, a.steps))
        speeds["hdf5"].append(train_speed(fresh(), new_loader, a.steps))
        speeds["per_window"].append(train_speed(fresh(), h5_loader, a.steps))
        print(f"memory {speeds['memory'][-1]:.0f} windows/s, store (row batches) {speeds['hdf5'][-1]:.0f}, "
              f"store (per window) {speeds['per_window'][-1]:.0f}", flush=True)
    vs_memory = [h / m for h, m in zip(speeds["hdf5"], speeds["memory"])]
    vs_old = [h / o for h, o in zip(speeds["hdf5"], speeds["per_window"])]
    rng = lambda xs: {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}  # noqa: E731
    print(f"row batches vs the per-window loader: {statistics.median(vs_old):.3f} [{min(vs_old):.3f}, {max(vs_old):.3f}]")
    report("bench_ret_train", "ret_train_hdf5_vs_memory", statistics.median(vs_memory), {
        "store": store, "tokens": n_tokens, "windows": len(ds), "batch_size": a.batch_size, "steps": a.steps,
        "runs_windows_per_s": speeds, "hdf5_vs_memory": rng(vs_memory), "row_batches_vs_per_window": rng(vs_old),
    })


if __name__ == "__main__":
    main()
