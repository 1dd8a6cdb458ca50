"""benchmarks/gpu_check.py: one line and exit 0 without CUDA; every step's code path on a CPU with --smoke."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run for real")
def test_without_cuda_it_says_so_in_one_line_and_exits_0():
    p = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 0 and p.stdout.strip().splitlines() == [
        "gpu_check: no CUDA device on this machine; nothing to check (exit 0)"]


def test_smoke_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "check.json"
    p = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], capture_output=True, text=True,
                       env=ENV, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip().splitlines()[-1].startswith("gpu_extract_vs_bare_forward: ")
    r = json.loads(out.read_text())
    assert r["failed"] == [] and r["smoke"] is True
    for mode in ("forward", "generate"):  # bf16 against float32: small, non-zero errors
        assert 0 < r["precision"][mode]["worst_token_relative_error"] < 0.05
    assert r["speed"]["allocated_growth_bytes"] == 0 and len(r["speed"]["ratios"]) == 2
    assert r["ret_bf16_epoch"]["finite_weights"] and r["steering"]["restored"]
    assert r["steering"]["tokens_changed"] > 0
    assert r["device_map"]["max_abs_difference_vs_single_device"] == 0
    assert r["ret_loader"]["windows"] > 0 and len(r["ret_loader"]["loader_share_of_step"]) == 2
    assert r["trace_memory"]["traces"] == 4


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_gpu_wheels_are_exactly_what_the_cuda_image_lacks():
    """`make gpu-wheels` downloads nnsight, plotly and jsonargparse (with LightningCLI's extras) and
    every package they need that the CUDA image lacks -- no more (an upgrade that adds one fails here)."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    root = SCRIPT.parents[1]
    lines = (root / "benchmarks" / "gpu_image.txt").read_text().splitlines()
    image = {_normalised(x.strip()) for x in lines if x.strip() and not x.startswith("#")}
    make = (root / "Makefile").read_text()
    listed = re.search(r"^GPU_WHEELS\s*:=\s*((?:.*\\\n)*.*)$", make, re.M)[1].replace("\\\n", " ").split()
    needed, todo = set(), ["nnsight", "plotly", "jsonargparse", "docstring_parser", "typeshed_client"]
    while todo:
        name = todo.pop()
        if _normalised(name) in image or _normalised(name) in needed:
            continue
        needed.add(_normalised(name))
        for text in requires(name) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    assert needed == {_normalised(x) for x in listed}, (sorted(needed), sorted(listed))
    assert {"torch", "transformers", "lightning", "h5py", "peft", "scikit-learn"} <= image
