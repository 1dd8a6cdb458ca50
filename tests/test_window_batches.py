"""Window batches sent as their rows: the same windows as the per-window loader, and the same RET weights."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from activation_cache.data import ChunkShuffleSampler, ConcatChunked, TokenWindows
from activation_cache.window_batches import WindowBatchSampler, WindowBatches, cut_windows
from activation_cache.writer import Batch, StoreSpec, StoreWriter
from ret_toolkit.macro import RETModule

LENGTH, BATCH = 6, 16


def _store(path, seed: int, d: int = 8, dtype: str = "float16"):
    rng = np.random.default_rng(seed)
    spec = StoreSpec("m", "r", d, 4, ["1", "2"], {"seed": seed}, dtype=dtype)
    with StoreWriter(path, spec) as w:
        for _ in range(3):
            lens = rng.integers(4, 40, size=8)  # some shorter than a window: no window there
            n = int(lens.sum())
            w.append(Batch([rng.integers(0, 50, size=t) for t in lens], [np.zeros(t, bool) for t in lens],
                           {"1": rng.normal(1, 2, (n, d)).astype(np.float32),
                            "2": rng.normal(size=(n, d)).astype(np.float32)},
                           [{"prompt_id": str(i)} for i in range(8)]))
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("wb")
    return [_store(root / "a.h5", 0), _store(root / "b.h5", 1)]


@pytest.fixture(scope="module")
def bf16_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("wb16")
    return [_store(root / "a.h5", 0, dtype="bfloat16"), _store(root / "b.h5", 1, dtype="bfloat16")]


def _windows(stores, chunk: int = 23) -> ConcatChunked:
    parts = [TokenWindows(p, ["1", "2"], LENGTH, sequences=range(2, 24), stride=2) for p in stores]
    for p in parts:
        p.chunk = chunk  # many small chunk blocks, so batches straddle chunks and stores
    return ConcatChunked(parts)


def _old(ds, **kw) -> DataLoader:
    return DataLoader(ds, batch_size=BATCH, sampler=ChunkShuffleSampler(ds, **kw))


def _new(ds, num_workers: int = 0, **kw) -> DataLoader:
    return DataLoader(WindowBatches(ds), batch_size=None, sampler=WindowBatchSampler(ds, BATCH, **kw),
                      num_workers=num_workers)


def _cut(batch) -> torch.Tensor:
    return cut_windows(batch["rows"], batch["starts"], batch["length"]).float()


def _keys(windows: torch.Tensor) -> list[tuple]:
    return [tuple(w.flatten().tolist()) for w in windows]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_in_order_batches_are_exactly_those_of_the_per_window_loader(stores, bf16_stores, dtype):
    ds = _windows(stores if dtype == "float16" else bf16_stores)
    old, new = _old(ds, shuffle=False, drop_last=False), _new(ds, shuffle=False, drop_last=False)
    a, b = list(old), [_cut(x) for x in new]
    assert len(a) == len(b) == len(new) and sum(len(x) for x in b) == len(ds)
    for x, y in zip(a, b):
        assert torch.equal(x, y)  # same windows, same order, same values
    first = new.dataset[list(range(BATCH))]  # plain window indices work too
    assert first["rows"].dtype == getattr(torch, dtype) and len(first["rows"]) < BATCH * LENGTH


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_shuffled_epoch_is_whole_chunks_cut_every_batch_size(stores, bf16_stores, dtype):
    ds = _windows(stores if dtype == "float16" else bf16_stores)
    every = sorted(_keys(torch.cat(list(_old(ds, shuffle=False, drop_last=False)))))
    chunk_of = ds.chunk_of()
    union = sum(len(np.unique((p.starts[:, None] + np.arange(LENGTH)).ravel())) for p in ds.datasets)
    orders = []
    for epoch in (0, 1):
        loader = _new(ds, seed=5, drop_last=False)
        loader.sampler.set_epoch(epoch)
        plans = list(loader.sampler)
        batches = [_cut(x) for x in loader]
        assert sorted(k for b in batches for k in _keys(b)) == every  # every window, once
        assert [len(b) for b in batches[:-1]] == [BATCH] * (len(batches) - 1)  # full batches, the last may be short
        # chunk after chunk: a chunk's windows are contiguous in the epoch, so it meets at most two batches
        flat = np.concatenate([chunk_of[p.windows] for p in plans])
        runs = flat[np.r_[True, flat[1:] != flat[:-1]]]
        assert len(runs) == len(set(runs.tolist()))
        # rows sent: each row a window covers, plus at most the rows past each cut and each chunk's end
        sent = sum(len(x["rows"]) for x in loader)
        assert union <= sent <= union + (LENGTH - 1) * (len(runs) + len(plans))
        orders.append([p.windows.tolist() for p in plans])
    assert orders[0] != orders[1]  # reshuffled each epoch


def test_two_ranks_share_the_epoch(stores):
    ds = _windows(stores)
    for rank in (0, 1):  # in order: as the per-window sampler splits it
        old = _old(ds, shuffle=False, num_replicas=2, rank=rank)
        new = _new(ds, shuffle=False, num_replicas=2, rank=rank)
        assert [x.tolist() for x in old] == [_cut(x).tolist() for x in new]
    shuffled = [[p.windows.tolist() for p in _new(ds, seed=2, num_replicas=2, rank=r, drop_last=False).sampler]
                for r in (0, 1)]
    assert len(shuffled[0]) == len(shuffled[1])  # the same number of steps on every rank
    seen = [{i for b in batches for i in b} for batches in shuffled]
    assert seen[0] | seen[1] == set(range(len(ds)))
    dropped = [[p.windows.tolist() for p in _new(ds, seed=2, num_replicas=2, rank=r, drop_last=True).sampler]
               for r in (0, 1)]
    assert len(dropped[0]) == len(dropped[1]) and not {i for b in dropped[0] for i in b} & {i for b in dropped[1] for i in b}


def test_worker_processes_give_the_same_batches(stores):
    ds = _windows(stores)
    alone = [_cut(x) for x in _new(ds, seed=1)]
    workers = [_cut(x) for x in _new(ds, num_workers=2, seed=1)]
    assert len(alone) == len(workers) and all(torch.equal(x, y) for x, y in zip(alone, workers))


def _module() -> RETModule:
    torch.manual_seed(0)
    m = RETModule(d_input=16, window=3, max_horizon=3, z_dim=4, hidden=16, predictor_hidden=16, collapse_threshold=0)
    m.set_standardization(torch.full((16,), 0.5), torch.full((16,), 1.5))
    return m


def test_ret_training_in_order_reaches_the_same_weights(stores):
    ds = _windows(stores, chunk=64)
    shuffle = False

    def fit(loader) -> dict:
        m = _module()
        pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, deterministic=True).fit(m, loader)
        return m.state_dict()

    before = fit(_old(ds, shuffle=shuffle, seed=0, drop_last=False))
    after = fit(_new(ds, shuffle=shuffle, seed=0, drop_last=False))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    untrained = _module().state_dict()
    assert any(not torch.equal(untrained[k], after[k]) for k in after)  # it did train


def test_bad_batch_size_and_mixed_window_lengths_are_refused(stores):
    ds = _windows(stores)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        WindowBatchSampler(ds, 0)
    longer = TokenWindows(stores[0], ["1"], LENGTH + 1)
    with pytest.raises(ValueError, match="windows of one length only"):
        WindowBatches(ConcatChunked([ds.datasets[0], longer]))


@pytest.mark.parametrize("compression", [None, "lzf"])
def test_one_layer_rows_read_from_the_files_bytes_equal_h5pys(tmp_path, compression):
    rng = np.random.default_rng(4)
    path = tmp_path / "s.h5"
    spec = StoreSpec("m", "r", 8, 4, ["1"], {"c": str(compression)}, dtype="bfloat16", compression=compression)
    with StoreWriter(path, spec) as w:
        for _ in range(5):  # 30 sequences of 30-90 tokens over several 2048-row chunks
            lens = rng.integers(30, 90, size=6)
            w.append(Batch([np.zeros(t, np.int64) for t in lens], [np.zeros(t, bool) for t in lens],
                           {"1": rng.normal(size=(int(lens.sum()), 8)).astype(np.float32)},
                           [{"prompt_id": str(i)} for i in range(6)]))
    ds = TokenWindows(path, ["1"], LENGTH)
    assert (ds._file.direct("hidden/1") is not None) == (compression is None)  # compressed: through h5py
    stored = ds._file.dataset("hidden/1")[:]
    batches = WindowBatches(ds)
    for plan in WindowBatchSampler(ds, 64, seed=0):
        item = batches[plan]
        expect = np.concatenate([stored[lo:hi] for lo, hi in zip(plan.lo, plan.hi)])
        np.testing.assert_array_equal(item["rows"].view(torch.int16).numpy().view(np.uint16), expect)
        assert torch.equal(cut_windows(**item)[:, 0], ds.as_tensor(stored[ds.starts[plan.windows]]))
