"""RET training throughput: HDF5 window dataset versus an in-memory tensor.

Same RET module, same windows, same batch size, in one run:
  A. windows gathered into one in-memory tensor, shuffled DataLoader;
  B. the real data path: TokenWindows on the store + ChunkShuffleSampler.
Each trains for the same number of steps (after a warm-up); the ratio of
windows/s (B / A) says whether the data path is the bottleneck.

    .venv/bin/python benchmarks/bench_ret_train.py [--store demo_out/trajectories.h5]
Without --store, a store is extracted from the embedded model first
(forward mode, middle layer). Last line: `ret_train_hdf5_vs_memory: <ratio>` (target >= 0.8).
"""

from __future__ import annotations

import argparse
import os
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
from ret_toolkit.macro import RETModule  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402


def train_speed(module: RETModule, loader: DataLoader, steps: int) -> float:
    """Windows per second over `steps` optimizer steps (after 5 warm-up steps)."""
    trainer = pl.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, loader)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    t0 = time.perf_counter()
    trainer.fit(module, loader)
    return steps * loader.batch_size / (time.perf_counter() - t0)


def unwrap(batch):
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=None)
    ap.add_argument("--layer", default="15")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=256)
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

    speeds = {"memory": [], "hdf5": []}
    for _ in range(2):  # interleaved, best of two: the machine is noisy
        speeds["memory"].append(train_speed(fresh(), mem_loader, a.steps))
        speeds["hdf5"].append(train_speed(fresh(), h5_loader, a.steps))
        print(f"memory {speeds['memory'][-1]:.0f} windows/s, hdf5 {speeds['hdf5'][-1]:.0f} windows/s")
    mem, h5 = max(speeds["memory"]), max(speeds["hdf5"])
    report("bench_ret_train", "ret_train_hdf5_vs_memory", h5 / mem, {
        "store": store, "tokens": n_tokens, "windows": len(ds), "batch_size": a.batch_size, "steps": a.steps,
        "memory_windows_per_s": mem, "hdf5_windows_per_s": h5, "runs": speeds,
    })


if __name__ == "__main__":
    main()
