"""The HDF5 trajectory store (docs/architecture.md §2): writer, reader, resume, SWMR, merge, h5clear."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from activation_cache import __version__, schema
from activation_cache.errors import InputError, cli_words
from activation_cache.h5clear import clear_status_flags, lookup3
from activation_cache.merge import merge_shards
from activation_cache.reader import open_store
from activation_cache.writer import Batch, StoreSpec, StoreWriter, staging_path
from stats_checks import assert_stats_are_numpys

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- helpers
def make_spec(d=8, layers=("embed", 0, 1), config=None, **kw) -> StoreSpec:
    return StoreSpec(model="tiny/test-model", model_revision="sha256:0123456789abcdef", d_model=d,
                     n_model_layers=2, layers=list(layers), config=config or {"run": 1, "layers": "all"}, **kw)


def make_batch(rng, lengths, d=8, layers=("embed", "0", "1"), first_id=0, gen_tail=0) -> Batch:
    n = sum(lengths)
    tokens = [rng.integers(0, 50_000, size=t).astype(np.int64) for t in lengths]
    generated = [np.arange(t) >= t - min(gen_tail, t) for t in lengths]
    hidden = {name: rng.standard_normal((n, d)).astype(np.float32) for name in layers}
    meta = [{"prompt_id": f"p{first_id + i}", "topic": f"topic-{(first_id + i) % 3}"} for i in range(len(lengths))]
    return Batch(tokens, generated, hidden, meta)


def expected_rows(batches, dtype=np.float16):
    """Flatten batches into per-sequence expectations (hidden already in the store dtype)."""
    seqs = []
    for b in batches:
        start = 0
        for t, g, m in zip(b.tokens, b.generated, b.meta):
            rows = slice(start, start + len(t))
            seqs.append(dict(tokens=t.astype(np.int32), generated=g, meta=m,
                             hidden={k: v[rows].astype(dtype) for k, v in b.hidden.items()}))
            start += len(t)
    return seqs


def assert_store_equals(path, seqs, layers=("embed", "0", "1")):
    with open_store(path) as s:
        assert s.n_sequences == len(seqs)
        assert s.n_tokens == sum(len(x["tokens"]) for x in seqs)
        np.testing.assert_array_equal(s.lengths(), [len(x["tokens"]) for x in seqs])
        for i, x in enumerate(seqs):
            np.testing.assert_array_equal(s.tokens(i), x["tokens"])
            np.testing.assert_array_equal(s.generated(i), x["generated"])
            for name in layers:
                np.testing.assert_array_equal(s.hidden(i, name), x["hidden"][name])
            assert "prompt_id" in s.meta_fields
            assert s.meta(i) == {k: x["meta"].get(k, "") for k in s.meta_fields}


# --------------------------------------------------------------------------- round trip
def test_round_trip_schema_attrs_and_values(tmp_path):
    import nnsight
    import transformers

    from tiny_models import make_tokenizer

    tok = make_tokenizer()
    texts = ["The quick brown fox jumps over the lazy dog.", "What is 2 + 3?", "12 + 30 = 42."]
    rng = np.random.default_rng(0)
    b1 = make_batch(rng, [5, 3], gen_tail=2)
    b1.tokens = [np.array(tok(texts[0])["input_ids"]), np.array(tok(texts[1])["input_ids"])]
    n1 = sum(len(t) for t in b1.tokens)
    b1.generated = [np.arange(len(t)) >= len(t) - 2 for t in b1.tokens]
    b1.hidden = {k: rng.standard_normal((n1, 8)).astype(np.float32) for k in ("embed", "0", "1")}
    b2 = make_batch(rng, [7], first_id=2, gen_tail=3)
    b2.tokens = [np.array(tok(texts[2])["input_ids"])]
    b2.generated = [np.arange(len(b2.tokens[0])) >= 1]
    b2.hidden = {k: rng.standard_normal((len(b2.tokens[0]), 8)).astype(np.float32) for k in ("embed", "0", "1")}
    config = {"run": 1, "nested": {"a": [1, 2]}, "layers": ["embed", "0", "1"]}
    spec = make_spec(config=config, meta_fields=["prompt_id", "topic"], tokenizer_json=tok.backend_tokenizer.to_str())
    path = tmp_path / "rt.h5"
    with StoreWriter(path, spec) as w:
        assert not w.resumed and w.n_committed == 0
        w.append(b1)
        assert (w.n_committed, w.n_tokens) == (2, n1)
        w.append(b2)
    seqs = expected_rows([b1, b2])
    assert_store_equals(path, seqs)

    with open_store(path) as s:
        assert s.text(0) == texts[0] and s.text(2) == texts[2]
        assert "".join(s.decode_tokens(1)) == texts[1]
        np.testing.assert_array_equal(s.hidden_layers(1), np.stack([seqs[1]["hidden"][k] for k in ("embed", "0", "1")]))
        np.testing.assert_array_equal(s.hidden_layers(2, [1]), seqs[2]["hidden"]["1"][None])
        assert s.meta_column("topic") == ["topic-0", "topic-1", "topic-2"]
        assert s.meta_fields == ["prompt_id", "topic"]
        # negative index and bounds
        np.testing.assert_array_equal(s.tokens(-1), seqs[2]["tokens"])
        with pytest.raises(IndexError):
            s.tokens(3)
        with pytest.raises(InputError, match="layer '5' not in store"):
            s.hidden(0, 5)
        assert (s.model, s.model_revision, s.d_model, s.n_model_layers) == (
            "tiny/test-model", "sha256:0123456789abcdef", 8, 2)
        assert s.layers == ["embed", "0", "1"] and s.dtype == "float16" and s.config == config

    with h5py.File(path, "r") as f:
        a = f.attrs
        assert set(schema.REQUIRED_ATTRS) <= set(a)
        assert a["format"] == "ret-trajectories"
        assert int(a["format_version"]) == schema.FORMAT_VERSION == 2
        assert "model_dtype" not in a and "device" not in a  # the spec gave neither
        assert isinstance(a["d_model"], np.integer) and a["d_model"] == 8
        assert isinstance(a["n_model_layers"], np.integer) and a["n_model_layers"] == 2
        assert isinstance(a["n_committed"], np.integer) and a["n_committed"] == 3
        assert json.loads(a["layers"]) == ["embed", "0", "1"]
        assert a["dtype"] == "float16" and a["model"] == "tiny/test-model"
        assert a["model_revision"] == "sha256:0123456789abcdef"
        assert a["toolkit_version"] == __version__
        assert a["nnsight_version"] == nnsight.__version__
        assert a["transformers_version"] == transformers.__version__
        assert json.loads(a["config_json"]) == config
        time.strptime(a["created"], "%Y-%m-%dT%H:%M:%S%z")
        n = n1 + len(b2.tokens[0])
        assert f["tokens"].dtype == np.int32 and f["tokens"].shape == (n,)
        assert f["offsets"].dtype == np.int64 and f["offsets"].shape == (4,)
        np.testing.assert_array_equal(f["offsets"][:], np.cumsum([0] + [len(t) for t in b1.tokens + b2.tokens]))
        assert f["generated"].dtype == bool and f["generated"].shape == (n,)
        assert sorted(f["hidden"]) == ["0", "1", "embed"]
        assert f["hidden/0"].attrs["dtype"] == "float16"
        for name in ("embed", "0", "1"):
            assert f[f"hidden/{name}"].dtype == np.float16 and f[f"hidden/{name}"].shape == (n, 8)
        assert h5py.check_string_dtype(f["meta/prompt_id"].dtype) is not None
        assert [v.decode() for v in f["meta/prompt_id"][:]] == ["p0", "p1", "p2"]
        # no vlen-float rows anywhere
        for name in ("tokens", "generated", "offsets", "hidden/0"):
            assert h5py.check_vlen_dtype(f[name].dtype) is None

    # A format-1 store (written before bfloat16 storage and the placement attributes) still reads.
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 1
        del f["hidden/0"].attrs["dtype"]
    with open_store(path) as s:
        assert (s.model_dtype, s.device, s.read_dtype) == (None, None, np.dtype(np.float16))
        np.testing.assert_array_equal(s.hidden_layers(1), np.stack([seqs[1]["hidden"][k] for k in ("embed", "0", "1")]))


def test_float32_storage_keeps_full_precision(tmp_path):
    rng = np.random.default_rng(1)
    b = make_batch(rng, [4, 6])
    with StoreWriter(tmp_path / "f32.h5", make_spec(dtype="float32")) as w:
        w.append(b)
    with open_store(tmp_path / "f32.h5") as s:
        assert s.dtype == "float32" and s.hidden(1, 0).dtype == np.float32
        np.testing.assert_array_equal(s.hidden(1, 0), b.hidden["0"][4:])


@pytest.mark.parametrize("compression", [None, "lzf", "gzip"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_chunks_explicit_and_compression(tmp_path, compression, dtype):
    d = 576
    layers = ("0", "1")
    rng = np.random.default_rng(2)
    batches = [make_batch(rng, [150, 90], d=d, layers=layers), make_batch(rng, [60], d=d, layers=layers, first_id=2)]
    path = tmp_path / "c.h5"
    with StoreWriter(path, make_spec(d=d, layers=layers, compression=compression, dtype=dtype)) as w:
        for b in batches:
            w.append(b)
    itemsize = np.dtype(dtype).itemsize
    with h5py.File(path, "r") as f:
        for name in layers:
            ds = f[f"hidden/{name}"]
            rows, width = ds.chunks
            assert width == d
            assert 0.5 * MiB <= rows * d * itemsize <= 4 * MiB, ds.chunks
            assert ds.compression == compression
            assert ds.maxshape == (None, d)
        for name in ("tokens", "generated"):
            (rows,) = f[name].chunks
            assert f[name].compression == compression
        assert 0.5 * MiB <= f["tokens"].chunks[0] * 4 <= 4 * MiB
        assert f["generated"].chunks == f["tokens"].chunks  # same rows per chunk: aligned reads
    assert_store_equals(path, expected_rows(batches, np.dtype(dtype)), layers=layers)
    if compression:  # random float data compresses a little, zeros a lot; at least the filter ran
        with h5py.File(path, "r") as f:
            assert f["hidden/0"].id.get_storage_size() > 0


def test_chunk_rows_formula():
    assert schema.chunk_rows(576 * 2) == 512  # SmolLM2 float16: 0.5625 MiB chunks
    assert schema.chunk_rows(576 * 4) == 256
    assert schema.chunk_rows(4) == 1 << 18  # int32 tokens: 1 MiB
    assert schema.chunk_rows(10**7) == 64  # huge rows: floor of 64


def test_geometric_growth_then_trim(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "g.h5"
    caps, needed = [], []
    with StoreWriter(path, make_spec()) as w:
        for k in range(12):
            w.append(make_batch(rng, [3, 2], first_id=2 * k))
            caps.append(w._ds["tokens"].shape[0])
            needed.append(w.n_tokens)
            assert w._ds["hidden/0"].shape[0] == caps[-1]
            assert w._ds["offsets"].shape[0] >= w.n_committed + 1
            assert w._ds["meta/prompt_id"].shape[0] >= w.n_committed
        # a reader during writing sees only committed rows although datasets are longer
        with open_store(path) as s:
            assert s.n_tokens == w.n_tokens == 60
    # capacity doubles (or jumps to what is needed), so only O(log n) resizes happen
    expect, cap = [], 0
    for n in needed:
        cap = max(n, 2 * cap) if cap < n else cap
        expect.append(cap)
    assert caps == expect == [5, 10, 20, 20, 40, 40, 40, 40, 80, 80, 80, 80]
    assert len(set(caps)) == 5
    with h5py.File(path, "r") as f:
        assert f["tokens"].shape == (60,) and f["generated"].shape == (60,)
        assert f["hidden/embed"].shape == (60, 8) and f["offsets"].shape == (25,)
        assert f["meta/prompt_id"].shape == (24,)


# --------------------------------------------------------------------------- resume
def test_resume_same_config_continues(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "r.h5"
    b1, b2 = make_batch(rng, [4, 5]), make_batch(rng, [6], first_id=2)
    with StoreWriter(path, make_spec()) as w:
        w.append(b1)
    with StoreWriter(path, make_spec()) as w:
        assert w.resumed and w.n_committed == 2 and w.n_tokens == 9
        w.append(b2)
    assert_store_equals(path, expected_rows([b1, b2]))


def test_resume_truncates_half_written_tail(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "t.h5"
    spec = make_spec()
    b1 = make_batch(rng, [4, 5])
    w = StoreWriter(path, spec)
    w.append(b1)
    # A crash mid-batch: rows written (and even flushed) past the commit mark, never committed.
    garbage_rows = 30
    w._reserve("tokens", 9 + garbage_rows)[9:] = 424242
    w._reserve("generated", 9 + garbage_rows)[9:] = True
    for name in spec.layers:
        w._reserve(f"hidden/{name}", 9 + garbage_rows)[9:] = 7.0
    w._reserve("offsets", 6)[3:6] = [20, 30, 39]
    w._reserve("meta/prompt_id", 5)[2:5] = ["junk"] * 3
    w._f.flush()
    w.close(trim=False)
    with h5py.File(path, "r") as f:
        assert f["tokens"].shape[0] == 39 and int(f.attrs["n_committed"]) == 2  # garbage is in the file
    with open_store(path) as s:  # ... but invisible to readers
        assert s.n_sequences == 2 and s.n_tokens == 9
        assert list(s.meta_column("prompt_id")) == ["p0", "p1"]

    b2 = make_batch(rng, [3, 2], first_id=2)  # shorter than the garbage tail
    with StoreWriter(path, spec) as w2:
        assert w2.resumed and (w2.n_committed, w2.n_tokens) == (2, 9)
        w2.append(b2)
    assert_store_equals(path, expected_rows([b1, b2]))
    with h5py.File(path, "r") as f:
        assert f["tokens"].shape == (14,) and 424242 not in f["tokens"][:]
        assert not (f["hidden/0"][:] == 7.0).all(axis=1).any()
        assert f["offsets"].shape == (5,) and list(f["offsets"][:]) == [0, 4, 9, 12, 14]
        assert [v.decode() for v in f["meta/prompt_id"][:]] == ["p0", "p1", "p2", "p3"]


def test_different_config_refused_unless_overwrite(tmp_path):
    rng = np.random.default_rng(6)
    path = tmp_path / "c.h5"
    b = make_batch(rng, [4, 5])
    with StoreWriter(path, make_spec(config={"run": 1, "layers": "all"})) as w:
        w.append(b)
    with pytest.raises(InputError) as err:
        StoreWriter(path, make_spec(config={"run": 2, "layers": "all"}))
    msg = str(err.value)
    assert "different extraction config" in msg and "differs in run" in msg and "overwrite=True" in msg
    with cli_words(), pytest.raises(InputError, match="pass --overwrite"):  # a CLI names its flag
        StoreWriter(path, make_spec(config={"run": 2, "layers": "all"}))
    assert "\n" not in msg
    assert_store_equals(path, expected_rows([b]))  # refusal left the store alone
    with StoreWriter(path, make_spec(config={"run": 2, "layers": "all"}), overwrite=True) as w:
        assert not w.resumed and w.n_committed == 0
    with open_store(path) as s:
        assert s.n_sequences == 0 and s.config["run"] == 2


def _sha(path):
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_overwrite_replaces_only_when_complete_and_resumes_its_staged_store(tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "o.h5"
    old = make_batch(rng, [4, 5, 3])
    with StoreWriter(path, make_spec(config={"run": 1, "layers": "all"})) as w:
        w.append(old)
    before = _sha(path)
    new1, new2 = make_batch(rng, [2, 6], first_id=10), make_batch(rng, [3], first_id=12)
    spec2 = make_spec(config={"run": 2, "layers": "all"})
    # A run that fails before committing anything: the old store is untouched, nothing is staged.
    with pytest.raises(RuntimeError), StoreWriter(path, spec2, overwrite=True):
        raise RuntimeError("boom")
    assert _sha(path) == before and not staging_path(path).exists()
    # A run that commits one batch and then fails: the old store is untouched, the new one is staged.
    with pytest.raises(RuntimeError), StoreWriter(path, spec2, overwrite=True) as w:
        assert w.path == staging_path(path) and w.target == path
        w.append(new1)
        raise RuntimeError("killed")
    assert _sha(path) == before and staging_path(path).exists()
    assert_store_equals(path, expected_rows([old]))
    # The rerun resumes the staged store and swaps it in when it completes.
    with StoreWriter(path, spec2, overwrite=True) as w:
        assert w.resumed and w.n_committed == 2
        w.append(new2)
    assert not staging_path(path).exists() and not path.with_name("o.h5.lock").exists()
    assert_store_equals(path, expected_rows([new1, new2]))
    # A staged store of other settings is not resumed: it is started afresh.
    with pytest.raises(RuntimeError), StoreWriter(path, make_spec(config={"run": 3, "layers": "all"}),
                                                  overwrite=True) as w:
        w.append(new1)
        raise RuntimeError("killed")
    with StoreWriter(path, make_spec(config={"run": 4, "layers": "all"}), overwrite=True) as w:
        assert not w.resumed and w.n_committed == 0
    with open_store(path) as s:
        assert s.n_sequences == 0 and s.config["run"] == 4


def test_output_path_errors(tmp_path):
    with pytest.raises(InputError, match="output directory does not exist"):
        StoreWriter(tmp_path / "missing" / "x.h5", make_spec())
    with pytest.raises(InputError, match="is a directory"):
        StoreWriter(tmp_path, make_spec())
    with pytest.raises(InputError, match="unknown dtype"):
        make_spec(dtype="int8")
    with cli_words(), pytest.raises(InputError, match="unknown --compression"):
        make_spec(compression="zstd")


# --------------------------------------------------------------------------- not our store
@pytest.fixture
def real_store(tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "real.h5"
    with StoreWriter(path, make_spec(compression="lzf")) as w:
        for k in range(3):
            w.append(make_batch(rng, [40, 30], first_id=2 * k))
    return path


def test_plain_h5_text_and_missing_files_are_refused(tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["tokens"] = np.arange(3)
    text = tmp_path / "notes.h5"
    text.write_text("just some text, not HDF5\n" * 20)
    for path, what in [(plain, "not a ret-trajectories store"), (text, "not a readable HDF5 file"),
                       (tmp_path / "nope.h5", "store not found"), (tmp_path, "is a directory")]:
        with pytest.raises(InputError, match=what) as err:
            open_store(path)
        assert "\n" not in str(err.value)
    # the writer refuses to resume into them as well (and leaves them alone)
    for path in (plain, text):
        before = path.read_bytes()
        with pytest.raises(InputError):
            StoreWriter(path, make_spec())
        assert path.read_bytes() == before


@pytest.mark.parametrize("cut", ["1 byte", "1000 bytes", "half", "all but 100"])
def test_truncated_store_is_refused(real_store, tmp_path, cut):
    data = real_store.read_bytes()
    keep = {"1 byte": len(data) - 1, "1000 bytes": len(data) - 1000, "half": len(data) // 2,
            "all but 100": 100}[cut]
    path = tmp_path / "cut.h5"
    path.write_bytes(data[:keep])
    with pytest.raises(InputError) as err:
        open_store(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    assert "truncated" in msg or "not a readable HDF5" in msg
    with pytest.raises(InputError):
        StoreWriter(path, make_spec(compression="lzf"))  # no resume into a cut file either
    with open_store(real_store) as s:  # the original is fine
        assert s.n_sequences == 6


# --------------------------------------------------------------------------- SWMR
_READER = textwrap.dedent("""
    import sys
    from activation_cache.reader import open_store
    s = open_store(sys.argv[1])
    for line in sys.stdin:
        if line.strip() == "refresh":
            s.refresh()
        print(s.n_sequences, s.n_tokens, int(s.tokens(-1).sum()) if s.n_sequences else -1,
              float(s.hidden(s.n_sequences - 1, 0).astype("float64").sum()) if s.n_sequences else 0.0, flush=True)
