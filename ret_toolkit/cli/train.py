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
from typing import Sequence

from lightning.pytorch.cli import LightningCLI

from activation_cache.cli import run_cli
from activation_cache.errors import InputError

def trainer_defaults(root: str, name: str, **kw) -> dict:
    """Trainer defaults of one ``ret-train`` command: checkpoints and CSV logs under ``root/name/version_N``."""
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": root, "name": name}}
    # No model-summary table by default: commands print their own results (--trainer.enable_model_summary=true).
    return {"default_root_dir": root, "logger": logger, "enable_model_summary": False, **kw}


MACRO_DEFAULTS = trainer_defaults("runs/macro", "ret", max_epochs=10, log_every_n_steps=10)


class MacroCLI(LightningCLI):
    """LightningCLI for RETModule + TrajectoryDataModule with the shared keys linked."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.window", "model.window")
        parser.link_arguments("data.max_horizon", "model.max_horizon")
        parser.link_arguments("data.n_features", "model.d_input", apply_on="instantiate")
        parser.link_arguments("data.model_name", "model.source_model", apply_on="instantiate")
        parser.link_arguments("data.layers_str", "model.source_layers", apply_on="instantiate")


VQ_DEFAULTS = trainer_defaults("runs/vq", "vq", max_epochs=20, log_every_n_steps=10)


class VQCLI(LightningCLI):
    """LightningCLI for VQModule + BlockDataModule; the block's shape and provenance flow to the model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.split_seed", "model.seed")
        parser.link_arguments("data.d_model", "model.d_input", apply_on="instantiate")
        parser.link_arguments("data.n_block_layers", "model.n_layers", apply_on="instantiate")
        parser.link_arguments("data.max_offset", "model.max_offset", apply_on="instantiate")
        parser.link_arguments("data.model_name", "model.source_model", apply_on="instantiate")
        parser.link_arguments("data.block_info", "model.block_info", apply_on="instantiate")


TASK_DEFAULTS = trainer_defaults("runs/task", "task", max_epochs=4, log_every_n_steps=20)


class TaskCLI(LightningCLI):
    """LightningCLI for TaskLM + TaskDataModule; the tokenizer's size and special ids flow to the model."""

    def add_arguments_to_parser(self, parser) -> None:
        for key in ("vocab_size", "bos_id", "eos_id", "pad_id"):
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")


def _cli(cli_class, module, datamodule, defaults: dict, args: Sequence[str], run: bool):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from jsonargparse import ArgumentError

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
        try:
            return cli_class(
                module, datamodule, args=list(args), run=run, seed_everything_default=0,
                trainer_defaults={**defaults, "callbacks": [ModelCheckpoint(save_last=True)]},
                save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
                parser_kwargs={"exit_on_error": False},
            )
        except ArgumentError as e:  # jsonargparse would print the whole usage; one line is enough
            raise InputError(f"{' '.join(str(e).split())} (see --help)") from None


def vq_cli(args: Sequence[str], run: bool = True) -> VQCLI:
    """Build (and by default run) the ``ret-train vq`` CLI on ``args``."""
    from ret_toolkit.vq.datamodule import BlockDataModule
    from ret_toolkit.vq.module import VQModule

    return _cli(VQCLI, VQModule, BlockDataModule, VQ_DEFAULTS, args, run)


def task_cli(args: Sequence[str], run: bool = True) -> TaskCLI:
    """Build (and by default run) the ``ret-train task`` CLI on ``args``."""
    from ret_toolkit.planning.datamodule import TaskDataModule
    from ret_toolkit.planning.model import TaskLM

    return _cli(TaskCLI, TaskLM, TaskDataModule, TASK_DEFAULTS, args, run)


def macro_cli(args: Sequence[str], run: bool = True) -> MacroCLI:
    """Build (and by default run) the ``ret-train macro`` CLI on ``args``."""
    from ret_toolkit.macro.datamodule import TrajectoryDataModule
    from ret_toolkit.macro.module import RETModule

    return _cli(MacroCLI, RETModule, TrajectoryDataModule, MACRO_DEFAULTS, args, run)


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
