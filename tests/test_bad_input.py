"""The bad-input suite: every case a user or a reviewer found, through the console commands.

Each case sets up its input, runs one command's ``main(argv)`` in this process
(the console script is that function and nothing else) and checks what the
README promises: exit status 2, one stderr line that names the cause (and
the file), no traceback, and every file that existed before byte-identical.
Cases whose correct answer is a result (valid but odd input) check the result.
The kills and signals that need a real process are in tests/test_crash.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import torch

from activation_cache.extraction import ExtractConfig, extract
from activation_cache.merge import merge_shards
from activation_cache.models import load_model
from ret_toolkit.cli import extract as extract_cmd
from ret_toolkit.cli import macro as macro_cmd
from ret_toolkit.cli import steer as steer_cmd
from ret_toolkit.cli import train as train_cmd
from ret_toolkit.cli import vq_codes as vq_codes_cmd
from file_checks import file_digests, one_error_line
from store_edits import edited, garbage_tokenizer, swap_offsets
from tiny_models import save_tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COMMANDS = {"ret-extract": extract_cmd.main, "ret-macro": macro_cmd.main, "ret-train": train_cmd.main,
            "ret-vq-codes": vq_codes_cmd.main, "ret-steer": steer_cmd.main}
SMALL_NET = ["--model.hidden=16", "--model.predictor_hidden=16", "--model.z_dim=4", "--trainer.max_epochs=1",
             "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
             "--model.collapse_threshold=0"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny Llama, a 12-sequence store, a 4-sequence store, 2 shards, a RET and a VQ checkpoint."""
    root = tmp_path_factory.mktemp("bad_input")
    model = save_tiny_model("llama", root / "tiny-llama")
    loaded = load_model(str(model))
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "text": f"What is {i} + {i}? " * (1 + i % 3)}) + "\n"
                               for i in range(12)))
    common = dict(prompts=str(prompts), model=str(model), generate=4, batch_size=4)
    store = root / "store.h5"
    extract(ExtractConfig(out=str(store), **common), loaded=loaded, progress=False)
    small = root / "small.h5"
    extract(ExtractConfig(out=str(small), limit=4, **common), loaded=loaded, progress=False)
    shards = []
    for i in range(2):
        shards.append(root / f"shard{i}.h5")
        extract(ExtractConfig(out=str(shards[-1]), num_shards=2, shard_index=i, **common), loaded=loaded,
                progress=False)
    runs = root / "runs"
    assert train_cmd.main(["macro", "fit", f"--data.stores=[{store}]", "--data.layers=1", "--data.window=2",
                           "--data.max_horizon=2", "--data.batch_size=32", f"--trainer.default_root_dir={runs}",
                           *SMALL_NET]) == 0
    ret = next(runs.rglob("last.ckpt"))
    vq_runs = root / "vq_runs"
    assert train_cmd.main(["vq", "fit", f"--data.stores=[{store}]", "--data.block.layers=0-1", "--data.block.start=-2",
                           "--data.block.stop=0", "--model.dim=16", "--model.depth=1", "--model.heads=2",
                           "--model.code_dim=4", "--model.num_codes=4", "--trainer.max_epochs=1",
                           "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                           f"--trainer.default_root_dir={vq_runs}"]) == 0
    vq = next(vq_runs.rglob("last.ckpt"))
    return dict(root=root, model=model, prompts=prompts, store=store, small=small, shards=shards, ret=ret, vq=vq)


@dataclass
class Case:
    """One bad input: ``setup(world, tmp) -> argv`` for ``command``; the error line must match ``expect``."""

    name: str
    command: str
    setup: Callable[[dict, Path], list[str]]
    expect: str
    names_file: bool = True  # the line names a file of the case (the tmp folder or the world's)
    patch: Callable[[pytest.MonkeyPatch], None] | None = field(default=None, repr=False)


def _copy(world, tmp, key="store", name=None) -> Path:
    return Path(shutil.copy(world[key], tmp / (name or Path(world[key]).name)))


def _nan_rows(rows: slice, layer: str = "1", value: float = float("nan")):
    def edit(f):
        f[f"hidden/{layer}"][rows] = value
    return edit


def _jsonl(tmp, *records: str) -> Path:
    p = tmp / "bad.jsonl"
    p.write_text("".join(r + "\n" for r in records))
    return p


def _extract(world, tmp, prompts, *extra) -> list[str]:
    return ["--model", str(world["model"]), "--prompts", str(prompts), "--out", str(tmp / "out.h5"), "--quiet",
            *extra]


def _merged(world, tmp) -> Path:
    run = tmp / "run"
    run.mkdir()
    for s in world["shards"]:
        shutil.copy(s, run)
    return merge_shards(run / "merged.h5", sorted(run.glob("shard*.h5")))


def _merged_shard_moved(world, tmp) -> list[str]:
    merged = _merged(world, tmp)
    shutil.move(merged.parent / "shard1.h5", tmp / "away.h5")
    return ["info", str(merged)]


def _merged_decoy_in_cwd(world, tmp) -> list[str]:
    merged = _merged(world, tmp)
    (merged.parent / "shard1.h5").unlink()
    os.chdir(tmp)  # the case's working directory holds another file under the shard's name
    shutil.copy(world["store"], tmp / "shard1.h5")
    return ["info", str(merged)]


def _checkpoint_like(tmp, payload) -> Path:
    p = tmp / "fake.ckpt"
    if isinstance(payload, bytes):
        p.write_bytes(payload)
    else:
        torch.save(payload, p)
    return p


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _evil_ckpt(world, tmp) -> list[str]:
    import pickle

    p = tmp / "evil.ckpt"
    p.write_bytes(pickle.dumps({"state_dict": {}, "x": _Evil()}, protocol=2))
    return ["macro", "fit", f"--data.stores=[{world['store']}]", "--data.layers=1", f"--ckpt_path={p}",
            f"--trainer.default_root_dir={tmp / 'runs'}", *SMALL_NET]


def _train(world, tmp, *extra, store=None) -> list[str]:
    return ["macro", "fit", f"--data.stores=[{store or world['store']}]", "--data.layers=1", "--data.window=2",
            "--data.max_horizon=2", f"--trainer.default_root_dir={tmp / 'runs'}", *SMALL_NET, *extra]


def _yaml(tmp, text) -> Path:
    p = tmp / "run.yaml"
    p.write_text(text)
    return p


def _disk_full(monkeypatch):
    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")
    monkeypatch.setattr(torch, "save", full)


CASES = [
    # --- sampling and lengths: refused at the edge, before a model loads or a file is written
    Case("temperature-nan", "ret-extract", lambda w, t: _extract(w, t, w["prompts"], "--generate", "2", "--sample",
                                                                   "--temperature", "nan"), r"--temperature must be a finite number > 0, got nan", False),
    Case("temperature-negative", "ret-extract", lambda w, t: _extract(w, t, w["prompts"], "--temperature", "-1"),
         r"--temperature must be a finite number > 0", False),
    Case("temperature-inf", "ret-extract", lambda w, t: _extract(w, t, w["prompts"], "--temperature", "inf"),
         r"--temperature must be a finite number > 0, got inf", False),
    Case("top-p-above-1", "ret-extract", lambda w, t: _extract(w, t, w["prompts"], "--top-p", "1.5"),
         r"--top-p must be in \(0, 1\], got 1.5", False),
    Case("top-p-zero", "ret-extract", lambda w, t: _extract(w, t, w["prompts"], "--top-p", "0"),
         r"--top-p must be in \(0, 1\]", False),
    Case("overwrite-with-a-bad-temperature-keeps-the-old-store", "ret-extract",
         lambda w, t: _extract(w, t, w["prompts"], "--out", str(_copy(w, t)), "--overwrite", "--generate", "2",
                               "--sample", "--temperature", "nan"), r"--temperature must be a finite number > 0", False),
    Case("out-is-the-prompt-file", "ret-extract",
         lambda w, t: ["--model", str(w["model"]), "--prompts", str(_copy(w, t, "prompts")), "--out",
                       str(t / "prompts.jsonl"), "--overwrite", "--quiet"], r"is this command's --prompts as well as its output"),
    # --- strings HDF5 cannot hold: refused with the prompt id and field, and no empty store left
    Case("nul-in-text", "ret-extract", lambda w, t: _extract(w, t, _jsonl(t, '{"id": "a", "text": "x\\u0000y"}')),
         r"bad\.jsonl:1: prompt 'a': field 'text' contains a NUL character"),
    Case("nul-in-id", "ret-extract", lambda w, t: _extract(w, t, _jsonl(t, '{"id": "a\\u0000", "text": "x"}')),
         r"field 'id' contains a NUL character"),
    Case("surrogate-in-field", "ret-extract",
         lambda w, t: _extract(w, t, _jsonl(t, '{"id": "a", "text": "x"}', '{"id": "b", "text": "y", "note": "\\udc80"}')),
         r"bad\.jsonl:2: prompt 'b': field 'note' contains a lone surrogate \(\\udc80\)"),
    Case("slash-in-field-name", "ret-extract", lambda w, t: _extract(w, t, _jsonl(t, '{"id": "a", "text": "x", "a/b": 1}')),
         r"field named 'a/b'"),
    # --- stores that are not whole
    Case("merged-shard-moved", "ret-extract", _merged_shard_moved, r"merged\.h5: its shard shard1\.h5 is missing"),
    Case("merged-shard-decoy-in-cwd", "ret-extract", _merged_decoy_in_cwd, r"its shard shard1\.h5 is missing"),
    Case("offsets-out-of-order-info", "ret-extract", lambda w, t: ["info", str(edited(_copy(w, t), swap_offsets))],
         r"store\.h5: corrupt store: /offsets decrease at sequence 2"),
    Case("offsets-out-of-order-train", "ret-train", lambda w, t: _train(w, t, store=edited(_copy(w, t), swap_offsets)),
         r"corrupt store: /offsets decrease"),
    Case("offsets-out-of-order-macro", "ret-macro",
         lambda w, t: ["--ckpt", str(w["ret"]), "--store", str(edited(_copy(w, t), swap_offsets)), "--out",
                       str(t / "m"), "--quiet"], r"store\.h5: corrupt store: /offsets decrease"),
    Case("garbage-tokenizer", "ret-extract", lambda w, t: ["info", str(edited(_copy(w, t), garbage_tokenizer))],
         r"store\.h5: corrupt /tokenizer record"),
    # --- non-finite values anywhere a command reads
    Case("nan-in-a-validation-sequence", "ret-train", lambda w, t: _train(w, t, store=_nan_in_validation(w, t)),
         r"store\.h5: non-finite hidden state in /hidden/1 at token row \d+ \(sequence \d+\)"),
    Case("inf-in-a-validation-sequence-macro", "ret-macro",
         lambda w, t: ["--ckpt", str(w["ret"]), "--store", str(_nan_in_validation(w, t)), "--out", str(t / "m"),
                       "--quiet"], r"store\.h5: non-finite hidden states in sequence \d+"),
    Case("nan-block-vq-codes", "ret-vq-codes",
         lambda w, t: ["--ckpt", str(w["vq"]), "--store", str(edited(_copy(w, t), _nan_rows(slice(None), "0"))),
                       "--out", str(t / "codes.h5"), "--quiet"], r"store\.h5: non-finite hidden states in the block of sequence 0"),
    Case("vq-codes-over-its-store", "ret-vq-codes",
         lambda w, t: ["--ckpt", str(w["vq"]), "--store", str(_copy(w, t)), "--out", str(t / "store.h5"),
                       "--overwrite", "--quiet"], r"store\.h5 is this command's --store as well as its output"),
    # --- small stores
    Case("macro-on-4-sequences", "ret-macro",
         lambda w, t: ["--ckpt", str(w["ret"]), "--store", str(_copy(w, t, "small")), "--out", str(t / "m"), "--quiet"],
         r"small\.h5: ret-macro evaluates on at least 2 held-out sequences, but the checkpoint's split leaves \d of"),
    # --- checkpoints and config values
    Case("ckpt-path-not-a-checkpoint", "ret-train",
         lambda w, t: _train(w, t, f"--ckpt_path={_checkpoint_like(t, b'not a checkpoint at all')}"),
         r"fake\.ckpt: not a loadable RET checkpoint"),
    Case("ckpt-path-crafted-pickle", "ret-train", _evil_ckpt, r"evil\.ckpt: not a loadable RET checkpoint"),
    Case("ckpt-path-of-another-family", "ret-train", lambda w, t: _train(w, t, f"--ckpt_path={w['vq']}"),
         r"this is a VQ checkpoint, expected a RET checkpoint"),
    Case("macro-given-a-vq-checkpoint", "ret-macro",
         lambda w, t: ["--ckpt", str(w["vq"]), "--store", str(w["store"]), "--out", str(t / "m"), "--quiet"],
         r"this is a VQ checkpoint, expected a RET checkpoint"),
    Case("yaml-negative-lr", "ret-train", lambda w, t: _train(w, t, "--config", str(_yaml(t, "model:\n  lr: -5\n"))),
         r"model\.lr must be a finite number > 0, got -5", False),
    Case("yaml-window-0", "ret-train", lambda w, t: _train(w, t, "--config", str(_yaml(t, "data:\n  window: 0\n"))),
         r"data\.window must be an integer >= 1, got 0", False),
    # --- models and the environment
    Case("model-corrupt-weights", "ret-extract",
         lambda w, t: _extract(w, t, w["prompts"], "--model", str(_corrupt_model(w, t))), r"cannot load model from .*broken"),
    Case("model-not-gguf", "ret-extract",
         lambda w, t: _extract(w, t, w["prompts"], "--model", str(_not_gguf(t))), r"cannot convert .*fake\.gguf: .*not a GGUF file"),
    Case("out-not-writable", "ret-extract",
         lambda w, t: ["--model", str(w["model"]), "--prompts", str(w["prompts"]), "--out", "/proc/ret_store.h5", "--quiet"],
         r"\(errno \d+\): /proc/ret_store\.h5", False),
    Case("train-runs-not-writable", "ret-train",
         lambda w, t: _train(w, t, "--trainer.default_root_dir=/proc/ret_runs"), r"\(errno \d+\): /proc/ret_runs",
         False),
    Case("disk-full-saving-the-macro-checkpoint", "ret-macro",
         lambda w, t: ["--ckpt", str(w["ret"]), "--store", str(w["store"]), "--out", str(t / "m"), "--quiet"],
         r"cannot write a checkpoint \(disk full or not writable\?\)", False, patch=_disk_full),
    # --- cases that held before and must keep holding
    Case("missing-prompt-file", "ret-extract", lambda w, t: _extract(w, t, t / "nope.jsonl"), r"prompt file not found: .*nope\.jsonl"),
    Case("malformed-jsonl-line", "ret-extract", lambda w, t: _extract(w, t, _jsonl(t, '{"text": "ok"}', '{"text": ')),
         r"bad\.jsonl:2: malformed JSON"),
    Case("unknown-layer", "ret-extract", lambda w, t: _extract(w, t, w["prompts"], "--layers", "7"), r"layer", False),
    Case("missing-store", "ret-extract", lambda w, t: ["info", str(t / "none.h5")], r"store not found: .*none\.h5"),
    Case("store-of-other-config", "ret-extract",
         lambda w, t: ["--model", str(w["model"]), "--prompts", str(w["prompts"]), "--out", str(_copy(w, t)),
                       "--layers", "0", "--quiet"], r"different extraction config .*--overwrite"),
    Case("device-not-there", "ret-extract", lambda w, t: _extract(w, t, w["prompts"], "--device", "cuda:7"), r"cuda", False),
    Case("macro-missing-checkpoint", "ret-macro",
         lambda w, t: ["--ckpt", str(t / "none.ckpt"), "--store", str(w["store"]), "--out", str(t / "m")],
         r"RET checkpoint not found: .*none\.ckpt"),
]


def _nan_in_validation(world, tmp) -> Path:
    """A copy of the store with one inf in the middle of a validation sequence (the default 20 % split)."""
    from ret_toolkit.storeset import split_sequences

    _, val = split_sequences(12, 0.2, 0)
    path = _copy(world, tmp)
    with h5py.File(path, "a") as f:
        row = int(f["offsets"][val[0]]) + 2
        f["hidden/1"][row, 3] = np.inf
    return path


def _corrupt_model(world, tmp) -> Path:
    broken = Path(shutil.copytree(world["model"], tmp / "broken"))
    next(broken.glob("*.safetensors")).write_bytes(b"garbage" * 10)
    return broken


def _not_gguf(tmp) -> Path:
    p = tmp / "fake.gguf"
    p.write_bytes(b"this is no GGUF file" * 50)
    return p


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_line_exit_2_and_changes_nothing(case, world, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RET_TOOLKIT_CACHE", str(tmp_path.with_name(tmp_path.name + "-cache")))
    argv = case.setup(world, tmp_path)
    if case.patch is not None:
        case.patch(monkeypatch)
    capsys.readouterr()
    before, world_before = file_digests(tmp_path), file_digests(world["root"])
    try:
        rc = COMMANDS[case.command](argv)
    except SystemExit as e:  # argparse refuses a flag by exiting, as the console script does
        rc = e.code
    _, err = capsys.readouterr()
    line = one_error_line(err)
    assert rc == 2 and line.startswith(case.command) and ": error: " in line, (rc, line)
    assert re.search(case.expect, line), line
    if case.names_file:
        assert str(tmp_path) in line or str(world["root"]) in line or "/proc" in line, line
    assert file_digests(tmp_path) == before, f"{case.name}: files changed"
    assert file_digests(world["root"]) == world_before, f"{case.name}: the shared files changed"
    assert not (tmp_path / "PWNED").exists() and not (Path.cwd() / "PWNED").exists()


def test_max_tokens_beyond_the_context_is_cut_with_a_line(world, tmp_path, capsys):
    """Valid but odd: --max-tokens 10000 on a 256-token model traces at most its context, and says so."""
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"id": "huge", "text": "one two " * 400}) + "\n")
    out = tmp_path / "out.h5"
    assert extract_cmd.main(_extract(world, tmp_path, long, "--max-tokens", "10000", "--generate", "4")) == 0
    err = capsys.readouterr().err
    assert "truncated 1 prompt(s) to 252 tokens (the model's context of 256 tokens less --generate 4): huge" in err
    from activation_cache.reader import open_store

    with open_store(out) as s:
        assert len(s.tokens(0)) == 256 and int(s.generated(0).sum()) <= 4