""")


def test_swmr_reader_in_another_process_sees_commits(tmp_path):
    rng = np.random.default_rng(8)
    path = tmp_path / "swmr.h5"
    b1, b2 = make_batch(rng, [5, 6]), make_batch(rng, [7], first_id=2)
    w = StoreWriter(path, make_spec())
    try:
        w.append(b1)
        reader = subprocess.Popen([sys.executable, "-c", _READER, str(path)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        try:
            reader.stdin.write("show\n")
            reader.stdin.flush()
            n, ntok, last_sum, h_sum = reader.stdout.readline().split()
            assert (int(n), int(ntok), int(last_sum)) == (2, 11, int(b1.tokens[1].sum()))
            assert float(h_sum) == pytest.approx(float(b1.hidden["0"][5:].astype(np.float16).astype(np.float64).sum()))
            w.append(b2)  # writer still open
            reader.stdin.write("show\n")
            reader.stdin.flush()
            assert reader.stdout.readline().split()[:2] == ["2", "11"]  # no refresh: old view
            reader.stdin.write("refresh\n")
            reader.stdin.flush()
            n, ntok, last_sum, h_sum = reader.stdout.readline().split()
            assert (int(n), int(ntok), int(last_sum)) == (3, 18, int(b2.tokens[0].sum()))
            assert float(h_sum) == pytest.approx(float(b2.hidden["0"].astype(np.float16).astype(np.float64).sum()))
            w.close()  # trims while the reader still has the file open (it holds a lock)
            reader.stdin.write("refresh\n")
            reader.stdin.flush()
            assert reader.stdout.readline().split()[:2] == ["3", "18"]
        finally:
            out, err = reader.communicate(timeout=60)  # closes its stdin: the reader ends
        assert reader.returncode == 0, err
    finally:
        w.close()
    assert_store_equals(path, expected_rows([b1, b2]))
    with h5py.File(path, "r") as f:
        assert f["tokens"].shape == (18,)


# --------------------------------------------------------------------------- h5clear
def test_lookup3_known_values():
    # Bob Jenkins' lookup3.c self-test values for hashlittle().
    assert lookup3(b"") == 0xDEADBEEF
    assert lookup3(b"", 0xDEADBEEF) == 0xBD5B7DDE
    assert lookup3(b"Four score and seven years ago") == 0x17770551
    assert lookup3(b"Four score and seven years ago", 1) == 0xCD628161


def test_lookup3_matches_hdf5_superblock_checksum(tmp_path):
    path = tmp_path / "sb.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f["x"] = np.arange(10)
    head = path.read_bytes()[:48]
    assert head[8] in (2, 3)
    n = 12 + 4 * head[9]
    assert int.from_bytes(head[n:n + 4], "little") == lookup3(head[:n])


_CRASH_SWMR = textwrap.dedent("""
    import os, sys, h5py, numpy as np
    f = h5py.File(sys.argv[1], "w", libver="latest")
    d = f.create_dataset("x", (0,), maxshape=(None,), dtype="i8", chunks=(64,))
    f.swmr_mode = True
    d.resize((100,))
    d[:] = np.arange(100)
    f.attrs["n"] = 100
    f.flush()
    os._exit(0)  # crash with the file open in SWMR write mode
