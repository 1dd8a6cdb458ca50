"""Extraction on tiny random models (API level): hidden states, generation, prompts, layers, plan."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from activation_cache.errors import InputError, cli_words
from activation_cache.extraction import ExtractConfig, extract, plan
from activation_cache.layers import parse_layers
from activation_cache.reader import open_store
from activation_cache.tracer import Tracer
from file_checks import file_digests
from tiny_models import ARCHS, EXPECTED, saved_models

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is 2 + 3?",
    "Hi",
    "Let me think step by step. First, add the numbers. Then check the answer.",
    "A path from start to goal goes through the graph, node by node.",
    "She said that they would come back",
]
# fp16 storage of O(1) activations: ~1e-3 relative rounding, plus fp32 batching noise
TOL = dict(rtol=4e-3, atol=4e-3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny(arch) -> (model dir, LoadedModel, plain HF model, HF tokenizer), built once per arch."""
    return saved_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def txt_prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def _blocks(model, arch):
    mod = model
    for part in EXPECTED[arch]["block_path"].split("."):
        mod = getattr(mod, part)
    return mod


@torch.no_grad()
def plain_states(model, arch, ids):
    """Unbatched reference: HF hidden_states plus the raw output of every decoder block."""
    outs = {}
    blocks = _blocks(model, arch)
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: outs.__setitem__(k, o[0] if isinstance(o, tuple) else o))
             for k, b in enumerate(blocks)]
    try:
        hs = model(torch.tensor([list(ids)]), output_hidden_states=True).hidden_states
    finally:
        for h in hooks:
            h.remove()
    return [h[0].numpy() for h in hs], [outs[k][0].numpy() for k in range(len(blocks))]


def _f32(x):
    return np.asarray(x, dtype=np.float32)


# --------------------------------------------------------------------------- forward mode
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_hidden_states_equal_unbatched_plain_forward(tiny, tmp_path, txt_prompts, arch):
    path, loaded, plain, tok = tiny(arch)
    out = tmp_path / "fwd.h5"
    res = extract(ExtractConfig(prompts=str(txt_prompts), out=str(out), model=str(path), embed=True, batch_size=4),
                  loaded=loaded, progress=False)
    n_layers = EXPECTED[arch]["n_layers"]
    with open_store(out) as s:
        assert res.n_sequences == s.n_sequences == len(PROMPTS)
        assert s.layers == ["embed"] + [str(i) for i in range(n_layers)]
        assert s.d_model == EXPECTED[arch]["d_model"] and s.n_model_layers == n_layers
        assert res.n_tokens == s.n_tokens
        for i, text in enumerate(PROMPTS):
            ids = tok(text)["input_ids"]
            np.testing.assert_array_equal(s.tokens(i), ids)  # unpadded, nothing lost or added
            assert not s.generated(i).any()
            hs, block_out = plain_states(plain, arch, ids)
            # embed = the residual stream entering block 0 = HF hidden_states[0]
            np.testing.assert_allclose(_f32(s.hidden(i, "embed")), hs[0], **TOL)
            for layer in range(n_layers):
                got = _f32(s.hidden(i, layer))
                np.testing.assert_allclose(got, block_out[layer], **TOL, err_msg=f"{arch} layer {layer}")
                if layer < n_layers - 1:  # HF's last entry is after the final norm, not the raw block output
                    np.testing.assert_allclose(got, hs[layer + 1], **TOL)
            assert s.meta(i) == {"prompt_id": f"prompts:{i + 1}"}


# --------------------------------------------------------------------------- generate mode
def _hf_generate(plain, prompt_ids, n, **kw):
    ids = torch.tensor([list(prompt_ids)])
    with torch.no_grad():
        out = plain.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=plain.generation_config.pad_token_id, **kw)
    return out[0, ids.shape[1]:].tolist()


