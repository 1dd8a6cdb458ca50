"""What every console command shares: the one-line argparse and the runner.

A command is a thin shell: it parses flags with :class:`OneLineParser` (built
from its settings dataclasses by :mod:`ret_toolkit.cli.flags`), calls
one Python function and prints its result, all inside :func:`run_cli`, which
turns an :class:`~activation_cache.errors.InputError` into one line on stderr
and exit status 2, Ctrl-C into 130 and a closed pipe into 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from activation_cache._version import __version__
from activation_cache.errors import InputError, cli_words, environment_error
from activation_cache.quiet import quiet_libraries


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line (exit 2), with ``--version``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

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
