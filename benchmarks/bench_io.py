"""The store at the speed of the disk: the training loader and the writer against raw h5py / numpy I/O, in the same run.

Loader: epochs of RET training batches (window 16, batches of 256 and of 1024 windows, shuffled) through
:class:`~activation_cache.window_batches.WindowBatches` (what ``TrajectoryDataModule`` uses:
whole-chunk batches read straight into the batch's array), and through the per-window
``TokenWindows`` DataLoader it replaced, against a plain sequential h5py read of the same
dataset in slices of 8 chunks, opened as h5py opens files by default and without HDF5's
chunk cache; the ratio is taken against the faster of the two. Figure: *distinct* rows
delivered per second (every stored row that lies in a window counts once), so re-reading
or copying a row buys nothing. One layer, d_model 2880 (GPT-OSS-20B's width) and 576,
float16 and bfloat16 stores of random values (the page cache holds them: the disk is not
read, so this is the loader's own cost).

Writer: ``StoreWriter.append`` of batches of 8 sequences x 256 tokens, all 24 layers of a
2880-wide model, with the running statistics handed over as an extraction computes them
on the model's device, against writing the same bytes with numpy ``tofile`` (flushed per
batch, no ``fsync`` on either side); and the same appends when the writer computes the
statistics itself on the CPU (a ``Batch`` without them).

Compression, on real activations (all 30 layers of the embedded SmolLM2-135M over 128
prompts and 24 generated tokens each, stored as float16 and as bfloat16): the
compression ratio over full chunks, write and read MB/s of h5py with the store's chunks,
for the store's options (none, lzf, gzip) and, with
``--hdf5plugin DIR`` (a ``pip install --target DIR hdf5plugin``), Blosc2-zstd with
bit-shuffle and Zstd; and the tokens/s each sustains where the disk binds (its write rate,
or the disk's bandwidth times its compression ratio, whichever is lower).

The sides alternate within every repetition; each repetition gives one ratio per case,
and the median ratio is reported with its range.

    .venv/bin/python benchmarks/bench_io.py                 # ~10 min on 2 cores
    .venv/bin/python benchmarks/bench_io.py --quick         # smaller stores, ~3 min
Last line: ``loader_vs_raw_read: <the smallest median ratio over the loader cases>`` (goal >= 0.8).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import report  # noqa: E402
from activation_cache import ChunkShuffleSampler, ExtractConfig, TokenWindows, extract, load_model, open_store  # noqa: E402
from activation_cache.running_stats import RowStats, row_norms  # noqa: E402
from activation_cache.schema import chunk_rows, decode_hidden, encode_hidden  # noqa: E402
from activation_cache.window_batches import WindowBatchSampler, WindowBatches, as_is  # noqa: E402
from activation_cache.writer import Batch, StoreSpec, StoreWriter  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

WINDOW, BATCH, SEQ = 16, 256, 256
BATCHES = (256, 1024)  # windows a batch: the first is the headline
EPOCHS = 3  # epochs per side per repetition


def make_store(path: Path, d: int, dtype: str, n_tokens: int, layers: int = 1, compression: str | None = None,
               seed: int = 0, device_stats: bool = True) -> float:
    """A store of ``n_tokens`` random rows in sequences of SEQ tokens; returns the seconds its appends took.

    ``device_stats``: hand the running statistics over in the batch, as an extraction does
    (computed outside the timed appends, as the model's device would); else the writer
    computes them from the rows.
    """
    rng = np.random.default_rng(seed)
    names = [str(i) for i in range(layers)]
    spec = StoreSpec("bench", "r", d, layers, names, {"bench": d}, dtype=dtype, compression=compression)
    per = 8
    block = encode_hidden(rng.normal(size=(per * SEQ, d)).astype(np.float32), dtype)  # as stored: no conversion
    values = decode_hidden(block, dtype)
    stats = {n: RowStats.of(values) for n in names} if device_stats else None
    norms = {n: row_norms(values).numpy() for n in names} if device_stats else None
    t = 0.0
    with StoreWriter(path, spec, overwrite=True) as w:
        for _ in range(n_tokens // (per * SEQ)):
            b = Batch([np.zeros(SEQ, np.int64)] * per, [np.zeros(SEQ, bool)] * per, {n: block for n in names},
                      [{"prompt_id": "p"}] * per, stats, norms)
            t0 = time.perf_counter()
            w.append(b)
            t += time.perf_counter() - t0
    return t


def raw_read(path: Path, chunk_cache: bool = True) -> float:
    """Seconds of a sequential read of /hidden/0 in slices of 8 chunks (``chunk_cache=False``: without
    HDF5's chunk cache, as the loader opens uncompressed stores)."""
    t0 = time.perf_counter()
    with h5py.File(path, "r", **({} if chunk_cache else {"rdcc_nbytes": 0})) as f:
        ds = f["hidden/0"]
        step = ds.chunks[0] * 8
        for lo in range(0, ds.shape[0], step):
            ds[lo : lo + step]
    return time.perf_counter() - t0


def epoch(path: Path, batched: bool, seed: int, batch: int = BATCH) -> tuple[float, int, int, int]:
    """Seconds of one training epoch's batches of ``batch`` windows, the distinct rows they hold, the number of
    batches and the rows read (the batched loader reads the ``WINDOW - 1`` rows past a cut chunk twice)."""
    ds = TokenWindows(path, ["0"], WINDOW)
    if batched:
        sampler = WindowBatchSampler(ds, batch, seed=seed, drop_last=False)
        loader = DataLoader(WindowBatches(ds), batch_size=None, sampler=sampler, collate_fn=as_is)
        rows_read = sum(p.total for p in sampler)
    else:
        loader = DataLoader(ds, batch_size=batch, sampler=ChunkShuffleSampler(ds, seed=seed, drop_last=False))
        rows_read = len(ds) * WINDOW
    t0 = time.perf_counter()
    n = sum(1 for _ in loader)
    seconds = time.perf_counter() - t0
    distinct = int(np.unique((ds.starts[:, None] + np.arange(WINDOW)).ravel()).size)
    return seconds, distinct, n, rows_read


def raw_write(path: Path, arrays: list[np.ndarray], n_batches: int) -> float:
    """Seconds to write the same bytes with numpy, flushed to the OS after each batch as StoreWriter's commit
    is (neither side calls fsync: both measure the path to the page cache)."""
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(n_batches):
            for a in arrays:
                a.tofile(f)
            f.flush()
    return time.perf_counter() - t0


def median_range(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def real_store(path: Path, dtype: str, n_prompts: int) -> Path:
    """All layers of the embedded default model over ``n_prompts`` built-in reasoning prompts, stored as ``dtype``."""
    cfg = ExtractConfig(prompts="reasoning", out=str(path), dtype=dtype, limit=n_prompts, batch_size=8,
                        generate=24, overwrite=True)
    extract(cfg, loaded=real_store.loaded, progress=False)
    return path


def codecs(plugin_dir: str | None) -> dict[str, dict]:
    """h5py dataset keywords per compression option: the store's, and hdf5plugin's where given."""
    out = {"none": {}, "lzf": {"compression": "lzf"}, "gzip": {"compression": "gzip"}}
    if plugin_dir:
        sys.path.insert(0, plugin_dir)
        import hdf5plugin

        out["blosc2-zstd-bitshuffle"] = dict(hdf5plugin.Blosc2(cname="zstd", clevel=1,
                                                               filters=hdf5plugin.Blosc2.BITSHUFFLE))
        out["zstd"] = dict(hdf5plugin.Zstd(clevel=1))
    return out


def compress_case(src: Path, work: Path, kw: dict) -> dict:
    """Rewrite ``src``'s hidden rows with h5py, in the store's chunks and batches of 2048 rows, with filter ``kw``:
    bytes on disk, write and read MB/s (the bytes as stored, uncompressed)."""
    with open_store(src) as s:
        arrays = {n: s.h5[f"hidden/{n}"][: s.n_tokens] for n in s.layers}
    raw = sum(a.nbytes for a in arrays.values())
    out = work / "c.h5"
    t0 = time.perf_counter()
    with h5py.File(out, "w") as f:
        for n, a in arrays.items():
            ds = f.create_dataset(n, a.shape, dtype=a.dtype, chunks=(chunk_rows(a.shape[1] * a.itemsize), a.shape[1]),
                                  **kw)
            for lo in range(0, len(a), 2048):
                ds[lo : lo + 2048] = a[lo : lo + 2048]
        f.flush()
    write_s = time.perf_counter() - t0
    size = out.stat().st_size
    t0 = time.perf_counter()
    with h5py.File(out, "r") as f:
        for n in arrays:
            f[n][:]
    read_s = time.perf_counter() - t0
    stored = full = 0
    with h5py.File(out, "r") as f:
        for n in arrays:
            ds = f[n]
            # the ratio over full chunks only: a last, part-filled chunk is stored whole when uncompressed
            for i in range(ds.id.get_num_chunks()):
                info = ds.id.get_chunk_info(i)
                if info.chunk_offset[0] + ds.chunks[0] <= ds.shape[0]:
                    stored += info.size
                    full += ds.chunks[0] * ds.shape[1] * ds.dtype.itemsize
    out.unlink()
    return {"raw_bytes": raw, "file_bytes": size, "ratio": full / stored, "write_MB_per_s": raw / 1e6 / write_s,
            "read_MB_per_s": raw / 1e6 / read_s, "tokens": len(next(iter(arrays.values()))),
            "bytes_per_token": raw / len(next(iter(arrays.values())))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="stores a quarter the size")
    ap.add_argument("--work", default=None, help="where the scratch stores go (default: a temporary directory)")
    ap.add_argument("--hdf5plugin", default=None, metavar="DIR",
                    help="a folder holding hdf5plugin (pip install --target DIR hdf5plugin): also measure its "
                         "Blosc2-zstd and Zstd filters")
    ap.add_argument("--disk-MB-s", type=float, nargs="+", default=[500.0, 2000.0],
                    help="disk write bandwidths at which to report the tokens/s of each compression option")
    args = ap.parse_args()
    scale = 4 if args.quick else 1
    cases = [(2880, "float16", 32768 // scale), (2880, "bfloat16", 32768 // scale),
             (576, "float16", 131072 // scale), (576, "bfloat16", 131072 // scale)]
    with tempfile.TemporaryDirectory(prefix="bench_io_", dir=args.work) as tmp:
        tmp = Path(tmp)
        loader = {}
        for d, dtype, n in cases:
            path = tmp / f"{d}_{dtype}.h5"
            make_store(path, d, dtype, n)
            runs = {"raw_s": [], "raw_no_chunk_cache_s": [], "per_window_s": []}
            runs.update({f"batched_{b}_s": [] for b in BATCHES})
            counts = {}
            for rep in range(args.repeats):
                # each side summed over EPOCHS epochs (an epoch here takes milliseconds)
                runs["raw_s"].append(sum(raw_read(path) for _ in range(EPOCHS)))
                runs["raw_no_chunk_cache_s"].append(sum(raw_read(path, chunk_cache=False) for _ in range(EPOCHS)))
                for b in BATCHES:
                    ep = [epoch(path, True, rep * EPOCHS + e, b) for e in range(EPOCHS)]
                    runs[f"batched_{b}_s"].append(sum(e[0] for e in ep))
                    counts[b] = ep[0][1:]  # distinct rows, batches, rows read: the same every epoch
                runs["per_window_s"].append(epoch(path, False, rep)[0] * EPOCHS)
            best = [min(a, b) for a, b in zip(runs["raw_s"], runs["raw_no_chunk_cache_s"])]
            old = [r / b for r, b in zip(best, runs["per_window_s"])]
            for b in BATCHES:
                distinct, n_batches, rows_read = counts[b]
                ratios = [r / t for r, t in zip(best, runs[f"batched_{b}_s"])]
                vs_default = [r / t for r, t in zip(runs["raw_s"], runs[f"batched_{b}_s"])]
                # what a batch costs beyond reading its rows at the raw read's rate
                fixed = [(t - r * rows_read / distinct) / (EPOCHS * n_batches) * 1e6
                         for r, t in zip(best, runs[f"batched_{b}_s"])]
                name = f"d{d}_{dtype}" + ("" if b == BATCH else f"_batch{b}")
                loader[name] = {"tokens": n, "batch": b, "distinct_rows": distinct, "rows_read": rows_read,
                                "batches": n_batches, "epochs_per_repeat": EPOCHS,
                                **{k: v for k, v in runs.items() if not k.startswith("batched_")},
                                "batched_s": runs[f"batched_{b}_s"],
                                "batched_vs_raw": median_range(ratios), "batched_vs_default_h5py": median_range(vs_default),
                                "rows_bound": distinct / rows_read,
                                "fixed_us_per_batch": median_range(fixed),
                                "raw_rows_per_s": median_range([EPOCHS * distinct / s for s in best]),
                                "batched_rows_per_s": median_range([EPOCHS * distinct / s for s in runs[f"batched_{b}_s"]]),
                                "batched_us_per_batch": median_range([s / (EPOCHS * n_batches) * 1e6
                                                                      for s in runs[f"batched_{b}_s"]])}
                if b == BATCH:
                    loader[name]["per_window_vs_raw"] = median_range(old)
                print(f"loader {name}: distinct rows/s vs the faster raw read {statistics.median(ratios):.3f} "
                      f"[{min(ratios):.3f}, {max(ratios):.3f}] (vs h5py's default read {statistics.median(vs_default):.3f}; "
                      f"distinct/read rows {distinct / rows_read:.3f}; {statistics.median(fixed):.0f} us a batch beyond "
                      f"its reads)" + (f"; per-window loader {statistics.median(old):.3f}" if b == BATCH else "")
                      + f"; {n_batches} batches", flush=True)
            path.unlink()

        # the writer: all 24 layers of a 2880-wide model, batches of 8 x 256 tokens
        writer = {}
        n_batches = 16 // scale
        for dtype in ("float16", "bfloat16"):
            block = encode_hidden(np.random.default_rng(0).normal(size=(8 * SEQ, 2880)).astype(np.float32), dtype)
            arrays = [block] * 24  # the bytes StoreWriter writes per batch
            store_s, own_s, raw_s = [], [], []
            for rep in range(args.repeats):
                store_s.append(make_store(tmp / "w.h5", 2880, dtype, 8 * SEQ * n_batches, layers=24, seed=rep))
                raw_s.append(raw_write(tmp / "w.bin", arrays, n_batches))
                own_s.append(make_store(tmp / "w.h5", 2880, dtype, 8 * SEQ * n_batches, layers=24, seed=rep,
                                        device_stats=False))
                (tmp / "w.h5").unlink()
                (tmp / "w.bin").unlink()
            ratios = [r / s for r, s in zip(raw_s, store_s)]
            own = [r / s for r, s in zip(raw_s, own_s)]
            mb = 24 * 8 * SEQ * 2880 * 2 * n_batches / 1e6
            writer[dtype] = {"MB": mb, "store_s": store_s, "store_stats_on_cpu_s": own_s, "raw_s": raw_s,
                             "store_vs_raw": median_range(ratios), "store_stats_on_cpu_vs_raw": median_range(own),
                             "store_MB_per_s": median_range([mb / s for s in store_s])}
            print(f"writer {dtype}: bytes/s vs raw write {statistics.median(ratios):.3f} "
                  f"[{min(ratios):.3f}, {max(ratios):.3f}] ({statistics.median([mb / s for s in store_s]):.0f} MB/s); "
                  f"statistics computed by the writer on the CPU: {statistics.median(own):.3f}", flush=True)

        # compression options on real activations
        real_store.loaded = load_model(None)
        compression = {}
        for dtype in ("float16", "bfloat16"):
            src = real_store(tmp / f"real_{dtype}.h5", dtype, 128 // scale)
            for codec, kw in codecs(args.hdf5plugin).items():
                reps = [compress_case(src, tmp, kw) for _ in range(args.repeats)]
                row = {k: reps[0][k] for k in ("raw_bytes", "file_bytes", "ratio", "tokens", "bytes_per_token")}
                for k in ("write_MB_per_s", "read_MB_per_s"):
                    row[k] = median_range([r[k] for r in reps])
                # tokens/s where the disk binds: the write rate, or what the disk takes at this ratio
                row["tokens_per_s_at_disk"] = {
                    str(int(bw)): min(row["write_MB_per_s"]["median"], bw * row["ratio"]) * 1e6 / row["bytes_per_token"]
                    for bw in args.disk_MB_s}
                compression[f"{dtype}/{codec}"] = row
                print(f"compression {dtype} {codec}: ratio {row['ratio']:.3f}, write {row['write_MB_per_s']['median']:.0f} "
                      f"MB/s, read {row['read_MB_per_s']['median']:.0f} MB/s; tokens/s at "
                      + ", ".join(f"{bw} MB/s disk {v:.0f}" for bw, v in row["tokens_per_s_at_disk"].items()),
                      flush=True)
    key = min(v["batched_vs_raw"]["median"] for v in loader.values() if v["batch"] == BATCH)
    report("bench_io", "loader_vs_raw_read", key,
           {"loader": loader, "writer": writer, "compression": compression, "window": WINDOW, "batch": BATCH, "batches": list(BATCHES),
            "repeats": args.repeats, "quick": args.quick,
            "hdf5plugin": _plugin_version(args.hdf5plugin)})


def _plugin_version(plugin_dir: str | None) -> str | None:
    if not plugin_dir:
        return None
    import hdf5plugin

    return f"hdf5plugin {hdf5plugin.version} from --hdf5plugin {plugin_dir}"


if __name__ == "__main__":
    main()
