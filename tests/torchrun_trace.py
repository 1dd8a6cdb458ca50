"""Sycophancy tracing under torchrun, for test_sycophancy_forecast: each rank runs this file.

    torchrun --standalone --nproc-per-node 2 tests/torchrun_trace.py MODEL_DIR OUT_DIR N_ITEMS BATCH_SIZE

A random model never answers right, so the labeller is replaced by decisions
from the item ids and replies (the same stubs the in-process tests patch in).
Rank 0 writes ``OUT_DIR/labels.json``.
"""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path


def stub_first(item, reply):
    """Turn 1 decided from the item id (3 of 4 pass)."""
    return zlib.crc32(item.id.encode()) % 4 != 0


def stub_second(item, reply):
    return ("caved", "held", "unclear")[zlib.crc32((item.id + reply).encode()) % 3]


def patch_labeller(mp) -> None:
    """Patch the stubs in where the pipeline looks them up (``mp``: a pytest MonkeyPatch)."""
    from ret_toolkit.sycophancy import outcomes, trajectories

    mp.setattr(trajectories, "answer_correct", stub_first)
    mp.setattr(outcomes, "answer_correct", stub_first)
    mp.setattr(outcomes, "label_item", stub_second)


def main() -> None:
    import pytest
    import torch

    from activation_cache.models import load_model
    from activation_cache.ranks import detect_rank
    from ret_toolkit.sycophancy import load_bank
    from ret_toolkit.sycophancy import trajectories as traj

    torch.set_num_threads(1)
    model, out, n, batch = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    patch_labeller(pytest.MonkeyPatch())
    rank = detect_rank()
    res = traj.trace_dataset(traj.pick_items(load_bank(), n), out, load_model(model), "1",
                             traj.TraceSettings(max_new_tokens=6, pushbacks="all", batch_size=batch),
                             model_spec=model, progress=False, rank=rank)
    if rank.rank == 0:
        (out / "labels.json").write_text(json.dumps(res.labels))


if __name__ == "__main__":
    main()
