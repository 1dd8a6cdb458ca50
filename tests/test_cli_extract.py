"""``ret-extract``: bad input -> one line + exit 2; dry-run, info, merge; disk full mid-run."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from ret_toolkit.cli.extract import main
from activation_cache.extraction import ExtractConfig, extract
from activation_cache.models import load_model
from activation_cache.reader import open_store
from file_checks import file_digests, one_error_line
from tiny_models import save_tiny_model

RET_EXTRACT = str(Path(sys.executable).with_name("ret-extract"))
LINES = [f"Question {i}: what is {i} + {3 * i}? Let me think step by step." for i in range(40)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = save_tiny_model("llama", root / "tiny-llama")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(LINES[:6]) + "\n")
    return dict(root=root, model=str(model), prompts=str(prompts), loaded=load_model(str(model)))


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(err, *needles, prog="ret-extract"):
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])


def base(setup, out, *extra):
    return ["--model", setup["model"], "--prompts", setup["prompts"], "--out", out, "--quiet", *extra]


# --------------------------------------------------------------------------- bad input, in process
def test_missing_prompt_file(setup, tmp_path, capsys):
    rc, out, err = run(capsys, "--model", setup["model"], "--prompts", tmp_path / "nope.txt",
                       "--out", tmp_path / "o.h5")
    assert rc == 2 and out == ""
    assert_one_line_error(err, "prompt file not found", "nope.txt")
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_empty_prompt_file(setup, tmp_path, capsys, content):
    p = tmp_path / "empty.txt"
    p.write_text(content)
    rc, _, err = run(capsys, "--model", setup["model"], "--prompts", p, "--out", tmp_path / "o.h5")
    assert rc == 2
    assert_one_line_error(err, "contains no prompts", "empty.txt")
    assert not (tmp_path / "o.h5").exists()


def test_malformed_jsonl_names_the_line(setup, tmp_path, capsys):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "fine"}\n\n{"text": "broken\n{"text": "also fine"}\n')
    rc, _, err = run(capsys, "--model", setup["model"], "--prompts", p, "--out", tmp_path / "o.h5")
    assert rc == 2
    assert_one_line_error(err, "bad.jsonl:3:", "malformed JSON")
    p.write_text('{"text": "fine"}\n["a list"]\n')
    rc, _, err = run(capsys, "--model", setup["model"], "--prompts", p, "--out", tmp_path / "o.h5")
    assert rc == 2
    assert_one_line_error(err, "bad.jsonl:2:", "expected a JSON object")


def test_unknown_layer_index(setup, tmp_path, capsys):
    rc, _, err = run(capsys, *base(setup, tmp_path / "o.h5", "--layers", "0,5"))
    assert rc == 2
    assert_one_line_error(err, "unknown layer 5", "0..1")
    rc, _, err = run(capsys, *base(setup, tmp_path / "o.h5", "--layers", "mid"))
    assert rc == 2
    assert_one_line_error(err, "'mid'")
    assert not (tmp_path / "o.h5").exists()


def test_unknown_model(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["--prompts", setup["prompts"], "--out", tmp_path / "o.h5", "--quiet"]
    rc, _, err = run(capsys, "--model", tmp_path / "no-such-model", *args)
    assert rc == 2
    assert_one_line_error(err, "does not exist", "no-such-model")
    rc, _, err = run(capsys, "--model", "some-org/some-model-that-is-not-cached", *args)
    assert rc == 2
    assert_one_line_error(err, "some-org/some-model-that-is-not-cached", "HF_HUB_OFFLINE=1")
    empty_dir = tmp_path / "not-a-model"
    empty_dir.mkdir()
    rc, _, err = run(capsys, "--model", empty_dir, *args)
    assert rc == 2
    assert_one_line_error(err, "no config.json")
    assert not (tmp_path / "o.h5").exists()


def test_output_in_missing_directory(setup, tmp_path, capsys):
    out = tmp_path / "missing" / "deeper" / "o.h5"
    rc, _, err = run(capsys, *base(setup, out))
    assert rc == 2
    assert_one_line_error(err, "output directory does not exist", str(tmp_path / "missing" / "deeper"))
    assert not (tmp_path / "missing").exists()


def test_existing_store_with_other_config_then_overwrite(setup, tmp_path, capsys):
    out = tmp_path / "o.h5"
    rc, stdout, _ = run(capsys, *base(setup, out, "--layers", "0"))
    assert rc == 0 and f"wrote {out}: 6 sequences" in stdout
    before = out.read_bytes()
    rc, _, err = run(capsys, *base(setup, out, "--layers", "1"))
    assert rc == 2
    assert_one_line_error(err, "different extraction config", "layers", "--overwrite")
    assert out.read_bytes() == before  # nothing committed lost, nothing changed
    # the same command again resumes a complete store: nothing new
    rc, stdout, _ = run(capsys, *base(setup, out, "--layers", "0"))
    assert rc == 0 and "resumed, 0 new tokens" in stdout
    rc, stdout, _ = run(capsys, *base(setup, out, "--layers", "1", "--overwrite"))
    assert rc == 0 and "resumed" not in stdout
    with open_store(out) as s:
        assert s.layers == ["1"] and s.n_sequences == 6


def test_refused_rerun_leaves_every_file_and_a_clean_run_no_lock(setup, tmp_path, capsys):
    out = tmp_path / "o.h5"
    assert run(capsys, *base(setup, out, "--layers", "0"))[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.h5"]  # no o.h5.lock, no temporary file
    before = file_digests(tmp_path)
    rc, stdout, err = run(capsys, *base(setup, out, "--layers", "0,1"))
    assert rc == 2 and stdout == ""
    assert "layers" in one_error_line(err, "ret-extract")
    assert file_digests(tmp_path) == before


def test_merge_refuses_an_existing_out_and_replaces_it_atomically(setup, tmp_path, capsys, monkeypatch):
    from activation_cache import merge

    shards = [tmp_path / f"s{i}.h5" for i in range(2)]
    for i, s in enumerate(shards):
        assert run(capsys, *base(setup, s, "--num-shards", "2", "--shard-index", i))[0] == 0
    merged = tmp_path / "merged.h5"
    merged.write_bytes(b"an older file of the user's\n")
    before = file_digests(tmp_path)
    rc, _, err = run(capsys, "merge", merged, *shards)
    assert rc == 2 and "--overwrite" in one_error_line(err, "ret-extract merge")
    assert file_digests(tmp_path) == before
    rc, _, err = run(capsys, "merge", merged, shards[0], "--overwrite")  # a bad shard set: refused before writing
    assert rc == 2 and "shards 0..1" in one_error_line(err)
    assert file_digests(tmp_path) == before

    def fail(tmp, out, stores):  # a failure while writing: the temporary file goes, the old out stays
        tmp.write_bytes(b"half a store")
        raise OSError("disk full")

    with monkeypatch.context() as mp:
        mp.setattr(merge, "_write_virtual_file", fail)
        with pytest.raises(OSError, match="disk full"):
            merge.merge_shards(merged, shards, overwrite=True)
    assert file_digests(tmp_path) == before
    rc, stdout, _ = run(capsys, "merge", merged, *shards, "--overwrite")
    assert rc == 0 and "2 shards" in stdout
    with open_store(merged) as m:
        assert m.n_sequences == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.h5", "s0.h5", "s1.h5"]


def _piped(command: str, reader: str) -> subprocess.CompletedProcess:
    """``command | reader`` in bash; the last line of stderr is ``command``'s own exit status."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    script = f'set +o pipefail; {command} | {reader}; echo "status=${{PIPESTATUS[0]}}" >&2'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("reader", ["head -1", "true"])
