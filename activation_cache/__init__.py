"""activation_cache: trace a language model's hidden-state trajectories into an HDF5 store, and read them back.

Everything up to and including the HDF5 trajectory store and the torch datasets
that read it. Knows nothing about RET or VQ (those live in ``ret_toolkit``).
Names load their module on first use (the model side pulls in torch and nnsight)::

    from activation_cache import ExtractConfig, extract, open_store
    extract(ExtractConfig(prompts="reasoning", out="traj.h5", layers="middle", limit=16))
    with open_store("traj.h5") as store:
        h = store.hidden(0, "15")          # (T, d_model) float32, sequence 0 at block 15

The store's own machinery, for code that writes or streams stores directly:
:mod:`activation_cache.writer` (``StoreWriter``, ``StoreSpec``, ``Batch``),
:mod:`activation_cache.schema` (the store contract: ``encode_hidden``, ``decode_hidden``, ``chunk_rows``),
:mod:`activation_cache.running_stats` (``RowStats``: the per-layer statistics the writer keeps),
:mod:`activation_cache.window_batches` (training batches sent as the rows their windows lie in),
:mod:`activation_cache.tracer` (``Tracer``: one nnsight trace of the chosen blocks) and
:mod:`activation_cache.pipeline` (``to_host``: a traced batch's rows and statistics on their way to the host).
"""

from activation_cache._version import __version__
from activation_cache.errors import InputError
from activation_cache.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    # extraction
    "ExtractConfig": "activation_cache.extract_config",
    "ExtractResult": "activation_cache.extraction",
    "extract": "activation_cache.extraction",
    "prepare": "activation_cache.extraction",
    "plan": "activation_cache.extraction",
    "extract_distributed": "activation_cache.distributed",
    "merge_shards": "activation_cache.merge",
    # models, layers, prompts
    "LoadedModel": "activation_cache.models",
    "load_model": "activation_cache.models",
    "load_tokenizer": "activation_cache.models",
    "use_chat_template": "activation_cache.models",
    "LayerSpec": "activation_cache.layers",
    "parse_layers": "activation_cache.layers",
    "Prompt": "activation_cache.prompts",
    "read_prompts": "activation_cache.prompts",
    "read_chat_template": "activation_cache.prompts",
    # the store and its readers
    "TrajectoryStore": "activation_cache.reader",
    "open_store": "activation_cache.reader",
    "TokenWindows": "activation_cache.data",
    "ChunkShuffleSampler": "activation_cache.data",
    "standardization_stats": "activation_cache.data",
    "RowStats": "activation_cache.running_stats",
    # batching and ranks, shared with generation code
    "left_pad": "activation_cache.batching",
    "pad_rows": "activation_cache.batching",
    "padding_share": "activation_cache.batching",
    "Rank": "activation_cache.ranks",
    "detect_rank": "activation_cache.ranks",
}, eager={"__version__": __version__, "InputError": InputError})
