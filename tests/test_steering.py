"""Steering vectors: construction, save/load, forward hooks and nnsight interventions."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from activation_cache.errors import InputError
from ret_toolkit.steering import SteeringVector, from_contrast, from_groups, nnsight_generate, steer
from file_checks import file_digests
from tiny_models import make_tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARCHS4 = ("llama", "gpt2", "qwen2", "gpt_neox")
PROMPTS = ["The quick brown fox", "What is 2 + 3? 2 + 3 ="]  # different lengths: left padding


def _blocks(model):
    from activation_cache.arch import find_architecture, get_module

    return get_module(model, find_architecture(model).block_path)


def _random_vector(model, layers, seed=1, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    d = model.config.hidden_size
    return SteeringVector({layer: scale * torch.randn(d, generator=g) for layer in layers})


def _generate(model, tok, n=4, **kw):
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    return model.generate(**enc, max_new_tokens=n, do_sample=False, return_dict_in_generate=True,
                          output_logits=True, **kw)


def _hook_counts(model):
    return (len(model._forward_pre_hooks), [len(b._forward_hooks) for b in _blocks(model)])


# --------------------------------------------------------------------------- hooks: effect


@pytest.mark.parametrize("arch", ARCHS4)
def test_zero_vector_changes_nothing(arch):
    model, tok = make_tiny_model(arch)
    zero = SteeringVector({i: torch.zeros(model.config.hidden_size) for i in range(len(_blocks(model)))})
    base = _generate(model, tok)
    for positions in ("all", "prompt", "generated"):
        with steer(model, zero, alpha=5.0, positions=positions):
            out = _generate(model, tok)
        assert torch.equal(out.sequences, base.sequences)
        for a, b in zip(out.logits, base.logits):
            assert torch.equal(a, b)


@pytest.mark.parametrize("arch", ARCHS4)
def test_positions_select_prompt_or_generated_steps(arch):
    model, tok = make_tiny_model(arch)
    vec = _random_vector(model, [0])
    base = _generate(model, tok)
    with steer(model, vec, alpha=2.0, positions="generated"):
        gen = _generate(model, tok)
    with steer(model, vec, alpha=2.0, positions="prompt"):
        pro = _generate(model, tok)
    # Step 0 logits come from the prompt forward; later steps from fed-back generated tokens.
    assert torch.equal(gen.logits[0], base.logits[0])
    assert not torch.allclose(gen.logits[1], base.logits[1], atol=1e-4)
    assert not torch.allclose(pro.logits[0], base.logits[0], atol=1e-4)


def _manual_logits(model, ids, mask, layer, delta, lo, hi):
    """Full forward, adding ``delta`` to block ``layer``'s output at positions lo:hi (no KV cache)."""
    def hook(mod, args, out):
        out = out.clone()
        out[:, lo:hi] += delta
        return out

    handle = _blocks(model)[layer].register_forward_hook(hook)
    try:
        return model(input_ids=ids, attention_mask=mask).logits
    finally:
        handle.remove()


@pytest.mark.parametrize("positions", ["prompt", "generated"])
def test_positions_match_a_manual_full_forward(positions):
    model, tok = make_tiny_model("llama")
    vec = _random_vector(model, [1])
    enc = tok(PROMPTS[:1], return_tensors="pt")
    T = enc["input_ids"].shape[1]
    with steer(model, vec, alpha=1.5, positions=positions):
        out = model.generate(**enc, max_new_tokens=4, do_sample=False, return_dict_in_generate=True,
                             output_logits=True)
    seq = out.sequences
    lo, hi = (0, T) if positions == "prompt" else (T, seq.shape[1])
    manual = _manual_logits(model, seq, torch.ones_like(seq), 1, 1.5 * vec[1], lo, hi)
    for k, step_logits in enumerate(out.logits):  # step k predicts token T + k from position T + k - 1
        torch.testing.assert_close(step_logits[0], manual[0, T - 1 + k], atol=1e-4, rtol=1e-4)


