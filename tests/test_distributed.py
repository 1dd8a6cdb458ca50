"""Distributed extraction under torchrun (CPU): shards per rank, merge by the last rank, resume, world-size guard."""

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

from activation_cache.distributed import detect_rank, shard_path
from activation_cache.ranks import Rank, all_gather, batch_shard, require_torchrun
from activation_cache.errors import InputError
from activation_cache.extraction import ExtractConfig, extract
from activation_cache.reader import open_store
from file_checks import file_digests
from tiny_models import save_tiny_model

BIN = Path(sys.executable).parent
N = 120


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    model = save_tiny_model("llama", root / "tiny-llama")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i:03d}", "text": f"What is {i} + {2 * i}? " * (1 + i % 3)}) + "\n"
                               for i in range(N)))
    return root, model, prompts


def _cmd(model, prompts, out, nproc, *extra):
    return [str(BIN / "torchrun"), "--nproc-per-node", str(nproc), "--standalone",
            str(BIN / "ret-extract"), "--model", str(model), "--prompts", str(prompts), "--out", str(out),
            "--generate", "6", "--batch-size", "2", "--embed", "--quiet", *extra]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _content(path):
    with open_store(path) as s:
        return (s.meta_column("prompt_id"), s.offsets.copy(), s.h5["tokens"][: s.n_tokens], s.h5["generated"][: s.n_tokens],
                {layer: s.hidden_dataset(layer)[: s.n_tokens] for layer in s.layers})


def _assert_same(a, b):
    assert a[0] == b[0]
    for x, y in zip(a[1:4], b[1:4]):
        np.testing.assert_array_equal(x, y)
    assert a[4].keys() == b[4].keys()
    for k in a[4]:
        np.testing.assert_array_equal(a[4][k], b[4][k])


def test_ranks_come_from_torchrun_and_slurm_variables():
    assert detect_rank(env={}) is None
    assert detect_rank(env={"SLURM_PROCID": "1", "SLURM_NTASKS": "4"}) is None  # SLURM counts only with --distributed
    r = detect_rank(env={"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (r.rank, r.world_size, r.local_rank, r.launcher) == (1, 2, 1, "torchrun")
    r = detect_rank(True, env={"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1"})
    assert (r.rank, r.world_size, r.local_rank, r.launcher) == (3, 4, 1, "slurm")
    r = detect_rank(True, env={"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "5",
                               "SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    assert (r.rank, r.world_size, r.launcher) == (2, 4, "slurm-array")
    with pytest.raises(InputError, match="needs a launcher"):
        detect_rank(True, env={})
    with pytest.raises(InputError, match="rank 4 is not in 0..3"):
        detect_rank(True, env={"SLURM_PROCID": "4", "SLURM_NTASKS": "4"})
    with pytest.raises(InputError, match="SLURM_NTASKS='x' is not an integer"):
        detect_rank(True, env={"SLURM_PROCID": "0", "SLURM_NTASKS": "x"})


def test_batch_shards_are_whole_batches_that_cover_every_item_once():
    for n, batch, world in [(7, 2, 3), (5, 2, 2), (1, 4, 3), (40, 8, 4), (9, 1, 4)]:
        parts = [batch_shard(n, batch, Rank(r, world, r, "torchrun")) for r in range(world)]
        assert [i for p in parts for i in range(n)[p]] == list(range(n)), (n, batch, world)
        assert all(p.start % batch == 0 for p in parts)  # each rank's batches are the ones one process runs
    assert batch_shard(7, 2, None) == slice(0, 7)
    assert all_gather({"a": 1}, None) == [{"a": 1}]
    require_torchrun(Rank(0, 2, 0, "torchrun"), "x")
    with pytest.raises(InputError, match="sycophancy tracing shards only under torchrun"):
        require_torchrun(Rank(0, 2, 0, "slurm-array"), "sycophancy tracing")


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(x) for x in (task / "children").read_text().split()]
    return kids


def _wait_for_a_commit(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            with open_store(path) as s:
                if s.n_sequences > 0:
                    return
        except InputError:
            pass
        time.sleep(0.02)
    raise AssertionError("no commit in time")


def test_torchrun_two_ranks_kill_one_relaunch_resumes_and_equals_one_process(setup, tmp_path, one_torch_thread):
    # one_torch_thread: the reference runs with one thread, as each torchrun rank does (OMP_NUM_THREADS=1)
    root, model, prompts = setup
    out = tmp_path / "dist.h5"
    proc = subprocess.Popen(_cmd(model, prompts, out, 2), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        _wait_for_a_commit(shard_path(out, 1, 2), proc)
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(max(workers), signal.SIGKILL)  # one rank dies; torchrun stops the other
    finally:
        proc.communicate(timeout=120)
    assert proc.returncode != 0 and not out.exists()
    with open_store(shard_path(out, 1, 2)) as s:
        assert 0 < s.n_sequences < N // 2

    p = subprocess.run(_cmd(model, prompts, out, 2), env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "resumed" in p.stdout and p.stdout.count(f"all 2 shards complete: wrote {out}") >= 1

    ref = tmp_path / "one.h5"
    extract(ExtractConfig(prompts=str(prompts), out=str(ref), model=str(model), generate=6, batch_size=2, embed=True),
            progress=False)
    _assert_same(_content(out), _content(ref))
    with open_store(out) as s:
        assert s.config["merged_from"] == [f"dist.shards/0000{i}-of-00002.h5" for i in range(2)]

    # Another world size would split the prompts differently: refused, nothing touched.
    before = file_digests(tmp_path)
    p = subprocess.run(_cmd(model, prompts, out, 3), env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode != 0
    assert "holds the shards of a 2-rank run, and this one has 3 ranks: relaunch with 2 ranks" in p.stderr
    assert p.stderr.count("ret-extract: error: ") == 3  # one line per rank; torchrun then reports the failed ranks
    assert "activation_cache" not in p.stderr  # no traceback through our code
    assert file_digests(tmp_path) == before
