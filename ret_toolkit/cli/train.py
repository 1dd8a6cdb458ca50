"""``ret-train``: train ret_toolkit models with Lightning's CLI.

    ret-train macro fit --data.stores='[traj.h5]' --trainer.max_epochs=10
    ret-train macro fit --config run.yaml
    ret-train macro fit --print_config          # a complete, editable YAML config
    ret-train macro fit --config run.yaml --ckpt_path runs/macro/.../last.ckpt   # resume
    ret-train vq fit --data.stores='[traj.h5]' --data.block.layers=1-28 --data.block.stop=0
    ret-train task fit --data.task=pathfinding --data.path_nodes=4      # a small GPT on a synthetic task

Every hyperparameter of the model (``--model.*``), the data (``--data.*``) and
the Lightning trainer (``--trainer.*``) is a YAML key and a flag. Runs under
any Lightning strategy, e.g. ``--trainer.strategy=ddp --trainer.devices=2``.
"""

from __future__ import annotations

import sys
import warnings
from functools import partial
from typing import Sequence

from lightning.pytorch.cli import LightningCLI

from activation_cache.errors import InputError
from ret_toolkit.cli.base import run_cli
from ret_toolkit.training import trainer_defaults


def _link_wired(parser, wired_arguments, keys) -> None:
    """Link the model arguments that the data module decides, through the same function the Python API uses."""
    for key in keys:
        parser.link_arguments("data", f"model.{key}", compute_fn=partial(_wired_value, wired_arguments, key),
                              apply_on="instantiate")


def _wired_value(wired_arguments, key, data):
    return wired_arguments(data)[key]


class MacroCLI(LightningCLI):
    """LightningCLI for RETModule + TrajectoryDataModule, wired by :func:`ret_toolkit.macro.train.wired_arguments`."""

    def add_arguments_to_parser(self, parser) -> None:
        from ret_toolkit.macro.train import WIRED_KEYS, wired_arguments

        _link_wired(parser, wired_arguments, WIRED_KEYS)


class VQCLI(LightningCLI):
    """LightningCLI for VQModule + BlockDataModule, wired by :func:`ret_toolkit.vq.train.wired_arguments`."""

    def add_arguments_to_parser(self, parser) -> None:
        from ret_toolkit.vq.train import WIRED_KEYS, wired_arguments

        _link_wired(parser, wired_arguments, WIRED_KEYS)


class TaskCLI(LightningCLI):
    """LightningCLI for TaskLM + TaskDataModule, wired by :func:`ret_toolkit.planning.train.wired_arguments`."""

    def add_arguments_to_parser(self, parser) -> None:
        from ret_toolkit.planning.train import WIRED_KEYS, wired_arguments

        _link_wired(parser, wired_arguments, WIRED_KEYS)


def _cli(cli_class, module, datamodule, family: str, args: Sequence[str], run: bool):
    from jsonargparse import ArgumentError
    from lightning.pytorch.callbacks import ModelCheckpoint

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
        try:
            return cli_class(
                module, datamodule, args=list(args), run=run, seed_everything_default=0,
                trainer_defaults={**trainer_defaults(family), "callbacks": [ModelCheckpoint(save_last=True)]},
                save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
                parser_kwargs={"exit_on_error": False},
            )
        except ArgumentError as e:  # jsonargparse would print the whole usage; one line is enough
            raise InputError(f"{' '.join(str(e).split())} (see --help)") from None


def vq_cli(args: Sequence[str], run: bool = True) -> VQCLI:
    """Build (and by default run) the ``ret-train vq`` CLI on ``args``."""
    from ret_toolkit.vq.datamodule import BlockDataModule
    from ret_toolkit.vq.module import VQModule

    return _cli(VQCLI, VQModule, BlockDataModule, "vq", args, run)


def task_cli(args: Sequence[str], run: bool = True) -> TaskCLI:
    """Build (and by default run) the ``ret-train task`` CLI on ``args``."""
    from ret_toolkit.planning.datamodule import TaskDataModule
    from ret_toolkit.planning.model import TaskLM

    return _cli(TaskCLI, TaskLM, TaskDataModule, "task", args, run)


def macro_cli(args: Sequence[str], run: bool = True) -> MacroCLI:
    """Build (and by default run) the ``ret-train macro`` CLI on ``args``."""
    from ret_toolkit.macro.datamodule import TrajectoryDataModule
    from ret_toolkit.macro.module import RETModule

    return _cli(MacroCLI, RETModule, TrajectoryDataModule, "macro", args, run)


def _report_checkpoint(name: str, cli: LightningCLI) -> None:
    ckpt = getattr(cli.trainer.checkpoint_callback, "last_model_path", "") if cli.trainer else ""
    if ckpt and cli.trainer.is_global_zero:
        print(f"ret-train {name}: checkpoint {ckpt}")


def _macro(args: Sequence[str]) -> int:
    cli = macro_cli(args)
    if getattr(cli.model, "collapse_message", None):
        raise InputError(cli.model.collapse_message)
    _report_checkpoint("macro", cli)
    return 0


def _vq(args: Sequence[str]) -> int:
    cli = vq_cli(args)
    health = getattr(cli.model, "health_history", None)
    if health and cli.trainer and cli.trainer.is_global_zero:
        h = health[-1]
        print(f"ret-train vq: code perplexity {h['code_perplexity']:.1f} of {cli.model.hparams.num_codes}, "
              f"dead codes {100 * h['dead_code_fraction']:.0f} %, reconstruction EV {h['recon_ev']:.3f}")
    _report_checkpoint("vq", cli)
    return 0


def _task(args: Sequence[str]) -> int:
    from ret_toolkit.planning.datamodule import export_task_model

    cli = task_cli(args)
    if cli.trainer is None or not cli.trainer.is_global_zero:
        return 0
    out = export_task_model(cli.model, cli.datamodule.tokenizer, f"{cli.trainer.log_dir}/model")
    acc = cli.model.accuracy_history[-1] if cli.model.accuracy_history else float("nan")
    print(f"ret-train task: {cli.datamodule.hparams.task} held-out accuracy {acc:.3f}; model for ret-extract --model: {out}")
    _report_checkpoint("task", cli)
    return 0


COMMANDS = {"macro": _macro, "vq": _vq, "task": _task}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: ret-train {{{','.join(COMMANDS)}}} fit [options]  (ret-train macro fit --help)", file=sys.stderr)
        return 2
    name = argv[0]
    return run_cli(f"ret-train {name}", lambda: COMMANDS[name](argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