def test_printing_into_a_closed_pipe_exits_0_quietly(setup, tmp_path, capsys, reader):
    """``ret-extract info STORE | head -1`` (and a reader that reads nothing) ends with status 0, no traceback."""
    store = tmp_path / "o.h5"
    assert run(capsys, *base(setup, store, "--layers", "0"))[0] == 0
    cmds = [f"{RET_EXTRACT} info {store}",
            f"{RET_EXTRACT} --model {setup['model']} --prompts {setup['prompts']} --out {tmp_path / 'x.h5'} --dry-run"]
    for cmd in cmds:
        p = _piped(cmd, reader)
        *rest, status = p.stderr.strip().splitlines() or [""]
        assert status == "status=0", p.stderr
        assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr and not rest, p.stderr
        assert len(p.stdout.splitlines()) == (1 if reader == "head -1" else 0), p.stdout
    assert not (tmp_path / "x.h5").exists()


@pytest.fixture
def bad_stores(setup, tmp_path, capsys):
    good = tmp_path / "good.h5"
    assert run(capsys, *base(setup, good, "--layers", "0"))[0] == 0
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["tokens"] = np.arange(4)
    cut = tmp_path / "cut.h5"
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) - 2000])
    text = tmp_path / "text.h5"
    text.write_text("hello\n")
    return dict(good=good, plain=plain, cut=cut, text=text)