def test_alpha_scales_the_added_delta_linearly():
    model, tok = make_tiny_model("qwen2")
    vec = _random_vector(model, [0], scale=1.0)
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    base = model(**enc, output_hidden_states=True).hidden_states[1]  # output of block 0
    deltas = {}
    for alpha in (0.5, 1.0, -3.0):
        with steer(model, vec, alpha=alpha):
            deltas[alpha] = model(**enc, output_hidden_states=True).hidden_states[1] - base
    for alpha, d in deltas.items():
        torch.testing.assert_close(d, alpha * vec[0].expand_as(d), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(deltas[-3.0], -3.0 * deltas[1.0], atol=1e-5, rtol=1e-5)
    with steer(model, vec, alpha=1.0) as s:  # gain: the knob a closed-loop controller turns
        s.gain = -3.0
        gained = model(**enc, output_hidden_states=True).hidden_states[1] - base
    torch.testing.assert_close(gained, deltas[-3.0], atol=1e-5, rtol=1e-5)


def test_several_vectors_are_summed_and_contexts_nest():
    model, tok = make_tiny_model("llama")
    v1, v2 = _random_vector(model, [0], seed=1), _random_vector(model, [0, 1], seed=2)
    combined = SteeringVector({0: 0.5 * v1[0] - 2.0 * v2[0], 1: -2.0 * v2[1]})
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    with steer(model, combined):
        want = model(**enc).logits
    with steer(model, [v1, v2], alpha=[0.5, -2.0]):
        got = model(**enc).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with steer(model, v1, alpha=0.5), steer(model, v2, alpha=-2.0):
        nested = model(**enc).logits
    torch.testing.assert_close(nested, want, atol=1e-5, rtol=1e-5)


class _TupleBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, h):
        return (h + self.lin(h), None)  # older transformers: blocks return tuples


class _TupleModel(nn.Module):
    def __init__(self, d=8, n=2):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(num_hidden_layers=n, hidden_size=d, vocab_size=11, model_type="toy")
        self.embed = nn.Embedding(11, d)
        self.layers = nn.ModuleList(_TupleBlock(d) for _ in range(n))

    def forward(self, input_ids):
        h = self.embed(input_ids)
        for block in self.layers:
            h = block(h)[0]
        return h


def test_tuple_block_outputs_are_steered():
    model = _TupleModel()
    ids = torch.tensor([[1, 2, 3]])
    base = model(ids)
    seen = []
    model.layers[1].register_forward_hook(lambda m, a, out: seen.append(type(out)))
    with steer(model, SteeringVector({1: torch.ones(8)}), alpha=2.0):
        out = model(ids)
    torch.testing.assert_close(out, base + 2.0)
    assert seen == [tuple]  # the tuple shape is kept for hooks and callers


# --------------------------------------------------------------------------- hooks: lifecycle


def test_hooks_removed_after_exit_and_on_exceptions():
    model, tok = make_tiny_model("llama")
    vec = _random_vector(model, [0, 1])
    before = _hook_counts(model)
    base = _generate(model, tok).sequences

    with steer(model, vec, positions="generated") as s:
        assert s.active and _hook_counts(model) != before
        _generate(model, tok)
    assert _hook_counts(model) == before and not s.active

    with pytest.raises(KeyError):
        with steer(model, vec, positions="prompt"):
            raise KeyError("user error inside the block")
    assert _hook_counts(model) == before

    class Boom(RuntimeError):
        pass

    calls = []

    def explode_on_second_step(mod, args, out):
        calls.append(1)
        if len(calls) == 2:
            raise Boom("generation failed mid-way")

    user = _blocks(model)[1].register_forward_hook(explode_on_second_step)
    before_user = _hook_counts(model)
    with pytest.raises(Boom):
        with steer(model, vec, positions="all"):
            _generate(model, tok)
    assert _hook_counts(model) == before_user  # our hooks gone, the user's still there
    user.remove()
    assert _hook_counts(model) == before
    assert torch.equal(_generate(model, tok).sequences, base)  # no steering left behind


def test_user_hooks_stay_registered_and_fire():
    model, tok = make_tiny_model("gpt2")
    vec = _random_vector(model, [1])
    block = _blocks(model)[1]
    seen = []
    handle = block.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    pre_calls = []
    pre = model.register_forward_pre_hook(lambda m, a: pre_calls.append(1))
    enc = tok(PROMPTS[:1], return_tensors="pt")
    model(**enc)
    with steer(model, vec, alpha=2.0, positions="prompt"):
        model(**enc)
    model(**enc)
    assert len(seen) == 3 and len(pre_calls) == 3
    assert handle.id in block._forward_hooks and pre.id in model._forward_pre_hooks
    # Our hook runs first: the user's hook sees the steered output (what block 2 receives).
    torch.testing.assert_close(seen[1] - seen[0], (2.0 * vec[1]).expand_as(seen[0]), atol=1e-5, rtol=1e-5)
    assert torch.equal(seen[2], seen[0])
    handle.remove()
    pre.remove()


