"""The store at the speed of the disk: the training loader and the writer against raw h5py / numpy I/O, in the same run.

Loader: one epoch of RET training batches (window 16, batch 256, chunk-local shuffle) through
:class:`~activation_cache.window_batches.WindowBatches` (what ``TrajectoryDataModule`` uses),
and through the per-window ``TokenWindows`` DataLoader it replaces, against a plain
sequential h5py read of the same dataset; figure: *distinct* rows delivered per second
(every stored row that lies in a window counts once), so re-reading or copying a row
twice buys nothing. One layer, d_model 2880 (GPT-OSS-20B's width) and 576, float16 and
bfloat16 stores of random values.

Writer: ``StoreWriter.append`` of batches of 8 sequences x 256 tokens, all 24 layers of a
2880-wide model, against writing the same bytes with numpy ``tofile`` (flushed per batch, no
``fsync`` on either side); then
the store's compression options (none, lzf, gzip) on the same batches: bytes on disk and
write MB/s.

The sides alternate within every repetition; each repetition gives one ratio per case,
and the median ratio is reported with its range.

    .venv/bin/python benchmarks/bench_io.py                 # ~10 min on 2 cores
    .venv/bin/python benchmarks/bench_io.py --quick         # smaller stores, ~2 min
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
from activation_cache import ChunkShuffleSampler, TokenWindows  # noqa: E402
from activation_cache.schema import encode_hidden  # noqa: E402
from activation_cache.window_batches import WindowBatchSampler, WindowBatches  # noqa: E402
from activation_cache.writer import Batch, StoreSpec, StoreWriter  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

WINDOW, BATCH, SEQ = 16, 256, 256


def make_store(path: Path, d: int, dtype: str, n_tokens: int, layers: int = 1, compression: str | None = None,
               seed: int = 0) -> float:
    """A store of ``n_tokens`` random rows in sequences of SEQ tokens; returns the seconds its appends took."""
    rng = np.random.default_rng(seed)
    names = [str(i) for i in range(layers)]
    spec = StoreSpec("bench", "r", d, layers, names, {"bench": d}, dtype=dtype, compression=compression)
    per = 8
    block = encode_hidden(rng.normal(size=(per * SEQ, d)).astype(np.float32), dtype)  # as stored: no conversion
    t = 0.0
    with StoreWriter(path, spec, overwrite=True) as w:
        for _ in range(n_tokens // (per * SEQ)):
            b = Batch([np.zeros(SEQ, np.int64)] * per, [np.zeros(SEQ, bool)] * per, {n: block for n in names},
                      [{"prompt_id": "p"}] * per)
            t0 = time.perf_counter()
            w.append(b)
            t += time.perf_counter() - t0
    return t


def raw_read(path: Path) -> float:
    """Seconds of a sequential read of /hidden/0 in slices of 8 chunks."""
    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        ds = f["hidden/0"]
        step = ds.chunks[0] * 8
        for lo in range(0, ds.shape[0], step):
            ds[lo : lo + step]
    return time.perf_counter() - t0


def epoch(path: Path, batched: bool, seed: int) -> tuple[float, int]:
    """Seconds of one training epoch's batches, and the distinct rows they hold."""
    ds = TokenWindows(path, ["0"], WINDOW)
    if batched:
        loader = DataLoader(WindowBatches(ds), batch_size=None,
                            sampler=WindowBatchSampler(ds, BATCH, seed=seed, drop_last=False))
    else:
        loader = DataLoader(ds, batch_size=BATCH, sampler=ChunkShuffleSampler(ds, seed=seed, drop_last=False))
    t0 = time.perf_counter()
    for _ in loader:
        pass
    seconds = time.perf_counter() - t0
    distinct = int(np.unique((ds.starts[:, None] + np.arange(WINDOW)).ravel()).size)
    return seconds, distinct


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="stores a quarter the size")
    ap.add_argument("--work", default=None, help="where the scratch stores go (default: a temporary directory)")
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
            name = f"d{d}_{dtype}"
            runs = {"raw_s": [], "batched_s": [], "per_window_s": []}
            for rep in range(args.repeats):
                runs["raw_s"].append(raw_read(path))
                s, distinct = epoch(path, True, rep)
                runs["batched_s"].append(s)
                runs["per_window_s"].append(epoch(path, False, rep)[0])
            ratios = [r / b for r, b in zip(runs["raw_s"], runs["batched_s"])]
            old = [r / b for r, b in zip(runs["raw_s"], runs["per_window_s"])]
            loader[name] = {"tokens": n, "distinct_rows": distinct, **runs,
                            "batched_vs_raw": median_range(ratios), "per_window_vs_raw": median_range(old),
                            "raw_rows_per_s": median_range([n / s for s in runs["raw_s"]]),
                            "batched_rows_per_s": median_range([distinct / s for s in runs["batched_s"]])}
            print(f"loader {name}: distinct rows/s vs raw read {statistics.median(ratios):.3f} "
                  f"[{min(ratios):.3f}, {max(ratios):.3f}]; per-window loader {statistics.median(old):.3f}", flush=True)
            path.unlink()

        # the writer: all 24 layers of a 2880-wide model, batches of 8 x 256 tokens
        writer = {}
        n_batches = 16 // scale
        for dtype in ("float16", "bfloat16"):
            block = encode_hidden(np.random.default_rng(0).normal(size=(8 * SEQ, 2880)).astype(np.float32), dtype)
            arrays = [block] * 24  # the bytes StoreWriter writes per batch
            store_s, raw_s = [], []
            for rep in range(args.repeats):
                store_s.append(make_store(tmp / "w.h5", 2880, dtype, 8 * SEQ * n_batches, layers=24, seed=rep))
                raw_s.append(raw_write(tmp / "w.bin", arrays, n_batches))
                (tmp / "w.h5").unlink()
                (tmp / "w.bin").unlink()
            ratios = [r / s for r, s in zip(raw_s, store_s)]
            mb = 24 * 8 * SEQ * 2880 * 2 * n_batches / 1e6
            writer[dtype] = {"MB": mb, "store_s": store_s, "raw_s": raw_s, "store_vs_raw": median_range(ratios),
                             "store_MB_per_s": median_range([mb / s for s in store_s])}
            print(f"writer {dtype}: bytes/s vs raw write {statistics.median(ratios):.3f} "
                  f"[{min(ratios):.3f}, {max(ratios):.3f}] ({statistics.median([mb / s for s in store_s]):.0f} MB/s)",
                  flush=True)
        compression = {}
        for comp in (None, "lzf", "gzip"):
            seconds = make_store(tmp / "c.h5", 2880, "float16", 8 * SEQ * n_batches, layers=4, compression=comp)
            size = (tmp / "c.h5").stat().st_size
            t0 = time.perf_counter()
            with h5py.File(tmp / "c.h5", "r") as f:
                for i in range(4):
                    f[f"hidden/{i}"][:]
            read_s = time.perf_counter() - t0
            mb = 4 * 8 * SEQ * 2880 * 2 * n_batches / 1e6
            compression[str(comp)] = {"bytes": size, "write_MB_per_s": mb / seconds, "read_MB_per_s": mb / read_s}
            print(f"compression {comp}: {size / 1e6:.0f} MB on disk for {mb:.0f} MB, write {mb / seconds:.0f} MB/s, "
                  f"read {mb / read_s:.0f} MB/s (random float16 values: no compression to gain)", flush=True)
            (tmp / "c.h5").unlink()
    key = min(v["batched_vs_raw"]["median"] for v in loader.values())
    report("bench_io", "loader_vs_raw_read", key,
           {"loader": loader, "writer": writer, "compression": compression, "window": WINDOW, "batch": BATCH,
            "repeats": args.repeats, "quick": args.quick})


if __name__ == "__main__":
    main()