def _until_eos(tokens, eos_ids):
    for k, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[:k], True
    return tokens, False


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_greedy_matches_hf_generate_per_prompt(tiny, tmp_path, txt_prompts, arch):
    path, loaded, plain, tok = tiny(arch)
    out = tmp_path / "gen.h5"
    n_new = 6
    extract(ExtractConfig(prompts=str(txt_prompts), out=str(out), model=str(path), generate=n_new, batch_size=3,
                          embed=True), loaded=loaded, progress=False)
    n_layers = EXPECTED[arch]["n_layers"]
    with open_store(out) as s:
        assert s.n_sequences == len(PROMPTS)
        assert "finish_reason" in s.meta_fields
        for i, text in enumerate(PROMPTS):
            prompt_ids = tok(text)["input_ids"]
            tokens, gen = s.tokens(i), s.generated(i)
            # prompt first, unpadded; then only generated tokens
            np.testing.assert_array_equal(tokens[: len(prompt_ids)], prompt_ids)
            np.testing.assert_array_equal(gen, np.arange(len(tokens)) >= len(prompt_ids))
            ref, hit_eos = _until_eos(_hf_generate(plain, prompt_ids, n_new), [tok.eos_token_id])
            # batched left-padded greedy decoding == each prompt decoded alone
            assert tokens[gen].tolist() == ref
            assert s.meta(i)["finish_reason"] == ("eos" if hit_eos else "length")
            # every stored token's hidden state == a plain forward over the stored tokens
            hs, block_out = plain_states(plain, arch, tokens)
            np.testing.assert_allclose(_f32(s.hidden(i, "embed")), hs[0], **TOL)
            for layer in range(n_layers):
                np.testing.assert_allclose(_f32(s.hidden(i, layer)), block_out[layer], **TOL,
                                           err_msg=f"{arch} seq {i} layer {layer}")
        assert sum(int(s.generated(i).sum()) for i in range(len(s))) > 0


def test_generate_stops_before_eos(tiny, tmp_path, txt_prompts):
    """With an EOS the model actually emits, generation stops there and the EOS is not stored."""
    arch = "llama"
    path, loaded, plain, tok = tiny(arch)
    n_new = 8
    # Pick as "EOS" a token some prompt generates in the middle of its continuation.
    eos = None
    for text in PROMPTS:
        cont = _hf_generate(plain, tok(text)["input_ids"], n_new)
        for k in range(1, n_new - 1):
            if cont[k] not in cont[:k]:
                eos = cont[k]
                break
        if eos is not None:
            break
    assert eos is not None
    eos_ids = sorted({tok.eos_token_id, eos})
    old_loaded, old_plain = loaded.model.generation_config.eos_token_id, plain.generation_config.eos_token_id
    loaded.model.generation_config.eos_token_id = eos_ids
    plain.generation_config.eos_token_id = eos_ids
    try:
        out = tmp_path / "eos.h5"
        extract(ExtractConfig(prompts=str(txt_prompts), out=str(out), model=str(path), generate=n_new,
                              batch_size=3), loaded=loaded, progress=False)
        reasons = []
        with open_store(out) as s:
            for i, text in enumerate(PROMPTS):
                prompt_ids = tok(text)["input_ids"]
                ref, hit = _until_eos(_hf_generate(plain, prompt_ids, n_new), eos_ids)
                gen_tokens = s.tokens(i)[s.generated(i)].tolist()
                assert gen_tokens == ref and eos not in gen_tokens
                reasons.append(s.meta(i)["finish_reason"])
                assert reasons[-1] == ("eos" if hit else "length")
                hs, block_out = plain_states(plain, arch, s.tokens(i))
                np.testing.assert_allclose(_f32(s.hidden(i, 1)), block_out[1], **TOL)
        assert "eos" in reasons
    finally:
        loaded.model.generation_config.eos_token_id = old_loaded
        plain.generation_config.eos_token_id = old_plain