""")


def test_clear_status_flags_lets_crashed_swmr_file_reopen(tmp_path):
    path = tmp_path / "crashed.h5"
    subprocess.run([sys.executable, "-c", _CRASH_SWMR, str(path)], check=True, timeout=60)
    assert path.read_bytes()[11] != 0  # consistency flags still set
    with pytest.raises(OSError):
        h5py.File(path, "a", libver="latest")
    assert clear_status_flags(path) is True
    assert path.read_bytes()[11] == 0
    assert clear_status_flags(path) is False  # nothing left to do
    with h5py.File(path, "a", libver="latest") as f:  # reopens for append, data intact
        np.testing.assert_array_equal(f["x"][:], np.arange(100))
        f["x"].resize((110,))
        f["x"][100:] = -1
    with h5py.File(path, "r") as f:
        assert f["x"].shape == (110,) and f.attrs["n"] == 100
    text = tmp_path / "t.txt"
    text.write_bytes(b"not hdf5" * 10)
    assert clear_status_flags(text) is False and text.read_bytes() == b"not hdf5" * 10


_CRASH_WRITER = textwrap.dedent("""
    import os, sys, json, numpy as np
    from activation_cache.writer import Batch, StoreSpec, StoreWriter
    spec = StoreSpec(**json.loads(sys.argv[2]))
    w = StoreWriter(sys.argv[1], spec)
    rng = np.random.default_rng(0)
    for k in range(2):
        w.append(Batch([np.arange(5) + k, np.arange(3)], [np.zeros(5, bool), np.ones(3, bool)],
                       {n: np.full((8, 8), k, np.float32) for n in spec.layers},
                       [{"prompt_id": f"p{2 * k}"}, {"prompt_id": f"p{2 * k + 1}"}]))
    w._reserve("tokens", 100)[16:100] = 99  # half-written next batch
    w._reserve("meta/prompt_id", 8)[4:8] = ["torn"] * 4  # and its strings, whose heap objects a kill can tear
    w._f.flush()
    os._exit(0)
