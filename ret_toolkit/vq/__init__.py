"""VQ-VAE information probes: blocks of (layer, position) cells -> discrete codes (docs/architecture.md §3.2)."""

from ret_toolkit.vq.blocks import BlockSpec, StoreBlocks, TensorBlocks, block_anchors, collate_cells
from ret_toolkit.vq.codebook import Codebook
from ret_toolkit.vq.datamodule import BlockDataModule
from ret_toolkit.vq.module import VQModule
from ret_toolkit.vq.train import train

__all__ = ["BlockDataModule", "BlockSpec", "Codebook", "StoreBlocks", "TensorBlocks", "VQModule", "block_anchors",
           "collate_cells", "train"]
