"""Who this process is in a job that torchrun or SLURM started, and how the ranks meet.

:func:`detect_rank` reads the launcher's environment (no launcher of our own);
:func:`batch_shard` gives a rank its whole batches of a list; :func:`barrier`
and :func:`all_gather` meet the other torchrun ranks on a gloo group made once
per process on torchrun's rendezvous. Light on purpose: steering and the
sycophancy tracing import it without the extraction machinery.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch

from activation_cache.errors import InputError, option

__all__ = ["Rank", "all_gather", "barrier", "batch_shard", "detect_rank", "rank_device", "require_torchrun"]


@dataclass(frozen=True)
class Rank:
    """This process's place in a distributed extraction."""

    rank: int
    world_size: int
    local_rank: int
    launcher: str  # "torchrun", "slurm" or "slurm-array"


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except (KeyError, ValueError):
        raise InputError(f"environment variable {key}={env.get(key)!r} is not an integer") from None


def detect_rank(distributed: bool = False, env: Mapping[str, str] | None = None) -> Rank | None:
    """The rank torchrun or SLURM gave this process, or None for a plain run.

    torchrun's variables count always; SLURM's only with ``distributed``
    (``--distributed``), since a command inside any SLURM job sees them.

    Raises:
        InputError: ``distributed`` without any launcher's variables, or inconsistent values.
    """
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env and "RANK" in env:
        rank = Rank(_int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
                    "torchrun")
    elif not distributed:
        return None
    elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = _int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        rank = Rank(_int(env, "SLURM_ARRAY_TASK_ID") - first, _int(env, "SLURM_ARRAY_TASK_COUNT"), 0, "slurm-array")
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank = Rank(_int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS"),
                    _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0, "slurm")
    else:
        raise InputError(f"{option('distributed', True)} needs a launcher: run under torchrun, srun "
                         "(SLURM_PROCID/SLURM_NTASKS) or a SLURM job array (SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT)")
    if not (rank.world_size >= 1 and 0 <= rank.rank < rank.world_size):
        raise InputError(f"{rank.launcher}: rank {rank.rank} is not in 0..{rank.world_size - 1}")
    return rank


def rank_device(device: str | None, rank: Rank) -> str | None:
    """Each rank on its own GPU: ``auto`` / ``cuda`` become ``cuda:<local rank>`` when CUDA is there."""
    text = "auto" if device is None else str(device).strip().lower()
    if text in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{rank.local_rank % torch.cuda.device_count()}"
    return device


def require_torchrun(rank: Rank | None, what: str) -> None:
    """Refuse a SLURM rank for ``what``, a job whose stages wait for each other (torchrun's ranks run together)."""
    if rank is not None and rank.launcher != "torchrun":
        raise InputError(f"{what} shards only under torchrun (its stages wait for every rank); on SLURM, start it "
                         "with srun torchrun --nnodes $SLURM_NNODES ... instead of a job array or plain srun")


def batch_shard(n: int, batch_size: int, rank: Rank | None) -> slice:
    """This rank's contiguous share of ``n`` items in whole batches of ``batch_size``.

    Whole batches keep each batch the one a single process would run, so the
    ranks together compute exactly what one process computes.
    """
    if rank is None or rank.world_size == 1:
        return slice(0, n)
    n_batches = -(-n // batch_size)
    lo, hi = (rank.rank * n_batches // rank.world_size, (rank.rank + 1) * n_batches // rank.world_size)
    return slice(min(lo * batch_size, n), min(hi * batch_size, n))


def barrier(rank: Rank | None) -> None:
    """Wait for every torchrun rank (no-op for a plain run, one rank, or SLURM ranks)."""
    if rank is not None and rank.launcher == "torchrun" and rank.world_size > 1:
        _group().barrier()


def all_gather(obj, rank: Rank | None) -> list:
    """Every rank's ``obj`` (picklable, built by this code), in rank order; ``[obj]`` for a plain run."""
    if rank is None or rank.world_size == 1:
        return [obj]
    require_torchrun(rank, "gathering results")
    out: list = [None] * rank.world_size
    _group().all_gather_object(out, obj)
    return out


def _group():
    """torch.distributed with a gloo group on torchrun's rendezvous, made once per process."""
    import torch.distributed as dist

    if not dist.is_initialized():  # a shard of a 70B model may take a day longer than another: wait as long as it takes
        dist.init_process_group("gloo", timeout=timedelta(days=7))
        atexit.register(_destroy)
    return dist


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
