"""What every console command shares: the one-line argparse, the runner and the placement flags.

A command is a thin shell: it parses flags with :class:`OneLineParser`, calls
one Python function and prints its result, all inside :func:`run_cli`, which
turns an :class:`~activation_cache.errors.InputError` into one line on stderr
and exit status 2, Ctrl-C into 130 and a closed pipe into 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Callable

from activation_cache.errors import InputError, cli_words, environment_error
from activation_cache.quiet import quiet_libraries


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_cli(prog: str, body: Callable[[], int | None]) -> int:
    """Run a CLI body: InputError -> one line + exit 2; Ctrl-C -> exit 130.

    A failure of the machine (disk full, read-only or missing location, permission
    denied: :func:`~activation_cache.errors.environment_error`) is one line and exit 2 too.

    Messages name command-line flags (:func:`~activation_cache.errors.cli_words`),
    and a reader that goes away (``ret-extract info s.h5 | head -1``) ends the
    command quietly with status 0.
    """
    handler = logging.StreamHandler()  # to this command's stderr, each line led by its name
    handler.setFormatter(logging.Formatter(f"{prog}: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("activation_cache", "ret_toolkit")]  # Lightning logs for itself
    for logger in loggers:
        logger.setLevel(logging.INFO)
        for old in [h for h in logger.handlers if getattr(h, "ret_cli", False)]:
            logger.removeHandler(old)  # an earlier command's, in the same process (a notebook, a test)
        handler.ret_cli = True
        logger.addHandler(handler)
    quiet_libraries()
    try:
        with cli_words():
            return body() or 0
    except InputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        if getattr(e, "hard_exit", False):
            # A store whose writes failed cannot be closed, and HDF5 crashes at
            # exit with it open (see writer.StoreWriteError): leave right now.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        return 2
    except BrokenPipeError:
        # The reader closed the pipe: what it wanted is printed. Point stdout at
        # /dev/null so the interpreter's final flush does not fail as well.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, RuntimeError) as e:
        error = environment_error(e)
        if error is None:
            raise
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; committed data is kept, rerun the same command to resume", file=sys.stderr)
        return 130


def say(line: str) -> None:
    """Print one line in a single write: the ranks of a torchrun job share stdout, and ``print`` writes the
    text and its newline separately, so two ranks' lines could run together."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _checked(check: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse ``type`` that validates a flag with ``check`` at parse time and keeps its spelling.

    A device that is not there is refused before anything is read or written.
    """
    def parse(text: str) -> str:
        try:
            with cli_words():
                check(text)
        except InputError as e:
            # argparse already names the flag: "argument --device: 'cuda' is not available..."
            raise argparse.ArgumentTypeError(re.sub(r"^--[a-z-]+:? ", "", str(e))) from None
        return text

    return parse


def add_placement_arguments(p: argparse.ArgumentParser) -> None:
    """``--device``, ``--model-dtype`` and ``--device-map``: the same on every command that loads a model."""
    from activation_cache.devices import (
        parse_device_map,
        resolve_device,
        resolve_model_dtype,
    )

    g = p.add_argument_group("device and precision of the model")
    g.add_argument("--device", default="auto", type=_checked(resolve_device),
                   help="auto (default: CUDA if present, else CPU), cpu, cuda, cuda:N or mps")
    g.add_argument("--model-dtype", default="auto", metavar="DTYPE", type=_checked(lambda t: resolve_model_dtype(t, False)),
                   help="weight dtype: auto (default: the checkpoint's own on a GPU, float32 on a CPU), float32, bfloat16 or float16")
    g.add_argument("--device-map", default=None, metavar="MAP", type=_checked(parse_device_map),
                   help="spread a model that does not fit one device (accelerate): auto, balanced, "
                        "a JSON object {\"module.path\": device} or a .json file holding one")


def add_storage_arguments(p: argparse.ArgumentParser) -> None:
    """``--dtype`` and ``--compression``: the same on every command that writes a trajectory store."""
    g = p.add_argument_group("how the store keeps the hidden states")
    g.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                   help="storage dtype: auto (default: the model's own when it runs in 16 bits; for a float32 model "
                        "float16 when the first prompt stays within half of float16's range ±65504, else bfloat16), "
                        "float16 (finer, range ±65504), bfloat16 (coarser, float32's range) or float32")
    g.add_argument("--compression", default="none", choices=["none", "lzf", "gzip"],
                   help="HDF5 compression of the store (default none)")


def storage(a: argparse.Namespace) -> dict:
    """The ``dtype`` / ``compression`` keywords of the storage settings from parsed flags."""
    return dict(dtype=a.dtype, compression=None if a.compression == "none" else a.compression)


def add_chat_template_argument(p: argparse.ArgumentParser) -> None:
    """``--chat-template FILE``: the same on every command that renders chat (checked at parse time)."""
    from activation_cache.prompts import read_chat_template

    p.add_argument("--chat-template", default=None, metavar="FILE", type=_checked(read_chat_template),
                   help="a Jinja chat template file (or the template text) to use instead of the tokenizer's own, "
                        "for base models and GGUF files that have none")


def placement(a: argparse.Namespace) -> dict:
    """The ``device`` / ``dtype`` / ``device_map`` keywords of :func:`~activation_cache.models.load_model` from parsed flags."""
    return dict(device=a.device, dtype=a.model_dtype, device_map=a.device_map)
