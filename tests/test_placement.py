"""Devices, weight precision, device maps and bfloat16 storage (CPU only: CUDA paths are checked by refusal)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from activation_cache import schema
from activation_cache.data import TokenWindows, standardization_stats
from activation_cache.devices import describe_placement, input_device, parse_device_map, resolve_device, resolve_model_dtype
from activation_cache.errors import InputError
from activation_cache.extraction import ExtractConfig, extract
from activation_cache.merge import merge_shards
from activation_cache.models import load_model
from activation_cache.reader import open_store
from file_checks import file_digests, one_error_line
from tiny_models import make_tiny_model, save_tiny_model

PROMPTS = ["Hi", "What is 2 + 3?", "The quick brown fox jumps over the lazy dog.", "A path from start to goal.",
           "She said that they would come back", "Let me think step by step."]
HAND_MAP = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu", "model.norm": "cpu",
            "model.rotary_emb": "cpu", "lm_head": "cpu"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny_model("llama", tmp_path_factory.mktemp("placement") / "tiny-llama")


@pytest.fixture(scope="module")
def hot_bf16_dir(tmp_path_factory):
    """A bfloat16 Llama whose residual stream carries ~3e5 (beyond float16's 65504) on a token of prompt 2 only."""
    model, tok = make_tiny_model("llama", seed=1)
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    hot = sorted(set(ids[2]) - {t for i, row in enumerate(ids) if i != 2 for t in row})[:1]
    with torch.no_grad():
        model.model.embed_tokens.weight[hot[0]] = 3.0e5
    path = tmp_path_factory.mktemp("bf16") / "hot-llama"
    model.to(torch.bfloat16).save_pretrained(path)
    tok.save_pretrained(path)
    assert [hot[0] in row for row in ids] == [False, False, True, False, False, False]
    return path


# --------------------------------------------------------------------------- the vocabulary
def test_devices_resolve_and_absent_ones_are_refused(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(InputError, match=r"device 'cuda' is not available: this machine has no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(InputError, match="'tpu' is unknown; use auto, cpu, cuda, cuda:N or mps"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(InputError, match=r"'cuda:2' is not available: this machine has 2 CUDA device\(s\), cuda:0..cuda:1"):
        resolve_device("cuda:2")


def test_model_dtype_auto_is_float32_on_cpu_and_the_checkpoints_on_gpu():
    assert resolve_model_dtype("auto", on_gpu=False) == torch.float32
    assert resolve_model_dtype("auto", on_gpu=True) == "auto"
    assert resolve_model_dtype("bfloat16", on_gpu=False) == torch.bfloat16
    assert resolve_model_dtype(torch.float16, on_gpu=True) == torch.float16
    with pytest.raises(InputError, match="'int8' is unknown"):
        resolve_model_dtype("int8", on_gpu=False)


def test_device_maps_parse_from_names_json_and_files(tmp_path, monkeypatch):
    assert parse_device_map(None) is None
    assert parse_device_map("auto") == "auto" and parse_device_map("Balanced") == "balanced"
    assert parse_device_map(json.dumps(HAND_MAP)) == HAND_MAP
    f = tmp_path / "map.json"
    f.write_text(json.dumps({"model": "cpu", "lm_head": "disk"}))
    assert parse_device_map(str(f)) == {"model": "cpu", "lm_head": "disk"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for bad, needle in (('{"a": ', "not valid JSON"), ("[1]", "is not auto, balanced"), ("{}", "non-empty JSON object"),
                        ('{"a": 0}', "module 'a': device 'cuda:0' is not available"),
                        ('{"a": [1]}', "must be a string or a GPU index"), (str(tmp_path / "no.json"), "existing .json file")):
        with pytest.raises(InputError, match=needle.replace("(", r"\(").replace("[", r"\[")):
            parse_device_map(bad)


def test_load_model_places_and_describes_the_model(llama_dir):
    lm = load_model(str(llama_dir), device="cpu", dtype="bfloat16")
    assert (lm.device, lm.dtype) == ("cpu", "bfloat16") == describe_placement(lm.model)
    assert input_device(lm.model) == torch.device("cpu")
    with pytest.raises(InputError, match="give device or device_map, not both"):
        load_model(str(llama_dir), device="cpu", device_map="auto")


# --------------------------------------------------------------------------- every command takes the flags
def _parsers():
    from ret_toolkit.cli.extract import parser as extract_parser
    from ret_toolkit.cli import demo, forecast, planning, steer

    return {"ret-extract": (extract_parser(), ["--prompts", "p", "--out", "o.h5"]),
            "ret-steer": (steer.parser(), []), "ret-forecast": (forecast.parser(), ["--out", "o", "--dataset", "d", "--macro-ckpt", "c"]),
            "ret-planning": (planning.parser(), ["--model", "m", "--task", "grammar", "--out", "o"]),
            "ret-demo": (demo.parser(), [])}


def test_every_model_command_accepts_and_checks_the_placement_flags(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for prog, (p, required) in _parsers().items():
        a = p.parse_args(required + ["--device", "cpu", "--model-dtype", "bfloat16", "--device-map", "auto"])
        assert (a.device, a.model_dtype, a.device_map) == ("cpu", "bfloat16", "auto"), prog
        d = p.parse_args(required)
        assert (d.device, d.model_dtype, d.device_map) == ("auto", "auto", None), prog
        for flags, needle in ((["--device", "cuda"], "argument --device: 'cuda' is not available"),
                              (["--model-dtype", "int4"], "argument --model-dtype: 'int4' is unknown"),
                              (["--device-map", "{x"], "argument --device-map: not valid JSON")):
            with pytest.raises(SystemExit) as ex:
                p.parse_args(required + flags)
            assert ex.value.code == 2
            assert needle in one_error_line(capsys.readouterr().err, prog), (prog, flags)


def test_ret_extract_on_a_missing_device_writes_nothing(llama_dir, tmp_path, monkeypatch, capsys):
    from ret_toolkit.cli.extract import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = file_digests(tmp_path)
    with pytest.raises(SystemExit) as ex:
        main(["--model", str(llama_dir), "--prompts", "reasoning", "--out", str(tmp_path / "s.h5"), "--device", "cuda:0"])
    assert ex.value.code == 2 and "cuda:0" in one_error_line(capsys.readouterr().err, "ret-extract")
    assert file_digests(tmp_path) == before
    for device in ("cpu", "auto"):
        rc = main(["--model", str(llama_dir), "--prompts", "reasoning", "--limit", "3", "--quiet",
                   "--out", str(tmp_path / f"{device}.h5"), "--device", device, "--model-dtype", "auto"])
        assert rc == 0
        with open_store(tmp_path / f"{device}.h5") as s:
            assert (s.device, s.model_dtype, s.config["model_dtype"]) == ("cpu", "float32", "float32")


def test_device_maps_give_the_store_of_the_plain_load(llama_dir, tmp_path):
    stores = {}
    for name, dmap in (("plain", None), ("auto", "auto"), ("hand", json.dumps(HAND_MAP))):
        cfg = ExtractConfig(prompts=PROMPTS, out=str(tmp_path / f"{name}.h5"), model=str(llama_dir), dtype="float32",
                            batch_size=4, generate=3, embed=True, device_map=dmap)
        extract(cfg, progress=False)
        stores[name] = open_store(cfg.out)
    try:
        ref = stores.pop("plain")
        for name, s in stores.items():
            assert s.config == ref.config, name  # the placement is not part of the extraction's identity
            assert s.device == "cpu" and s.n_sequences == len(PROMPTS)
            for i in range(len(PROMPTS)):
                np.testing.assert_array_equal(s.tokens(i), ref.tokens(i))
                np.testing.assert_array_equal(s.hidden_layers(i), ref.hidden_layers(i))
    finally:
        for s in [ref, *stores.values()]:
            s.close()


def test_a_resume_in_another_precision_is_refused(llama_dir, tmp_path):
    out = tmp_path / "s.h5"
    extract(ExtractConfig(prompts=PROMPTS, out=str(out), model=str(llama_dir), limit=2), progress=False)
    before = file_digests(out)
    with pytest.raises(InputError, match="differs in (dtype, )?model_dtype"):
        extract(ExtractConfig(prompts=PROMPTS, out=str(out), model=str(llama_dir), limit=2, model_dtype="bfloat16"),
                progress=False)
    assert file_digests(out) == before


# --------------------------------------------------------------------------- bfloat16 storage
def _block_outputs(loaded, prompts):
    """The model's own block outputs, (T, D) per prompt and layer, in its dtype (one prompt per forward)."""
    blocks = loaded.model.model.layers
    outs, handles = {}, []
    for i, b in enumerate(blocks):
        handles.append(b.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, (o[0] if isinstance(o, tuple) else o)[0])))
    try:
        rows = []
        for p in prompts:
            ids = loaded.tokenizer(p, return_tensors="pt")
            with torch.no_grad():
                loaded.model(**ids)
            rows.append({str(i): outs[i].clone() for i in outs})
        return rows
    finally:
        for h in handles:
            h.remove()


def test_bf16_activations_beyond_float16_fail_cleanly_in_float16_and_store_exactly_in_bfloat16(hot_bf16_dir, tmp_path):
    loaded = load_model(str(hot_bf16_dir), dtype="bfloat16")
    assert loaded.dtype == "bfloat16"
    common = dict(prompts=PROMPTS, model=str(hot_bf16_dir), model_dtype="bfloat16", batch_size=1)

    f16 = tmp_path / "f16.h5"
    with pytest.raises(InputError) as err:
        extract(ExtractConfig(out=str(f16), dtype="float16", **common), loaded=loaded, progress=False)
    msg = str(err.value)
    assert "exceed the float16 range" in msg and "dtype='bfloat16'" in msg and "\n" not in msg
    with open_store(f16) as s:  # the two prompts before the hot one were committed and stay readable
        assert s.n_sequences == 2 and np.isfinite(s.hidden(1, 0)).all()

    bf = tmp_path / "bf16.h5"
    extract(ExtractConfig(out=str(bf), dtype="bfloat16", **common), loaded=loaded, progress=False)
    truth = _block_outputs(loaded, PROMPTS)
    with open_store(bf) as s:
        assert (s.dtype, s.model_dtype, s.read_dtype) == ("bfloat16", "bfloat16", np.dtype(np.float32))
        assert s.attrs["format_version"] == 2 and s.h5["hidden/0"].attrs["dtype"] == "bfloat16"
        assert s.h5["hidden/0"].dtype == np.uint16
        for i, per_layer in enumerate(truth):
            for layer, h in per_layer.items():
                bits = h.view(torch.int16).numpy().view(np.uint16)
                np.testing.assert_array_equal(s.hidden_dataset(layer).ds[s.offsets[i]:s.offsets[i + 1]], bits)
                np.testing.assert_array_equal(s.hidden(i, layer), h.float().numpy())  # exact upcast
        assert s.hidden(2, 1).max() > 65504  # the hot token, kept


def test_a_failed_run_with_nothing_committed_leaves_nothing_that_blocks_its_fix(hot_bf16_dir, tmp_path, capsys):
    from ret_toolkit.cli.extract import main as extract_main

    prompts = tmp_path / "hot_first.txt"
    prompts.write_text(f"{PROMPTS[2]}\n{PROMPTS[0]}\n")  # the overflowing prompt is in the first batch
    args = ["--model", str(hot_bf16_dir), "--model-dtype", "bfloat16", "--prompts", str(prompts), "--batch-size", "1",
            "--out", str(tmp_path / "s.h5"), "--quiet", "--dtype", "float16"]
    existing = tmp_path / "keep.h5"
    existing.write_bytes(b"not a store, but not ours to remove")
    assert extract_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "exceed the float16 range" in err and "store them with --dtype bfloat16 (or float32)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hot_first.txt", "keep.h5"]  # no empty store, no lock
    assert extract_main(args[:-1] + ["bfloat16"]) == 0  # the fix, without --overwrite
    with open_store(tmp_path / "s.h5") as s:
        assert s.n_sequences == 2 and s.dtype == "bfloat16"
    # a failed resume of a store that existed before keeps it byte for byte
    before = file_digests(tmp_path / "s.h5")
    assert extract_main(args[:-1] + ["bfloat16", "--limit", "1"]) == 2
    capsys.readouterr()
    assert file_digests(tmp_path / "s.h5") == before


def test_dtype_auto_stores_a_16_bit_model_exactly_and_probes_a_float32_one(hot_bf16_dir, llama_dir, tmp_path, capsys):
    from ret_toolkit.cli.extract import main as extract_main

    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    cases = [  # (model, weight dtype, stored dtype, why)
        (hot_bf16_dir, "bfloat16", "bfloat16", "auto: the model runs in bfloat16, stored exactly"),
        (hot_bf16_dir, "float32", "bfloat16", "passes half of float16's range"),  # 3e5 on prompt 2 ...
        (llama_dir, "float32", "float16", "within half of float16's range"),
    ]
    for i, (model, weights, stored, why) in enumerate(cases):
        # ... but the probe reads the first prompt: put the hot one first for the float32 case
        lines = [PROMPTS[2], *PROMPTS[:2]] if i == 1 else PROMPTS
        prompts.write_text("\n".join(lines) + "\n")
        out = tmp_path / f"auto{i}.h5"
        base = ["--model", str(model), "--model-dtype", weights, "--prompts", str(prompts), "--out", str(out), "--quiet"]
        assert extract_main(base + ["--dry-run"]) == 0
        assert f"storage dtype: {stored} (" in capsys.readouterr().out
        assert extract_main(base) == 0
        with open_store(out) as s:
            assert s.dtype == stored and why in s.dtype_choice and s.config["dtype"] == stored
        capsys.readouterr()
        assert extract_main(["info", str(out)]) == 0
        assert f"hidden states stored as {stored} (auto: " in capsys.readouterr().out
        assert extract_main(base + ["--dtype", stored]) == 0  # the same store: auto recorded what it chose
        assert "0 new tokens" in capsys.readouterr().out


def test_bf16_stores_read_through_windows_stats_merge_and_ret_training(hot_bf16_dir, tmp_path):
    loaded = load_model(str(hot_bf16_dir), dtype="bfloat16")
    common = dict(prompts=PROMPTS, model=str(hot_bf16_dir), model_dtype="bfloat16", dtype="bfloat16", batch_size=2)
    whole = tmp_path / "whole.h5"
    extract(ExtractConfig(out=str(whole), **common), loaded=loaded, progress=False)
    shards = [tmp_path / f"shard{i}.h5" for i in range(2)]
    for i, path in enumerate(shards):
        extract(ExtractConfig(out=str(path), num_shards=2, shard_index=i, **common), loaded=loaded, progress=False)
    merged = merge_shards(tmp_path / "merged.h5", shards)
    with open_store(whole) as w, open_store(merged) as m:
        assert m.dtype == "bfloat16" and m.h5["hidden/1"].attrs["dtype"] == "bfloat16"
        for i in range(len(PROMPTS)):
            np.testing.assert_array_equal(m.hidden_layers(i), w.hidden_layers(i))
    windows = TokenWindows(merged, ["1"], length=4)
    start = int(windows.starts[0])
    with open_store(whole) as w:
        expect = w.hidden_rows("1", start, start + 4)
    x = windows[0]
    assert x.dtype == torch.float32 and torch.equal(x, torch.from_numpy(expect))
    mean, std = standardization_stats(whole, ["1"])
    assert torch.isfinite(mean).all() and float(mean.abs().max()) > 1e3  # the hot token's 3e5 is in the mean

    from ret_toolkit.macro import train

    result = train([whole], layers="1", max_epochs=1, root_dir=tmp_path / "runs", progress=False,
                   data=dict(window=2, max_horizon=2, batch_size=8, val_fraction=0.34), model=dict(z_dim=8, hidden=16))
    assert result.checkpoint.is_file()
    assert all(torch.isfinite(p).all() for p in result.module.parameters())


def test_float_rows_written_to_a_bf16_store_are_rounded_like_torch(tmp_path):
    from activation_cache.writer import Batch, StoreSpec, StoreWriter

    x = np.array([[1.0, 1.00390625, 3.0e5, -2.5e-3]], np.float32)
    spec = StoreSpec(model="m", model_revision="r", d_model=4, n_model_layers=1, layers=["0"], config={},
                     dtype="bfloat16")
    with StoreWriter(tmp_path / "w.h5", spec) as w:
        w.append(Batch([np.array([5], np.int32)], [np.array([False])], {"0": x}, [{"prompt_id": "a"}]))
    with open_store(tmp_path / "w.h5") as s:
        np.testing.assert_array_equal(s.hidden(0, 0), torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    assert schema.all_finite(schema.encode_hidden(x, "bfloat16"), "bfloat16")
    assert not schema.all_finite(schema.encode_hidden(np.array([np.inf, 1.0]), "bfloat16"), "bfloat16")
    assert not schema.all_finite(schema.encode_hidden(np.array([np.nan]), "bfloat16"), "bfloat16")


def test_window_datasets_reopen_their_file_in_forked_loader_workers(llama_dir, tmp_path):
    from torch.utils.data import DataLoader

    out = tmp_path / "w.h5"
    extract(ExtractConfig(prompts=PROMPTS, out=str(out), model=str(llama_dir), dtype="bfloat16", model_dtype="bfloat16"),
            progress=False)
    ds = TokenWindows(out, ["1"], length=2)
    first = ds[0]  # opens the file in this process before the workers fork
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork")
    rows = torch.cat(list(loader))
    assert rows.shape == (len(ds), 2, 32) and torch.equal(rows[0], first)
    assert torch.equal(rows, torch.stack([ds[i] for i in range(len(ds))]))


def test_steering_on_a_device_mapped_model_matches_the_plain_load(llama_dir):
    from ret_toolkit.steering import SteeringVector, steer

    outs = []
    for kw in ({}, {"device_map": json.dumps(HAND_MAP)}):
        lm = load_model(str(llama_dir), **kw)
        vec = SteeringVector({1: torch.ones(lm.arch.d_model)})
        enc = lm.tokenizer(["What is 2 + 3?"], return_tensors="pt").to(input_device(lm.model))
        with torch.inference_mode(), steer(lm, vec, alpha=2.0):
            outs.append(lm.model.generate(**enc, max_new_tokens=6, do_sample=False,
                                          pad_token_id=lm.tokenizer.pad_token_id))
    assert torch.equal(outs[0], outs[1])
