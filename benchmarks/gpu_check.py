"""The GPU check: every stage where users' models live, on one machine with CUDA (about 5 minutes on one GPU).

On a machine without CUDA it prints one line and exits 0. With CUDA it builds
a ~100M-parameter Llama-style model from a ``transformers`` config (fixed
seed; no download) and measures, each against its reference in the same run:

1. precision: the model in bfloat16 on ``cuda`` in forward and generate mode
   against a float32 CPU store of the same prompts: worst per-token relative
   error ``|h_gpu - h_cpu| / |h_cpu|`` over all layers (generate mode: over the
   tokens both runs generated alike);
2. speed: ``extract()`` against a bare bf16 forward with
   ``output_hidden_states=True`` on the same batches, interleaved repetitions,
   median ratio and range; allocated CUDA memory after each extraction (must
   not grow from run to run);
3. one RET epoch with ``precision="bf16-mixed"`` on the GPU store;
4. RET training windows/s through the store's loader (d_model 2880, window 16, batch 256)
   against the same batches already in GPU memory: the loader's share of a step;
5. allocated CUDA memory after each of 120 traces whose rows go to the host (flat);
6. a steered generation (a random unit direction, α = 4) against the same
   generation without the hook;
7. ``device_map="auto"`` over all visible GPUs against the single-GPU store;
8. with two or more GPUs, a two-rank ``torchrun`` extraction against the
   one-process store.

It writes ``benchmarks/results/gpu_check.json``. Run from the source tree::

    make gpu-wheels    # here: the wheels a bare CUDA machine lacks, into .whl/
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:. timeout 480 python3 benchmarks/gpu_check.py   # there
    PYTHONPATH=. python3 benchmarks/gpu_check.py --smoke   # the same code paths on a CPU, tiny sizes

Last line: ``gpu_extract_vs_bare_forward: <median ratio>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the offline tokenizer of the test models
sys.path.insert(0, str(Path(__file__).parent))


def build_model(path: Path, size: str) -> Path:
    """A Llama-style causal LM with random weights (seed 0) and the tests' offline tokenizer."""
    import transformers
    from tiny_models import make_tokenizer

    tok = make_tokenizer()
    dims = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                num_key_value_heads=8) if size == "100m" else \
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    config = transformers.LlamaConfig(vocab_size=len(tok), max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **dims)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def relative_errors(gpu_store: Path, cpu_store: Path, generated_only_alike: bool) -> dict:
    """Worst and median per-token relative error of ``gpu_store`` against ``cpu_store``, over all layers."""
    from activation_cache import open_store

    worst, errs, compared = 0.0, [], 0
    with open_store(gpu_store) as g, open_store(cpu_store) as c:
        for s in range(c.n_sequences):
            tg, tc = g.tokens(s), c.tokens(s)
            n = min(len(tg), len(tc))
            if generated_only_alike:  # compare up to the first token the two runs generated differently
                diff = np.nonzero(tg[:n] != tc[:n])[0]
                n = int(diff[0]) if len(diff) else n
            if n == 0:
                continue
            hg, hc = g.hidden_layers(s)[:, :n].astype(np.float64), c.hidden_layers(s)[:, :n].astype(np.float64)
            e = np.linalg.norm(hg - hc, axis=-1) / np.maximum(np.linalg.norm(hc, axis=-1), 1e-12)
            worst = max(worst, float(e.max()))
            errs.append(e.ravel())
            compared += n
    allerr = np.concatenate(errs) if errs else np.zeros(1)
    return {"worst_token_relative_error": worst, "median_token_relative_error": float(np.median(allerr)),
            "tokens_compared": compared}


def step_precision(ctx: dict) -> dict:
    from activation_cache import ExtractConfig, extract

    out = {}
    for mode, generate in (("forward", 0), ("generate", ctx["generate"])):
        common = dict(prompts=ctx["prompts"], model=str(ctx["model"]), layers="all", generate=generate,
                      batch_size=ctx["batch"], dtype="float32")
        cpu = ctx["tmp"] / f"cpu_{mode}.h5"
        gpu = ctx["tmp"] / f"gpu_{mode}.h5"
        extract(ExtractConfig(out=str(cpu), device="cpu", model_dtype="float32", **common), progress=False)
        extract(ExtractConfig(out=str(gpu), device=ctx["device"], model_dtype="bfloat16",
                              **{**common, "dtype": "bfloat16"}), progress=False)
        out[mode] = relative_errors(gpu, cpu, generated_only_alike=generate > 0)
        print(f"precision {mode}: worst per-token relative error {out[mode]['worst_token_relative_error']:.4f} "
              f"(median {out[mode]['median_token_relative_error']:.4f}, {out[mode]['tokens_compared']} tokens)",
              flush=True)
    return out


