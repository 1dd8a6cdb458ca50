"""Crash safety: ``kill -9`` an extraction mid-run, rerun the same command, get the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from activation_cache.errors import InputError
from activation_cache.batching import plan_windows
from activation_cache.extraction import ExtractConfig, extract, prepare, window_tokens
from activation_cache.models import load_model
from activation_cache.reader import open_store
from stats_checks import assert_stats_are_numpys
from tiny_models import save_tiny_model

RET_EXTRACT = str(Path(sys.executable).with_name("ret-extract"))
N_PROMPTS = 200


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _wait_for_commit(out: Path, proc: subprocess.Popen, timeout: float = 240.0) -> int:
    """Poll the store (SWMR reader) until the running writer has committed something."""
    deadline = time.monotonic() + timeout
    store = None
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"extraction ended before it could be killed: {proc.communicate()}"
            if store is None:
                try:
                    store = open_store(out)  # fails while the file is being created: retry
                except InputError:
                    time.sleep(0.005)
                    continue
            if store.refresh() > 0:
                return store.n_sequences
            time.sleep(0.005)
    finally:
        if store is not None:
            store.close()
    raise AssertionError("no commit within the timeout")


@pytest.mark.parametrize("batching", [{"batch_size": 2}, {"batch_tokens": 64, "pipeline": True}],
                         ids=["batch-size", "batch-tokens-pipelined"])
def test_kill_9_then_rerun_equals_uninterrupted_run(tmp_path, batching):
    model = save_tiny_model("llama", tmp_path / "tiny-llama")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(
        json.dumps({"id": f"q{i:03d}", "text": f"What is {i} + {2 * i}? " * (1 + i % 3), "group": i % 5}) + "\n"
        for i in range(N_PROMPTS)))
    out = tmp_path / "crashed.h5"
    cmd = [RET_EXTRACT, "--model", str(model), "--prompts", str(prompts), "--out", str(out),
           "--generate", "8", "--embed", "--quiet"]
    for key, value in batching.items():
        cmd += [f"--{key.replace('_', '-')}", "on" if value is True else str(value)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = _wait_for_commit(out, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # kill -9, mid-run
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert seen > 0

    # What survived is readable as is: only whole, committed windows (batches).
    cfg = ExtractConfig(prompts=str(prompts), out=str(tmp_path / "uninterrupted.h5"), model=str(model), generate=8,
                        embed=True, **batching)
    loaded = load_model(str(model))
    prep = prepare(cfg, loaded)
    ends = {w.stop for w in plan_windows([len(r) for r in prep.ids], 0, batch_size=cfg.batch_size,
                                         batch_tokens=cfg.batch_tokens, generate=8,
                                         window_tokens=window_tokens(cfg, len(prep.layers), loaded.arch.d_model))}
    assert len(ends) > 4  # several commits to be killed between
    with open_store(out) as s:
        n_killed = s.n_sequences
        assert seen <= n_killed < N_PROMPTS and n_killed in ends
        assert s.meta_column("prompt_id") == [f"q{i:03d}" for i in range(n_killed)]

    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)  # the same command again
    assert p.returncode == 0, p.stderr
    assert "resumed" in p.stdout and f"{N_PROMPTS} sequences" in p.stdout

    ref = Path(cfg.out)
    extract(cfg, loaded=loaded, progress=False)

    with open_store(out) as s, open_store(ref) as r:
        # every prompt exactly once, in order
        assert s.n_sequences == r.n_sequences == N_PROMPTS
        assert s.meta_column("prompt_id") == [f"q{i:03d}" for i in range(N_PROMPTS)]
        assert s.layers == r.layers == ["embed", "0", "1"]
        np.testing.assert_array_equal(s.offsets, r.offsets)
        assert s.n_tokens == r.n_tokens
        for name in ("tokens", "generated"):
            np.testing.assert_array_equal(s.h5[name][:], r.h5[name][:])  # trimmed, so whole datasets match
        for layer in s.layers:
            np.testing.assert_array_equal(s.h5[f"hidden/{layer}"][:], r.h5[f"hidden/{layer}"][:])
        for field in r.meta_fields:
            assert s.meta_column(field) == r.meta_column(field)
        assert s.meta_fields == r.meta_fields
        assert s.config == r.config
        assert int(s.h5["generated"][:].sum()) > 0
        for layer in s.layers:  # the running statistics: numpy's, and the uninterrupted run's to the bit
            assert_stats_are_numpys(s, layer)
            kept, uninterrupted = s.layer_stats(layer), r.layer_stats(layer)
            np.testing.assert_array_equal(kept.mean, uninterrupted.mean)
            np.testing.assert_array_equal(kept.m2, uninterrupted.m2)
            np.testing.assert_array_equal(s.h5[f"norms/{layer}"][:], r.h5[f"norms/{layer}"][:])


def test_kill_9_during_overwrite_keeps_the_old_store_and_the_rerun_resumes_the_new_one(tmp_path):
    """``--overwrite`` builds the new store beside the old one: a kill leaves the old one byte-identical."""
    import hashlib

    from activation_cache.writer import staging_path

    model = save_tiny_model("llama", tmp_path / "tiny-llama")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i:03d}", "text": f"What is {i} + {2 * i}? " * (1 + i % 3)})
                               + "\n" for i in range(N_PROMPTS)))
    out = tmp_path / "store.h5"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    base = [RET_EXTRACT, "--model", str(model), "--prompts", str(prompts), "--out", str(out), "--quiet"]
    subprocess.run(base + ["--limit", "3"], env=env, check=True, capture_output=True, timeout=300)
    old = hashlib.sha256(out.read_bytes()).hexdigest()

    cmd = base + ["--generate", "8", "--batch-size", "2", "--overwrite"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = _wait_for_commit(staging_path(out), proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    assert seen > 0 and hashlib.sha256(out.read_bytes()).hexdigest() == old  # the old store, untouched
    with open_store(out) as s:
        assert s.n_sequences == 3

    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)  # the same command again
    assert p.returncode == 0, p.stderr
    assert "resumed" in p.stdout and f"{N_PROMPTS} sequences" in p.stdout
    assert not staging_path(out).exists()
    with open_store(out) as s:
        assert s.n_sequences == N_PROMPTS and s.config["generate"] == 8
        assert s.meta_column("prompt_id") == [f"q{i:03d}" for i in range(N_PROMPTS)]
