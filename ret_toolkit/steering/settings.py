"""The settings of steered generation: how text is generated (:class:`GenerationSettings`, shared by
:func:`~ret_toolkit.steering.generate.generate`, the α sweep and the closed loop), what ``ret-steer``
steers with, on which prompts (:class:`SteerSettings`), and how a contrastive vector averages
its texts (:class:`ContrastSettings`).

Each field of the first two is a ``ret-steer`` flag of the same name. Import-light: no torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from activation_cache.errors import InputError, option
from activation_cache.settings import (chat_template_setting, device_map_setting, device_setting,
                                       int_tuple, model_dtype_setting, model_setting, setting)

#: Where an open-loop vector is added.
POSITIONS = ("all", "prompt", "generated")


def float_tuple(text: str) -> tuple[float, ...]:
    """``"0,0.1,0.2"`` -> ``(0.0, 0.1, 0.2)``; ValueError when empty, not numbers or not finite."""
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError("expected comma-separated numbers like 0,0.25,0.5") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError("every value must be a finite number (comma-separated, like 0,0.25,0.5)")
    return values


@dataclass(frozen=True)
class GenerationSettings:
    """How continuations are generated, steered or not.

    max_new_tokens: tokens generated per prompt (cut at the first EOS). batch_size:
    prompts per ``generate`` call. sample: sample instead of greedy decoding (torch
    is reseeded with ``seed`` first, so every α of a sweep draws the same stream).
    chat: wrap plain-text prompts as one user turn through the chat template.
    positions: where an open-loop vector is added: ``all``, ``prompt`` or ``generated``.
    """

    max_new_tokens: int = setting(40, "tokens generated per prompt (default 40)")
    batch_size: int = setting(8, "prompts per generate call (default 8)")
    sample: bool = setting(False, "sample instead of greedy decoding")
    seed: int = setting(0, "sampling seed (torch is reseeded before each α)")
    chat: bool = setting(True, "wrap plain-text prompts as one chat user turn (default, like ret-demo); "
                               "--no-chat feeds them as they are")
    positions: str = setting("all", "where the vector is added: all (default), prompt or generated positions",
                             choices=POSITIONS)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise InputError(f"{option('max_new_tokens')} and {option('batch_size')} must be >= 1, got "
                             f"{self.max_new_tokens}, {self.batch_size}")
        if self.positions not in POSITIONS:
            raise InputError(f"{option('positions')} must be one of {', '.join(POSITIONS)}, got {self.positions!r}")

    @classmethod
    def of(cls, settings: GenerationSettings | None, overrides: Mapping[str, Any]) -> GenerationSettings:
        """``settings`` (default: the defaults) with ``overrides`` (field names, as keywords of a generate call)."""
        return _with_overrides(cls, settings, overrides, "generation settings")


def _with_overrides(cls, settings, overrides: Mapping[str, Any], what: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r} ({what}: {', '.join(sorted(names))})")
    return dataclasses.replace(settings or cls(), **overrides)


#: How :func:`~ret_toolkit.steering.construct.from_contrast` rescales the difference of means.
SCALES = ("median", "mean", None)


@dataclass(frozen=True)
class ContrastSettings:
    """How :func:`~ret_toolkit.steering.construct.from_contrast` averages its texts.

    scale: rescale the difference to the ``"median"`` (default) or ``"mean"`` token
    norm at each layer, or ``None`` for the raw difference. skip_first: positions
    left out at the start of every text (attention sinks; default 1). batch_size:
    texts per forward pass. max_length: truncate longer texts (tokens; ``None``: never).
    """

    scale: str | None = "median"
    skip_first: int = 1
    batch_size: int = 8
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise InputError(f"scale must be 'median', 'mean' or None; got {self.scale!r}")
        if self.batch_size < 1 or self.skip_first < 0:
            raise InputError(f"need batch_size >= 1 and skip_first >= 0; got {self.batch_size}, {self.skip_first}")

    @classmethod
    def of(cls, settings: ContrastSettings | None, overrides: Mapping[str, Any]) -> ContrastSettings:
        """``settings`` (default: the defaults) with ``overrides`` (field names, as keywords)."""
        return _with_overrides(cls, settings, overrides, "contrast settings")


@dataclass(frozen=True)
class SteerSettings:
    """What ``ret-steer`` steers with, on which prompts, and what it writes (with :class:`GenerationSettings`).

    vector: a saved steering vector; or ret (a ret-demo / ret-macro directory) with group:
    the vector of that macrostate group (layers: its decoder blocks, default the RET layer;
    store: the store it is built from, default the one the macrostates were made from;
    save_vector: keep it). prompt / prompts / limit: the prompts. alpha: steering
    coefficient. baseline: also the unsteered text. detect / when: closed loop.
    sweep / alphas / out / max_ppl_ratio: the α sweep. model and placement as elsewhere.
    """

    vector: str | None = setting(None, "saved steering vector (PATH.safetensors + PATH.json)", metavar="PATH",
                                 group="what to steer with (one of --vector / --group)")
    ret: str | None = setting(None, "ret-demo / ret-macro output directory", metavar="DIR",
                              group="what to steer with (one of --vector / --group)")
    store: str | None = setting(None, "trajectory store for --group (default: the one recorded in DIR/macrostates.h5)",
                                group="what to steer with (one of --vector / --group)")
    group: int | None = setting(None, "RET group: build its vector (and the sweep's target group)",
                                group="what to steer with (one of --vector / --group)")
    layers: str | None = setting(None, "layer spec of the decoder blocks for the group vector, e.g. 15, -1 or middle "
                                       "(default: the RET layer; must be in the store)",
                                 group="what to steer with (one of --vector / --group)")
    save_vector: str | None = setting(None, "also save the group vector (PATH.safetensors + PATH.json)",
                                      metavar="PATH", group="what to steer with (one of --vector / --group)")
    overwrite: bool = setting(False, "replace a vector at --save-vector, or a sweep in --out, made with other settings",
                              group="what to steer with (one of --vector / --group)")
    prompt: tuple[str, ...] = setting((), "a prompt (repeatable)", repeat=True,
                                      group="prompts (one of --prompt / --prompts)")
    prompts: str | None = setting(None, "prompt file (.txt / .jsonl) or built-in set (reasoning, chat)",
                                  group="prompts (one of --prompt / --prompts)")
    limit: int | None = setting(None, "first N prompts of --prompts", metavar="N",
                                group="prompts (one of --prompt / --prompts)")
    model: str | None = model_setting("model spec (default: the embedded SmolLM2-135M-Instruct)")
    alpha: float = setting(0.5, "steering coefficient (default 0.5; the vector is as long as a typical hidden state)")
    baseline: bool = setting(False, "also print the unsteered continuation")
    detect: tuple[int, ...] = setting((), "steer only while the detected macrostate is in (or out of) these groups",
                                      parse=int_tuple, metavar="G[,G...]", group="closed loop (needs --ret)")
    when: str = setting("in", "steer while the group is in (default) / out of --detect", choices=("in", "out"),
                        group="closed loop (needs --ret)")
    sweep: bool = setting(False, "sweep α; write DIR/sweep.json and DIR/sweep.html",
                          group="α sweep (needs --ret and --group)")
    alphas: tuple[float, ...] = setting((0.0, 0.1, 0.2, 0.3, 0.5), "α values of the sweep (0 is always added)",
                                        parse=float_tuple, metavar="A,A,...", group="α sweep (needs --ret and --group)")
    out: str | None = setting(None, "output directory of the sweep (created)", group="α sweep (needs --ret and --group)")
    max_ppl_ratio: float = setting(1.5, "fluency budget for the best α (default 1.5)",
                                   group="α sweep (needs --ret and --group)")
    chat_template: str | None = chat_template_setting()
    device: str | None = device_setting()
    model_dtype: str | None = model_dtype_setting()
    device_map: str | dict | None = device_map_setting()
