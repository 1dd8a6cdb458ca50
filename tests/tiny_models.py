"""Tiny randomly initialised causal LMs with an offline tokenizer, for tests.

Everything is built in memory (no hub, no downloads) and is deterministic for a
given ``seed``: the same architecture families the toolkit supports, shrunk to
32-64 hidden units and 2-3 layers so a forward pass takes milliseconds.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

ARCHS = ("llama", "gpt2", "qwen2", "gpt_neox", "phi")
#: The families users bring today, beside ARCHS: Gemma 2 and 3 (scaled embeddings, extra norms, sliding
#: windows), GPT-OSS (mixture of experts, attention sinks) and Qwen3-MoE. tests/test_families.py runs the
#: extraction, steering and RET data paths on each.
FAMILIES = ("gemma2", "gemma3", "gpt_oss", "qwen3_moe")

# Expected layout per arch, so tests can check discovery against ground truth.
EXPECTED = {
    "llama": dict(block_path="model.layers", embed_path="model.embed_tokens", n_layers=2, d_model=32),
    "gpt2": dict(block_path="transformer.h", embed_path="transformer.wte", n_layers=3, d_model=48),
    "qwen2": dict(block_path="model.layers", embed_path="model.embed_tokens", n_layers=2, d_model=32),
    "gpt_neox": dict(block_path="gpt_neox.layers", embed_path="gpt_neox.embed_in", n_layers=3, d_model=64),
    "phi": dict(block_path="model.layers", embed_path="model.embed_tokens", n_layers=2, d_model=32),
    **{arch: dict(block_path="model.layers", embed_path="model.embed_tokens", n_layers=2, d_model=32)
       for arch in FAMILIES},
}

SPECIAL_TOKENS = ["<|endoftext|>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# `<|role|>content<|end|>` turns; the assistant prefix opens a generation.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = """\
The quick brown fox jumps over the lazy dog.
What is the capital of France? The capital of France is Paris.
What is 2 + 3? 2 + 3 = 5. What is 7 * 6? 7 * 6 = 42.
12 + 30 = 42. 100 - 58 = 42. 9 * 9 = 81. 81 / 9 = 9.
Let me think step by step. First, add the numbers. Then check the answer.
Are you sure? I think the answer is wrong. You are right, I made a mistake.
No, the answer is correct. The model answers the question and the user asks again.
A path from start to goal goes through the graph, node by node.
She said that they would come back in the morning with the results.
"""


@functools.lru_cache(maxsize=None)
def _tokenizer_json() -> str:
    """Byte-level BPE (~300 tokens) trained on the built-in corpus, as JSON.

    Byte-level so any text round-trips without <unk>. Cached as a string so
    every caller gets a fresh, independently mutable tokenizer object.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    return tok.to_str()


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Fresh tiny tokenizer: eos=bos=``<|endoftext|>``, pad=``<pad>``, left padding, chat template."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[2:],
        padding_side="left",  # as load_model returns it: decoder-only batching
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _config(arch: str, vocab_size: int, ids: dict) -> transformers.PretrainedConfig:
    common = dict(vocab_size=vocab_size, max_position_embeddings=256, **ids)
    if arch == "llama":
        return transformers.LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, **common)
    if arch == "qwen2":
        return transformers.Qwen2Config(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, **common)
    if arch == "phi":
        return transformers.PhiConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, **common)
    if arch == "gpt_neox":
        return transformers.GPTNeoXConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=3,
            num_attention_heads=4, **common)
    attention = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    if arch == "gemma2":
        return transformers.Gemma2Config(intermediate_size=64, sliding_window=16, **attention, **common)
    if arch == "gemma3":
        return transformers.Gemma3TextConfig(intermediate_size=64, sliding_window=16, **attention, **common)
    if arch == "gpt_oss":  # YaRN's factor 32 over 4096 original positions: declare the long context it implies
        return transformers.GptOssConfig(intermediate_size=32, num_local_experts=4, num_experts_per_tok=2,
                                         sliding_window=16, **attention, **{**common, "max_position_embeddings": 131072})
    if arch == "qwen3_moe":
        return transformers.Qwen3MoeConfig(intermediate_size=64, moe_intermediate_size=32, num_experts=4,
                                           num_experts_per_tok=2, **attention, **common)
    if arch == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab_size, n_positions=256, n_embd=48, n_layer=3, n_head=4, **ids)
    raise ValueError(f"unknown tiny arch {arch!r}; choose from {ARCHS + FAMILIES}")


def make_tiny_model(arch: str, seed: int = 0):
    """Build ``(model, tokenizer)`` for ``arch`` in :data:`ARCHS` or :data:`FAMILIES`.

    The model is randomly initialised (``torch.manual_seed(seed)``), float32,
    in eval mode; sizes are in :data:`EXPECTED`. Each call returns new objects,
    so tests may add hooks or change padding freely.
    """
    tok = make_tokenizer()
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    config = _config(arch, len(tok), ids)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval(), tok


def save_tiny_model(arch: str, path, seed: int = 0, chat_template: bool = True) -> Path:
    """Save :func:`make_tiny_model` ``(arch, seed)`` (weights + tokenizer) to ``path``.

    ``chat_template=False`` saves a base model: a tokenizer without a chat template.
    """
    path = Path(path)
    model, tok = make_tiny_model(arch, seed)
    if not chat_template:
        tok.chat_template = None
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def saved_models(root: Path):
    """``get(arch) -> (model dir, LoadedModel, plain HF model, HF tokenizer)``, each saved and loaded once under ``root``."""
    from activation_cache.models import load_model

    cache = {}

    def get(arch: str):
        if arch not in cache:
            path = save_tiny_model(arch, Path(root) / arch)
            plain = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
            cache[arch] = (path, load_model(str(path)), plain, transformers.AutoTokenizer.from_pretrained(path))
        return cache[arch]

    return get