def step_speed(ctx: dict) -> dict:
    from activation_cache import ExtractConfig, extract, load_model, pad_rows, prepare

    loaded = load_model(str(ctx["model"]), device=ctx["device"], dtype="bfloat16")
    cfg = ExtractConfig(prompts=ctx["prompts"], out=str(ctx["tmp"] / "speed.h5"), model=str(ctx["model"]),
                        batch_size=ctx["batch"], dtype="bfloat16", overwrite=True)
    prep = prepare(cfg, loaded)
    dev = torch.device(ctx["device"])
    batches = [tuple(t.to(dev) for t in pad_rows(prep.ids[i:i + ctx["batch"]], loaded.tokenizer.pad_token_id, left=False))
               for i in range(0, len(prep.ids), ctx["batch"])]

    def bare() -> float:
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            for ids, mask in batches:
                loaded.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        sync()
        return time.perf_counter() - t0

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    bare()
    extract(cfg, loaded=loaded, progress=False)  # warm-up
    ratios, allocated = [], []
    for _ in range(ctx["repeats"]):
        tb = bare()
        res = extract(cfg, loaded=loaded, progress=False)
        sync()
        ratios.append(tb / res.seconds)
        allocated.append(torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0)
    out = {"median_ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
           "ratios": ratios, "tokens": res.n_tokens, "allocated_bytes_after_each_run": allocated,
           "allocated_growth_bytes": allocated[-1] - allocated[0]}
    print(f"speed: extract / bare forward median {out['median_ratio']:.3f} [{out['ratio_min']:.3f}, "
          f"{out['ratio_max']:.3f}]; allocated memory growth over {len(allocated)} runs: "
          f"{out['allocated_growth_bytes']} bytes", flush=True)
    return out


def step_ret_epoch(ctx: dict) -> dict:
    from ret_toolkit.macro import train

    accel = "gpu" if ctx["device"].startswith("cuda") else "cpu"
    precision = "bf16-mixed"
    t0 = time.perf_counter()
    result = train([ctx["tmp"] / "gpu_forward.h5"], layers="middle", max_epochs=1, root_dir=ctx["tmp"] / "runs",
                   progress=False, accelerator=accel, devices=1, precision=precision,
                   data=dict(batch_size=64, val_fraction=0.25), model=dict(hidden=64, z_dim=8))
    finite = all(bool(torch.isfinite(p).all()) for p in result.module.parameters())
    out = {"seconds": time.perf_counter() - t0, "precision": precision, "accelerator": accel,
           "finite_weights": finite, "checkpoint": str(result.checkpoint)}
    print(f"RET: 1 epoch with {precision} on {accel} in {out['seconds']:.1f} s, finite weights: {finite}", flush=True)
    return out


