"""VQ batches sent as the rows their blocks lie in: the same cells as the per-block loader, and the same weights."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from activation_cache.data import ChunkShuffleBatches, ChunkShuffleSampler, ConcatChunked
from activation_cache.reader import open_store
from activation_cache.writer import Batch, StoreSpec, StoreWriter
from ret_toolkit.vq import BlockSpec, StoreBlocks
from ret_toolkit.vq.block_rows import BlockRows, gather_cells
from ret_toolkit.vq.blocks import block_anchors, collate_cells
from ret_toolkit.vq.module import VQModule

pytestmark = pytest.mark.usefixtures("one_torch_thread")
D, BATCH = 8, 16


def _store(path, seed: int, dtype: str):
    rng = np.random.default_rng(seed)
    spec = StoreSpec("m", "r", D, 3, ["0", "1", "2"], {"seed": seed}, dtype=dtype)
    with StoreWriter(path, spec) as w:
        for _ in range(3):
            lens = rng.integers(6, 30, size=6)
            n = int(lens.sum())
            w.append(Batch([np.zeros(t, np.int64) for t in lens], [np.zeros(t, bool) for t in lens],
                           {k: rng.normal(i, 1 + i, (n, D)).astype(np.float32) for i, k in enumerate(("0", "1", "2"))},
                           [{"prompt_id": str(i)} for i in range(6)]))
    return path


@pytest.fixture(scope="module", params=["float16", "bfloat16"])
def stores(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"br_{request.param}")
    return [_store(root / "a.h5", 0, request.param), _store(root / "b.h5", 1, request.param)]


def _blocks(stores, spec: BlockSpec) -> ConcatChunked:
    parts = []
    for p in stores:
        with open_store(p) as st:  # every third position: blocks of nearby anchors overlap
            parts.append(StoreBlocks(p, spec, block_anchors(st, [spec], "all", stride=3)))
    return ConcatChunked(parts)


@pytest.mark.parametrize("spec", [BlockSpec(layers="0,2", start=None, stop=0, max_positions=5),
                                  BlockSpec(layers="1", start=-2, stop=2)], ids=["prefix", "around"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_row_batches_hold_exactly_the_cells_of_the_per_block_loader(stores, spec, shuffle):
    ds = _blocks(stores, spec)
    old = DataLoader(ds, batch_size=BATCH, sampler=ChunkShuffleSampler(ds, shuffle=shuffle, seed=3, drop_last=False),
                     collate_fn=collate_cells)
    new = DataLoader(BlockRows(ds), batch_size=None,
                     sampler=ChunkShuffleBatches(ds, BATCH, shuffle=shuffle, seed=3, drop_last=False))
    a, b = list(old), list(new)
    assert len(a) == len(b) == len(new) > 2
    for x, y in zip(a, b):
        assert torch.equal(x["cells"], gather_cells(y))
        for key in ("layer", "pos", "mask", "index"):
            assert torch.equal(x[key], y[key]), key
        assert len(y["rows"]) < int(x["mask"].sum())  # overlapping blocks: each row sent once
        assert y["rows"].dtype == {"float16": torch.float16, "bfloat16": torch.bfloat16}[ds.datasets[0].stored_dtype]


def test_vq_training_through_rows_reaches_the_same_weights(stores):
    spec = BlockSpec(layers="0,2", start=None, stop=0, max_positions=5)
    ds = _blocks(stores, spec)

    def fit(loader) -> dict:
        torch.manual_seed(0)
        m = VQModule(d_input=D, n_layers=2, max_offset=5, dim=16, depth=1, heads=2, code_dim=8, num_codes=8)
        m.set_standardization(torch.full((2 * D,), 0.5), torch.full((2 * D,), 1.5))
        pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, deterministic=True).fit(m, loader)
        return m.state_dict()

    kw = dict(shuffle=True, seed=0, drop_last=True)
    before = fit(DataLoader(ds, batch_size=BATCH, sampler=ChunkShuffleSampler(ds, **kw), collate_fn=collate_cells))
    after = fit(DataLoader(BlockRows(ds), batch_size=None, sampler=ChunkShuffleBatches(ds, BATCH, **kw)))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    torch.manual_seed(0)
    untrained = VQModule(d_input=D, n_layers=2, max_offset=5, dim=16, depth=1, heads=2, code_dim=8, num_codes=8)
    assert any(not torch.equal(untrained.state_dict()[k], after[k]) for k in after if k in untrained.state_dict())


def test_codes_of_a_store_are_those_of_the_per_block_loader(stores):
    from ret_toolkit.vq.codes import encode_store_blocks

    spec = BlockSpec(layers="0,2", start=None, stop=0, max_positions=5)
    torch.manual_seed(0)
    m = VQModule(d_input=D, n_layers=2, max_offset=5, dim=16, depth=1, heads=2, code_dim=8, num_codes=8).eval()
    m.set_standardization(torch.full((2 * D,), 0.5), torch.full((2 * D,), 1.5))
    codes, anchors = encode_store_blocks(m, stores[0], block=spec, anchor="all", anchor_stride=3, batch_size=BATCH,
                                         progress=False)
    ds = StoreBlocks(stores[0], spec, anchors)
    old = [m.codes(collate_cells([ds[i] for i in range(lo, min(lo + BATCH, len(ds)))]))
           for lo in range(0, len(ds), BATCH)]
    assert len(codes) == len(ds) and np.array_equal(codes, torch.cat(old).numpy())


def test_stores_of_different_dtypes_meet_as_float32(tmp_path):
    mixed = [_store(tmp_path / "a.h5", 0, "float16"), _store(tmp_path / "b.h5", 1, "bfloat16")]
    ds = _blocks(mixed, BlockSpec(layers="0,2", start=-2, stop=1))
    kw = dict(shuffle=True, seed=2, drop_last=False)
    old = DataLoader(ds, batch_size=BATCH, sampler=ChunkShuffleSampler(ds, **kw), collate_fn=collate_cells)
    new = DataLoader(BlockRows(ds), batch_size=None, sampler=ChunkShuffleBatches(ds, BATCH, **kw))
    batches = list(new)
    assert any(b["rows"].dtype == torch.float32 for b in batches)  # some batches span both stores
    for x, y in zip(old, batches):
        assert torch.equal(x["cells"], gather_cells(y))
