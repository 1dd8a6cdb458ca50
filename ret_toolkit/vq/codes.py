"""Encode a store's blocks to VQ codes and keep them in a small HDF5 file.

Codes file (``format = "ret-vq-codes"``)::

    /codes     int32 (n,)  code of the block at each anchor
    /sequence  int64 (n,)  sequence index in the store
    /anchor    int64 (n,)  anchor token position T within the sequence
    attrs: format, store, checkpoint, model, block (JSON), num_codes,
           settings (JSON: everything that determined the rows and codes)

Rows of two codes files made with the same anchors line up, so
``mutual_information(a["codes"], b["codes"])`` compares the two blocks.

A codes file made with other settings is not replaced unless ``overwrite``
(:func:`check_codes_out`), and files are written under a temporary name and
renamed into place, so a refused or failed run leaves an existing file as it was.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from activation_cache.errors import InputError, option
from activation_cache.outputs import atomic_path, check_not_an_input, differing_keys, normalise_settings
from activation_cache.reader import TrajectoryStore
from activation_cache.schema import open_h5
from ret_toolkit.checkpoint import load_checkpoint
from ret_toolkit.vq.block_rows import BlockRows, gather_cells
from ret_toolkit.vq.blocks import BlockSpec, StoreBlocks, block_anchors
from ret_toolkit.vq.module import VQModule
from ret_toolkit.vq.settings import CodesSettings

CODES_FORMAT = "ret-vq-codes"


def load_vq(ckpt: str | Path) -> VQModule:
    """Load a VQ checkpoint (``weights_only=True``: nothing is unpickled) in eval mode."""
    return load_checkpoint(VQModule, ckpt, "VQ")


def checkpoint_block(module: VQModule) -> BlockSpec:
    """The block the checkpoint was trained on."""
    info = module.hparams.block_info or {}
    fields = {f.name for f in dataclasses.fields(BlockSpec)}
    if not fields <= set(info):
        raise InputError("VQ checkpoint does not record its block; pass the block explicitly")
    return BlockSpec(**{k: info[k] for k in fields})


def check_store(module: VQModule, store: TrajectoryStore, block: BlockSpec) -> list[str]:
    """The block's layer names; InputError if the store does not fit the checkpoint."""
    hp = module.hparams
    if hp.source_model and store.model != hp.source_model:
        raise InputError(f"{store.path}: store is from model {store.model!r} but the VQ checkpoint was trained on {hp.source_model!r}")
    if store.d_model != hp.d_input:
        raise InputError(f"{store.path}: store has d_model {store.d_model}, the VQ checkpoint expects {hp.d_input}")
    if store.n_sequences == 0:
        raise InputError(f"{store.path}: store has no committed sequences")
    names = block.layer_names(store)
    if len(names) != hp.n_layers:
        raise InputError(f"block selects {len(names)} layer(s) but the VQ checkpoint was trained on {hp.n_layers}")
    return names