@pytest.mark.parametrize("kind, needle", [("plain", "not a ret-trajectories store"), ("cut", "truncated"),
                                          ("text", "not a readable HDF5 file")])
def test_info_and_merge_refuse_foreign_or_truncated_stores(setup, bad_stores, tmp_path, capsys, kind, needle):
    bad = bad_stores[kind]
    rc, out, err = run(capsys, "info", bad)
    assert rc == 2 and out == ""
    assert_one_line_error(err, needle, str(bad), prog="ret-extract info")
    merged = tmp_path / "merged.h5"
    rc, out, err = run(capsys, "merge", merged, bad_stores["good"], bad)
    assert rc == 2
    assert_one_line_error(err, needle, prog="ret-extract merge")
    assert not merged.exists()
    # resuming into it is refused too, and the file is left alone
    before = bad.read_bytes()
    rc, _, err = run(capsys, *base(setup, bad, "--layers", "0"))
    assert rc == 2
    assert_one_line_error(err, str(bad))
    assert bad.read_bytes() == before


def test_usage_errors_are_one_line(setup, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--prompts", setup["prompts"], "--out", str(tmp_path / "o.h5"), "--batch-size", "many"])
    assert e.value.code == 2
    _, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and "--batch-size" in err and "Traceback" not in err
    rc, _, err = run(capsys, *base(setup, tmp_path / "o.h5", "--batch-size", "0"))
    assert rc == 2
    assert_one_line_error(err, "--batch-size must be >= 1")


# --------------------------------------------------------------------------- dry-run, info, merge
def test_dry_run_prints_plan_and_writes_nothing(setup, tmp_path, capsys):
    out = tmp_path / "o.h5"
    rc, stdout, _ = run(capsys, *base(setup, out, "--dry-run", "--generate", "4", "--embed"))
    assert rc == 0
    d, n_layers = 32, 3  # tiny llama: 2 blocks + embed
    bpt = 4 + 1 + n_layers * d * 2
    assert f"bytes per token: {bpt}" in stdout
    tok = setup["loaded"].tokenizer
    n_tok = sum(len(tok(line)["input_ids"]) for line in LINES[:6]) + 4 * 6
    assert f"estimated size: {n_tok * bpt} bytes" in stdout
    assert "prompts: 6" in stdout
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_info_summarises_a_store(setup, tmp_path, capsys):
    out = tmp_path / "o.h5"
    assert run(capsys, *base(setup, out, "--generate", "3", "--batch-size", "4"))[0] == 0
    rc, stdout, err = run(capsys, "info", out)
    assert rc == 0 and err == ""
    assert "sequences=6" in stdout and "layers=2" in stdout and "d_model=32" in stdout
    assert "generated tokens: 18" in stdout  # tiny random llama never emits EOS within 3 tokens
    assert "layers: 0, 1" in stdout and "finish_reason" in stdout and "prompt_id" in stdout
    assert f"first sequence: {LINES[0]!r}"[:-1] in stdout  # prompt text, then the generated tail
    assert "running statistics over" in stdout and stdout.count("row norm p1/p50/p99") == 2  # one line a layer


def test_merge_cli_joins_shards(setup, tmp_path, capsys):
    single = tmp_path / "single.h5"
    assert run(capsys, *base(setup, single, "--batch-size", "2"))[0] == 0
    shards = [tmp_path / f"s{i}.h5" for i in range(2)]
    for i, s in enumerate(shards):
        rc, stdout, _ = run(capsys, *base(setup, s, "--batch-size", "2", "--num-shards", "2", "--shard-index", i))
        assert rc == 0 and "3 sequences" in stdout
    merged = tmp_path / "merged.h5"
    rc, stdout, _ = run(capsys, "merge", merged, *shards)
    assert rc == 0 and "2 shards" in stdout
    with open_store(merged) as m, open_store(single) as s:
        assert m.n_sequences == s.n_sequences == 6
        np.testing.assert_array_equal(m.offsets, s.offsets)
        for i in range(6):
            np.testing.assert_array_equal(m.tokens(i), s.tokens(i))
            np.testing.assert_array_equal(m.hidden_layers(i), s.hidden_layers(i))
            assert m.meta(i) == s.meta(i)
    rc, _, err = run(capsys, "merge", merged, *shards)
    assert rc == 2
    assert_one_line_error(err, "exists", "--overwrite", prog="ret-extract merge")
    rc, _, err = run(capsys, "merge", tmp_path / "m2.h5", shards[1])
    assert rc == 2
    assert_one_line_error(err, "shards 0..1", prog="ret-extract merge")


# --------------------------------------------------------------------------- console script
def _script(args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([RET_EXTRACT, *map(str, args)], capture_output=True, text=True, env=env, timeout=300, **kw)


@pytest.mark.parametrize("case", ["missing prompts", "hub model offline"])
def test_console_script_exit_2_one_line_no_traceback(setup, tmp_path, case):
    if case == "missing prompts":
        args = base(setup, tmp_path / "o.h5")
        args[3] = tmp_path / "missing.jsonl"
        needle = "prompt file not found"
    else:
        args = ["--model", "nobody/nothing", "--prompts", setup["prompts"], "--out", tmp_path / "o.h5", "--quiet"]
        needle = "hub is off"
    p = _script(args)
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    assert_one_line_error(p.stderr, needle)


def _limit_file_size(limit):
    def pre():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead of killing us
    return pre


def test_disk_full_mid_run_keeps_committed_part_and_resumes(setup, tmp_path):
    lines = LINES[:24]
    prompts = tmp_path / "many.txt"
    prompts.write_text("\n".join(lines) + "\n")
    args = ["--model", setup["model"], "--prompts", prompts, "--batch-size", "2", "--compression", "gzip", "--quiet"]
    ref = tmp_path / "ref.h5"
    extract(ExtractConfig(prompts=str(prompts), out=str(ref), model=setup["model"], batch_size=2,
                          compression="gzip"), loaded=setup["loaded"], progress=False)
    # gzip chunks are rewritten at each commit, so the file grows batch by batch:
    # half the final size lets early batches commit and makes a later one fail.
    limit = ref.stat().st_size // 2
    out = tmp_path / "full.h5"
    p = _script([*args, "--out", out], preexec_fn=_limit_file_size(limit))
    assert p.returncode == 2, p.stderr
    assert_one_line_error(p.stderr, "write error", str(out), "committed sequences", "rerun", "File too large")
    with open_store(out) as s, open_store(ref) as r:
        n = s.n_sequences
        assert 0 < n < len(lines)
        assert f"after {n} committed sequences" in p.stderr
        for i in range(n):
            np.testing.assert_array_equal(s.tokens(i), r.tokens(i))
            np.testing.assert_array_equal(s.hidden_layers(i), r.hidden_layers(i))
    p = _script([*args, "--out", out])
    assert p.returncode == 0, p.stderr
    assert "resumed" in p.stdout and f"{len(lines)} sequences" in p.stdout
    with open_store(out) as s, open_store(ref) as r:
        assert s.n_sequences == r.n_sequences == len(lines)
        assert s.meta_column("prompt_id") == r.meta_column("prompt_id") == [f"many:{i + 1}" for i in range(len(lines))]
        np.testing.assert_array_equal(s.offsets, r.offsets)
        for i in range(len(lines)):
            np.testing.assert_array_equal(s.tokens(i), r.tokens(i))
            np.testing.assert_array_equal(s.generated(i), r.generated(i))
            np.testing.assert_array_equal(s.hidden_layers(i), r.hidden_layers(i))
            assert s.meta(i) == r.meta(i)
        assert json.loads(s.attrs["config_json"]) == json.loads(r.attrs["config_json"])
        assert s.h5["tokens"].shape == r.h5["tokens"].shape  # trimmed: no leftover tail
