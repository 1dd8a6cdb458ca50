"""Extraction over many processes, launched by an existing engine: torchrun or SLURM.

No launcher of our own: each process learns its rank from the environment of
the engine that started it,

- ``torchrun --nproc-per-node G ret-extract ...`` (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``), always;
- ``srun ret-extract --distributed ...`` (``SLURM_PROCID``, ``SLURM_NTASKS``,
  ``SLURM_LOCALID``) or a job array ``sbatch --array=0-N-1`` with
  ``ret-extract --distributed`` (``SLURM_ARRAY_TASK_ID`` /
  ``SLURM_ARRAY_TASK_COUNT`` / ``SLURM_ARRAY_TASK_MIN``), with the flag,

extracts its contiguous shard of the prompts into
``<out stem>.shards/<rank>-of-<world>.h5`` on its own device (``cuda:<local
rank>`` when the device is ``auto`` or ``cuda`` and CUDA is there). Then the
shards are merged into the virtual store ``--out``
(:func:`activation_cache.merge.merge_shards`):

- under torchrun the ranks meet at a barrier (a gloo process group on
  torchrun's rendezvous, no timeout worth speaking of) and rank 0 merges;
- under SLURM, whose tasks (array tasks above all) need not run at the same
  time, the rank that finds every shard complete merges. The merge goes
  through a temporary name and a rename, so two ranks finishing together both
  write the same file, and no lock is needed on a shared file system.

Relaunching the same command after any rank died resumes every shard; a
relaunch with another number of ranks is refused, because the shards would
split the prompts differently.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Mapping

import torch

from activation_cache import schema
from activation_cache.errors import InputError, option
from activation_cache.extract import ExtractConfig, ExtractResult, extract
from activation_cache.merge import merge_shards

__all__ = ["DistributedResult", "Rank", "detect_rank", "extract_distributed", "shard_path"]


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


def shard_dir(out: str | Path) -> Path:
    """``traj.h5`` -> ``traj.shards``: where the ranks of a distributed extraction write."""
    out = Path(out)
    return out.with_name(out.stem + ".shards")


def shard_path(out: str | Path, rank: int, world_size: int) -> Path:
    """The shard file of ``rank`` (``traj.shards/00001-of-00004.h5``)."""
    return shard_dir(out) / f"{rank:05d}-of-{world_size:05d}.h5"


_SHARD_NAME = re.compile(r"(\d{5})-of-(\d{5})\.h5$")


@dataclass
class DistributedResult:
    """What one rank did: its shard's :class:`ExtractResult`, and the merged store if this rank wrote it."""

    rank: Rank
    shard: ExtractResult
    merged: Path | None


def _rank_device(device: str | None, rank: Rank) -> str | None:
    """Each rank on its own GPU: ``auto`` / ``cuda`` become ``cuda:<local rank>`` when CUDA is there."""
    text = "auto" if device is None else str(device).strip().lower()
    if text in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{rank.local_rank % torch.cuda.device_count()}"
    return device


def _check_outputs(cfg: ExtractConfig, rank: Rank) -> None:
    """Refuse, before any write, shards of another world size and an ``--out`` that is not our merge."""
    folder, out = shard_dir(cfg.out), Path(cfg.out)
    if not out.resolve().parent.is_dir():
        raise InputError(f"output directory does not exist: {out.resolve().parent}")
    sizes = sorted({int(m[2]) for p in (folder.iterdir() if folder.is_dir() else []) if (m := _SHARD_NAME.match(p.name))})
    other = [k for k in sizes if k != rank.world_size]
    if other and not cfg.overwrite:
        raise InputError(f"{folder} holds the shards of a {other[0]}-rank run, and this one has {rank.world_size} "
                         f"ranks: relaunch with {other[0]} ranks to resume it, or pass {option('overwrite', True)} "
                         "to start over")
    if out.exists() and not cfg.overwrite and not _is_our_merge(out, folder):
        raise InputError(f"{out} exists and is not the merged store of {folder}; pass "
                         f"{option('overwrite', True)} to replace it or write to another path")


def _is_our_merge(out: Path, folder: Path) -> bool:
    try:
        with schema.open_h5(out, "r") as f:
            merged_from = json.loads(f.attrs["config_json"]).get("merged_from", [])
    except (InputError, OSError, KeyError, ValueError):
        return False
    return bool(merged_from) and all(Path(p).parent.name == folder.name for p in merged_from)


def _complete(path: Path) -> bool:
    try:
        with schema.open_h5(path, "r") as f:
            return int(f.attrs["n_committed"]) == int(json.loads(f.attrs["config_json"])["n_prompts"])
    except (InputError, OSError, KeyError, ValueError):
        return False


def extract_distributed(cfg: ExtractConfig, rank: Rank, loaded=None, progress: bool = True) -> DistributedResult:
    """Extract this rank's shard of ``cfg`` and, if every shard is complete, merge them into ``cfg.out``.

    ``cfg`` is the command as the user typed it (one ``out``, no manual
    sharding); the rank's shard, device and output path are derived here.
    """
    if cfg.num_shards != 1:
        raise InputError(f"{option('num_shards')} shards by hand; under a launcher every rank takes its shard "
                         f"itself, so leave {option('num_shards')} and {option('shard_index')} out")
    cfg.validate()
    _check_outputs(cfg, rank)
    folder = shard_dir(cfg.out)
    folder.mkdir(exist_ok=True)
    if cfg.overwrite and rank.rank == 0:  # shards of another world size would never be merged again
        for p in folder.iterdir():
            m = _SHARD_NAME.match(p.name)
            if m and int(m[2]) != rank.world_size:
                p.unlink(missing_ok=True)
    mine = replace(cfg, out=str(shard_path(cfg.out, rank.rank, rank.world_size)), num_shards=rank.world_size,
                   shard_index=rank.rank,
                   device=cfg.device if cfg.device_map is not None else _rank_device(cfg.device, rank))
    result = extract(mine, loaded=loaded, progress=progress)
    shards = [shard_path(cfg.out, r, rank.world_size) for r in range(rank.world_size)]
    merged = None
    if rank.launcher == "torchrun" and rank.world_size > 1:
        with _process_group():
            if rank.rank == 0:
                merged = merge_shards(cfg.out, shards, overwrite=True)
    elif all(_complete(p) for p in shards):
        merged = merge_shards(cfg.out, shards, overwrite=True)
    return DistributedResult(rank, result, merged)


@contextmanager
def _process_group():
    """A gloo group on torchrun's rendezvous: barrier on entry (every shard written) and on exit (merged)."""
    import torch.distributed as dist

    own = not dist.is_initialized()
    if own:  # a shard of a 70B model may take a day longer than another: wait as long as it takes
        dist.init_process_group("gloo", timeout=timedelta(days=7))
    try:
        dist.barrier()
        yield
        dist.barrier()
    finally:
        if own:
            dist.destroy_process_group()