@torch.no_grad()
def encode_store_blocks(
    module: VQModule,
    store_path: str | Path,
    block: BlockSpec | None = None,
    anchor: str | None = None,
    anchor_stride: int | None = None,
    align_with: Sequence[BlockSpec] = (),
    sequences: Sequence[int] | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Codes of ``block`` (default: the checkpoint's) at every anchor where it and ``align_with`` fit.

    Returns codes int64 (n,) and anchors int64 (n, 2) = (sequence, T).
    """
    info = module.hparams.block_info or {}
    block = block or checkpoint_block(module)
    anchor = anchor or info.get("anchor", "prompt_end")
    stride = anchor_stride or int(info.get("anchor_stride", 1))
    with TrajectoryStore(store_path) as store:
        check_store(module, store, block)
        anchors = block_anchors(store, (block, *align_with), anchor, stride, sequences)
    ds = StoreBlocks(store_path, block, anchors)
    batches = [np.arange(lo, min(lo + batch_size, len(ds))) for lo in range(0, len(ds), batch_size)]
    loader = DataLoader(BlockRows(ds), batch_size=None, sampler=batches)  # each row read once a batch
    module = module.eval()
    out = []
    for b in tqdm(loader, desc="vq codes", unit="batch", disable=not progress):
        finite = torch.isfinite(gather_cells(b)).flatten(1).all(1)
        if not finite.all():  # a NaN block would otherwise get a code like any other
            s, t = anchors[int(b["index"][int(torch.argmin(finite.int()))])]
            raise InputError(f"{store_path}: non-finite hidden states in the block of sequence {s} at token {t}")
        out.append(module.codes(b).cpu().numpy())
    return (np.concatenate(out) if out else np.zeros(0, np.int64)), anchors


def codes_settings(module: VQModule, ckpt: str | Path, store_path: str | Path, block: BlockSpec | None = None,
                   anchor: str | None = None, anchor_stride: int | None = None,
                   align_with: Sequence[BlockSpec] = ()) -> dict:
    """Everything that determines a codes file, as recorded in its ``settings`` attribute.

    Defaults are resolved the way :func:`encode_store_blocks` resolves them, so
    spelling out the checkpoint's own anchor or block is the same setting.
    """
    info = module.hparams.block_info or {}
    block = block or checkpoint_block(module)
    return normalise_settings({
        "checkpoint": str(Path(ckpt).resolve()),
        "store": str(Path(store_path).resolve()),
        "block": dataclasses.asdict(block),
        "anchor": anchor or info.get("anchor", "prompt_end"),
        "anchor_stride": int(anchor_stride or info.get("anchor_stride", 1)),
        "align_with": [dataclasses.asdict(b) for b in align_with],
    })


def check_codes_out(path: str | Path, settings: dict, overwrite: bool = False) -> None:
    """InputError (one line) if ``path`` may not be written with ``settings``.

    Refused: a missing output directory, a directory in place of the file, and
    (unless ``overwrite``) an existing file that is not a codes file made with
    the same ``settings``. Nothing is written.
    """
    path = Path(path)
    check_not_an_input(path, {"store": settings.get("store"), "ckpt": settings.get("checkpoint")})
    if not path.resolve().parent.is_dir():
        raise InputError(f"output directory does not exist: {path.resolve().parent}")
    if path.is_dir():
        raise InputError(f"{path} is a directory, expected an .h5 codes file")
    if overwrite or not path.exists():
        return
    how = f"pass {option('overwrite', True)} to replace it, or choose another output file"
    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
            recorded = f.attrs.get("settings")
    except OSError:
        raise InputError(f"{path} exists and is not a VQ codes file; {how}") from None
    if fmt != CODES_FORMAT:
        raise InputError(f"{path} exists and is not a VQ codes file; {how}")
    try:
        old = json.loads(recorded.decode() if isinstance(recorded, bytes) else recorded)
    except (TypeError, ValueError):
        raise InputError(f"{path} holds VQ codes without a record of their settings; {how}") from None
    new = normalise_settings(settings)
    if not isinstance(old, dict) or old != new:
        old = old if isinstance(old, dict) else {}
        raise InputError(f"{path} holds VQ codes made with other settings "
                         f"(differs in {', '.join(differing_keys(old, new))}); {how}")


def write_codes(path: str | Path, codes: np.ndarray, anchors: np.ndarray, *, settings: dict | None = None,
                overwrite: bool = False, **attrs) -> Path:
    """Write a codes file atomically (a temporary file beside ``path``, renamed when complete).

    With ``settings`` the file records them (attribute ``settings``) and, unless
    ``overwrite``, an existing file that is not a codes file made with the same
    settings is refused (:func:`check_codes_out`) before anything is written.
    Without ``settings`` nothing is checked: an existing ``path`` is replaced.
    """
    path = Path(path)
    if settings is not None:
        check_codes_out(path, settings, overwrite=overwrite)
    elif not path.resolve().parent.is_dir():
        raise InputError(f"output directory does not exist: {path.resolve().parent}")
    anchors = np.asarray(anchors, np.int64).reshape(-1, 2)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("codes", data=np.asarray(codes, np.int32))
            f.create_dataset("sequence", data=anchors[:, 0])
            f.create_dataset("anchor", data=anchors[:, 1])
            f.attrs["format"] = CODES_FORMAT
            for k, v in attrs.items():
                f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) else v
            if settings is not None:
                f.attrs["settings"] = json.dumps(normalise_settings(settings), sort_keys=True)
    return path


def read_codes(path: str | Path) -> dict:
    """``{"codes", "sequence", "anchor"}`` arrays plus the attributes of a codes file."""
    path = Path(path)
    with open_h5(path, "r") as f:
        if f.attrs.get("format") != CODES_FORMAT:
            raise InputError(f"{path}: not a VQ codes file (format attribute is {f.attrs.get('format')!r})")
        out = {k: f[k][()] for k in ("codes", "sequence", "anchor")}
        out.update({k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()})
    return out


@dataclasses.dataclass(frozen=True)
class CodesResult:
    """What :func:`store_codes` wrote: the codes file, its rows and how many of the codebook's codes they use."""

    path: Path
    n_blocks: int
    used_codes: int
    num_codes: int

    def __str__(self) -> str:
        return f"{self.path}: {self.n_blocks} blocks, {self.used_codes} of {self.num_codes} codes used"


def _block(module: VQModule, s: CodesSettings) -> BlockSpec:
    """The checkpoint's block with the settings' overrides."""
    changes: dict = {}
    if s.layers is not None:
        changes["layers"] = s.layers
    if s.start is not None:
        try:
            changes["start"] = None if str(s.start).lower() == "none" else int(s.start)
        except ValueError:
            raise InputError(f"{option('start')} {s.start!r}: expected an integer offset or 'none'") from None
    if s.stop is not None:
        changes["stop"] = s.stop
    return dataclasses.replace(checkpoint_block(module), **changes)


def _align(spec: str, layers: str) -> BlockSpec:
    try:
        start, stop = (int(v) for v in spec.split(":"))
    except ValueError:
        raise InputError(f"{option('align')} {spec!r}: expected START:STOP offsets like -8:10") from None
    return BlockSpec(layers=layers, start=start, stop=stop)


def store_codes(s: CodesSettings, progress: bool = True) -> CodesResult:
    """Encode the blocks of ``s.store`` with the VQ checkpoint ``s.ckpt`` into the codes file ``s.out``.

    Check, then write: ``s.out`` is checked against these settings before the (slow)
    encoding, which checks the store against the checkpoint first; nothing is written
    until the codes are complete.
    """
    if s.batch_size < 1 or (s.anchor_stride is not None and s.anchor_stride < 1):
        raise InputError(f"{option('batch_size')} and {option('anchor_stride')} must be >= 1")
    module = load_vq(s.ckpt)
    block = _block(module, s)
    align = [_align(s.align, block.layers)] if s.align else []
    settings = codes_settings(module, s.ckpt, s.store, block, s.anchor, s.anchor_stride, align)
    check_codes_out(s.out, settings, overwrite=s.overwrite)
    codes, anchors = encode_store_blocks(module, s.store, block, s.anchor, s.anchor_stride, align,
                                         batch_size=s.batch_size, progress=progress)
    if len(codes) == 0:
        within = f"the block and the {option('align')} range lie" if align else "the block lies"
        raise InputError(f"{s.store}: no anchor ({settings['anchor']}) where {within} inside the sequence; "
                         "nothing written")
    write_codes(s.out, codes, anchors, settings=settings, overwrite=s.overwrite, store=str(s.store),
                checkpoint=str(s.ckpt), model=module.hparams.source_model,
                block=json.dumps(dataclasses.asdict(block)), num_codes=module.hparams.num_codes)
    return CodesResult(Path(s.out), len(codes), len(set(codes.tolist())), module.hparams.num_codes)
