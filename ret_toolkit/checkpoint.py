"""Load our Lightning checkpoints safely: ``weights_only=True`` (nothing is unpickled), clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import lightning.pytorch as pl

from activation_cache.errors import InputError

M = TypeVar("M", bound=pl.LightningModule)


def load_checkpoint(cls: type[M], ckpt: str | Path, kind: str) -> M:
    """``cls.load_from_checkpoint`` on CPU in eval mode; InputError naming ``kind`` (e.g. "RET") on failure."""
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise InputError(f"{kind} checkpoint not found: {ckpt}")
    try:
        module = cls.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # a file that is not this kind of checkpoint
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise InputError(f"{ckpt}: not a loadable {kind} checkpoint ({type(e).__name__}: {first})") from None
    return module.eval()
