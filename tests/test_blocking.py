"""ret_toolkit.blocking: the penalty, the completion mask, the directions file, and known answers on tiny models.

Known answers: a direction that an unconstrained LoRA fine-tune moves (found by running
one) is held at the base value when its rises are blocked and left free when only its
falls are; with the adapters off the model is the base model exactly; prompt tokens
never enter the penalty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from activation_cache.errors import InputError
from ret_toolkit.blocking import BlockedDirections, BlockingModule, block, blocking_penalty, encode_conversation
from ret_toolkit.blocking.datamodule import ConversationDataModule, collate_conversations
from ret_toolkit.blocking.penalty import kl_to_base, projection_drift
from ret_toolkit.steering.detect import LayerCapture
from tiny_models import make_tokenizer, save_tiny_model

BIN = Path(sys.executable).parent
TRAINER = dict(accelerator="cpu", devices=1, enable_progress_bar=False, log_every_n_steps=1)

# Every conversation ends with the same kind of assistant reply: a fine-tune moves the
# block outputs on those tokens in one consistent direction.
QUESTIONS = ["What is 2 + 3?", "What is 7 * 6?", "What is the capital of France?", "Are you sure?",
             "What is 9 * 9?", "What is 100 - 58?", "Let me think step by step.", "What is 12 + 30?"]


def conversations(n: int = 16) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]},
             {"role": "assistant", "content": "You are right, I made a mistake."}] for i in range(n)]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny_model("llama", tmp_path_factory.mktemp("blocking") / "llama")


# ---------------------------------------------------------------- the penalty


def test_penalty_is_one_sided_squared_and_only_on_completion_tokens():
    base = torch.zeros(1, 4, 2)
    tuned = torch.tensor([[[1.0, 1.0], [-2.0, -2.0], [3.0, 0.0], [5.0, 5.0]]])
    signs = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[True, True, True, False]])  # token 3 is prompt: its large move must not count
    # token 0: rise 1 on +, rise on − is free -> 1; token 1: fall on + free, fall 2 on − -> 4; token 2: 9
    assert blocking_penalty(tuned, base, signs, mask).item() == pytest.approx((1 + 4 + 9) / 3)
    assert blocking_penalty(tuned, base, signs, torch.zeros(1, 4, dtype=torch.bool)).item() == 0.0
    assert torch.allclose(projection_drift(tuned, base, mask), torch.tensor([2 / 3, -1 / 3]))
    only_prompt = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [9.0, -9.0]]])
    assert blocking_penalty(only_prompt, base, signs, mask).item() == 0.0


def test_penalty_gradient_never_reaches_the_base_side():
    base = torch.zeros(1, 2, 1, requires_grad=True)
    tuned = torch.ones(1, 2, 1, requires_grad=True)
    blocking_penalty(tuned, base, torch.ones(1), torch.ones(1, 2, dtype=torch.bool)).backward()
    assert base.grad is None and tuned.grad.abs().sum() > 0


def test_kl_to_base_is_zero_for_equal_logits_and_positive_otherwise():
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert kl_to_base(logits, logits, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_to_base(logits, torch.zeros_like(logits), mask).item() > 0.01
    other = logits.clone()
    other[0, 0] = 0.0  # differs only where the mask is off
    mask[0, 0] = False
    assert kl_to_base(logits, other, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_to_base(logits, other, torch.zeros_like(mask)).item() == 0.0


# ---------------------------------------------------------------- conversations


def test_completion_tokens_are_the_assistant_turn():
    tok = make_tokenizer()
    msgs = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5."},
            {"role": "user", "content": "Are you sure?"}, {"role": "assistant", "content": "Yes, 5."}]
    ids, completion = encode_conversation(tok, msgs)
    assert tok.decode([i for i, c in zip(ids, completion) if c]) == "Yes, 5.<|end|>"
    n = sum(completion)
    assert completion == [False] * (len(ids) - n) + [True] * n  # the last turn and nothing before it
    ids_all, completion_all = encode_conversation(tok, msgs, train_on="all")
    assert ids_all == ids
    assert tok.decode([i for i, c in zip(ids, completion_all) if c]) == "5.<|end|>Yes, 5.<|end|>"
    batch = collate_conversations([(ids, completion), (ids[:5] + ids[-3:], [False] * 5 + [True] * 3)], tok.pad_token_id)
    assert batch["input_ids"].shape == (2, len(ids))
    assert (batch["labels"] != -100).sum() == sum(completion) + 3
    assert not batch["completion"][1, 8:].any() and batch["attention_mask"][1].sum() == 8


@pytest.mark.parametrize("msgs, message", [
    ([{"role": "user", "content": "hi"}], "last turn must be the assistant's"),
    ([], "last turn must be the assistant's"),
])
def test_conversation_errors(msgs, message):
    with pytest.raises(InputError, match=message):
        encode_conversation(make_tokenizer(), msgs, where="x.jsonl:3")


def test_no_chat_template_is_refused():
    tok = make_tokenizer()
    tok.chat_template = None
    with pytest.raises(InputError, match="no chat template"):
        encode_conversation(tok, conversations(1)[0])


def test_data_module_reads_jsonl_and_names_bad_lines(tmp_path, llama_dir):
    good = tmp_path / "c.jsonl"
    good.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations(10)))
    dm = ConversationDataModule(str(good), model=str(llama_dir), batch_size=4, val_fraction=0.2)
    dm.setup()
    assert len(dm.train_rows) == 8 and len(dm.val_rows) == 2
    assert next(iter(dm.train_dataloader()))["input_ids"].shape[0] == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": conversations(1)[0]}) + "\n" + json.dumps({"text": "plain"}) + "\n")
    with pytest.raises(InputError, match=r"bad\.jsonl.*has text, not messages"):
        ConversationDataModule(str(bad), model=str(llama_dir)).setup()
    with pytest.raises(InputError, match="more than max_length 4"):
        ConversationDataModule(conversations(2), model=str(llama_dir), max_length=4).setup()


# ---------------------------------------------------------------- directions


def test_directions_save_load_and_checks(tmp_path):
    d = BlockedDirections.from_arrays(torch.tensor([[3.0, 4.0], [0.0, 2.0]]), layers=[1, 0], signs=["+", "-"])
    assert torch.allclose(d.vectors.norm(dim=1), torch.ones(2)) and d.signs == [1, -1]
    back = BlockedDirections.load(d.save(tmp_path / "d.safetensors"))
    assert torch.equal(back.vectors, d.vectors) and back.layers == [1, 0] and back.signs == [1, -1]
    assert d.capture_layers == [0, 1]
    hidden = torch.tensor([[[1.0, 0.0, 0.0, 1.0]]])  # layer 0 = (1, 0), layer 1 = (0, 1)
    assert torch.allclose(hidden @ d.projector(), torch.tensor([[[0.8, 0.0]]]))
    r = d.random_like(seed=1)
    assert r.layers == d.layers and r.signs == d.signs and not torch.allclose(r.vectors, d.vectors)
    with pytest.raises(InputError, match="out of range"):
        d.check_model(n_layers=1, d_model=2)
    with pytest.raises(InputError, match="d_model 2 but"):
        d.check_model(n_layers=2, d_model=3)
    with pytest.raises(InputError, match="zero vectors"):
        BlockedDirections.from_arrays(torch.zeros(1, 2), layers=0)
    with pytest.raises(InputError, match="blocked sign"):
        BlockedDirections.from_arrays(torch.ones(1, 2), layers=0, signs="up")
    (tmp_path / "other.safetensors").write_bytes(b"not a file")
    with pytest.raises(InputError, match="other.safetensors: not a readable"):
        BlockedDirections.load(tmp_path / "other.safetensors")
    with pytest.raises(InputError, match="not found"):
        BlockedDirections.load(tmp_path / "missing.safetensors")


def test_contrast_of_conversations_counts_completion_tokens_only(llama_dir):
    """Known answer: the mean is over the completion tokens alone (equal to one computed by hand, and
    a conversation given twice weighs as once); swapping the two sets flips the direction."""
    import transformers

    from ret_toolkit.blocking import from_conversations
    from ret_toolkit.blocking.contrast import completion_means

    model = transformers.AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    tok = make_tokenizer()
    a = [[{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5."}]]
    b = [[{"role": "user", "content": "Are you sure?"}, {"role": "assistant", "content": "5."}]]
    ids, completion = encode_conversation(tok, a[0])
    with torch.no_grad(), LayerCapture(model, [1]) as cap:
        model(input_ids=torch.tensor([ids]))
        by_hand = cap.hidden()[0][torch.tensor(completion)].mean(0)
    assert torch.allclose(completion_means(model, tok, a + a, [1])[0], by_hand, atol=1e-5)
    # a causal model's reply states depend on the prompt, so A and B differ; swapping them flips the sign
    d_ab = from_conversations(model, tok, a, b, layers=1)
    d_ba = from_conversations(model, tok, b, a, layers=1)
    assert torch.allclose(d_ab.vectors, -d_ba.vectors, atol=1e-5) and d_ab.source["norms"][0] > 0
    with pytest.raises(InputError, match="no conversations"):
        completion_means(model, tok, [], [1])


# ---------------------------------------------------------------- the module on a tiny model


def _module(llama_dir, tmp_path, direction=None, sign="+", **kw) -> BlockingModule:
    path = None
    if direction is not None:
        path = str(BlockedDirections.from_arrays(direction, layers=1, signs=sign).save(tmp_path / "d.safetensors"))
    m = BlockingModule(model=str(llama_dir), directions=path, **kw)
    m.configure_model()
    return m


def _batch(llama_dir):
    dm = ConversationDataModule(conversations(4), model=str(llama_dir), batch_size=4, val_fraction=0)
    dm.setup()
    return next(iter(dm.train_dataloader()))


def test_adapters_off_is_the_base_model_exactly(llama_dir, tmp_path):
    import transformers

    plain = transformers.AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    m = _module(llama_dir, tmp_path, torch.ones(32), penalty_weight=1.0)
    torch.manual_seed(0)
    with torch.no_grad():  # adapters that change the output (peft starts them at zero)
        for name, p in m.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    batch = _batch(llama_dir)
    with torch.no_grad(), LayerCapture(plain, [1]) as cap:
        logits = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected = cap.hidden()
    hidden, base_logits = m.base_pass(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(hidden, expected) and torch.equal(base_logits, logits)
    with torch.no_grad():
        tuned = m.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (tuned - logits).abs().max() > 1e-3  # and the adapters are really on outside base_pass


def test_checkpoint_holds_the_adapters_only(llama_dir, tmp_path):
    run = block(conversations(8), BlockedDirections.from_arrays(torch.ones(32), layers=1), model=str(llama_dir),
                penalty_weight=1.0, data={"batch_size": 4, "val_fraction": 0}, max_epochs=1, root_dir=tmp_path,
                **TRAINER)
    state = torch.load(run.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert state and all("lora_" in k for k in state)
    log_dir = run.adapter_dir.parent
    assert (run.adapter_dir / "adapter_model.safetensors").is_file()
    assert BlockedDirections.load(log_dir / "blocked_directions.safetensors").layers == [1]
    record = json.loads((log_dir / "blocking_history.json").read_text())
    assert [s["step"] for s in record["steps"]] == [0, 1] and set(record["steps"][0]["drift"]) == {"d0"}
    assert record["steps"][0]["penalty"] == 0.0  # adapters start at zero: nothing has moved yet


def _block1(run, llama_dir) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(base, fine-tuned) block-1 outputs (B, T, d) of a finished run on the test batch, and its completion mask."""
    m, batch = run.module.eval(), _batch(llama_dir)
    with torch.no_grad(), LayerCapture(m.inner, [1]) as cap:
        with m.lm.disable_adapter():
            m.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            base = cap.hidden()
        m.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return base, cap.hidden(), batch["completion"]


