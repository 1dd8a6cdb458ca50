"""Chunk-aligned token-window dataset, chunk-shuffle sampler, streaming statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activation_cache.data import ChunkShuffleSampler, TokenWindows, sequence_rows, standardization_stats, window_starts
from activation_cache.errors import InputError
from activation_cache.reader import open_store
from activation_cache.writer import Batch, StoreSpec, StoreWriter


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """60 sequences of 20..80 tokens, D=16, two layers; small chunks so windows span many."""
    path = tmp_path_factory.mktemp("data") / "s.h5"
    rng = np.random.default_rng(0)
    spec = StoreSpec("m", "r", 16, 4, ["1", "2"], {"x": 1})
    with StoreWriter(path, spec) as w:
        for _ in range(6):
            lens = rng.integers(20, 80, size=10)
            n = int(lens.sum())
            w.append(Batch([rng.integers(0, 50, size=t) for t in lens], [np.zeros(t, bool) for t in lens],
                           {"1": rng.normal(2, 3, (n, 16)).astype(np.float16), "2": rng.normal(size=(n, 16)).astype(np.float16)},
                           [{"prompt_id": str(i)} for i in range(10)]))
    return path


def test_window_starts_stay_inside_sequences():
    off = np.array([0, 5, 7, 15])
    assert window_starts(off, 3).tolist() == [0, 1, 2, 7, 8, 9, 10, 11, 12]
    assert window_starts(off, 3, sequences=[2], stride=2).tolist() == [7, 9, 11]
    assert sequence_rows(off, [0, 2]).tolist() == [True] * 5 + [False] * 2 + [True] * 8


def test_windows_equal_store_rows_with_layers_concatenated(store):
    ds = TokenWindows(store, [1, 2], length=6)
    with open_store(store) as st:
        for i in [0, 17, len(ds) // 2, len(ds) - 1]:
            a = int(ds.starts[i])
            ref = np.concatenate([st.hidden_rows(1, a, a + 6), st.hidden_rows(2, a, a + 6)], axis=1)
            assert torch.equal(ds[i], torch.from_numpy(ref.astype(np.float32)))
    assert ds[0].shape == (6, 32) and ds.n_features == 32


def test_sampler_is_a_permutation_chunk_local_and_epoch_dependent(store):
    ds = TokenWindows(store, [1], length=6)
    s = ChunkShuffleSampler(ds, seed=0, drop_last=False)
    order = list(s)
    assert sorted(order) == list(range(len(ds)))
    chunks = ds.chunk_of()[order]
    # chunk-local: the chunk changes far less often than for a uniform shuffle
    assert (np.diff(chunks) != 0).mean() < 0.5
    s.set_epoch(1)
    assert list(s) != order
    assert list(ChunkShuffleSampler(ds, seed=0, drop_last=False)) == order  # seeded


def test_sampler_ranks_are_disjoint_and_equal(store):
    ds = TokenWindows(store, [1], length=6)
    parts = [list(ChunkShuffleSampler(ds, seed=3, num_replicas=2, rank=r)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) and not set(parts[0]) & set(parts[1])
    assert len(parts[0]) + len(parts[1]) >= len(ds) - 1


def test_dataset_reads_each_chunk_about_once_per_epoch(store, monkeypatch):
    ds = TokenWindows(store, [1], length=6, cache_chunks=4)
    reads = []
    original = ds.block.__func__

    def counting(self, c):
        if c not in self._cache:
            reads.append(c)
        return original(self, c)

    monkeypatch.setattr(TokenWindows, "block", counting)
    for i in ChunkShuffleSampler(ds, seed=0, drop_last=False):
        ds[i]
    assert len(reads) <= 1.5 * len(np.unique(ds.chunk_of()))


def test_standardization_stats_match_numpy(store):
    with open_store(store) as st:
        seqs = [0, 3, 7]
        h = np.concatenate([st.hidden(s, 1) for s in seqs]).astype(np.float64)
    mean, std = standardization_stats(store, [1], seqs)
    np.testing.assert_allclose(mean.numpy(), h.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std.numpy(), h.std(0), rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="no tokens"):
        standardization_stats(store, [1], [])
    with pytest.raises(InputError, match="layer '7' not in store"):
        TokenWindows(store, [7], length=4)