def test_steer_checks_before_adding_hooks():
    model, _ = make_tiny_model("llama")
    before = _hook_counts(model)
    with pytest.raises(InputError, match="positions must be one of"):
        steer(model, _random_vector(model, [0]), positions="middle")
    with pytest.raises(InputError, match="alpha has 1 values for 2 vectors"):
        steer(model, [_random_vector(model, [0])] * 2, alpha=[1.0])
    with pytest.raises(InputError, match=r"layer\(s\) \[5\]") as err:
        steer(model, SteeringVector({5: torch.ones(32)}))
    assert "\n" not in str(err.value)
    assert _hook_counts(model) == before


# --------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path):
    model, tok = make_tiny_model("llama")
    vec = from_contrast(model, tok, ["The quick brown fox jumps"], ["What is 7 * 6?"], [0, 1],
                        model_name="tiny-llama", meta={"note": "test"})
    tensors, manifest = vec.save(tmp_path / "calc")
    assert tensors.name == "calc.safetensors" and manifest.name == "calc.json"
    loaded = SteeringVector.load(tmp_path / "calc.safetensors", model, model_name="tiny-llama")
    assert loaded.layers == [0, 1] and loaded.d_model == 32
    for layer in vec.layers:
        assert torch.equal(loaded[layer], vec[layer]) and loaded[layer].dtype == torch.float32
    assert loaded.manifest == vec.manifest
    on_disk = json.loads(manifest.read_text())
    assert on_disk["model"] == "tiny-llama" and on_disk["model_type"] == "llama"
    assert on_disk["construction"]["method"] == "contrast" and on_disk["toolkit_version"]
    assert set(on_disk["norms"]["0"]) >= {"raw", "mean_token_norm", "norm"}


def test_save_keeps_an_existing_vector_unless_overwrite_and_writes_atomically(tmp_path, monkeypatch):
    vec = SteeringVector({0: torch.ones(4)}, meta={"run": 1})
    vec.save(tmp_path / "v")
    before = file_digests(tmp_path)
    again = SteeringVector({0: torch.ones(4)}, meta={"run": 1}, created="another time")
    assert again.save(tmp_path / "v") == SteeringVector.paths(tmp_path / "v")  # same content: left as it is
    assert file_digests(tmp_path) == before
    for other, differs in ((SteeringVector({0: 2 * torch.ones(4)}, meta={"run": 1}), "directions"),
                           (SteeringVector({0: torch.ones(4)}, meta={"run": 2}), "meta")):
        with pytest.raises(InputError, match=f"differs in .*{differs}.*overwrite=True") as err:
            other.save(tmp_path / "v")
        assert "\n" not in str(err.value)
        assert file_digests(tmp_path) == before
    # a failure while writing leaves both old files and no temporary file
    import safetensors.torch

    def broken(*a, **k):
        raise OSError("disk full")

    with monkeypatch.context() as mp:
        mp.setattr(safetensors.torch, "save_file", broken)
        with pytest.raises(OSError, match="disk full"):
            SteeringVector({0: 3 * torch.ones(4)}).save(tmp_path / "v", overwrite=True)
    assert file_digests(tmp_path) == before
    SteeringVector({0: 3 * torch.ones(4)}).save(tmp_path / "v", overwrite=True)
    assert torch.equal(SteeringVector.load(tmp_path / "v")[0], 3 * torch.ones(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.json", "v.safetensors"]


def test_mismatched_model_or_layer_is_a_one_line_input_error(tmp_path):
    llama, _ = make_tiny_model("llama")
    gpt2, _ = make_tiny_model("gpt2")
    qwen, _ = make_tiny_model("qwen2")
    vec = SteeringVector({1: torch.randn(32)}, model="tiny-llama", model_type="llama", n_layers=2)
    vec.save(tmp_path / "v")
    cases = [
        (lambda: SteeringVector.load(tmp_path / "v", gpt2), "d_model 32 but .* d_model 48"),
        (lambda: steer(gpt2, vec), "d_model 32 but"),
        (lambda: steer(llama, vec, model_name="other-model"), "built for model 'tiny-llama'"),
        (lambda: steer(qwen, vec, model_name="tiny-llama"), "'llama' model but .* 'qwen2'"),
        (lambda: SteeringVector({7: torch.ones(32)}).check_model(llama), r"layer\(s\) \[7\]"),
        (lambda: SteeringVector({0: torch.ones(3, 32)}), "expected \\(d_model,\\)"),
    ]
    for call, pattern in cases:
        with pytest.raises(InputError, match=pattern) as err:
            call()
        assert "\n" not in str(err.value)
    # A vector without a recorded name applies to any model of the right width.
    with steer(llama, SteeringVector({1: torch.zeros(32)})):
        pass


def test_load_rejects_broken_files(tmp_path):
    vec = SteeringVector({0: torch.ones(4)})
    tensors, manifest = vec.save(tmp_path / "v")
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "layers": [0, 1]}))
    with pytest.raises(InputError, match="do not match manifest layers"):
        SteeringVector.load(tmp_path / "v")
    manifest.write_text(json.dumps({**data, "format": "other"}))
    with pytest.raises(InputError, match="not a steering-vector manifest"):
        SteeringVector.load(tmp_path / "v")
    tensors.write_bytes(b"not safetensors")
    manifest.write_text(json.dumps(data))
    with pytest.raises(InputError, match="not a readable safetensors file"):
        SteeringVector.load(tmp_path / "v")
    with pytest.raises(InputError, match="not found"):
        SteeringVector.load(tmp_path / "missing")


