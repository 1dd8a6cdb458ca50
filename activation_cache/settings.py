"""Fields of the settings dataclasses: each a name, a default, a type and one line of help.

A job's settings are a dataclass whose fields are made with :func:`setting`;
its console command builds one flag per field from them
(:mod:`ret_toolkit.cli.flags`): ``batch_size`` is ``--batch-size`` with the
same default, so a flag and its Python keyword cannot drift apart. The fields
every model-loading or store-writing job shares (placement, storage, chat
template) are made here once.

This module imports nothing heavy: a command builds its parser (and answers
``--help``) without torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

#: Metadata key of a field made with :func:`setting`.
SETTING = "ret_setting"


@dataclasses.dataclass(frozen=True)
class Flag:
    """How a settings field reads from a command line (the field's ``metadata[SETTING]``).

    help: one line. choices: the allowed values, or a mapping from the words a
    command line uses to the values they stand for (``{"none": None, ...}``).
    parse: text -> value for types argparse cannot read (comma lists); raises ValueError.
    check: ``"module:function"`` called on the text at parse time (imported
    only then, so ``--help`` stays light); the text is kept as given.
    metavar: the placeholder in ``--help``. group: the ``--help`` section.
    aliases: deprecated flags still accepted for one release.
    repeat: a tuple field whose flag may be given several times (each adds one value).
    cli: False for a field only Python can set (prompts in memory, say).
    """

    help: str
    choices: Sequence[Any] | Mapping[str, Any] | None = None
    parse: Callable[[str], Any] | None = None
    check: str | None = None
    metavar: str | None = None
    group: str | None = None
    aliases: tuple[str, ...] = ()
    repeat: bool = False
    cli: bool = True


def setting(default: Any = dataclasses.MISSING, help: str = "", **flag: Any) -> Any:
    """A dataclass field with its flag's help (and :class:`Flag` options); no default = required."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("a setting's default must be immutable (a tuple, not a list)")
    meta = {SETTING: Flag(help=help, **flag)}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_of(name: str) -> str:
    """The command-line flag of a settings field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def int_tuple(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``: sorted, without repeats; ValueError when empty or not integers."""
    try:
        values = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise ValueError("expected comma-separated integers like 0,1,2") from None
    if not values:
        raise ValueError("no value given")
    return values


# ---- the fields shared by every job that loads a model, writes a store or renders chat

PLACEMENT = "device and precision of the model"
STORAGE = "how the store keeps the hidden states"


def model_setting(help: str = "embedded 'smollm2-135m-instruct' (default), a local transformers dir, a .gguf file, "
                              "or a hub id (network only when you pass one)") -> Any:
    """``model``: a model spec (a name, path or hub id), never a loaded model."""
    return setting(None, help)


def device_setting() -> Any:
    return setting("auto", "auto (default: CUDA if present, else CPU), cpu, cuda, cuda:N or mps",
                   check="activation_cache.devices:resolve_device", group=PLACEMENT)


def model_dtype_setting() -> Any:
    return setting("auto", "weight dtype: auto (default: the checkpoint's own on a GPU, float32 on a CPU), float32, "
                           "bfloat16 or float16",
                   check="activation_cache.devices:check_model_dtype", metavar="DTYPE", group=PLACEMENT)


def device_map_setting() -> Any:
    return setting(None, "spread a model that does not fit one device (accelerate): auto, balanced, a JSON object "
                         "{\"module.path\": device} or a .json file holding one",
                   check="activation_cache.devices:parse_device_map", metavar="MAP", group=PLACEMENT)


def dtype_setting() -> Any:
    return setting("auto", "storage dtype: auto (default: the model's own when it runs in 16 bits; for a float32 model "
                           "float16 when the first prompt stays within half of float16's range ±65504, else bfloat16), "
                           "float16 (finer, range ±65504), bfloat16 (coarser, float32's range) or float32",
                   choices=("auto", "float16", "bfloat16", "float32"), group=STORAGE)


def compression_setting() -> Any:
    return setting(None, "HDF5 compression of the store (default none)",
                   choices={"none": None, "lzf": "lzf", "gzip": "gzip"}, group=STORAGE)


def chat_template_setting() -> Any:
    return setting(None, "a Jinja chat template file (or the template text) to use instead of the tokenizer's own, "
                         "for base models and GGUF files that have none",
                   check="activation_cache.prompts:read_chat_template", metavar="FILE")


def placement_of(settings: Any) -> dict[str, Any]:
    """The ``device`` / ``dtype`` / ``device_map`` keywords of :func:`~activation_cache.models.load_model`."""
    return dict(device=settings.device, dtype=settings.model_dtype, device_map=settings.device_map)
