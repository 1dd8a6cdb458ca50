"""``ret-train``: train ret_toolkit models with Lightning's CLI.

    ret-train macro fit --data.stores='[traj.h5]' --trainer.max_epochs=10
    ret-train macro fit --config run.yaml
    ret-train macro fit --print_config          # a complete, editable YAML config
    ret-train macro fit --config run.yaml --ckpt_path runs/macro/.../last.ckpt   # resume
    ret-train vq fit --data.stores='[traj.h5]' --data.block.layers=1-28 --data.block.stop=0
    ret-train task fit --data.task=pathfinding --data.path_nodes=4      # a small GPT on a synthetic task
    ret-train block fit --data.conversations=caving.jsonl --model.directions=dirs.safetensors  # LoRA + blocking

Every hyperparameter of the model (``--model.*``), the data (``--data.*``) and
the Lightning trainer (``--trainer.*``) is a YAML key and a flag. Runs under
any Lightning strategy, e.g. ``--trainer.strategy=ddp --trainer.devices=2``.
"""

from __future__ import annotations

import sys
import warnings
from functools import partial
from importlib import import_module
from typing import TYPE_CHECKING, Sequence

from activation_cache._version import __version__
from activation_cache.errors import InputError
from ret_toolkit.cli.base import run_cli
from ret_toolkit.training import trainer_defaults

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningCLI


#: family -> (module class, data-module class, the module that owns its wiring), as "module:name"
FAMILIES = {
    "macro": ("ret_toolkit.macro.module:RETModule", "ret_toolkit.macro.datamodule:TrajectoryDataModule",
              "ret_toolkit.macro.train"),
    "vq": ("ret_toolkit.vq.module:VQModule", "ret_toolkit.vq.datamodule:BlockDataModule", "ret_toolkit.vq.train"),
    "task": ("ret_toolkit.planning.model:TaskLM", "ret_toolkit.planning.datamodule:TaskDataModule",
             "ret_toolkit.planning.train"),
    "block": ("ret_toolkit.blocking.module:BlockingModule", "ret_toolkit.blocking.datamodule:ConversationDataModule",
              "ret_toolkit.blocking.train"),
}


#: family -> its checkpoints' name in messages
KINDS = {"macro": "RET", "vq": "VQ", "task": "task", "block": "blocking"}


def _load(spec: str):
    module, _, name = spec.partition(":")
    mod = import_module(module)
    return getattr(mod, name) if name else mod


def family_cli(family: str, args: Sequence[str], run: bool = True) -> LightningCLI:
    """Build (and by default run) the ``ret-train <family>`` CLI on ``args`` (``fit ...``)."""
    from jsonargparse import ArgumentError
    from lightning.pytorch.callbacks import ModelCheckpoint

    from ret_toolkit.cli.wired_cli import WiredCLI

    module, datamodule, wiring = (_load(spec) for spec in FAMILIES[family])
    cli_class = type(f"{family.capitalize()}CLI", (WiredCLI,),
                     {"wiring": wiring, "default_root": trainer_defaults(family)["default_root_dir"],
                      "kind": KINDS[family]})
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


macro_cli = partial(family_cli, "macro")
vq_cli = partial(family_cli, "vq")
task_cli = partial(family_cli, "task")
block_cli = partial(family_cli, "block")


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
    out = export_task_model(cli.model, cli.datamodule.tokenizer, f"{cli.trainer.log_dir}/model",
                            task=cli.datamodule.hparams)
    acc = cli.model.accuracy_history[-1] if cli.model.accuracy_history else float("nan")
    print(f"ret-train task: {cli.datamodule.hparams.task} held-out accuracy {acc:.3f}; model for ret-extract --model: {out}")
    _report_checkpoint("task", cli)
    return 0


def _block(args: Sequence[str]) -> int:
    cli = block_cli(args)
    if cli.trainer is None or not cli.trainer.is_global_zero:
        return 0
    history = cli.model.history_records()
    if history:
        last = history[-1]
        drift = ", ".join(f"{k} {v:+.3f}" for k, v in last.get("drift", {}).items())
        print(f"ret-train block: step {last['step']} sft {last['sft']:.3f}"
              + (f" penalty {last['penalty']:.4f}" if "penalty" in last else "")
              + (f"; drift {drift}" if drift else "") + f"; adapter {cli.model.output_dir}/adapter")
    _report_checkpoint("block", cli)
    return 0


COMMANDS = {"macro": _macro, "vq": _vq, "task": _task, "block": _block}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = f"usage: ret-train {{{','.join(COMMANDS)}}} fit [options]  (ret-train macro fit --help)"
    if argv[:1] in (["-h"], ["--help"]):
        print(f"{usage}\n\n{__doc__.strip()}")
        return 0
    if argv[:1] == ["--version"]:
        print(f"ret-train {__version__}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(usage, file=sys.stderr)
        return 2
    name = argv[0]
    return run_cli(f"ret-train {name}", lambda: COMMANDS[name](argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
