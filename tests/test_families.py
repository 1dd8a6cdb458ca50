"""The families users bring (Gemma 2 and 3, GPT-OSS, Qwen3-MoE), tiny and random: extraction is what plain
forward hooks see, steering moves what it should, and a store of each trains a RET encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activation_cache.arch import ArchInfo, find_architecture
from activation_cache.extraction import ExtractConfig, extract
from activation_cache.models import load_model
from activation_cache.reader import open_store
from ret_toolkit.macro import train
from ret_toolkit.steering import SteeringVector, steer
from tiny_models import EXPECTED, FAMILIES, saved_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["What is 2 + 3?", "The quick brown fox jumps over the lazy dog.", "Are you sure? I think the answer is wrong.",
           "A path from start to goal goes through the graph, node by node."]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """family(arch) -> (model dir, LoadedModel, plain HF model, HF tokenizer), built once per arch."""
    return saved_models(tmp_path_factory.mktemp("families"))


@torch.no_grad()
def hooked_block_outputs(model, ids: list[int]) -> list[np.ndarray]:
    """Each decoder block's output for one unpadded prompt, read with plain forward hooks."""
    blocks = model.get_submodule(find_architecture(model).block_path)
    outs = {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: outs.__setitem__(k, o[0] if isinstance(o, tuple) else o))
             for k, b in enumerate(blocks)]
    try:
        model(torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    return [outs[k][0].numpy() for k in range(len(blocks))]


@pytest.mark.parametrize("arch", FAMILIES)
def test_discovery_and_extraction_equal_plain_hooks(family, arch, tmp_path):
    path, loaded, plain, _ = family(arch)
    assert loaded.arch == ArchInfo(**EXPECTED[arch])
    out = tmp_path / "s.h5"
    # batches of 3 with padding: what the store holds must not depend on the batch
    extract(ExtractConfig(prompts=PROMPTS, out=str(out), model=str(path), batch_size=3), loaded=loaded,
            progress=False)
    with open_store(out) as s:
        assert s.n_sequences == len(PROMPTS) and s.dtype == "float16" and "auto" in s.dtype_choice
        for i in range(len(PROMPTS)):
            want = hooked_block_outputs(plain, s.tokens(i).tolist())
            for layer, h in enumerate(want):
                got = s.hidden(i, layer).astype(np.float32)
                # float16 storage: within its rounding of the exact values (and padding changed nothing)
                np.testing.assert_allclose(got, h, rtol=2e-3, atol=2e-3, err_msg=f"{arch} block {layer}")


@pytest.mark.parametrize("arch", FAMILIES)
def test_steering_moves_the_logits_and_a_zero_vector_does_not(family, arch):
    _, loaded, _, _ = family(arch)
    model = loaded.model
    ids = torch.tensor([loaded.tokenizer("What is 2 + 3?")["input_ids"]])
    with torch.no_grad():
        base = model(ids).logits
        d = loaded.arch.d_model
        with steer(model, SteeringVector({0: torch.zeros(d)}), alpha=3.0):
            zero = model(ids).logits
        with steer(model, SteeringVector({0: torch.randn(d, generator=torch.Generator().manual_seed(0))}), alpha=3.0):
            pushed = model(ids).logits
        after = model(ids).logits
    assert torch.equal(zero, base) and torch.equal(after, base)  # no effect, and the hooks are gone afterwards
    assert (pushed - base).abs().max() > 1e-3


@pytest.mark.parametrize("arch", FAMILIES)
def test_a_store_of_each_family_trains_a_ret_encoder(family, arch, tmp_path):
    path, loaded, _, _ = family(arch)
    out = tmp_path / "gen.h5"
    extract(ExtractConfig(prompts="reasoning", limit=24, out=str(out), model=str(path), layers="1", generate=6,
                          batch_size=8), loaded=loaded, progress=False)
    run = train([out], layers="1", data={"window": 4, "max_horizon": 2, "batch_size": 64},
                model={"hidden": 16, "predictor_hidden": 16, "z_dim": 4, "collapse_threshold": 1.5},
                max_epochs=1, root_dir=tmp_path / "runs", progress=False)
    assert run.checkpoint.is_file() and run.module.hparams.d_input == 32
    assert run.module.hparams.source_model == loaded.name
