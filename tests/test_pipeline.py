"""Length-aware batching, windows in prompt order, and the background writer of the extraction pipeline."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from activation_cache.batching import padding_share, plan_windows
from activation_cache.errors import InputError
from activation_cache.extraction import ExtractConfig, extract, plan
from activation_cache.models import load_model
from activation_cache.pipeline import BackgroundWriter
from activation_cache.reader import open_store
from activation_cache.writer import StoreWriter
from tiny_models import save_tiny_model

RNG = np.random.default_rng(0)
LENGTHS = [int(x) for x in RNG.integers(3, 60, size=97)]
MIXED = [" ".join(["word"] * int(n)) for n in RNG.integers(1, 40, size=30)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = save_tiny_model("llama", tmp_path_factory.mktemp("pipeline") / "tiny-llama")
    return path, load_model(str(path))


# --------------------------------------------------------------------------- planning
def test_fixed_size_windows_are_the_batches_in_order():
    windows = list(plan_windows(LENGTHS, 5, batch_size=8))
    assert [(w.start, w.stop) for w in windows] == [(lo, min(lo + 8, 97)) for lo in range(5, 97, 8)]
    assert all(w.batches == (tuple(range(w.start, w.stop)),) and w.in_prompt_order for w in windows)


@pytest.mark.parametrize("generate", [0, 7])
def test_token_budget_windows_cover_every_prompt_once_within_budget(generate):
    windows = list(plan_windows(LENGTHS, 0, batch_tokens=128, generate=generate, window_tokens=400))
    assert windows[0].start == 0 and windows[-1].stop == len(LENGTHS)
    assert all(a.stop == b.start for a, b in zip(windows, windows[1:]))  # contiguous, in prompt order
    for w in windows:
        assert sum(LENGTHS[w.start:w.stop]) <= 400 or w.stop - w.start == 1
        flat = sorted(i for b in w.batches for i in b)
        assert flat == list(range(w.start, w.stop))
        for b in w.batches:
            width = max(LENGTHS[i] for i in b) + generate
            assert width * len(b) <= 128 or len(b) == 1
            assert [LENGTHS[i] for i in b] == sorted(LENGTHS[i] for i in b)
    # A resume starts at a window end and plans the same windows from there on.
    for k in (1, 3):
        assert list(plan_windows(LENGTHS, windows[k].start, batch_tokens=128, generate=generate,
                                 window_tokens=400)) == windows[k:]


def test_length_grouping_cuts_the_padding():
    fixed = [b for w in plan_windows(LENGTHS, batch_size=8) for b in w.batches]
    grouped = [b for w in plan_windows(LENGTHS, batch_tokens=256, window_tokens=2000) for b in w.batches]
    assert padding_share(grouped, LENGTHS) < 0.5 * padding_share(fixed, LENGTHS)
    assert padding_share([(0,)], LENGTHS) == 0.0


# --------------------------------------------------------------------------- the background writer
def test_background_writer_keeps_order_and_hands_back_the_first_failure():
    seen = []
    w = BackgroundWriter(seen.append, depth=2)
    for i in range(20):
        w.submit(i)
    w.close()
    assert seen == list(range(20))

    gate = threading.Event()

    def write(item):
        gate.wait(5)
        if item == 1:
            raise OSError("disk on fire")
        seen.append(item)

    seen.clear()
    w = BackgroundWriter(write, depth=1)
    w.submit(0)
    w.submit(1)
    gate.set()
    with pytest.raises(OSError, match="disk on fire"):
        for i in range(2, 100):  # the failure surfaces at a later submit...
            w.submit(i)
            time.sleep(0.01)
    with pytest.raises(OSError, match="disk on fire"):  # ...and again at close
        w.close()
    assert seen == [0]  # nothing after the failed item was written

    inline = BackgroundWriter(write, threaded=False)  # CPU models: written at once, failures raised at once
    seen.clear()
    inline.submit(0)
    assert seen == [0]
    with pytest.raises(OSError, match="disk on fire"):
        inline.submit(1)
    inline.close()


# --------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("generate", [0, 4])
def test_batch_tokens_store_equals_fixed_batches_in_prompt_order(llama, tmp_path, generate):
    path, loaded = llama
    common = dict(prompts=MIXED, model=str(path), generate=generate, embed=True, dtype="float32")
    ref = tmp_path / "fixed.h5"
    extract(ExtractConfig(out=str(ref), batch_size=4, **common), loaded=loaded, progress=False)
    out = tmp_path / "tokens.h5"
    extract(ExtractConfig(out=str(out), batch_tokens=96, pipeline=True, **common), loaded=loaded, progress=False)
    with open_store(out) as s, open_store(ref) as r:
        assert s.meta_column("prompt_id") == r.meta_column("prompt_id")
        np.testing.assert_array_equal(s.offsets, r.offsets)
        np.testing.assert_array_equal(s.h5["tokens"][:], r.h5["tokens"][:])
        np.testing.assert_array_equal(s.h5["generated"][:], r.h5["generated"][:])
        for layer in s.layers:  # other batch shapes: float32 reduction order only
            np.testing.assert_allclose(s.h5[f"hidden/{layer}"][:], r.h5[f"hidden/{layer}"][:], rtol=1e-4, atol=1e-5)
        assert s.config["batch_tokens"] == 96 and r.config["batch_tokens"] is None
    p_fixed = plan(ExtractConfig(out=str(tmp_path / "p.h5"), batch_size=4, **common), loaded=loaded)
    p_tokens = plan(ExtractConfig(out=str(tmp_path / "p.h5"), batch_tokens=96, **common), loaded=loaded)
    assert p_tokens.padding_share < p_fixed.padding_share
    assert "padding:" in p_tokens.describe() and "write-path memory: at most" in p_tokens.describe()


def test_a_failure_on_the_writer_thread_stops_the_run_and_keeps_the_commits(llama, tmp_path, monkeypatch):
    # A real I/O error (file-size limit) is the subprocess test in test_cli_extract: an HDF5 file whose
    # writes failed cannot be closed, so it is not provoked in this process.
    path, loaded = llama
    calls = []
    real = StoreWriter._append

    def failing(self, batch):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("writer thread failed")
        real(self, batch)

    monkeypatch.setattr(StoreWriter, "_append", failing)
    out = tmp_path / "s.h5"
    with pytest.raises(ValueError, match="writer thread failed"):
        extract(ExtractConfig(prompts=MIXED, out=str(out), model=str(path), batch_size=4, pipeline=True),
                loaded=loaded, progress=False)
    assert len(calls) == 3  # nothing was written after the failure
    monkeypatch.setattr(StoreWriter, "_append", real)
    with open_store(out) as s:
        assert s.n_sequences == 8 and s.meta_column("prompt_id") == [f"prompts:{i}" for i in range(1, 9)]
    res = extract(ExtractConfig(prompts=MIXED, out=str(out), model=str(path), batch_size=4), loaded=loaded, progress=False)
    assert res.resumed and res.new_sequences == len(MIXED) - 8


def test_non_finite_rows_found_on_the_writer_thread_name_their_prompts(llama, tmp_path, monkeypatch):
    from activation_cache import pipeline

    path, loaded = llama
    real = pipeline.stored_rows
    calls = []

    def poisoned(batch, dtype):
        calls.append(1)
        if len(calls) == 2:
            batch.hidden["0"][0, 0] = float("inf")
        return real(batch, dtype)

    monkeypatch.setattr("activation_cache.extraction.stored_rows", poisoned)
    with pytest.raises(InputError, match=r"non-finite hidden states \(inf/NaN\) at layer 0 in batch \[prompts:5, prompts:6, prompts:7, prompts:8\]"):
        extract(ExtractConfig(prompts=MIXED, out=str(tmp_path / "s.h5"), model=str(path), batch_size=4, pipeline=True),
                loaded=loaded, progress=False)
    with open_store(tmp_path / "s.h5") as s:
        assert s.n_sequences == 4
