"""LoRA fine-tuning of a causal LM with blocked directions: the LightningModule of ``ret-train block fit``.

Each step runs the batch twice through one model:

1. the **base** pass, with the LoRA adapters switched off (``peft``'s ``disable_adapter``;
   no second copy of the model in memory), in eval mode and without gradients: the base
   model's block outputs at the blocked layers and, for the KL baseline, its logits;
2. the **fine-tuned** pass, adapters on, with gradients.

The loss is ``sft + penalty_weight · blocking_penalty + kl_weight · kl_to_base``
(:mod:`ret_toolkit.blocking.penalty`): the SFT loss on completion tokens, the one-sided
penalty on each blocked feature's move past the base value in its blocked sign, and a
KL-to-base baseline. With ``penalty_weight=0`` the same module is plain LoRA and still
logs how far the blocked features drift (the comparison a study needs).

Checkpoints hold only the trainable (LoRA) weights; the base weights come from the
model spec again on resume. When the fit ends, the run directory gets ``adapter/``
(``peft``'s ``save_pretrained``), ``blocked_directions.safetensors`` and
``blocking_history.json`` (per step: loss parts and the drift of every direction).
"""

from __future__ import annotations

import json
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from activation_cache.errors import InputError
from ret_toolkit.blocking.directions import BlockedDirections
from ret_toolkit.blocking.penalty import blocking_penalty, kl_to_base, projection_drift

__all__ = ["BlockingModule"]


