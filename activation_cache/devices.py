"""Where a model runs and in what precision: the one parser of devices, dtypes and device maps.

Every command that loads a model takes the same three settings, and
:func:`activation_cache.models.load_model` takes them as keyword arguments:

- ``device``: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``,
  ``cuda:N`` or ``mps``;
- ``dtype`` (``--model-dtype`` on the command line): ``auto`` (the checkpoint's
  own dtype on a GPU, float32 on a CPU), ``float32``, ``bfloat16``, ``float16``;
- ``device_map``: ``auto`` or ``balanced`` (``accelerate`` spreads the blocks
  over every visible GPU), a JSON object ``{"module.path": device, ...}`` or
  the path of a ``.json`` file holding one, for models that do not fit one device.

The storage dtype of a store (``--dtype``) is a separate setting
(:data:`activation_cache.schema.HIDDEN_DTYPES`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from activation_cache.errors import InputError, option

__all__ = [
    "DEVICE_CHOICES",
    "MODEL_DTYPES",
    "describe_placement",
    "input_device",
    "parse_device_map",
    "resolve_device",
    "resolve_model_dtype",
]

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
#: Weight dtypes a model can be loaded in, by name.
MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_MAP_NAMES = ("auto", "balanced", "balanced_low_0", "sequential")


def resolve_device(spec: str | torch.device | None = "auto", *, what: str | None = None) -> torch.device:
    """The device a spec names, checked to exist on this machine.

    ``None`` and ``"auto"`` give ``cuda`` when CUDA is available, else ``cpu``.
    ``what`` names the setting in messages (default: the ``device`` option).

    Raises:
        InputError: unknown spelling, or a device this machine does not have
            (``cuda`` without CUDA, ``cuda:3`` on a two-GPU machine, ``mps``
            off Apple silicon).
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    what = what or option("device")
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", text)
    if m:
        if not torch.cuda.is_available():
            raise InputError(f"{what} {spec!r} is not available: this machine has no CUDA device "
                             "(use 'cpu' or 'auto')")
        n = torch.cuda.device_count()
        if m[1] is not None and int(m[1]) >= n:
            raise InputError(f"{what} {spec!r} is not available: this machine has {n} CUDA "
                             f"device(s), cuda:0..cuda:{n - 1}")
        return torch.device(text)
    if text == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise InputError(f"{what} 'mps' is not available on this machine")
        return torch.device("mps")
    raise InputError(f"{what} {spec!r} is unknown; use {DEVICE_CHOICES}")


def resolve_model_dtype(spec: str | torch.dtype | None, on_gpu: bool) -> torch.dtype | str:
    """The weight dtype to load with: a ``torch.dtype``, or ``"auto"`` (the checkpoint's own).

    ``auto`` means the checkpoint's dtype on a GPU and float32 on a CPU, where
    half-precision matmuls are slow and bfloat16 would change the numbers.
    """
    if isinstance(spec, torch.dtype):
        if spec not in MODEL_DTYPES.values():
            raise InputError(f"{option('model_dtype')} {spec} is not one of {', '.join(MODEL_DTYPES)}")
        return spec
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return "auto" if on_gpu else torch.float32
    if text not in MODEL_DTYPES:
        raise InputError(f"{option('model_dtype')} {spec!r} is unknown; use auto, {', '.join(MODEL_DTYPES)}")
    return MODEL_DTYPES[text]


def check_model_dtype(spec: str | torch.dtype | None) -> None:
    """InputError (one line) for a weight dtype no load accepts (what ``--model-dtype`` checks at parse time)."""
    resolve_model_dtype(spec, on_gpu=False)


def parse_device_map(spec: str | dict | None) -> str | dict[str, Any] | None:
    """``None``, a strategy name for ``accelerate`` (``auto``, ``balanced``...), or a checked ``{module: device}`` map.

    ``spec`` may be a dict, a JSON object as text, or the path of a ``.json``
    file. Devices in a map are checked like :func:`resolve_device` (``"disk"``
    is allowed as accelerate's offload target; an int means ``cuda:<int>``).
    """
    if spec is None or spec == "":
        return None
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() in _MAP_NAMES:
            return text.lower()
        if text.startswith("{"):
            where = option("device_map")
            try:
                spec = json.loads(text)
            except json.JSONDecodeError as e:
                raise InputError(f"{where}: not valid JSON: {e.msg} at character {e.pos}") from None
        else:
            path = Path(text).expanduser()
            if not path.is_file():
                raise InputError(f"{option('device_map')} {text!r} is not {', '.join(_MAP_NAMES)}, "
                                 "a JSON object or an existing .json file")
            where = str(path)
            try:
                spec = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise InputError(f"{path}: not a JSON device map: {e}") from None
    else:
        where = option("device_map")
    if not isinstance(spec, dict) or not spec:
        raise InputError(f"{where}: a device map is a non-empty JSON object of module path -> device")
    out: dict[str, Any] = {}
    for module, dev in spec.items():
        if not isinstance(module, str):
            raise InputError(f"{where}: module names must be strings, got {module!r}")
        if isinstance(dev, bool) or not isinstance(dev, (int, str)):
            raise InputError(f"{where}: device of {module!r} must be a string or a GPU index, got {dev!r}")
        if dev == "disk":
            out[module] = dev
            continue
        device = resolve_device(f"cuda:{dev}" if isinstance(dev, int) else dev, what=f"{where}: module {module!r}: device")
        out[module] = str(device) if device.type != "cuda" or device.index is not None else "cuda:0"
    return out


def input_device(model: torch.nn.Module) -> torch.device:
    """Device that a model's input ids must be on: that of its input embeddings.

    With a device map the blocks may live elsewhere; accelerate's hooks move
    activations between them, but the ids must start where the embedding is.
    """
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    weight = getattr(emb, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
        return weight.device
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def describe_placement(model: torch.nn.Module) -> tuple[str, str]:
    """``(device, dtype)`` of a loaded model as stores record them.

    ``device`` is one device (``"cpu"``, ``"cuda:0"``) or, for a model spread
    by a device map, the distinct devices in order of first use joined by
    commas (``"cuda:0,cuda:1"``); ``dtype`` is the floating-point dtype of its
    weights (``"bfloat16"``).
    """
    hf_map = getattr(model, "hf_device_map", None)
    devices: list[str] = []
    if isinstance(hf_map, dict) and hf_map:
        for dev in hf_map.values():
            name = f"cuda:{dev}" if isinstance(dev, int) else str(dev)
            if name not in devices:
                devices.append(name)
    else:
        devices.append(str(input_device(model)))
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return ",".join(devices), str(dtype).removeprefix("torch.")
