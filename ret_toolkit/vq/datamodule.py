"""LightningDataModule of blocks from trajectory stores, for VQ-VAE training (split by sequence).

Anchors are chosen where the trained block *and* every block in ``align_with``
fit, so the codes of several VQ models can later be compared row by row.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from activation_cache.data import ChunkShuffleBatches, ConcatChunked
from activation_cache.errors import InputError
from activation_cache.reader import TrajectoryStore
from ret_toolkit.hparams import check_hparams
from ret_toolkit.storeset import SPLIT_SEED, VAL_FRACTION, StoreDataModule, StoreSet
from ret_toolkit.vq.block_rows import BlockRows
from ret_toolkit.vq.blocks import BlockSpec, StoreBlocks, block_anchors, collate_cells


def block_max_offset(block: BlockSpec) -> int:
    """Largest |position offset| a block can have (sizes the position embedding)."""
    lo = -block.max_positions if block.start is None else block.start
    return max(abs(lo), abs(block.stop - 1), 1)


class BlockDataModule(StoreDataModule):
    """Blocks of (layer, position) cells for ``ret-train vq``.

    Args:
        stores: paths of one or more stores of the same model.
        block: the block to compress (layers, start, stop, max_positions).
        align_with: further blocks that must also fit at every anchor.
        anchor: ``"prompt_end"`` (default), ``"all"``, ``"meta:<field>"`` or a token index.
        anchor_stride: with ``anchor="all"``, take every n-th position.
        batch_size: blocks per batch (per process under DDP).
        val_fraction, split_seed: by-sequence validation split.
        num_workers: DataLoader worker processes.
    """

    collate_fn = staticmethod(collate_cells)

    def __init__(
        self,
        stores: list[str],
        block: BlockSpec = BlockSpec(),
        align_with: Sequence[BlockSpec] = (),
        anchor: str = "prompt_end",
        anchor_stride: int = 1,
        batch_size: int = 256,
        val_fraction: float = VAL_FRACTION,
        split_seed: int = SPLIT_SEED,
        num_workers: int = 0,
    ):
        super().__init__()
        # Blocks as plain dicts in the hyperparameters: checkpoints load with weights_only=True.
        self.save_hyperparameters(ignore=["block", "align_with"])
        self.hparams.update(block=block.to_dict(), align_with=[b.to_dict() for b in align_with])
        check_hparams("data", locals(), {"anchor_stride": "count", "batch_size": "count",
                                         "val_fraction": "fraction", "num_workers": "index"})
        self.store_set = StoreSet.open(stores, val_fraction, split_seed)
        self.block, self.align_with = block, tuple(align_with)
        with TrajectoryStore(self.store_set.paths[0]) as st:
            self.layer_names = block.layer_names(st)
        self.model_name = self.store_set.model_name
        self.d_model = self.store_set.d_model
        self.n_block_layers = len(self.layer_names)
        self.max_offset = block_max_offset(block)
        self.standardization = None
        # anchors now, not in setup(): a block that fits nowhere fails before training starts
        self.split_anchors = [(self.anchors(i, tr), self.anchors(i, va)) for i, (tr, va) in enumerate(self.store_set.splits)]
        if sum(len(tr) for tr, _ in self.split_anchors) == 0:
            raise InputError(f"no anchor of {anchor!r} fits the block(s) in the training sequences of "
                             f"{', '.join(self.store_set.paths)} (block positions [{block.start}, {block.stop}) "
                             "relative to the anchor; positive offsets need generated tokens: ret-extract --generate)")

    @property
    def block_info(self) -> dict:
        """Provenance stored in the checkpoint: resolved layers, positions, anchor."""
        return {**self.block.to_dict(), "layer_names": self.layer_names, "anchor": self.hparams.anchor,
                "anchor_stride": self.hparams.anchor_stride}

    def anchors(self, store_index: int, sequences: np.ndarray) -> np.ndarray:
        with TrajectoryStore(self.store_set.paths[store_index]) as st:
            return block_anchors(st, (self.block, *self.align_with), self.hparams.anchor, self.hparams.anchor_stride,
                                 sequences)

    def row_batches(self, ds: ConcatChunked, shuffle: bool) -> tuple[BlockRows, ChunkShuffleBatches]:
        # the batches of the per-block loader, sent as the rows their blocks lie in
        return BlockRows(ds), ChunkShuffleBatches(ds, self.hparams.batch_size, shuffle=shuffle,
                                                  seed=self.hparams.split_seed, drop_last=shuffle)

    def setup(self, stage: str | None = None) -> None:
        if self.standardization is None:
            self.standardization = self.store_set.train_standardization(self.layer_names)
        paths = self.store_set.paths
        self.train_set = ConcatChunked([StoreBlocks(p, self.block, tr) for p, (tr, _) in zip(paths, self.split_anchors)])
        self.val_set = ConcatChunked([StoreBlocks(p, self.block, va) for p, (_, va) in zip(paths, self.split_anchors)])
