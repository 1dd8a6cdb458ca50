"""VQ-VAE information probes: blocks of (layer, position) cells -> discrete codes (docs/architecture.md §3.2)."""

from ret_toolkit.vq.blocks import BlockSpec, StoreBlocks, TensorBlocks
from ret_toolkit.vq.codebook import Codebook
from ret_toolkit.vq.codes import encode_store_blocks, load_vq, read_codes
from ret_toolkit.vq.datamodule import BlockDataModule
from ret_toolkit.vq.fit import dataset_codes, fit_vq, fit_vq_store
from ret_toolkit.vq.module import VQModule
from ret_toolkit.vq.synthetic import VALIDATION_SOURCES, RandomEmbedding, SymbolSource, embedded_blocks
from ret_toolkit.vq.train import train

__all__ = ["VALIDATION_SOURCES", "BlockDataModule", "BlockSpec", "Codebook", "RandomEmbedding", "StoreBlocks",
           "SymbolSource", "TensorBlocks", "VQModule", "dataset_codes", "embedded_blocks", "encode_store_blocks",
           "fit_vq", "fit_vq_store", "load_vq", "read_codes", "train"]