def step_ret_loader(ctx: dict) -> dict:
    """RET training windows/s through the store's loader (whole-chunk batches, pinned, copied to the GPU)
    against the same batches already in GPU memory: the loader's share of a training step."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from activation_cache import TokenWindows
    from activation_cache.window_batches import WindowBatchSampler, WindowBatches
    from activation_cache.writer import Batch, StoreSpec, StoreWriter
    from ret_toolkit.macro import RETModule

    d, n_tok, seq = (64, 4096, 256) if ctx["device"] == "cpu" else (2880, 131072, 256)
    path = ctx["tmp"] / "loader.h5"
    rng = np.random.default_rng(0)
    with StoreWriter(path, StoreSpec("check", "r", d, 1, ["0"], {"check": 1})) as w:
        for _ in range(n_tok // (8 * seq)):
            w.append(Batch([np.zeros(seq, np.int64)] * 8, [np.zeros(seq, bool)] * 8,
                           {"0": rng.normal(size=(8 * seq, d)).astype(np.float32)}, [{"prompt_id": "p"}] * 8))
    windows = TokenWindows(path, ["0"], 16)
    cuda = ctx["device"] != "cpu"
    loader = DataLoader(WindowBatches(windows), batch_size=None, pin_memory=cuda,
                        sampler=WindowBatchSampler(windows, 256, seed=0))
    dev = torch.device(ctx["device"])
    resident = [{k: v.to(dev) if torch.is_tensor(v) else v for k, v in b.items()} for b in loader]
    n_windows = sum(len(b["starts"]) for b in resident)

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.seconds = []

        def on_train_epoch_start(self, trainer, module):
            if cuda:
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            if cuda:
                torch.cuda.synchronize()
            self.seconds.append(time.perf_counter() - self.t0)

    def windows_per_s(batches) -> float:
        torch.manual_seed(0)
        module = RETModule(d_input=d, window=8, max_horizon=8, collapse_threshold=0)
        module.set_standardization(torch.zeros(d), torch.ones(d))
        timer = EpochTimer()
        pl.Trainer(max_epochs=3, accelerator="gpu" if cuda else "cpu", devices=1, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   callbacks=[timer]).fit(module, batches)
        return n_windows / statistics.median(timer.seconds[1:])  # the first epoch warms up

    shares, loaded_rate, resident_rate = [], [], []
    for _ in range(max(2, ctx["repeats"] // 2)):
        a = windows_per_s(loader)
        b = windows_per_s(DataLoader(resident, batch_size=None))
        loaded_rate.append(a)
        resident_rate.append(b)
        shares.append(1 - a / b)
    out = {"d_model": d, "tokens": n_tok, "windows": n_windows, "windows_per_s_loader": loaded_rate,
           "windows_per_s_in_gpu_memory": resident_rate, "loader_share_of_step": shares,
           "loader_share_median": statistics.median(shares)}
    print(f"RET loader: {statistics.median(loaded_rate):.0f} windows/s from the store vs "
          f"{statistics.median(resident_rate):.0f} with the batches in GPU memory (d {d}); loader's share of a step "
          f"{statistics.median(shares):.3f} [{min(shares):.3f}, {max(shares):.3f}]", flush=True)
    return out


def step_trace_memory(ctx: dict) -> dict:
    """Allocated CUDA memory after each of >= 100 traces with the rows copied to the host: it must stay flat."""
    from activation_cache import load_model, pad_rows
    from activation_cache.pipeline import to_host
    from activation_cache.tracer import Tracer

    loaded = load_model(str(ctx["model"]), device=ctx["device"], dtype="bfloat16")
    tracer = Tracer(loaded, ["embed", *range(loaded.arch.n_layers)])
    tok = loaded.tokenizer
    rows = [tok(t)["input_ids"] for t in ctx["prompts"][: ctx["batch"]]]
    ids, mask = pad_rows(rows, tok.pad_token_id, left=False)
    dev = torch.device(ctx["device"])
    allocated = []
    for i in range(ctx["traces"]):
        host = to_host(tracer.forward(ids, mask), tuple(range(len(rows))), "bfloat16")
        host.wait()
        del host
        allocated.append(torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0)
    tail = allocated[len(allocated) // 10:]  # after the first tenth: the allocator's pools are warm
    out = {"traces": len(allocated), "allocated_bytes": allocated, "growth_after_warmup_bytes": tail[-1] - tail[0],
           "max_minus_min_after_warmup_bytes": max(tail) - min(tail)}
    print(f"trace memory: {len(allocated)} traces, allocated {allocated[0]} -> {allocated[-1]} bytes; growth after "
          f"the first tenth {out['growth_after_warmup_bytes']} bytes", flush=True)
    return out


def step_steering(ctx: dict) -> dict:
    from activation_cache import load_model
    from ret_toolkit.steering import SteeringVector, steer

    loaded = load_model(str(ctx["model"]), device=ctx["device"], dtype="bfloat16")
    g = torch.Generator().manual_seed(0)
    d = torch.randn(loaded.arch.d_model, generator=g)
    layer = loaded.arch.n_layers // 2
    vec = SteeringVector({layer: d / d.norm()})
    enc = loaded.tokenizer(["What is 7 times 8?"], return_tensors="pt").to(torch.device(ctx["device"]))
    kw = dict(max_new_tokens=16, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    with torch.inference_mode():
        plain = loaded.model.generate(**enc, **kw)
        with steer(loaded.model, vec, alpha=4.0):
            steered = loaded.model.generate(**enc, **kw)
        again = loaded.model.generate(**enc, **kw)
    out = {"tokens_changed": int((plain != steered).sum()), "restored": bool(torch.equal(plain, again)),
           "layer": layer, "alpha": 4.0}
    print(f"steering: {out['tokens_changed']} of {plain.shape[1]} tokens changed at α=4 on block {layer}; "
          f"hooks removed, generation restored: {out['restored']}", flush=True)
    return out


def step_device_map(ctx: dict) -> dict:
    from activation_cache import ExtractConfig, extract, open_store

    common = dict(prompts=ctx["prompts"], model=str(ctx["model"]), batch_size=ctx["batch"], model_dtype="bfloat16",
                  dtype="bfloat16")
    mapped = ctx["tmp"] / "mapped.h5"
    extract(ExtractConfig(out=str(mapped), device_map="auto", **common), progress=False)
    single = ctx["tmp"] / "speed.h5"
    with open_store(mapped) as m, open_store(single) as s:
        diff = max(float(np.abs(m.hidden_dataset(k)[: m.n_tokens] - s.hidden_dataset(k)[: s.n_tokens]).max())
                   for k in s.layers)
        out = {"devices": m.device, "max_abs_difference_vs_single_device": diff, "n_gpus": torch.cuda.device_count()}
    print(f"device_map=auto over {out['devices']}: max |difference| vs one device {diff:.3g}", flush=True)
    return out


def step_torchrun(ctx: dict) -> dict:
    from activation_cache import open_store

    if torch.cuda.device_count() < 2:
        print("torchrun: skipped, one GPU", flush=True)
        return {"skipped": "fewer than 2 GPUs"}
    out_path = ctx["tmp"] / "ranks.h5"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "-m", "ret_toolkit.cli.extract", "--model", str(ctx["model"]), "--prompts", str(ctx["prompts_file"]),
           "--out", str(out_path), "--model-dtype", "bfloat16", "--dtype", "bfloat16", "--quiet"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    with open_store(out_path) as m, open_store(ctx["tmp"] / "speed.h5") as s:
        diff = max(float(np.abs(m.hidden_dataset(k)[: m.n_tokens] - s.hidden_dataset(k)[: s.n_tokens]).max())
                   for k in s.layers)
        same_tokens = bool(np.array_equal(m.h5["tokens"][: m.n_tokens], s.h5["tokens"][: s.n_tokens]))
    out = {"seconds": time.perf_counter() - t0, "same_tokens": same_tokens, "max_abs_difference": diff}
    print(f"torchrun 2 ranks: {out['seconds']:.1f} s, same tokens {same_tokens}, max |difference| {diff:.3g}",
          flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="run every step on the CPU with a tiny model (tests)")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/gpu_check.json; "
                                                "with --smoke a file in the temporary folder)")
    a = ap.parse_args()
    if not a.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing to check (exit 0)")
        return 0
    from activation_cache import read_prompts

    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    n = 8 if a.smoke else a.prompts
    prompts = [p.text for p in read_prompts("reasoning")][:n]
    (tmp / "prompts.txt").write_text("\n".join(prompts) + "\n")
    ctx = {"tmp": tmp, "prompts": prompts, "prompts_file": tmp / "prompts.txt",
           "model": build_model(tmp / "model", "tiny" if a.smoke else "100m"),
           "device": "cpu" if a.smoke else "cuda", "batch": 4 if a.smoke else 16,
           "generate": 4 if a.smoke else 32, "repeats": 2 if a.smoke else a.repeats,
           "traces": 4 if a.smoke else 120}
    results: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not a.smoke else "cpu",
                     "torch": torch.__version__, "smoke": a.smoke}
    steps = [("precision", step_precision), ("speed", step_speed), ("ret_bf16_epoch", step_ret_epoch),
             ("ret_loader", step_ret_loader), ("trace_memory", step_trace_memory),
             ("steering", step_steering), ("device_map", step_device_map), ("torchrun", step_torchrun)]
    failed = []
    for name, step in steps:
        try:
            results[name] = step(ctx)
        except Exception as e:  # noqa: BLE001 - report every step, then fail
            failed.append(name)
            results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
            print(f"{name}: FAILED: {type(e).__name__}: {e}", flush=True)
    results["failed"] = failed
    out = Path(a.out or (tmp / "gpu_check.json" if a.smoke else ROOT / "benchmarks" / "results" / "gpu_check.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"gpu_check: results in {out}")
    ratio = results.get("speed", {}).get("median_ratio", float("nan"))
    print(f"gpu_extract_vs_bare_forward: {ratio:.4g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
