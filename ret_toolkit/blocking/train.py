"""Fine-tune with blocked directions from Python: ``block(...)`` -> module, checkpoint and the run's files.

    from ret_toolkit.blocking import BlockedDirections, block
    dirs = BlockedDirections.from_arrays(v, layers=15, signs="+")      # v: (d_model,) e.g. a contrast vector
    run = block("caving.jsonl", dirs, penalty_weight=10.0, max_epochs=3)
    run.adapter_dir, run.history[-1]["drift"]

The Lightning objects of ``ret-train block fit``: a :class:`ConversationDataModule`,
a :class:`BlockingModule` wired to its model (:func:`wired_arguments`, which
``ret-train`` links too) and a ``Trainer`` with CSV logs and a last checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ret_toolkit.blocking.datamodule import ConversationDataModule
from ret_toolkit.blocking.directions import BlockedDirections
from ret_toolkit.blocking.module import BlockingModule
from ret_toolkit.training import TrainResult, fit_logged, wire

__all__ = ["BlockResult", "WIRED_KEYS", "block", "wire_model", "wired_arguments"]

#: Keys of :class:`BlockingModule` that come from the data module, never from the caller.
WIRED_KEYS = ("model", "chat_template")


def wired_arguments(data: ConversationDataModule) -> dict[str, Any]:
    """The :class:`BlockingModule` arguments the data decides: the model whose tokenizer rendered it."""
    return {"model": data.model, "chat_template": data.chat_template}


def wire_model(data: ConversationDataModule, **model_kwargs) -> BlockingModule:
    """The :class:`BlockingModule` for ``data`` (:func:`wired_arguments`) with ``model_kwargs`` for the rest."""
    return wire(BlockingModule, wired_arguments(data), model_kwargs, "blocking module")


@dataclass
class BlockResult(TrainResult):
    """:class:`~ret_toolkit.training.TrainResult` plus the run's files.

    Attributes:
        adapter_dir: the LoRA adapter (``peft``'s ``save_pretrained``; load with
            ``peft.PeftModel.from_pretrained(base, adapter_dir)``).
        history: per training step ``step``, ``loss``, ``sft`` and, where on, ``penalty``,
            ``kl`` and ``drift`` ({direction name: mean projection change on completion tokens}).
    """

    adapter_dir: Path | None = None
    history: list[dict[str, Any]] | None = None


def block(conversations: str | list, directions: BlockedDirections | str | None = None, *,
          model: str | None = None, penalty_weight: float = 1.0, data: dict | None = None,
          module: dict | None = None, max_epochs: int = 3, root_dir: str | Path = "runs/block", seed: int = 0,
          progress: bool = True, **trainer_kwargs) -> BlockResult:
    """LoRA fine-tune of ``model`` on ``conversations`` with ``directions`` blocked.

    Args:
        conversations: a ``.jsonl`` file of ``{"messages": [...]}`` records, or the message lists.
        directions: :class:`BlockedDirections` (saved under ``root_dir`` by content so the run
            can be resumed), a saved file, or None (plain LoRA, ``penalty_weight`` must be 0).
        model: model spec (None = the embedded model).
        penalty_weight: λ of the blocking penalty; 0 = plain LoRA that still logs the drift.
        data: other :class:`ConversationDataModule` arguments (``batch_size``, ``val_fraction``, ``train_on`` ...).
        module: other :class:`BlockingModule` arguments (``kl_weight``, ``lora_r``, ``lr``, ``dtype`` ...).
        max_epochs, root_dir, seed, progress, trainer_kwargs: as :func:`ret_toolkit.macro.train`
            (``accelerator``, ``devices``, ``strategy``, ``precision`` ...).
    """
    import lightning.pytorch as pl

    if isinstance(directions, BlockedDirections):
        directions = str(directions.save(Path(root_dir) / "directions" / f"{directions.fingerprint()}.safetensors"))
    pl.seed_everything(seed, workers=True, verbose=False)
    dm = ConversationDataModule(conversations, **{"model": model, "seed": seed, **(data or {})})
    run = fit_logged("block", wire_model(dm, directions=directions, penalty_weight=penalty_weight, **(module or {})),
                     dm, root_dir=root_dir, max_epochs=max_epochs, progress=progress, **trainer_kwargs)
    return BlockResult(run.module, run.checkpoint, run.trainer, dm, run.module.output_dir / "adapter",
                       run.module.history_records())