class BlockingModule(pl.LightningModule):
    """LoRA adapters on a causal LM, trained with the blocking penalty (module docstring).

    Args:
        model: model spec (None = the embedded SmolLM2-135M-Instruct; a directory, ``.gguf``
            file or hub id), as :func:`activation_cache.load_model` takes it.
        directions: a :class:`~ret_toolkit.blocking.directions.BlockedDirections` file, or None
            (no penalty and no drift to log).
        penalty_weight: λ of the blocking penalty (squared projection units); 0 = plain LoRA.
        kl_weight: weight of the KL(p_θ ‖ p_base) baseline over completion positions (nats); 0 = off.
        lora_r, lora_alpha, lora_dropout, target_modules: ``peft.LoraConfig``'s (``"all-linear"``:
            every linear layer of the blocks).
        lr, weight_decay: AdamW's, over the adapter weights only.
        dtype: weight dtype of the base model (``"auto"``: its own on a GPU, float32 on a CPU).
        chat_template: as the data module's (the tokenizer is not needed here; kept for the run's record).
    """

    def __init__(self, model: str | None = None, directions: str | None = None, penalty_weight: float = 1.0,
                 kl_weight: float = 0.0, lora_r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.0,
                 target_modules: str | list[str] = "all-linear", lr: float = 2e-4, weight_decay: float = 0.0,
                 dtype: str = "auto", chat_template: str | None = None):
        super().__init__()
        for name, value in (("penalty_weight", penalty_weight), ("kl_weight", kl_weight),
                            ("lora_dropout", lora_dropout), ("weight_decay", weight_decay)):
            if not value >= 0:
                raise InputError(f"{name} must be >= 0, got {value}")
        if lora_r < 1 or not lr > 0:
            raise InputError(f"lora_r must be >= 1 and lr > 0, got {lora_r} and {lr}")
        self.save_hyperparameters()
        self.blocked = BlockedDirections.load(directions) if directions else None
        if penalty_weight > 0 and self.blocked is None:
            raise InputError("penalty_weight > 0 needs directions (a BlockedDirections file); "
                             "set penalty_weight=0 for plain LoRA")
        if self.blocked is not None:
            self.register_buffer("projector", self.blocked.projector(), persistent=False)
            self.register_buffer("signs", torch.tensor(self.blocked.signs, dtype=torch.float32), persistent=False)
        self.lm = None
        self.model_name = ""
        self.history: list[dict[str, Any]] = []
        self.output_dir: Path | None = None  # where the fit's files went (set when it ends)
        self.strict_loading = False  # checkpoints hold the adapters only

    # ------------------------------------------------------------------ model

    def configure_model(self) -> None:
        """Load the base model onto this process's device and wrap it with LoRA adapters; once.

        Loaded straight onto the trainer's root device (each DDP rank its own GPU), so
        ``dtype="auto"`` means what :func:`activation_cache.load_model` says for that device:
        the checkpoint's own dtype on a GPU, float32 on a CPU. Without a trainer: the CPU.
        """
        if self.lm is not None:
            return
        from peft import LoraConfig, get_peft_model

        from activation_cache.models import load_model

        device = str(self.trainer.strategy.root_device) if self._trainer is not None else "cpu"
        loaded = load_model(self.hparams.model, device=device, dtype=self.hparams.dtype, progress=False)
        if self.blocked is not None:
            self.blocked.check_model(loaded.arch.n_layers, loaded.arch.d_model, loaded.name)
        config = LoraConfig(r=self.hparams.lora_r, lora_alpha=self.hparams.lora_alpha,
                            lora_dropout=self.hparams.lora_dropout, target_modules=self.hparams.target_modules,
                            task_type="CAUSAL_LM")
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            self.lm = get_peft_model(loaded.model, config)
        self.lm.train()  # load_model hands it over in eval mode; dropout (if any) belongs to training
        self.model_name = loaded.name

    @property
    def inner(self):
        """The ``transformers`` model inside the adapters (its blocks carry the LoRA layers)."""
        return self.lm.get_base_model()

    def _capture(self, detach: bool):
        from ret_toolkit.steering.detect import LayerCapture

        return LayerCapture(self.inner, self.blocked.capture_layers, detach=detach) if self.blocked else nullcontext()

    @torch.no_grad()
    def base_pass(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor | None, Any]:
        """(base block outputs at the blocked layers (B, T, L·d) float32 or None, base logits (B, T, V)):
        adapters off, eval mode (no dropout), no gradients."""
        inner, was_training = self.inner, self.inner.training
        inner.eval()
        try:
            with self.lm.disable_adapter(), self._capture(True) as cap:
                out = inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
                hidden = cap.hidden() if cap is not None else None
        finally:
            inner.train(was_training)
        return hidden, out.logits

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        ids, attn, completion = batch["input_ids"], batch["attention_mask"], batch["completion"]
        hp = self.hparams
        need_base = self.blocked is not None or hp.kl_weight > 0
        base_hidden, base_logits = self.base_pass(ids, attn) if need_base else (None, None)
        with self._capture(False) as cap:
            out = self.lm(input_ids=ids, attention_mask=attn, labels=batch["labels"], use_cache=False)
            hidden = cap.hidden() if cap is not None else None
        parts = {"sft": out.loss}
        if hp.kl_weight > 0:  # the positions whose next token is a completion token, as the SFT loss
            predicts = torch.zeros_like(completion)
            predicts[:, :-1] = completion[:, 1:]
            parts["kl"] = kl_to_base(out.logits, base_logits, predicts)
        drift = None
        if self.blocked is not None:
            tuned_a = hidden @ self.projector
            base_a = base_hidden @ self.projector
            parts["penalty"] = blocking_penalty(tuned_a, base_a, self.signs, completion)
            drift = projection_drift(tuned_a, base_a, completion)
        loss = parts["sft"] + hp.penalty_weight * parts.get("penalty", 0.0) + hp.kl_weight * parts.get("kl", 0.0)
        bs = int(ids.shape[0])
        train = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=train, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=bs)
        for name, value in parts.items():
            self.log(f"{stage}/{name}", value, on_step=train, on_epoch=True, sync_dist=True, batch_size=bs)
        if drift is not None:
            for name, value in zip(self.blocked.names, drift):
                self.log(f"{stage}/drift/{name}", value, on_step=train, on_epoch=True, sync_dist=True, batch_size=bs)
        if train:
            self.history.append({"step": int(self.global_step), "loss": loss.detach(),
                                 **{k: v.detach() for k, v in parts.items()},
                                 **({"drift": drift} if drift is not None else {})})
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # ------------------------------------------------------------------ files

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the adapter weights: the base model is the spec's, and large."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def history_records(self) -> list[dict[str, Any]]:
        """Per training step: ``step``, ``loss``, ``sft`` and, where on, ``penalty``, ``kl``, ``drift`` {name: value}."""
        out = []
        for h in self.history:
            rec = {k: (float(v) if torch.is_tensor(v) and v.ndim == 0 else v) for k, v in h.items() if k != "drift"}
            if "drift" in h:
                rec["drift"] = dict(zip(self.blocked.names, h["drift"].float().cpu().tolist()))
            out.append(rec)
        return out

    def save_outputs(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``adapter/``, ``blocked_directions.safetensors`` (when blocking) and ``blocking_history.json``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"adapter": out_dir / "adapter", "history": out_dir / "blocking_history.json"}
        self.lm.save_pretrained(str(paths["adapter"]))
        if self.blocked is not None:
            paths["directions"] = self.blocked.save(out_dir / "blocked_directions.safetensors")
        record = {"model": self.model_name, "hparams": {k: v for k, v in self.hparams.items()},
                  "directions": None if self.blocked is None else
                  {"names": self.blocked.names, "layers": self.blocked.layers, "signs": self.blocked.signs,
                   "source": self.blocked.source},
                  "steps": self.history_records()}
        paths["history"].write_text(json.dumps(record, indent=1), encoding="utf-8")
        return paths

    def on_train_end(self) -> None:
        # log_dir is a collective under DDP: every rank asks, one writes
        self.output_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if self.trainer.is_global_zero:
            self.save_outputs(self.output_dir)