def test_sampling_with_seed_is_reproducible(tiny, tmp_path, txt_prompts):
    path, loaded, _, _ = tiny("llama")

    def run(name, **kw):
        out = tmp_path / name
        extract(ExtractConfig(prompts=str(txt_prompts), out=str(out), model=str(path), generate=8, batch_size=3,
                              layers="0", **kw), loaded=loaded, progress=False)
        with open_store(out) as s:
            return [s.tokens(i) for i in range(len(s))], [s.hidden(i, 0) for i in range(len(s))]

    a_tok, a_hid = run("a.h5", sample=True, seed=3)
    b_tok, b_hid = run("b.h5", sample=True, seed=3)
    c_tok, _ = run("c.h5", sample=True, seed=4)
    g_tok, _ = run("g.h5")
    for x, y in zip(a_tok, b_tok):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a_hid, b_hid):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a_tok, c_tok))  # the seed matters
    assert any(not np.array_equal(x, y) for x, y in zip(a_tok, g_tok))  # sampling is not greedy


# --------------------------------------------------------------------------- prompts
def test_max_tokens_truncates_with_warning_naming_prompts(tiny, tmp_path, caplog):
    path, loaded, _, tok = tiny("llama")
    prompts = tmp_path / "p.jsonl"
    long_text = "Let me think step by step. First, add the numbers. Then check the answer."
    rows = [{"id": "short", "text": "Hi"}, {"id": "long-one", "text": long_text},
            {"id": "long-two", "text": long_text + " Are you sure?"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "t.h5"
    with caplog.at_level(logging.WARNING, logger="activation_cache.extraction"):
        extract(ExtractConfig(prompts=str(prompts), out=str(out), model=str(path), max_tokens=8, layers="0"),
                loaded=loaded, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "long-one" in warnings[0] and "long-two" in warnings[0] and "short" not in warnings[0]
    assert "2 prompt" in warnings[0] and "8" in warnings[0]
    with open_store(out) as s:
        np.testing.assert_array_equal(s.tokens(0), tok("Hi")["input_ids"])
        np.testing.assert_array_equal(s.tokens(1), tok(long_text)["input_ids"][:8])
        assert len(s.tokens(2)) == 8
    # no warning when nothing is cut
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="activation_cache.extraction"):
        extract(ExtractConfig(prompts=str(prompts), out=str(tmp_path / "u.h5"), model=str(path), layers="0"),
                loaded=loaded, progress=False)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_prompts_longer_than_the_context_are_cut_to_it_with_a_line(tiny, tmp_path, caplog):
    path, loaded, _, tok = tiny("llama")
    context = loaded.model.config.max_position_embeddings
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "huge", "text": "one two three " * context}) + "\n")
    out = tmp_path / "t.h5"
    with caplog.at_level(logging.WARNING, logger="activation_cache.extraction"):
        extract(ExtractConfig(prompts=str(prompts), out=str(out), model=str(path), max_tokens=10 * context,
                              generate=3, layers="0"), loaded=loaded, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "huge" in warnings[0] and f"context of {context} tokens" in warnings[0]
    with open_store(out) as s:
        assert len(s.tokens(0)) <= context and int((~s.generated(0)).sum()) == context - 3
    with pytest.raises(InputError, match=f"leaves no room for a prompt in the context .*{context} tokens"):
        extract(ExtractConfig(prompts=str(prompts), out=str(tmp_path / "u.h5"), model=str(path), generate=context,
                              layers="0"), loaded=loaded, progress=False)


def test_chat_prompts_go_through_the_template(tiny, tmp_path):
    path, loaded, _, tok = tiny("llama")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]
    prompts = tmp_path / "chat.jsonl"
    prompts.write_text(json.dumps({"id": "c1", "messages": messages}) + "\n"
                       + json.dumps({"id": "t1", "text": "What is 7 * 6?"}) + "\n")
    out = tmp_path / "chat.h5"
    extract(ExtractConfig(prompts=str(prompts), out=str(out), model=str(path), layers="-1"),
            loaded=loaded, progress=False)
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|system|>Be brief.<|end|><|user|>What is 2 + 3?<|end|><|assistant|>"
    user_id, asst_id = tok.convert_tokens_to_ids(["<|user|>", "<|assistant|>"])
    with open_store(out) as s:
        np.testing.assert_array_equal(s.tokens(0), tok(rendered, add_special_tokens=False)["input_ids"])
        assert s.tokens(0)[-1] == asst_id and user_id in s.tokens(0)
        assert s.text(0) == rendered
        np.testing.assert_array_equal(s.tokens(1), tok("What is 7 * 6?")["input_ids"])  # plain text stays plain
        assert user_id not in s.tokens(1)
    # --chat wraps plain text prompts as a user turn
    out2 = tmp_path / "chat2.h5"
    extract(ExtractConfig(prompts=str(prompts), out=str(out2), model=str(path), layers="-1", chat=True),
            loaded=loaded, progress=False)
    with open_store(out2) as s:
        assert s.text(1) == "<|user|>What is 7 * 6?<|end|><|assistant|>"
        assert s.text(0) == rendered


