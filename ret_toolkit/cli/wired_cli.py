"""The LightningCLI of ``ret-train``: model arguments that the data decides are linked through the family's wiring.

Imported only when a ``ret-train <family>`` command runs (Lightning is slow to import).
"""

from __future__ import annotations

from functools import partial

from lightning.pytorch.cli import LightningCLI

from ret_toolkit.checkpoint import check_family


class WiredCLI(LightningCLI):
    """LightningCLI whose model arguments that the data decides are linked through the family's ``wired_arguments``.

    The same function wires the model in the Python API (``ret_toolkit.macro.train`` etc.),
    so a YAML config and a notebook build the same model.
    """

    wiring = None  # the family's train module: wired_arguments(datamodule) and WIRED_KEYS
    default_root = None  # the family's default log root (runs/<family>)
    kind = ""  # the family's checkpoints as messages name them (ret_toolkit.checkpoint.FAMILY_KEYS)

    def add_arguments_to_parser(self, parser) -> None:
        for key in self.wiring.WIRED_KEYS:
            parser.link_arguments("data", f"model.{key}", apply_on="instantiate",
                                  compute_fn=partial(_wired_value, self.wiring.wired_arguments, key))

    def parse_arguments(self, parser, args) -> None:
        """Parse, then check ``--ckpt_path``: Lightning reads the checkpoint's hyperparameters into the
        config next, and a file of another family (or none at all) should fail with what it is."""
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if ckpt_path:
            check_family(ckpt_path, self.kind)

    def before_instantiate_classes(self) -> None:
        """``--trainer.default_root_dir DIR`` alone moves the whole run (logs and checkpoints) to DIR.

        Our default CSV logger names its own ``save_dir`` (runs/<family>), and Lightning puts the
        checkpoints under the logger's directory, so without this the flag would be ignored.
        """
        trainer = (self.config[self.subcommand] if self.subcommand else self.config).trainer
        logger = trainer.get("logger")
        init = logger.get("init_args") if hasattr(logger, "get") else None
        if (trainer.get("default_root_dir") not in (None, self.default_root) and init is not None
                and init.get("save_dir") == self.default_root):
            init.save_dir = trainer.default_root_dir


def _wired_value(wired_arguments, key, data):
    return wired_arguments(data)[key]
