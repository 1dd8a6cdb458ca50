"""The settings of the demo run (``ret-demo``): where it runs and writes (:class:`DemoInputs`) and its sizes (:class:`DemoSettings`).

Each :class:`DemoInputs` field is a ``ret-demo`` flag of the same name. Import-light: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from activation_cache.settings import (chat_template_setting, compression_setting, device_map_setting,
                                       device_setting, dtype_setting, model_dtype_setting, model_setting, setting)

__all__ = ["DemoInputs", "DemoSettings"]


@dataclass(frozen=True)
class DemoInputs:
    """The ``ret-demo`` flags: output directory, run size, model and its placement, and the store's format.

    out: output directory (None: ``demo_out``, or ``demo_quick`` with ``quick``).
    """

    out: str | None = setting(None, "output directory (default demo_out, or demo_quick with --quick)")
    quick: bool = setting(False, "small run: 72 prompts, 3 epochs (about a minute on 2 CPU cores)")
    overwrite: bool = setting(False, "replace the results of a demo run with other settings in --out")
    model: str | None = model_setting("model spec (default: the embedded SmolLM2-135M-Instruct)")
    chat_template: str | None = chat_template_setting()
    dtype: str = dtype_setting()
    compression: str | None = compression_setting()
    device: str | None = device_setting()
    model_dtype: str | None = model_dtype_setting()
    device_map: str | dict | None = device_map_setting()

    @property
    def out_dir(self) -> str:
        """``out``, or the default directory of a quick or a full run."""
        return self.out or ("demo_quick" if self.quick else "demo_out")


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo run. ``quick`` takes about a minute on 2 CPU cores (see the README)."""

    n_prompts: int = 276
    generate: int = 48
    epochs: int = 8
    batch_size: int = 16
    n_macrostates: int = 12
    layer: str = "middle"

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(n_prompts=72, generate=24, epochs=3)
