"""The settings of a ``ret-planning`` run: what it analyses (:class:`PlanningInputs`) and the probes' sizes (:class:`ProbeSettings`).

Each field is a ``ret-planning`` flag of the same name. Import-light: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from activation_cache.settings import (compression_setting, device_map_setting, device_setting, dtype_setting,
                                       model_dtype_setting, setting)

#: The synthetic tasks the planning analyses know.
TASKS = ("pathfinding", "grammar")


@dataclass(frozen=True)
class PlanningInputs:
    """What ``ret-planning`` analyses and writes, and where its model runs (the flags besides :class:`ProbeSettings`).

    model: a task model directory (``ret-train task``). task: its task. path_nodes:
    path-finding's nodes per path. out: output directory. n: held-out samples traced.
    """

    model: str = setting(help="model directory from ret-train task (or any GPT-style transformers dir)")
    task: str = setting(help="the synthetic task the model was trained on", choices=TASKS)
    out: str = setting(help="output directory (created)")
    path_nodes: int = setting(4, "path-finding: nodes per path (4 short, 6 long)")
    n: int = setting(2000, "held-out task samples to trace")
    overwrite: bool = setting(False, "replace the results of a ret-planning run with other settings in --out")
    dtype: str = dtype_setting()
    compression: str | None = compression_setting()
    device: str | None = device_setting()
    model_dtype: str | None = model_dtype_setting()
    device_map: str | dict | None = device_map_setting()


@dataclass(frozen=True)
class ProbeSettings:
    """Sizes of the VQ probes and the resampling.

    prefix_positions: the prefix block is positions [T - prefix_positions, T) ...
    prefix_layers: ... at these layers (``ret-extract --layers`` syntax; default all blocks).
    max_tau: horizon τ = 1..max_tau (capped by what the sequences hold).
    history_block: positions per earlier block in the history heatmap;
    history_blocks: how many earlier blocks; history_groups: layer groups.
    max_train_blocks: probes trained at every position use a stride that keeps
        about this many training blocks (the codes are still computed everywhere).
    """

    prefix_positions: int = setting(4, "the prefix block: the last N positions of the prompt ...")
    prefix_layers: str = setting("all", "... at these layers (ret-extract --layers syntax; default all blocks)")
    max_tau: int = setting(10, "horizon: MI with the token tau = 1..N positions ahead")
    history_block: int = setting(4, "positions per earlier block of the history heatmap")
    history_blocks: int = setting(4, "earlier blocks of the history heatmap")
    history_groups: int = setting(2, "layer groups of the history heatmap")
    num_codes: int = setting(32, "codes of each VQ probe")
    epochs: int = setting(10, "epochs of each VQ probe")
    batch_size: int = setting(128, "blocks per VQ training batch")
    dim: int = setting(64, "width of each VQ probe")
    depth: int = setting(1, "hidden layers of each VQ probe's encoder")
    n_permutations: int = setting(200, "permutations of each MI's null", aliases=("--permutations",))
    n_boot: int = setting(200, "bootstrap resamples of each MI's CI", aliases=("--bootstrap",))
    n_buckets: int = setting(8, "node-index buckets (mod N) of the branch-awareness variables")
    max_train_blocks: int = setting(20000, "probes trained at every position keep about this many training blocks")
    seed: int = setting(0, "probe training, permutations and bootstrap")
