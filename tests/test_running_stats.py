"""Running statistics kept in the store: combined as numpy computes them, committed with the rows, a read for standardisation."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch

from activation_cache import data
from activation_cache.reader import open_store
from activation_cache.running_stats import RowStats, row_norms
from activation_cache.writer import Batch, StoreSpec, StoreWriter
from stats_checks import assert_stats_are_numpys

pytestmark = pytest.mark.usefixtures("one_torch_thread")
D = 6


def _parts(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)  # parts of different sizes, means and scales: the pairwise terms matter
    return [rng.normal(m, s, size=(n, D)) for n, m, s in ((1, 5.0, 1.0), (40, -3.0, 0.1), (333, 1e3, 20.0))]


def test_row_stats_combine_and_remove_as_numpy():
    parts = _parts()
    whole = np.concatenate(parts)
    total = RowStats.empty(D)
    for p in parts:
        total = total + RowStats.of(p)
    assert total.count == len(whole)
    np.testing.assert_allclose(total.mean, whole.mean(0), rtol=1e-13)
    np.testing.assert_allclose(total.var, whole.var(0), rtol=1e-10)
    rest = total - RowStats.of(parts[2])  # the statistics of a split: the totals less the other rows
    np.testing.assert_allclose(rest.mean, np.concatenate(parts[:2]).mean(0), rtol=1e-9)
    np.testing.assert_allclose(rest.var, np.concatenate(parts[:2]).var(0), rtol=1e-6)
    assert (total - total).count == 0 and (total + RowStats.empty(D)) is total
    with pytest.raises(ValueError, match="cannot remove"):
        RowStats.of(parts[0]) - total
    np.testing.assert_allclose(row_norms(torch.from_numpy(whole)).numpy(), np.linalg.norm(whole, axis=1), rtol=1e-6)


def _write(path, batches, dtype: str, with_stats: bool = False):
    spec = StoreSpec("m", "r", D, 2, ["0", "1"], {"x": 1}, dtype=dtype)
    with StoreWriter(path, spec) as w:
        for h in batches:
            lens = [len(h) // 2, len(h) - len(h) // 2]
            hidden = {"0": h, "1": -2 * h}
            stats = norms = None
            if with_stats:  # as an extraction hands them over: computed on the device, values as stored
                stored = {k: torch.from_numpy(v).to(getattr(torch, dtype)) for k, v in hidden.items()}
                stats = {k: RowStats.of(v) for k, v in stored.items()}
                norms = {k: row_norms(v).numpy() for k, v in stored.items()}
            w.append(Batch([np.zeros(t, np.int64) for t in lens], [np.zeros(t, bool) for t in lens], hidden,
                           [{"prompt_id": str(i)} for i in range(2)], stats, norms))
    return path


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_store_statistics_equal_numpy_and_the_devices(tmp_path, dtype):
    batches = [p.astype(np.float32) for p in _parts(1)]
    own = _write(tmp_path / "own.h5", batches, dtype)
    given = _write(tmp_path / "given.h5", batches, dtype, with_stats=True)
    with open_store(own) as a, open_store(given) as b:
        for layer in ("0", "1"):
            assert_stats_are_numpys(a, layer)
            np.testing.assert_allclose(a.layer_stats(layer).mean, b.layer_stats(layer).mean, rtol=1e-12)
            np.testing.assert_allclose(a.h5[f"norms/{layer}"][:], b.h5[f"norms/{layer}"][:], rtol=1e-6)
        assert len(a.stats_lines()) == 2 and "row norm p1/p50/p99" in a.stats_lines()[0]


def test_a_half_written_slot_is_ignored_and_an_old_store_gets_its_statistics_on_resume(tmp_path):
    batches = [p.astype(np.float32) for p in _parts(2)]
    path = _write(tmp_path / "s.h5", batches[:2], "float16")
    with h5py.File(path, "a") as f:  # a crash after the next commit's slot was written, before n_committed moved
        n = int(f.attrs["n_committed"])
        spare = int(np.flatnonzero(f["stats/n_committed"][:] != n)[0])
        f["stats/n_committed"][spare] = n + 2
        f["stats/0/mean"][spare] = np.nan
    with open_store(path) as s:
        assert_stats_are_numpys(s, "0")
    old = shutil.copy(path, tmp_path / "old.h5")
    with h5py.File(old, "a") as f:  # as written before the store kept statistics
        del f["stats"], f["norms"]
    with open_store(old) as s:
        assert s.layer_stats("0") is None and s.norm_quantiles("0") is None and s.stats_lines() == []
        mean, std = data.standardization_stats(old, ["0"])  # a pass over the rows instead
        x = s.hidden_dataset("0")[:].astype(np.float64)
        np.testing.assert_allclose(mean.numpy(), x.mean(0), rtol=1e-6)
    _write(old, batches[2:], "float16")  # resuming adds them for the rows already there, then keeps them
    with open_store(old) as s:
        assert s.n_sequences == 6
        for layer in ("0", "1"):
            assert_stats_are_numpys(s, layer)


def test_standardisation_is_a_read_plus_a_pass_over_the_rows_left_out(tmp_path, monkeypatch):
    path = _write(tmp_path / "s.h5", [p.astype(np.float32) for p in _parts(3)], "float16")
    passes = []
    real = data._pass_stats
    monkeypatch.setattr(data, "_pass_stats", lambda store, name, rows, checked=None:
                        passes.append(int(rows.sum())) or real(store, name, rows, checked))
    with open_store(path) as s:
        x = s.hidden_dataset("0")[:].astype(np.float64)
        offsets = s.offsets.copy()
    mean, std = data.standardization_stats(path, ["0"])
    assert passes == []  # all sequences: a read
    np.testing.assert_allclose(mean.numpy(), x.mean(0), rtol=1e-6)
    train = [0, 1, 2, 3, 5]  # the held-out sequence 4 is read, the rest is the store's totals less it
    mean, std = data.standardization_stats(path, ["0"], train, check_sequences=[4])
    rows = data.sequence_rows(offsets, train)
    assert passes == [int((~rows).sum())]
    np.testing.assert_allclose(mean.numpy(), x[rows].mean(0), rtol=1e-5)
    np.testing.assert_allclose(std.numpy(), x[rows].std(0) + 1e-6, rtol=1e-5)
