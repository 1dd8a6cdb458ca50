"""User-facing errors, in the caller's words.

Every problem caused by the user's input (a missing file, a malformed line, an
unknown layer, a mismatched store...) raises :class:`InputError` with a one-line
message that says *what* is wrong and *where*. The CLIs print that line and exit
with status 2, without a traceback.

A message that names a setting spells it the way the caller set it:
:func:`option` gives ``--batch-size`` while a console command runs (inside
:func:`cli_words`) and ``batch_size`` (or ``overwrite=True``) to Python code.
"""

from __future__ import annotations

import contextvars
import re
from contextlib import contextmanager
from typing import Iterator

from activation_cache.settings import flag_of

_UNDER_CLI: contextvars.ContextVar[bool] = contextvars.ContextVar("ret_under_cli", default=False)
_UNSET = object()


class InputError(ValueError):
    """Bad input from the user: a one-line message, exit status 2 in CLIs."""

    exit_code = 2


@contextmanager
def cli_words() -> Iterator[None]:
    """Inside this block, :func:`option` names command-line flags."""
    token = _UNDER_CLI.set(True)
    try:
        yield
    finally:
        _UNDER_CLI.reset(token)


def under_cli() -> bool:
    """Whether a console command is running (inside :func:`cli_words`): a hint may then name a flag."""
    return _UNDER_CLI.get()


def other_name_hint(expected: str) -> str:
    """What to do when an artifact was made on the model ``expected`` and another was given, in the caller's words."""
    if under_cli():
        return f"run with --model {expected}, or pass the model it was made on"
    return "pass model_name= if it is the same model under another name"


def option(name: str, value: object = _UNSET, *, flag: str | None = None) -> str:
    """A setting as the caller spells it.

    ``option("batch_size")`` is ``--batch-size`` under a CLI and ``batch_size``
    in Python; ``option("overwrite", True)`` is ``--overwrite`` or
    ``overwrite=True``, and ``option("dtype", "bfloat16")`` is ``--dtype bfloat16``
    or ``dtype='bfloat16'``: the whole fix, in the caller's words. ``flag`` names a
    CLI flag that is not the keyword with dashes; with ``False`` it is the switch that
    turns the setting off (``option("chat", False, flag="--no-chat")`` is ``--no-chat`` or ``chat=False``).
    """
    if _UNDER_CLI.get():
        spelled = flag or flag_of(name)
        switch = value is _UNSET or value is True or (value is False and flag is not None)  # --x / --no-x
        return spelled if switch else f"{spelled} {value}"
    return name if value is _UNSET else f"{name}={value!r}"


def environment_error(e: BaseException) -> InputError | None:
    """One line for a failure of the machine rather than of the code, or None.

    Covers a full disk, a read-only or missing location and a denied
    permission (any :class:`OSError` with an errno), and torch's checkpoint
    writer failing for the same reasons (a RuntimeError naming its stream writer).
    """
    text = " ".join(str(e).split())
    m = re.search(r"errno = (\d+), error message = '([^']*)'", text)
    if isinstance(e, OSError) and m:  # h5py: "Unable to create file (unable to open file: name = ..., errno = 13, ...)"
        name = re.search(r"name = '([^']*)'", text)
        return InputError(f"{m[2]} (errno {m[1]}){': ' + name[1] if name else ''}")
    if isinstance(e, OSError) and e.errno is not None:
        where = f": {e.filename}" if e.filename else ""
        return InputError(f"{e.strerror or 'I/O error'} (errno {e.errno}){where}")
    if isinstance(e, RuntimeError) and ("PytorchStreamWriter" in text or "file write failed" in text):
        return InputError(f"cannot write a checkpoint (disk full or not writable?): {text[:200]}")
    return None