# --------------------------------------------------------------------------- nnsight


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_nnsight_path_generates_the_same_tokens_as_hooks(positions):
    model, tok = make_tiny_model("llama")
    vec = _random_vector(model, [0, 1], scale=2.0)
    base = _generate(model, tok, n=6).sequences
    with steer(model, vec, alpha=1.5, positions=positions):
        hooked = _generate(model, tok, n=6).sequences
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    via_nnsight = nnsight_generate(model, enc, vec, alpha=1.5, positions=positions, tokenizer=tok,
                                   max_new_tokens=6)
    assert torch.equal(via_nnsight, hooked)
    assert not torch.equal(hooked, base)  # the vector does change the greedy tokens


# --------------------------------------------------------------------------- construction


def test_from_contrast_norm_and_batching():
    model, tok = make_tiny_model("gpt_neox")
    texts_a = ["The quick brown fox jumps over the lazy dog.", "Let me think step by step.", "First, add"]
    texts_b = ["What is 2 + 3?", "Are you sure? I think the answer is wrong."]
    vec = from_contrast(model, tok, texts_a, texts_b, [1, -1], batch_size=2)
    assert vec.layers == [1, 2] and vec.construction["method"] == "contrast"
    # Reference: per-text forwards (no padding), block-1 outputs, first token of each text left out.
    hs = {s: [model(**tok(t, return_tensors="pt"), output_hidden_states=True).hidden_states[2][0, 1:]
              for t in ts] for s, ts in (("a", texts_a), ("b", texts_b))}
    a, b = torch.cat(hs["a"]).double(), torch.cat(hs["b"]).double()
    token_norms = torch.cat([a, b]).norm(dim=-1)
    raw = a.mean(0) - b.mean(0)
    norms = vec.norms["1"]
    assert norms["n_tokens_a"] == len(a) and norms["n_tokens_b"] == len(b)
    assert norms["median_token_norm"] == pytest.approx(token_norms.quantile(0.5).item(), rel=1e-5)
    assert norms["mean_token_norm"] == pytest.approx(token_norms.mean().item(), rel=1e-5)
    assert norms["raw"] == pytest.approx(raw.norm().item(), rel=1e-4)
    # The documented norm: the median token hidden-state norm at that layer.
    assert vec[1].norm().item() == pytest.approx(norms["median_token_norm"], rel=1e-5)
    torch.testing.assert_close(vec[1].double(), raw / raw.norm() * norms["median_token_norm"], atol=1e-5, rtol=1e-4)
    one_by_one = from_contrast(model, tok, texts_a, texts_b, [1, 2], batch_size=1)
    torch.testing.assert_close(one_by_one[1], vec[1], atol=1e-5, rtol=1e-5)
    by_mean = from_contrast(model, tok, texts_a, texts_b, 1, scale="mean")
    assert by_mean[1].norm().item() == pytest.approx(norms["mean_token_norm"], rel=1e-5)
    unscaled = from_contrast(model, tok, texts_a, texts_b, 1, scale=None)
    assert unscaled[1].norm().item() == pytest.approx(norms["raw"], rel=1e-5)
    all_tokens = from_contrast(model, tok, texts_a, texts_b, 1, skip_first=0)
    assert all_tokens.norms["1"]["n_tokens_a"] == norms["n_tokens_a"] + len(texts_a)
    with pytest.raises(InputError, match="unknown layer 3"):
        from_contrast(model, tok, texts_a, texts_b, [3])
    # The settings object and the keywords are one thing; a keyword overrides one field of it.
    from ret_toolkit.steering import ContrastSettings

    settings = ContrastSettings(scale="mean", batch_size=1)
    torch.testing.assert_close(from_contrast(model, tok, texts_a, texts_b, 1, settings=settings)[1], by_mean[1],
                               atol=1e-5, rtol=1e-5)
    assert from_contrast(model, tok, texts_a, texts_b, 1, settings=settings, scale=None).construction["scale"] is None
    with pytest.raises(TypeError, match="unexpected keyword argument 'scaling'"):
        from_contrast(model, tok, texts_a, texts_b, 1, scaling="mean")
    with pytest.raises(InputError, match="scale must be"):
        from_contrast(model, tok, texts_a, texts_b, 1, scale="max")


