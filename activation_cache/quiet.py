"""Keep library chatter out of what our commands and API calls print.

The commands print their own progress bars and results; third-party tips,
weight-loading bars and deprecation notices about internals the user never
calls only bury them.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Iterator

#: Warnings raised inside libraries about their own internals (not the user's code).
_LIBRARY_WARNINGS = (
    r".*LeafSpec.*",                                # torch.utils._pytree, raised by Lightning/nnsight internals
    r".*all_gather.*",                              # torch.distributed deprecations inside Lightning's DDP
    r".*_get_pg_default_device.*",
    r".*does not have many workers.*",              # Lightning's DataLoader advice: HDF5 reads are the cost
    r".*GPU available but not used.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*smaller than the logging interval.*",          # small stores: fewer batches than log_every_n_steps
    r".*The dirpath has changed from.*",                # resuming into a new version_N/ is what we ask for
    r".*IterableDataset.* has .__len__. defined.*",     # online task batches: one process, the length is exact
)


#: Lightning's info lines ("Seed set to 0", "GPU available: ...", logger tips) come from
#: these loggers; Lightning resets its top-level logger's level when imported, not theirs.
_LIGHTNING_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                           "lightning.fabric.utilities.seed", "lightning.fabric.utilities.distributed")


def quiet_libraries() -> None:
    """For console commands: mute library tips, weight-loading bars and internal deprecations.

    Does not import transformers (a command answers ``--help`` without it): the
    switches are its environment variables, read when it is first imported, or
    its setters when it already is (a notebook, a test).
    """
    import os
    import sys

    # our own bars say what is happening
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    for pattern in _LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in _LIGHTNING_INFO_LOGGERS:  # its warnings and errors still show
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def quiet_training() -> Iterator[None]:
    """For a Lightning fit called from our Python API: the same muting, undone afterwards."""
    loggers = [logging.getLogger(name) for name in _LIGHTNING_INFO_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for pattern in _LIBRARY_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for lg in loggers:
            lg.setLevel(max(lg.level, logging.WARNING))
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


@contextmanager
def no_transformers_bars() -> Iterator[None]:
    """Hide ``from_pretrained``'s weight-loading bar for the duration (also for Python callers)."""
    from transformers.utils import logging as tlog

    was_on = tlog.is_progress_bar_enabled()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            tlog.enable_progress_bar()


@contextmanager
def gguf_conversion_bar(show: bool) -> Iterator[None]:
    """Show or hide transformers' "Converting and de-quantizing GGUF tensors" bar (a bare tqdm that its
    own progress-bar switch does not reach) for the duration."""
    import functools

    from tqdm.auto import tqdm
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    was = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(tqdm, disable=not show)
    try:
        yield
    finally:
        gguf_utils.tqdm = was
