"""Encode a store's blocks to VQ codes and keep them in a small HDF5 file.

Codes file (``format = "ret-vq-codes"``)::

    /codes     int32 (n,)  code of the block at each anchor
    /sequence  int64 (n,)  sequence index in the store
    /anchor    int64 (n,)  anchor token position T within the sequence
    attrs: format, store, checkpoint, model, block (JSON), num_codes

Rows of two codes files made with the same anchors line up, so
``mutual_information(a["codes"], b["codes"])`` compares the two blocks.
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

from activation_cache.errors import InputError
from activation_cache.reader import TrajectoryStore
from activation_cache.schema import open_h5
from ret_toolkit.checkpoint import load_checkpoint
from ret_toolkit.vq.blocks import BlockSpec, StoreBlocks, block_anchors, collate_cells
from ret_toolkit.vq.module import VQModule

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
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=collate_cells)
    module = module.eval()
    out = [module.codes(b).cpu().numpy() for b in tqdm(loader, desc="vq codes", unit="batch", disable=not progress)]
    return (np.concatenate(out) if out else np.zeros(0, np.int64)), anchors


def write_codes(path: str | Path, codes: np.ndarray, anchors: np.ndarray, **attrs) -> Path:
    """Write a codes file (via a temporary file, so a failed write leaves no half file)."""
    path = Path(path)
    if not path.resolve().parent.is_dir():
        raise InputError(f"output directory does not exist: {path.resolve().parent}")
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("codes", data=np.asarray(codes, np.int32))
        f.create_dataset("sequence", data=np.asarray(anchors, np.int64)[:, 0])
        f.create_dataset("anchor", data=np.asarray(anchors, np.int64)[:, 1])
        f.attrs["format"] = CODES_FORMAT
        for k, v in attrs.items():
            f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) else v
    tmp.replace(path)
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
