"""``ret-train``: train ret_toolkit models with Lightning's CLI.

    ret-train macro fit --data.stores='[traj.h5]' --trainer.max_epochs=10
    ret-train macro fit --config run.yaml
    ret-train macro fit --print_config          # a complete, editable YAML config
    ret-train macro fit --config run.yaml --ckpt_path runs/macro/.../last.ckpt   # resume

Every hyperparameter of the model (``--model.*``), the data (``--data.*``) and
the Lightning trainer (``--trainer.*``) is a YAML key and a flag. Runs under
any Lightning strategy, e.g. ``--trainer.strategy=ddp --trainer.devices=2``.
"""

from __future__ import annotations

import sys
import warnings
from typing import Sequence

from lightning.pytorch.cli import LightningCLI

from activation_cache.cli import run_cli
from activation_cache.errors import InputError

MACRO_DEFAULTS = {
    "default_root_dir": "runs/macro",
    "max_epochs": 10,
    "log_every_n_steps": 10,
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs/macro", "name": "ret"}},
}


class MacroCLI(LightningCLI):
    """LightningCLI for RETModule + TrajectoryDataModule with the shared keys linked."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.window", "model.window")
        parser.link_arguments("data.max_horizon", "model.max_horizon")
        parser.link_arguments("data.n_features", "model.d_input", apply_on="instantiate")
        parser.link_arguments("data.model_name", "model.source_model", apply_on="instantiate")
        parser.link_arguments("data.layers_str", "model.source_layers", apply_on="instantiate")


def macro_cli(args: Sequence[str], run: bool = True) -> MacroCLI:
    """Build (and by default run) the ``ret-train macro`` CLI on ``args``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from ret_toolkit.macro.datamodule import TrajectoryDataModule
    from ret_toolkit.macro.module import RETModule

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
        return MacroCLI(
            RETModule, TrajectoryDataModule, args=list(args), run=run, seed_everything_default=0,
            trainer_defaults={**MACRO_DEFAULTS, "callbacks": [ModelCheckpoint(save_last=True)]},
            save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
        )


def _macro(args: Sequence[str]) -> int:
    cli = macro_cli(args)
    module = cli.model
    if getattr(module, "collapse_message", None):
        raise InputError(module.collapse_message)
    ckpt = getattr(cli.trainer.checkpoint_callback, "last_model_path", "") if cli.trainer else ""
    if ckpt and cli.trainer.is_global_zero:
        print(f"ret-train macro: checkpoint {ckpt}")
    return 0


COMMANDS = {"macro": _macro}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: ret-train {{{','.join(COMMANDS)}}} fit [options]  (ret-train macro fit --help)", file=sys.stderr)
        return 2
    name = argv[0]
    return run_cli(f"ret-train {name}", lambda: COMMANDS[name](argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