def _drift_along(run, u: torch.Tensor, llama_dir) -> float:
    """Mean projection change on u at block 1 over completion tokens, fine-tuned minus base, after training."""
    base, tuned, completion = _block1(run, llama_dir)
    return float(projection_drift(tuned @ u[:, None], base @ u[:, None], completion)[0])


def test_planted_direction_is_held_when_blocked_and_free_in_the_other_sign(llama_dir, tmp_path):
    """Known answer: the direction an unconstrained fine-tune moves most is held at the base value by blocking."""
    kw = dict(model=str(llama_dir), data={"batch_size": 4, "val_fraction": 0}, max_epochs=6, **TRAINER,
              module={"lr": 1e-2})
    free = block(conversations(), None, penalty_weight=0.0, root_dir=tmp_path / "free", **kw)
    # the planted direction: the mean shift the free fine-tune made on completion tokens at block 1
    base, tuned, completion = _block1(free, llama_dir)
    shift = (tuned - base)[completion].mean(0)
    u = shift / shift.norm()
    moved = _drift_along(free, u, llama_dir)
    assert moved > 0.2  # the free fine-tune raises it clearly

    dirs = BlockedDirections.from_arrays(u, layers=1, signs="+")
    held = block(conversations(), dirs, penalty_weight=100.0, root_dir=tmp_path / "held", **kw)
    other = block(conversations(), BlockedDirections.from_arrays(u, layers=1, signs="-"), penalty_weight=100.0,
                  root_dir=tmp_path / "other", **kw)
    assert _drift_along(held, u, llama_dir) < 0.1 * moved
    assert _drift_along(other, u, llama_dir) > 0.5 * moved  # rises are not what the '-' sign blocks
    # and the blocked run still learned its task, about as well as the free one
    assert held.history[-1]["sft"] < held.history[0]["sft"] - 0.3
    assert held.history[-1]["sft"] < free.history[-1]["sft"] + 0.3
    assert held.history[-1]["drift"]["d0"] < 0.1 * moved


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_kl_baseline_and_bfloat16_steps_are_finite(llama_dir, tmp_path):
    m = _module(llama_dir, tmp_path, torch.ones(32), penalty_weight=1.0, kl_weight=1.0, dtype="bfloat16")
    assert next(m.lm.parameters()).dtype == torch.bfloat16
    m.train()
    loss = m._step(_batch(llama_dir), "check")
    assert torch.isfinite(loss) and m.history == []  # history is for training steps only


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"val_fraction": 1.0}, r"val_fraction must lie in \[0, 1\)"),
    ({"train_on": "first"}, "train_on must be one of"),
])
def test_data_module_argument_errors(llama_dir, kwargs, message):
    with pytest.raises(InputError, match=message):
        ConversationDataModule(conversations(2), model=str(llama_dir), **kwargs).setup()


