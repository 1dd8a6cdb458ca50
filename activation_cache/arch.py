"""Where a causal LM keeps its decoder blocks and token embedding.

The tracer needs two module paths: the ``nn.ModuleList`` of decoder blocks
(each block's output is one ``/hidden/<layer>`` row of the store) and the token
embedding (``/hidden/embed``). Discovery is structural, not a table of known
model names, so new architectures usually work without code changes; when it
cannot decide, the user passes ``block_path=`` / ``--block-path``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from activation_cache.errors import InputError

__all__ = ["ArchInfo", "find_architecture", "get_module", "resolve_model", "unwrap"]


@dataclass(frozen=True)
class ArchInfo:
    """Module layout of a causal LM.

    Attributes:
        block_path: dotted path of the ``nn.ModuleList`` of decoder blocks,
            e.g. ``"model.layers"``, ``"transformer.h"``, ``"gpt_neox.layers"``.
        embed_path: dotted path of the token-embedding module, e.g.
            ``"model.embed_tokens"``, ``"transformer.wte"``, ``"gpt_neox.embed_in"``.
        n_layers: number of decoder blocks (length of the block list).
        d_model: width of the residual stream (hidden size), in features.
    """

    block_path: str
    embed_path: str
    n_layers: int
    d_model: int


def resolve_model(model) -> tuple[nn.Module, str, Any]:
    """``(torch module, model name, tokenizer or None)`` of a model-like object.

    Accepts a torch / ``transformers`` model (name = ``model.name_or_path``), an
    :class:`activation_cache.models.LoadedModel` (name = its ``.name``, e.g.
    ``"smollm2-135m-instruct"``) or an nnsight ``LanguageModel``, whose module
    paths are those of the model it wraps.
    """
    if isinstance(model, nn.Module):
        return model, str(getattr(model, "name_or_path", "") or ""), None
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and hasattr(model, "arch") and hasattr(model, "name"):
        return inner, str(model.name), getattr(model, "tokenizer", None)  # LoadedModel
    for attr in ("_module", "_model"):  # nnsight LanguageModel (0.8: _module; older: _model)
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            return inner, str(getattr(inner, "name_or_path", "") or ""), getattr(model, "tokenizer", None)
    raise InputError(f"expected a transformers model, LoadedModel or nnsight LanguageModel, got {type(model).__name__}")


def unwrap(model) -> nn.Module:
    """The torch module of a model-like object (see :func:`resolve_model`)."""
    return resolve_model(model)[0]


def get_module(root: nn.Module, dotted: str) -> nn.Module:
    """Return the submodule of ``root`` at the dotted path ``dotted``.

    ``""`` returns ``root``. Raises :class:`InputError` naming the first missing
    part and the children that do exist at that level.
    """
    module = unwrap(root)
    walked: list[str] = []
    for part in dotted.split(".") if dotted else []:
        children = dict(module.named_children())
        if part not in children:
            where = ".".join(walked) or "<root>"
            have = ", ".join(children) or "none"
            raise InputError(
                f"module path '{dotted}': no child '{part}' under '{where}' (children: {have})"
            )
        module = children[part]
        walked.append(part)
    return module


def _text_config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        # Multimodal wrappers keep the language model's sizes in a sub-config.
        config = config.get_text_config()
    return config


def _config_int(config, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None) if config is not None else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Non-empty ModuleLists whose children all share one class (block stacks)."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(child) for child in module}) == 1:
                found.append((name, module))
    return found


def _describe_lists(model: nn.Module) -> str:
    lists = [
        f"{name or '<root>'} ({len(m)} x {type(m[0]).__name__ if len(m) else '-'})"
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList)
    ]
    return ", ".join(lists) if lists else "no nn.ModuleList at all"


def _find_block_path(model: nn.Module, expected: int | None) -> str:
    candidates = _block_lists(model)
    if expected is not None:
        candidates = [(n, m) for n, m in candidates if len(m) == expected]
    if not candidates:
        want = f"{expected} blocks (config)" if expected is not None else "decoder blocks"
        raise InputError(
            f"cannot find the decoder blocks of {type(model).__name__}: looked for a "
            f"ModuleList of {want}; ModuleLists found: {_describe_lists(model)}; pass "
            "--block-path (CLI) / block_path= (API), e.g. 'model.layers'"
        )
    # The block stack holds most of the weights; this also beats per-block
    # ModuleLists (experts, heads) that happen to have the same length.
    # Shorter path breaks ties (a wrapper re-exposing the same list).
    best = max(candidates, key=lambda nm: (_n_params(nm[1]), -len(nm[0])))
    return best[0]


def _find_embed_path(model: nn.Module, vocab_size: int | None) -> str:
    embed = None
    get = getattr(model, "get_input_embeddings", None)
    if callable(get):
        try:
            embed = get()
        except (NotImplementedError, AttributeError):
            embed = None
    if embed is None:
        # Fallback for models without the HF accessor: the vocabulary-sized embedding.
        embeds = [m for m in model.modules() if isinstance(m, nn.Embedding)]
        sized = [m for m in embeds if vocab_size is None or m.num_embeddings == vocab_size]
        embed = sized[0] if sized else (embeds[0] if embeds else None)
    if embed is not None:
        for name, module in model.named_modules():
            if module is embed and name:
                return name
    raise InputError(
        f"cannot find the token embedding of {type(model).__name__}; pass "
        "--embed-path (CLI) / embed_path= (API), e.g. 'model.embed_tokens'"
    )


def find_architecture(
    model, block_path: str | None = None, embed_path: str | None = None
) -> ArchInfo:
    """Locate the decoder blocks and token embedding of ``model``.

    Args:
        model: a ``transformers`` causal LM (or any ``nn.Module``; an nnsight
            ``LanguageModel`` is unwrapped).
        block_path: dotted path of the decoder-block ``nn.ModuleList``; found
            automatically when ``None`` (the ModuleList of same-class children
            whose length equals ``config.num_hidden_layers`` and which holds the
            most parameters).
        embed_path: dotted path of the token embedding; ``None`` uses
            ``model.get_input_embeddings()``.

    Returns:
        :class:`ArchInfo` with ``n_layers`` = number of blocks and ``d_model`` =
        ``config.hidden_size`` (else the embedding width).

    Raises:
        InputError: a path does not exist, the block path is not a list of
            modules, or discovery finds no unambiguous block stack.
    """
    root = unwrap(model)
    config = _text_config(root)
    if block_path is None:
        expected = _config_int(config, "num_hidden_layers", "n_layer", "num_layers")
        block_path = _find_block_path(root, expected)
    blocks = get_module(root, block_path)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
        raise InputError(
            f"block path '{block_path}' is a {type(blocks).__name__}, not a non-empty "
            "ModuleList of decoder blocks"
        )
    if embed_path is None:
        embed_path = _find_embed_path(root, _config_int(config, "vocab_size"))
    embed = get_module(root, embed_path)

    d_model = _config_int(config, "hidden_size", "n_embd", "d_model")
    if d_model is None:
        d_model = getattr(embed, "embedding_dim", None) or getattr(embed, "weight").shape[-1]
    return ArchInfo(block_path, embed_path, len(blocks), int(d_model))