def test_meta_fields_are_carried(tiny, tmp_path):
    path, loaded, _, _ = tiny("llama")
    prompts = tmp_path / "m.jsonl"
    rows = [
        {"id": 7, "text": "What is 2 + 3?", "topic": "arithmetic", "difficulty": 2, "answer": "5",
         "tags": ["math", "easy"], "extra": {"b": [1, {"c": None}], "a": "ü"}},
        {"id": "x-2", "text": "The capital of France?", "topic": "facts"},
        {"text": "No id here", "difficulty": 1.5, "flag": True},
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "meta.h5"
    extract(ExtractConfig(prompts=str(prompts), out=str(out), model=str(path), layers="0", generate=2,
                          batch_size=2), loaded=loaded, progress=False)
    with open_store(out) as s:
        assert set(s.meta_fields) == {"prompt_id", "topic", "difficulty", "answer", "tags", "extra", "flag",
                                      "finish_reason"}
        m0, m1, m2 = s.meta(0), s.meta(1), s.meta(2)
    assert m0["prompt_id"] == "7" and m0["topic"] == "arithmetic" and m0["answer"] == "5"
    assert m0["difficulty"] == "2"
    assert json.loads(m0["tags"]) == ["math", "easy"]
    assert json.loads(m0["extra"]) == {"a": "ü", "b": [1, {"c": None}]}
    assert m0["extra"] == json.dumps({"a": "ü", "b": [1, {"c": None}]}, sort_keys=True, ensure_ascii=False)
    assert m0["flag"] == "" and m0["finish_reason"] == "length"
    assert m1 == {**{k: "" for k in m1}, "prompt_id": "x-2", "topic": "facts", "finish_reason": "length"}
    assert m2["prompt_id"] == "m:3" and m2["difficulty"] == "1.5" and m2["flag"] == "true"


# --------------------------------------------------------------------------- layers
def test_parse_layers_specs():
    assert parse_layers("all", 3) == ["0", "1", "2"]
    assert parse_layers("all", 3, embed=True) == ["embed", "0", "1", "2"]
    assert parse_layers("0,2", 3) == ["0", "2"]
    assert parse_layers("-1", 3) == ["2"]
    assert parse_layers("-3", 3) == ["0"]
    assert parse_layers("0-1", 3) == ["0", "1"]
    assert parse_layers("embed", 3) == ["embed"]
    assert parse_layers("2, embed ,0", 3) == ["embed", "0", "2"]  # sorted, embed first, spaces ok
    assert parse_layers("1,1,0-2", 3) == ["0", "1", "2"]  # deduplicated
    assert parse_layers("-2--1", 3) == ["1", "2"]
    assert parse_layers("1--1", 3) == ["1", "2"]  # from layer 1 to the last


@pytest.mark.parametrize("spec, needle", [
    ("3", "unknown layer 3"), ("-4", "unknown layer -4"), ("1-5", "unknown layer 5"), ("2-1", "is empty"),
    ("x", "'x'"), ("1;2", "'1;2'"), ("embedding", "'embedding'"), ("", "selects no layer"), (",", "selects no layer"),
])
def test_parse_layers_rejects_bad_specs(spec, needle):
    with pytest.raises(InputError) as err:
        parse_layers(spec, 3)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unknown_layer_fails_before_writing(tiny, tmp_path, txt_prompts):
    path, loaded, _, _ = tiny("llama")
    out = tmp_path / "none.h5"
    with pytest.raises(InputError, match=r"unknown layer 7: the model has layers 0\.\.1"):
        extract(ExtractConfig(prompts=str(txt_prompts), out=str(out), model=str(path), layers="0,7"),
                loaded=loaded, progress=False)
    assert not out.exists()


def test_layer_subset_is_stored_exactly(tiny, tmp_path, txt_prompts):
    path, loaded, plain, tok = tiny("gpt2")
    out = tmp_path / "sub.h5"
    extract(ExtractConfig(prompts=str(txt_prompts), out=str(out), model=str(path), layers="-1,0", batch_size=2,
                          dtype="float32"), loaded=loaded, progress=False)
    with open_store(out) as s:
        assert s.layers == ["0", "2"] and s.dtype == "float32"
        assert sorted(s.h5["hidden"]) == ["0", "2"]
        _, block_out = plain_states(plain, "gpt2", s.tokens(1))
        np.testing.assert_allclose(s.hidden(1, 2), block_out[2], rtol=1e-4, atol=1e-4)
        with pytest.raises(InputError, match="layer '1' not in store"):
            s.hidden(0, 1)


# --------------------------------------------------------------------------- dry-run plan
@pytest.mark.parametrize("dtype, generate, layers, embed", [("float16", 0, "all", False), ("float32", 5, "0", True)])
def test_dry_run_plan_numbers(tiny, tmp_path, txt_prompts, dtype, generate, layers, embed):
    path, loaded, _, tok = tiny("gpt_neox")  # 3 layers, d_model 64
    out = tmp_path / "never.h5"
    cfg = ExtractConfig(prompts=str(txt_prompts), out=str(out), model=str(path), layers=layers, embed=embed,
                        dtype=dtype, generate=generate)
    p = plan(cfg, loaded)
    n_layers = 3 if layers == "all" else 1 + int(embed)
    itemsize = 2 if dtype == "float16" else 4
    assert p.n_layers == n_layers and p.d_model == 64 and p.n_prompts == len(PROMPTS)
    assert p.bytes_per_token == 4 + 1 + n_layers * 64 * itemsize
    prompt_tokens = sum(len(tok(t)["input_ids"]) for t in PROMPTS)
    assert p.prompt_tokens == prompt_tokens and p.max_generated_tokens == generate * len(PROMPTS)
    assert p.estimated_bytes == (prompt_tokens + generate * len(PROMPTS)) * p.bytes_per_token
    text = p.describe()
    assert f"bytes per token: {p.bytes_per_token}" in text
    assert f"estimated size: {p.estimated_bytes} bytes" in text
    assert not out.exists()
    if generate == 0:  # the plan is exact for forward mode: compare with a real run's token count
        res = extract(cfg, loaded=loaded, progress=False)
        assert res.n_tokens == p.estimated_tokens


# --------------------------------------------------------------------------- non-finite values
def test_nan_hidden_states_raise_and_keep_committed(tiny, tmp_path, txt_prompts, monkeypatch):
    path, loaded, _, _ = tiny("llama")
    common = dict(prompts=str(txt_prompts), model=str(path), batch_size=2, embed=True)
    ref = tmp_path / "ref.h5"
    extract(ExtractConfig(out=str(ref), **common), loaded=loaded, progress=False)

    real_forward = Tracer.forward
    calls = []

    def poisoned(self, input_ids, attention_mask):
        traced = real_forward(self, input_ids, attention_mask)
        if input_ids.shape[0] == 1:  # dtype auto's probe of the first prompt, not a stored batch
            return traced
        calls.append(1)
        if len(calls) == 2:  # second batch: prompts 3 and 4
            poisoned_h = traced.hidden["1"].clone()
            poisoned_h[0, 1, 3] = float("nan")
            traced.hidden["1"] = poisoned_h
        return traced

    monkeypatch.setattr(Tracer, "forward", poisoned)
    out = tmp_path / "nan.h5"
    with pytest.raises(InputError) as err:
        extract(ExtractConfig(out=str(out), **common), loaded=loaded, progress=False)
    msg = str(err.value)
    assert "non-finite" in msg and "layer 1" in msg and "prompts:3" in msg and "prompts:4" in msg
    assert "prompts:1" not in msg and "\n" not in msg
    with open_store(out) as s:  # the first batch was committed and stays readable
        assert s.n_sequences == 2
        with open_store(ref) as r:
            for i in range(2):
                np.testing.assert_array_equal(s.tokens(i), r.tokens(i))
                np.testing.assert_array_equal(s.hidden_layers(i), r.hidden_layers(i))
    monkeypatch.setattr(Tracer, "forward", real_forward)
    res = extract(ExtractConfig(out=str(out), **common), loaded=loaded, progress=False)  # resume
    assert res.resumed and res.new_sequences == len(PROMPTS) - 2
    with open_store(out) as s, open_store(ref) as r:
        assert s.n_sequences == r.n_sequences == len(PROMPTS)
        np.testing.assert_array_equal(s.offsets, r.offsets)
        for i in range(len(PROMPTS)):
            np.testing.assert_array_equal(s.tokens(i), r.tokens(i))
            np.testing.assert_array_equal(s.hidden_layers(i), r.hidden_layers(i))
            assert s.meta(i) == r.meta(i)


def test_config_validation_errors(tiny, tmp_path, txt_prompts):
    path, loaded, _, _ = tiny("llama")
    base = dict(prompts=str(txt_prompts), out=str(tmp_path / "v.h5"), model=str(path))
    cases = [({"batch_size": 0}, "--batch-size", "batch_size"), ({"generate": -1}, "--generate", "generate"),
             ({"max_tokens": 0}, "--max-tokens", "max_tokens"),
             ({"num_shards": 2, "shard_index": 2}, "--shard-index 2", "shard_index 2"),
             ({"dtype": "int8"}, "--dtype", "dtype"), ({"compression": "zip"}, "--compression", "compression"),
             ({"sample": True, "temperature": float("nan")}, "--temperature", "temperature"),
             ({"temperature": -1.0}, "--temperature", "temperature"),
             ({"temperature": float("inf")}, "--temperature", "temperature"),
             ({"top_p": 1.5}, "--top-p", "top_p"), ({"top_p": 0.0}, "--top-p", "top_p"),
             ({"out": str(txt_prompts)}, "--prompts", "prompts")]
    for kw, flag, keyword in cases:
        # Python callers read the keyword they passed; a console command names its flag.
        with pytest.raises(InputError, match=keyword) as err:
            extract(ExtractConfig(**{**base, **kw}), loaded=loaded, progress=False)
        assert "--" not in str(err.value)
        with cli_words(), pytest.raises(InputError, match=flag.replace("-", r"\-")):
            extract(ExtractConfig(**{**base, **kw}), loaded=loaded, progress=False)
    assert not Path(base["out"]).exists()


def test_extract_takes_prompts_in_memory_and_records_their_digest(tiny, tmp_path):
    path, loaded, _, _ = tiny("llama")
    out = tmp_path / "m.h5"
    r = extract(ExtractConfig(prompts=["one two", "three"], out=str(out), model=str(path)), loaded=loaded,
                progress=False)
    assert r.n_sequences == 2
    before = file_digests(tmp_path)
    with pytest.raises(InputError, match="differs in .*prompts_sha256"):
        extract(ExtractConfig(prompts=["one two", "four"], out=str(out), model=str(path)), loaded=loaded,
                progress=False)
    assert file_digests(tmp_path) == before
