"""The cache of GGUF models converted to safetensors, and the file hashes that name them.

GGUF files are dequantised once (~20-25 s for SmolLM2) and cached as
safetensors under :func:`cache_dir`; later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import torch
import transformers

from activation_cache.errors import InputError
from activation_cache.quiet import gguf_conversion_bar, no_transformers_bars

__all__ = ["cache_dir", "dequantised_dir", "file_sha256", "first_line"]


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


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def dequantised_dir(gguf: Path, label: str, progress: bool) -> Path:
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
                raise InputError(f"cannot convert {gguf}: {first_line(exc)}") from None
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
