"""A small GPT trained on a synthetic task, as a LightningModule (docs/architecture.md §3.4).

The network is a ``transformers`` GPT-2 (learned absolute positions) or Llama
(rotary positions, which learn in-context lookups such as "find the edge that
starts at node X" much faster) built from a config, so the trained
model saves with ``save_pretrained`` and loads with ``ret-extract --model DIR``:
the tracer, the store and the VQ probes work on it unchanged.

Optional multi-token prediction (MTP): ``mtp_heads = m`` adds m small heads on
the last hidden state that predict tokens t+2 .. t+1+m through the shared
unembedding; their loss is added with weight ``mtp_weight``. The exported
model is the plain next-token model (the heads are a training signal only).
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from ret_toolkit.hparams import check_hparams


class TaskLM(pl.LightningModule):
    """A small decoder-only language model for a synthetic task.

    Args:
        arch: ``"llama"`` (default, rotary positions) or ``"gpt2"``.
        vocab_size: tokenizer size (linked from the data module).
        bos_id, eos_id, pad_id: special token ids (linked from the data module).
        n_layer, n_embd, n_head, n_positions: shape (Llama: MLP width 4 * n_embd).
        mtp_heads: extra heads predicting t+2 .. t+1+mtp_heads (0 = next-token only).
        mtp_weight: weight of the summed MTP losses.
        lr, weight_decay, warmup_steps: AdamW with linear warm-up and cosine decay to lr/10.
            The defaults (4 layers x 64, lr 2e-3) are what learned path-finding on this
            CPU: a 128-wide model at lr 1e-3 had not learned in-context edge lookup
            (teacher-forced hop accuracy 0.19) after 4000 steps; at 64 wide and lr 2e-3
            it did after ~1000 steps (held-out valid paths 0.58 -> 0.73 after 6250 steps).
        eval_samples: held-out prompts completed after each validation epoch to log
            ``val/accuracy`` (the task's own scorer; see :mod:`ret_toolkit.planning.decode`).
    """

    def __init__(
        self,
        vocab_size: int = 64,
        arch: str = "llama",
        bos_id: int = 1,
        eos_id: int = 2,
        pad_id: int = 0,
        n_layer: int = 4,
        n_embd: int = 64,
        n_head: int = 4,
        n_positions: int = 128,
        mtp_heads: int = 0,
        mtp_weight: float = 0.5,
        lr: float = 2e-3,
        weight_decay: float = 0.1,
        warmup_steps: int = 100,
        eval_samples: int = 200,
    ):
        super().__init__()
        check_hparams("model", locals(), {
            "vocab_size": "count", "n_layer": "count", "n_embd": "count", "n_head": "count", "n_positions": "count",
            "mtp_heads": "index", "mtp_weight": "non_negative", "lr": "positive", "weight_decay": "non_negative",
            "warmup_steps": "index", "eval_samples": "index"})
        self.save_hyperparameters()
        ids = dict(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
        if arch == "gpt2":
            self.model = GPT2LMHeadModel(GPT2Config(
                vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids))
        elif arch == "llama":
            self.model = LlamaForCausalLM(LlamaConfig(
                vocab_size=vocab_size, hidden_size=n_embd, intermediate_size=4 * n_embd, num_hidden_layers=n_layer,
                num_attention_heads=n_head, num_key_value_heads=n_head, max_position_embeddings=n_positions,
                tie_word_embeddings=True, **ids))
        else:
            raise ValueError(f"unknown arch {arch!r}; choose 'llama' or 'gpt2'")
        self.mtp = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(n_embd), nn.Linear(n_embd, n_embd), nn.GELU(), nn.Linear(n_embd, n_embd))
            for _ in range(mtp_heads)
        )
        self.accuracy_history: list[float] = []

    def losses(self, batch: dict) -> dict[str, Tensor]:
        """Cross-entropy (nats/token) on the positions marked by ``loss_mask``.

        batch: ``input_ids``, ``attention_mask``, ``loss_mask`` (B, L); ``loss_mask[b, t]``
        says whether token t is a training target (predicted from positions < t); optional
        ``labels`` (B, L), the targets when ``input_ids`` were corrupted (default: ``input_ids``).
        """
        ids, att, target_mask = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
        labels = batch.get("labels", ids)
        out = self.model(input_ids=ids, attention_mask=att, output_hidden_states=bool(len(self.mtp)))
        result = {"ntp": _masked_ce(out.logits[:, :-1], labels[:, 1:], target_mask[:, 1:])}
        if len(self.mtp):
            h = out.hidden_states[-1]
            extra = []
            for j, head in enumerate(self.mtp, start=2):  # head j predicts token t + j from position t
                logits = self.model.lm_head(h[:, :-j] + head(h[:, :-j]))
                extra.append(_masked_ce(logits, labels[:, j:], target_mask[:, j:]))
            result["mtp"] = torch.stack(extra).mean()
        return result

    def _step(self, batch: dict, stage: str) -> Tensor:
        parts = self.losses(batch)
        loss = parts["ntp"] + self.hparams.mtp_weight * parts.get("mtp", 0.0)
        bs = batch["input_ids"].shape[0]
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True, sync_dist=True, batch_size=bs)
        self.log(f"{stage}/ntp_loss", parts["ntp"], on_step=False, on_epoch=True, sync_dist=True, batch_size=bs)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "score_generations"):
            return
        acc = dm.score_generations(self, n=self.hparams.eval_samples)
        self.accuracy_history.append(acc)
        self.log("val/accuracy", acc, on_step=False, on_epoch=True, prog_bar=True, rank_zero_only=True)

    def configure_optimizers(self) -> Any:
        decay = [p for n, p in self.named_parameters() if p.dim() >= 2 and "embed" not in n and "wpe" not in n
                 and "wte" not in n]
        ids = {id(p) for p in decay}
        rest = [p for p in self.parameters() if id(p) not in ids]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.hparams.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=self.hparams.lr, betas=(0.9, 0.98))
        total = self.trainer.estimated_stepping_batches
        warm = self.hparams.warmup_steps
        if not math.isfinite(total):
            return opt

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            frac = min((step - warm) / max(total - warm, 1), 1.0)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _masked_ce(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Mean cross-entropy over ``mask``: logits (B, L, V), targets / mask (B, L)."""
    m = mask.bool()
    return F.cross_entropy(logits[m], targets[m])
