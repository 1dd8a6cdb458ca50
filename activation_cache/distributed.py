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

The generation-heavy jobs shard the same way under torchrun: the sycophancy
tracing of ``ret-forecast`` extracts each turn with
:func:`extract_distributed` and meets at :func:`barrier` between turns (turn 2
is built from turn 1's merged replies), and the α sweep of ``ret-steer``
gives each rank whole batches of prompts (:func:`batch_shard`) and collects
the scores with :func:`all_gather`. Their stages depend on each other, so they
need ranks that run at the same time: torchrun (``srun torchrun ...`` on a
cluster), not a job array (:func:`require_torchrun`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from activation_cache import schema
from activation_cache.errors import InputError, option
from activation_cache.extraction import ExtractConfig, ExtractResult, extract
from activation_cache.merge import merge_shards
from activation_cache.ranks import Rank, barrier, detect_rank, rank_device

__all__ = ["DistributedResult", "Rank", "detect_rank", "extract_distributed", "shard_config", "shard_path"]


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


def shard_config(cfg: ExtractConfig, rank: Rank) -> ExtractConfig:
    """The extraction ``rank`` runs for ``cfg``: its shard of the prompts, its shard file, its device."""
    return replace(cfg, out=str(shard_path(cfg.out, rank.rank, rank.world_size)), num_shards=rank.world_size,
                   shard_index=rank.rank,
                   device=cfg.device if cfg.device_map is not None else rank_device(cfg.device, rank))


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
    result = extract(shard_config(cfg, rank), loaded=loaded, progress=progress)
    shards = [shard_path(cfg.out, r, rank.world_size) for r in range(rank.world_size)]
    merged = None
    if rank.launcher == "torchrun" and rank.world_size > 1:
        barrier(rank)  # every shard written
        if rank.rank == 0:
            merged = merge_shards(cfg.out, shards, overwrite=True)
        barrier(rank)  # merged: every rank may read cfg.out now
    elif all(_complete(p) for p in shards):
        merged = merge_shards(cfg.out, shards, overwrite=True)
    return DistributedResult(rank, result, merged)