def test_from_groups_matches_the_definition(tmp_path):
    import h5py

    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(500, 16)).astype(np.float16)
    groups = rng.integers(0, 4, size=500)
    vec = from_groups(hidden, groups, group=2, layer=5, chunk_rows=64)
    h = hidden.astype(np.float64)
    raw = h[groups == 2].mean(0) - h.mean(0)
    median_norm = np.median(np.linalg.norm(h, axis=1))
    np.testing.assert_allclose(vec[5].numpy(), raw / np.linalg.norm(raw) * median_norm, rtol=1e-5, atol=1e-6)
    assert vec.norms["5"]["raw"] == pytest.approx(np.linalg.norm(raw))
    assert vec.construction == {"method": "groups", "group": 2, "scale": "median",
                                "n_group_tokens": int((groups == 2).sum()), "n_tokens": 500}
    with h5py.File(tmp_path / "h.h5", "w") as f:  # storage-independent: an h5py dataset, store-style key
        f["hidden/5"] = hidden
        from_h5 = from_groups({"5": f["hidden/5"]}, groups, group=2)
    torch.testing.assert_close(from_h5[5], vec[5])
    mask = np.arange(500) % 5 != 0  # e.g. leave out sequence-start rows
    masked = from_groups(hidden, groups, group=2, layer=5, mask=mask, scale=None, chunk_rows=64)
    hm, gm = h[mask], groups[mask]
    np.testing.assert_allclose(masked[5].numpy(), hm[gm == 2].mean(0) - hm.mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="group 9 has no tokens"):
        from_groups(hidden, groups, group=9, layer=5)
    with pytest.raises(InputError, match="expected \\(500, d\\)"):
        from_groups(hidden[:10], groups, group=2, layer=5)


def test_generate_without_kv_cache_warns_for_prompt_or_generated():
    model, tok = make_tiny_model("llama")
    zero = SteeringVector({0: torch.zeros(32)})
    with pytest.warns(UserWarning, match="use_cache=False"):
        with steer(model, zero, positions="generated"):
            _generate(model, tok, n=2, use_cache=False)


def test_generate_settings_check_sampling_values_only_when_sampling():
    from ret_toolkit.steering.nnsight_steer import generate_settings

    greedy = generate_settings({"temperature": -1.0})  # ignored without do_sample, as generate ignores it
    assert greedy["do_sample"] is False and greedy["top_p"] is None
    for bad, needle in (({"temperature": 0.0}, "temperature"), ({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k"),
                        ({"temperature": float("nan")}, "temperature")):
        with pytest.raises(InputError, match=needle):
            generate_settings({"do_sample": True, **bad})
    assert generate_settings({"do_sample": True, "top_k": 0, "top_p": 1.0})["top_k"] == 0