""")


def test_store_writer_resumes_after_hard_crash(tmp_path):
    path = tmp_path / "crash.h5"
    spec = make_spec()
    spec_json = json.dumps(dict(model=spec.model, model_revision=spec.model_revision, d_model=spec.d_model,
                                n_model_layers=spec.n_model_layers, layers=spec.layers, config=spec.config))
    subprocess.run([sys.executable, "-c", _CRASH_WRITER, str(path), spec_json], check=True, timeout=120, cwd=REPO)
    with open_store(path) as s:  # readable as is
        assert s.n_sequences == 4 and s.n_tokens == 16
    with StoreWriter(path, make_spec()) as w:
        assert w.resumed and (w.n_committed, w.n_tokens) == (4, 16)
        # The string columns were rebuilt from the committed rows: the torn tail is never overwritten.
        assert w._ds["meta/prompt_id"].shape == (4,)
        w.append(Batch([np.array([7, 8])], [np.array([False, True])],
                       {n: np.full((2, 8), 5, np.float32) for n in spec.layers}, [{"prompt_id": "p4"}]))
    with open_store(path) as s:
        assert s.n_sequences == 5 and s.meta_column("prompt_id") == ["p0", "p1", "p2", "p3", "p4"]
        np.testing.assert_array_equal(s.tokens(2), np.arange(5) + 1)
        np.testing.assert_array_equal(s.tokens(4), [7, 8])
        assert (s.hidden(3, "embed") == 1).all() and (s.hidden(4, 1) == 5).all()
        assert s.h5["tokens"].shape == (18,)


# --------------------------------------------------------------------------- merge
@pytest.fixture(scope="module")
def shard_setup(tmp_path_factory):
    """A tiny llama, 10 prompts, a single-file extraction and 3 shards of the same run."""
    from activation_cache.extraction import ExtractConfig, extract
    from activation_cache.models import load_model
    from tiny_models import save_tiny_model

    root = tmp_path_factory.mktemp("merge")
    model_dir = save_tiny_model("llama", root / "tiny-llama")
    loaded = load_model(str(model_dir))
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "text": "What is 2 + 3? " * (1 + i % 4), "level": i % 3})
                               + "\n" for i in range(10)))
    common = dict(prompts=str(prompts), model=str(model_dir), embed=True, batch_size=2)
    extract(ExtractConfig(out=str(root / "single.h5"), **common), loaded=loaded, progress=False)
    shard_dir = root / "shards"
    shard_dir.mkdir()
    shards = []
    for i in range(3):
        out = shard_dir / f"shard{i}.h5"
        extract(ExtractConfig(out=str(out), num_shards=3, shard_index=i, **common), loaded=loaded, progress=False)
        shards.append(out)
    odd = shard_dir / "odd1.h5"
    extract(ExtractConfig(out=str(odd), num_shards=3, shard_index=1, **{**common, "layers": "0"}),
            loaded=loaded, progress=False)
    return dict(root=root, single=root / "single.h5", shards=shards, odd=odd)


def _content(path):
    with open_store(path) as s:
        return dict(n=s.n_sequences, offsets=s.offsets.copy(), layers=list(s.layers),
                    tokens=[s.tokens(i) for i in range(len(s))], generated=[s.generated(i) for i in range(len(s))],
                    hidden=[s.hidden_layers(i) for i in range(len(s))], meta=[s.meta(i) for i in range(len(s))],
                    text=s.text(0))


def _assert_same_content(a, b):
    assert a["n"] == b["n"] and a["layers"] == b["layers"] and a["meta"] == b["meta"] and a["text"] == b["text"]
    np.testing.assert_array_equal(a["offsets"], b["offsets"])
    for key in ("tokens", "generated", "hidden"):
        for x, y in zip(a[key], b[key]):
            np.testing.assert_array_equal(x, y)


def test_merge_shards_equals_single_extraction_and_survives_a_move(shard_setup, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    shards = [Path(shutil.copy(p, run)) for p in shard_setup["shards"]]
    sizes = []
    for p in shards:
        with open_store(p) as s:
            sizes.append(s.n_sequences)
    assert sizes == [3, 3, 4]
    merged = run / "merged.h5"
    merge_shards(merged, list(reversed(shards)))  # order of arguments does not matter
    single = _content(shard_setup["single"])
    _assert_same_content(_content(merged), single)
    with open_store(merged) as s:
        assert s.h5["tokens"].is_virtual and s.h5["hidden/0"].is_virtual
        assert s.meta_column("prompt_id") == [f"q{i}" for i in range(10)]
        assert s.config["n_prompts"] == 10 and "shard_index" not in s.config
        assert s.config["merged_from"] == ["shard0.h5", "shard1.h5", "shard2.h5"]
        with open_store(shard_setup["single"]) as one:
            for layer in s.layers:  # the shards' statistics combined: numpy's, and the single run's
                assert_stats_are_numpys(s, layer)
                np.testing.assert_allclose(s.layer_stats(layer).mean, one.layer_stats(layer).mean, rtol=1e-12)
                np.testing.assert_allclose(s.layer_stats(layer).m2, one.layer_stats(layer).m2, rtol=1e-12)
                np.testing.assert_array_equal(s.h5[f"norms/{layer}"][:], one.h5[f"norms/{layer}"][:])
    assert merged.stat().st_size < min(p.stat().st_size for p in shards)  # nothing copied

    with pytest.raises(InputError, match="exists"):
        merge_shards(merged, shards)
    merge_shards(merged, shards, overwrite=True)
    _assert_same_content(_content(merged), single)

    # Move the whole directory and read it from an unrelated working directory:
    # the virtual sources are found relative to the merged file, not by old absolute paths.
    (tmp_path / "elsewhere").mkdir()
    moved = Path(shutil.move(run, tmp_path / "elsewhere" / "run2"))
    assert not run.exists()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    _assert_same_content(_content(moved / "merged.h5"), single)


def test_merged_store_whose_shard_is_missing_or_replaced_does_not_open(shard_setup, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    shards = [Path(shutil.copy(p, run)) for p in shard_setup["shards"]]
    merged = merge_shards(run / "merged.h5", shards)
    # A shard moved away, and a decoy of the same name in the working directory: HDF5 would
    # read the decoy (or fill values); the store refuses to open instead.
    (tmp_path / "cwd").mkdir()
    shutil.copy(shard_setup["odd"], tmp_path / "cwd" / "shard1.h5")
    monkeypatch.chdir(tmp_path / "cwd")
    shutil.move(shards[1], tmp_path / "away.h5")
    with pytest.raises(InputError, match=r"its shard shard1\.h5 is missing \(looked in .*run\)") as err:
        open_store(merged)
    assert "\n" not in str(err.value)
    # Another file under the shard's name (same layout, other data): refused, naming what differs.
    shutil.copy(shard_setup["shards"][0], shards[1])
    with pytest.raises(InputError, match=r"shard .*shard1\.h5 is not the file this store was merged from "
                                         r"\(differs in .*config_sha256.*\); merge the shards again"):
        open_store(merged)
    shutil.copy(tmp_path / "away.h5", shards[1])  # the right shard back: it opens and reads as before
    _assert_same_content(_content(merged), _content(shard_setup["single"]))


def test_store_with_broken_offsets_or_tokenizer_does_not_open(shard_setup, tmp_path):
    from store_edits import edited, garbage_tokenizer, swap_offsets

    def beyond_data(f):
        f["offsets"][-1] = f["tokens"].shape[0] + 5

    for name, edit, match in [("order.h5", swap_offsets, r"/offsets decrease at sequence 2"),
                              ("beyond.h5", beyond_data, r"need \d+ rows but /tokens has \d+"),
                              ("tok.h5", garbage_tokenizer, r"corrupt /tokenizer record"),
                              ("neg.h5", lambda f: f.attrs.__setitem__("n_committed", np.int64(-3)),
                               "n_committed is -3")]:
        path = edited(Path(shutil.copy(shard_setup["single"], tmp_path / name)), edit)
        with pytest.raises(InputError, match=match) as err:
            open_store(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_merge_refuses_bad_shard_sets(shard_setup, tmp_path):
    s0, s1, s2 = shard_setup["shards"]
    out = tmp_path / "m.h5"
    # incomplete shard: the writer of shard 1 died after its first commit
    partial = tmp_path / "partial1.h5"
    shutil.copy(s1, partial)
    with h5py.File(partial, "a") as f:
        f.attrs["n_committed"] = np.int64(1)
    with pytest.raises(InputError, match=r"incomplete \(1 of 3 sequences\)"):
        merge_shards(out, [s0, partial, s2])
    with pytest.raises(InputError, match=r"shards 0\.\.2 exactly once, got indices \[0, 2\]"):
        merge_shards(out, [s0, s2])
    with pytest.raises(InputError, match=r"exactly once, got indices \[0, 1, 1, 2\]"):
        merge_shards(out, [s0, s1, s1, s2])
    with pytest.raises(InputError, match="does not belong"):
        merge_shards(out, [s0, shard_setup["odd"], s2])
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = 1
    with pytest.raises(InputError, match="not a ret-trajectories store"):
        merge_shards(out, [s0, plain, s2])
    with pytest.raises(InputError, match="output directory does not exist"):
        merge_shards(tmp_path / "nope" / "m.h5", [s0, s1, s2])
    with pytest.raises(InputError, match="at least one shard"):
        merge_shards(out, [])
    with pytest.raises(InputError, match="is a directory, expected an .h5 file"):
        merge_shards(tmp_path, [s0, s1, s2])
    with pytest.raises(InputError, match="is one of the shards"):
        merge_shards(s1, [s0, s1, s2], overwrite=True)
    assert not out.exists()


def test_second_writer_on_same_store_is_refused(tmp_path):
    from activation_cache.writer import StoreSpec, StoreWriter

    path = tmp_path / "s.h5"
    spec = StoreSpec("m", "r", 8, 2, ["1"], {"x": 1})
    with StoreWriter(path, spec):
        with pytest.raises(InputError, match="being written by another process"):
            StoreWriter(path, spec)
    with StoreWriter(path, spec) as w:  # released on close
        assert w.resumed
