"""VQ-VAE information probes: blocks of (layer, position) cells -> discrete codes (docs/architecture.md §3.2)."""

from activation_cache.lazy import lazy_exports

# Names load their module on first use: importing a settings module of this package stays light.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "BlockDataModule": "ret_toolkit.vq.datamodule",
    "BlockSpec": "ret_toolkit.vq.blocks",
    "Codebook": "ret_toolkit.vq.codebook",
    "CodesResult": "ret_toolkit.vq.codes",
    "CodesSettings": "ret_toolkit.vq.settings",
    "RandomEmbedding": "ret_toolkit.vq.synthetic",
    "StoreBlocks": "ret_toolkit.vq.blocks",
    "SymbolSource": "ret_toolkit.vq.synthetic",
    "TensorBlocks": "ret_toolkit.vq.blocks",
    "VALIDATION_SOURCES": "ret_toolkit.vq.synthetic",
    "VQModule": "ret_toolkit.vq.module",
    "dataset_codes": "ret_toolkit.vq.fit",
    "embedded_blocks": "ret_toolkit.vq.synthetic",
    "encode_store_blocks": "ret_toolkit.vq.codes",
    "fit_vq": "ret_toolkit.vq.fit",
    "load_vq": "ret_toolkit.vq.codes",
    "read_codes": "ret_toolkit.vq.codes",
    "store_codes": "ret_toolkit.vq.codes",
    "train": "ret_toolkit.vq.train",
})
