"""Load our Lightning checkpoints safely: ``weights_only=True`` (nothing is unpickled), clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import lightning.pytorch as pl

from activation_cache.errors import InputError

M = TypeVar("M", bound=pl.LightningModule)


#: Hyperparameters that only one family's checkpoints have -> the family's name in messages.
FAMILY_KEYS = {"RET": {"z_dim", "window", "max_horizon"}, "VQ": {"num_codes", "code_dim"},
               "task": {"vocab_size", "n_layer", "mtp_heads"}, "blocking": {"lora_r", "penalty_weight"}}


def read_checkpoint(ckpt: str | Path, kind: str = "") -> dict:
    """The checkpoint's dict, loaded with ``weights_only=True`` on CPU; InputError if it is not one.

    A pickle that needs code to load is refused here too (nothing is executed).
    """
    import torch

    ckpt = Path(ckpt)
    what = f"{kind} checkpoint" if kind else "checkpoint"
    if not ckpt.is_file():
        raise InputError(f"{what} not found: {ckpt}")
    try:
        data = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, or a pickle that would need code to load
        why = ("it holds objects that only code could rebuild; refused unread" if "Weights only load failed" in str(e)
               else f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}")
        raise InputError(f"{ckpt}: not a loadable {what} ({why})") from None
    if not isinstance(data, dict) or "state_dict" not in data:
        raise InputError(f"{ckpt}: not a Lightning {what} (no state_dict)")
    return data


def checkpoint_family(data: dict) -> str | None:
    """``"RET"``, ``"VQ"`` or ``"task"`` from a checkpoint dict's hyperparameters; None if unknown."""
    hp = data.get("hyper_parameters") or {}
    found = [name for name, keys in FAMILY_KEYS.items() if keys <= set(hp)]
    return found[0] if len(found) == 1 else None


def check_family(ckpt: str | Path, kind: str) -> dict:
    """:func:`read_checkpoint`, and InputError if the file is a checkpoint of another family than ``kind``."""
    data = read_checkpoint(ckpt, kind)
    family = checkpoint_family(data)
    if family is not None and family != kind:
        raise InputError(f"{ckpt}: this is a {family} checkpoint, expected a {kind} checkpoint")
    return data


def load_checkpoint(cls: type[M], ckpt: str | Path, kind: str) -> M:
    """``cls.load_from_checkpoint`` on CPU in eval mode; InputError naming ``kind`` (e.g. "RET") on failure."""
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise InputError(f"{kind} checkpoint not found: {ckpt}")
    try:
        module = cls.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # a file that is not this kind of checkpoint: say what it is, if we can
        check_family(ckpt, kind)
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise InputError(f"{ckpt}: not a loadable {kind} checkpoint ({type(e).__name__}: {first})") from None
    return module.eval()