def test_load_tokenizer_matches_load_model_and_names_a_bad_spec(llama_dir, tmp_path):
    from activation_cache import load_model, load_tokenizer

    tok = load_tokenizer(str(llama_dir))
    assert tok("What is 2 + 3?")["input_ids"] == load_model(str(llama_dir)).tokenizer("What is 2 + 3?")["input_ids"]
    assert tok.padding_side == "left" and tok.pad_token is not None
    with pytest.raises(InputError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nowhere" / "model"))


def test_module_argument_errors(llama_dir, tmp_path):
    with pytest.raises(InputError, match="needs directions"):
        BlockingModule(model=str(llama_dir), penalty_weight=1.0)
    with pytest.raises(InputError, match="kl_weight must be >= 0"):
        BlockingModule(model=str(llama_dir), penalty_weight=0.0, kl_weight=-1.0)
    with pytest.raises(InputError, match="lora_r must be >= 1"):
        BlockingModule(model=str(llama_dir), penalty_weight=0.0, lora_r=0)
    path = BlockedDirections.from_arrays(torch.ones(32), layers=7).save(tmp_path / "far.safetensors")
    with pytest.raises(InputError, match=r"layer\(s\) \[7\] out of range"):
        BlockingModule(model=str(llama_dir), directions=str(path)).configure_model()


# ---------------------------------------------------------------- ret-train block


def _cli(tmp_path, *extra, env=None):
    conv = tmp_path / "c.jsonl"
    conv.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations(8)))
    return [str(BIN / "ret-train"), "block", "fit", f"--data.conversations={conv}", "--data.batch_size=4",
            "--data.val_fraction=0.25", "--trainer.max_epochs=1", "--trainer.accelerator=cpu",
            f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false", *extra]


def test_cli_block_fit_writes_the_run(llama_dir, tmp_path):
    dirs = BlockedDirections.from_arrays(torch.ones(32), layers=1).save(tmp_path / "d.safetensors")
    r = subprocess.run(_cli(tmp_path, f"--data.model={llama_dir}", f"--model.directions={dirs}",
                            "--model.penalty_weight=5"), capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ret-train block: step" in r.stdout and "drift d0" in r.stdout
    assert len(list(tmp_path.rglob("adapter/adapter_model.safetensors"))) == 1
    metrics = next(tmp_path.rglob("metrics.csv")).read_text()
    assert "train/penalty" in metrics and "val/drift/d0" in metrics


def test_cli_block_bad_input_is_one_line(llama_dir, tmp_path):
    far = BlockedDirections.from_arrays(torch.ones(32), layers=9).save(tmp_path / "far.safetensors")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    r = subprocess.run(_cli(tmp_path, f"--data.model={llama_dir}", f"--model.directions={far}"),
                       capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "out of range" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([str(BIN / "ret-train"), "block", "fit", "--print_config"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "penalty_weight:" in r.stdout and "conversations:" in r.stdout
    assert all(p.read_bytes() == data for p, data in before.items())


def test_ddp_two_processes_keep_identical_adapters(llama_dir, tmp_path):
    """Under strategy=ddp (2 gloo processes) both ranks end with the same adapter weights, having seen different data."""
    dirs = BlockedDirections.from_arrays(torch.ones(32), layers=1).save(tmp_path / "d.safetensors")
    probe = tmp_path / "probe.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(_cli(tmp_path, f"--data.model={llama_dir}", f"--model.directions={dirs}", "--data.batch_size=2",
                            "--trainer.strategy=ddp", "--trainer.devices=2",
                            f"--trainer.logger.init_args.save_dir={tmp_path}",
                            "--trainer.callbacks+=ddp_probe.SameWeightsProbe", f"--trainer.callbacks.out={probe}"),
                       capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(probe.read_text())
    assert seen["world"] == 2 and seen["same_parameters"] and seen["different_batches"]
    assert len(list(tmp_path.rglob("adapter/adapter_model.safetensors"))) == 1
