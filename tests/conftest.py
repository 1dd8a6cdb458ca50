"""Shared test set-up: offline hub, tests/ on the path, the one-thread fixture."""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a whole test module, restored after it.

    Tiny models run thousands of microsecond ops: with 2 intra-op threads on a busy
    2-core machine, thread hand-offs make them 5-40x slower. One thread is fast and
    deterministic (subprocesses get OMP_NUM_THREADS=1 for the same reason). Use it
    with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
