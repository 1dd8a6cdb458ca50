"""The settings of ``ret-vq-codes`` (:class:`CodesSettings`): each field is a flag of the same name.

Import-light: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from activation_cache.settings import setting


@dataclass(frozen=True)
class CodesSettings:
    """Encode a store's blocks with a trained VQ checkpoint (:func:`~ret_toolkit.vq.codes.store_codes`).

    ckpt: VQ checkpoint; store: a trajectory store of the same model; out: the codes file.
    layers, start, stop: override the trained block (``start="none"``: from the sequence
    start); anchor, anchor_stride: where blocks are anchored (default: as trained).
    align: ``"START:STOP"`` keeps only anchors where offsets START..STOP-1 all lie inside
    the sequence, so files for different blocks line up row by row.
    """

    ckpt: str = setting(help="VQ checkpoint from ret-train vq")
    store: str = setting(help="trajectory store of the same model")
    out: str = setting(help="output .h5 codes file")
    layers: str | None = setting(None, "override the block's layers (same count as trained)")
    start: str | None = setting(None, "override the block's first offset from the anchor ('none' = sequence start)")
    stop: int | None = setting(None, "override the block's end offset (exclusive)")
    anchor: str | None = setting(None, "prompt_end, all, meta:<field> or a token index (default: as trained)")
    anchor_stride: int | None = setting(None, "use every N-th anchor (default: as trained)", metavar="N")
    align: str | None = setting(None, "keep only anchors where the offsets START..STOP-1 all lie inside the sequence "
                                      "(e.g. -8:10), so files for different blocks line up row by row",
                                metavar="START:STOP")
    batch_size: int = setting(256, "blocks per encoding batch")
    overwrite: bool = setting(False, "replace an existing --out made with other settings")
