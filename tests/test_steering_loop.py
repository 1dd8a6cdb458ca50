"""Closed-loop steering (detect, then steer), the α sweep's share / perplexity, and ret-steer's error paths."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch

from activation_cache.errors import InputError
from ret_toolkit.macro.module import RETModule
from ret_toolkit.steering import ClosedLoop, SteeringVector, closed_loop_generate, steer
from ret_toolkit.steering.detect import MacrostateReader
from ret_toolkit.steering.evaluate import generate_continuations, reread, sweep
from ret_toolkit.steering.sweep_result import SweepPoint, SweepResult, score_point
from file_checks import file_digests, one_error_line
from tiny_models import make_tiny_model, save_tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["The quick brown fox jumps over the lazy dog.", "What is 2 + 3?", "Hi"]  # "Hi": shorter than the window
D = 32  # tiny llama width


def _blocks(model):
    from activation_cache.arch import find_architecture, get_module

    return get_module(model, find_architecture(model).block_path)


def _reader(model, tok, window=3, k=3, layer=0, source_model=""):
    """A random RET encoder on block ``layer`` whose centroids are z of real tokens, so groups vary."""
    torch.manual_seed(0)
    ret = RETModule(d_input=D, window=window, z_dim=4, hidden=16, predictor_hidden=16, source_layers=str(layer),
                    source_model=source_model).eval()
    enc = tok(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        h = model(**enc, output_hidden_states=True).hidden_states[layer + 1][0]
        z = ret.encode_sequence(h)
    ret.centroids = z[torch.linspace(1, len(z) - 1, k).long()].clone()
    return MacrostateReader(ret)


def _vector(seed=1, layer=1, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({layer: scale * torch.randn(D, generator=g)})


@pytest.fixture
def tiny():
    model, tok = make_tiny_model("llama")
    return model, tok, _reader(model, tok)


# --------------------------------------------------------------------------- closed loop


def _run_with_probes(model, tok, vec, reader, groups, when, alpha=1.0, n=8):
    """Closed-loop generate; per forward, block 1's output before and after the steering hook."""
    before, after = [], []
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    with ClosedLoop(model, vec, reader, groups, alpha=alpha, when=when) as loop:
        block = _blocks(model)[1]
        # prepend=True after steer's own prepended hook: runs first, sees the unsteered output
        h1 = block.register_forward_hook(lambda m, a, out: before.append(out.detach().clone()), prepend=True)
        h2 = block.register_forward_hook(lambda m, a, out: after.append(out.detach().clone()))
        try:
            model.generate(**enc, max_new_tokens=n, do_sample=False)
        finally:
            h1.remove()
            h2.remove()
    return loop, before, after


@pytest.mark.parametrize("when", ["in", "out"])
def test_closed_loop_steers_exactly_the_steps_the_detector_fires_on(tiny, when):
    model, tok, reader = tiny
    vec = _vector()
    pilot, _, _ = _run_with_probes(model, tok, vec, reader, [0], when)
    trigger = [int(pilot.groups[0, 0])]  # the group row 0 starts in: fires on step 1 at least for row 0
    loop, before, after = _run_with_probes(model, tok, vec, reader, trigger, when)
    groups, steered = loop.groups, loop.steered
    assert groups.shape == steered.shape == (len(PROMPTS), len(before))
    inside = torch.isin(groups, torch.tensor(trigger))
    expect = inside if when == "in" else ~inside
    # detect, then steer: forward i is steered iff the group detected after forward i-1 qualifies
    assert not steered[:, 0].any()  # the prompt is read unsteered
    assert torch.equal(steered[:, 1:], expect[:, :-1])
    assert steered.any() and (~steered[:, 1:]).any(), "the test needs both steered and unsteered steps"
    # ... and the residual stream really changes on exactly those steps, by alpha * v
    torch.testing.assert_close(after[0], before[0])
    for i in range(1, len(before)):
        diff = (after[i] - before[i])[:, -1]  # (B, D): the one new token of this step
        for b in range(len(PROMPTS)):
            want = vec[1] if steered[b, i] else torch.zeros(D)
            torch.testing.assert_close(diff[b], want, atol=1e-5, rtol=1e-5)


def test_streamed_groups_equal_offline_groups_of_the_same_text(tiny):
    model, tok, reader = tiny
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    zero = SteeringVector({1: torch.zeros(D)})  # nothing steered: the streamed states are the plain ones
    seqs, loop = closed_loop_generate(model, enc, zero, reader, [0], tokenizer=tok, max_new_tokens=6)
    width = enc["input_ids"].shape[1]
    for b in range(len(PROMPTS)):
        real = seqs[b][torch.cat([enc["attention_mask"][b].bool(), torch.ones(6, dtype=torch.bool)])]
        with torch.no_grad():
            h = model(input_ids=real[None], output_hidden_states=True).hidden_states[1][0]
        offline = reader.groups(h)
        n_prompt = int(enc["attention_mask"][b].sum())
        # column j: the last prompt token (j = 0), then generated token j-1
        assert torch.equal(loop.groups[b], offline[n_prompt - 1 : n_prompt - 1 + loop.groups.shape[1]])
    assert seqs.shape[1] == width + 6


def test_closed_loop_removes_its_hooks_and_checks_input(tiny):
    model, tok, reader = tiny
    blocks = _blocks(model)

    def counts():
        return (len(model._forward_pre_hooks), len(model._forward_hooks), [len(b._forward_hooks) for b in blocks])

    before = counts()
    with pytest.raises(KeyError):
        with ClosedLoop(model, _vector(), reader, [1]):
            assert counts() != before
            raise KeyError("boom")
    assert counts() == before
    cases = [
        (lambda: ClosedLoop(model, _vector(), reader, [7]), "group 7 does not exist"),
        (lambda: ClosedLoop(model, _vector(), reader, [1], when="maybe"), "when must be"),
        (lambda: ClosedLoop(model, _vector(), reader, ["a"]), "not an integer group id"),
        (lambda: ClosedLoop(model, SteeringVector({1: torch.ones(48)}), reader, [1]), "d_model 48"),
        (lambda: ClosedLoop(make_tiny_model("gpt2")[0], _vector(), reader, [1]), "d_input 32"),
        (lambda: ClosedLoop(model, _vector(), reader, [1], model_name="other"), None),
    ]
    for call, pattern in cases[:-1]:
        with pytest.raises(InputError, match=pattern) as err:
            call()
        assert "\n" not in str(err.value)
    named = _reader(model, tok, source_model="tiny-llama")
    with pytest.raises(InputError, match="trained on hidden states of 'tiny-llama'"):
        ClosedLoop(model, _vector(), named, [1], model_name="other")
    assert counts() == before


# --------------------------------------------------------------------------- sweep: share and perplexity


def test_score_point_pools_tokens_and_best_point_respects_the_fluency_budget():
    scored = [(np.log([2.0, 4.0]), np.array([1, 1])), (np.zeros(0), np.zeros(0, np.int64)),
              (np.log([8.0]), np.array([0]))]
    p = score_point(0.5, 1, scored, k=3, example="x")
    assert p.n_tokens == 3 and p.n_prompts == 3
    assert p.share == pytest.approx(2 / 3)
    assert p.perplexity == pytest.approx(4.0)  # exp(mean(log 2, log 4, log 8)) = 4
    assert p.group_shares == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert p.prompt_counts == [[2, 2], [0, 0], [0, 1]]
    # paired bootstrap over prompts: a constant per-prompt gain gives a zero-width interval
    def pt(alpha, share=0.0, perplexity=2.0, counts=()):
        return SweepPoint(alpha, share, perplexity, 9, len(counts), prompt_counts=[list(c) for c in counts])

    settings = {"n_prompts": 2, "max_new_tokens": 4, "k": 3}
    paired = SweepResult(1, [pt(0.0, counts=[[1, 4], [0, 4]]), pt(1.0, 0.625, counts=[[3, 4], [2, 4]])], settings)
    assert paired.gain_ci(1.0) == pytest.approx((0.5, 0.5))
    assert paired.gain_ci() == pytest.approx((0.5, 0.5))  # the best α by default
    pts = [pt(0.0, 0.1, 2.0), pt(0.2, 0.3, 2.9), pt(0.4, 0.6, 3.1), pt(-0.2, 0.9, 2.0)]
    result = SweepResult(1, sorted(pts, key=lambda p: p.alpha), settings)
    assert result.best().alpha == 0.2  # 0.4 costs 1.55x; negative α is not "toward" the group
    assert result.gain() == pytest.approx(0.2)
    assert result.best(max_ppl_ratio=2.0).alpha == 0.4
    assert SweepResult(1, pts, settings, max_ppl_ratio=2.0).best().alpha == 0.4
    flat = SweepResult(1, [pts[0], pt(1.0, 0.0, 2.0)], settings)
    assert flat.gain() == 0.0  # nothing helps: α = 0 is the best point
    record = json.loads(json.dumps(result.to_json()))
    assert record["best_alpha"] == 0.2 and record["share_gain"] == pytest.approx(0.2)
    assert SweepResult.from_json(record) == result
    rows = result.table().splitlines()
    assert len(rows) == 2 + len(pts) and rows[4].split()[:2] == ["0.2", "0.300"] and rows[4].split()[-2] == "*"


def test_reread_matches_unpadded_single_forwards(tiny):
    model, tok, reader = tiny
    prompt_ids = [tok(p)["input_ids"] for p in PROMPTS]
    generated = [[5, 6, 7, 8], [9], []]  # different lengths, one empty
    scored = reread(model, reader, prompt_ids, generated, batch_size=2)
    assert [len(s[0]) for s in scored] == [4, 1, 0]
    for p, g, (nll, groups) in zip(prompt_ids, generated, scored):
        if not g:
            continue
        ids = torch.tensor([p + g])
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
        logp = torch.log_softmax(out.logits[0], -1)
        want = [-logp[len(p) - 1 + j, t].item() for j, t in enumerate(g)]
        np.testing.assert_allclose(nll, want, rtol=1e-4, atol=1e-5)
        assert np.array_equal(groups, reader.groups(out.hidden_states[1][0])[len(p):].numpy())


def test_sweep_baseline_is_the_plain_model_and_steering_moves_the_text(tiny):
    model, tok, reader = tiny
    prompt_ids = [tok(p)["input_ids"] for p in PROMPTS]
    vec = _vector(layer=0, scale=4.0)
    plain = generate_continuations(model, tok, prompt_ids, max_new_tokens=5)
    seen = []
    result = sweep(model, tok, reader, vec, 1, [2.0, 1.0], prompt_ids, max_new_tokens=5, batch_size=2,
                   progress=seen.append)
    alphas = [p.alpha for p in result.points]
    assert alphas == [0.0, 1.0, 2.0] and len(seen) == 3  # 0 added, sorted
    base = result.baseline
    assert base.n_tokens == sum(len(g) for g in plain)
    want = score_point(0.0, 1, reread(model, reader, prompt_ids, plain), reader.k)
    assert base.share == pytest.approx(want.share) and base.perplexity == pytest.approx(want.perplexity)
    for p in result.points:
        assert 0.0 <= p.share <= 1.0 and p.perplexity > 0 and sum(p.group_shares) == pytest.approx(1.0)
    with steer(model, vec, alpha=2.0):
        steered_ids = generate_continuations(model, tok, prompt_ids, max_new_tokens=5)
    assert steered_ids != plain  # the vector changes the greedy text (so α matters)
    assert result.points[2].perplexity != pytest.approx(base.perplexity)
    assert result.vector == vec.manifest
    json.dumps(result.to_json())  # JSON-ready
    for p, gen in zip(result.points, [plain]):  # α = 0: per-prompt records add up to the pooled figures
        assert [sum(g) for g in p.prompt_groups] == [c[1] for c in p.prompt_counts] == [len(g) for g in gen]
        assert math.exp(sum(p.prompt_nll) / p.n_tokens) == pytest.approx(p.perplexity)
        assert p.prompt_bigrams == [[len(set(zip(g[:-1], g[1:]))), max(len(g) - 1, 0)] for g in gen]
        assert 0 < p.distinct2 <= 1
    h = result.held_out()
    assert h["n_tune"] + h["n_eval"] == len(PROMPTS) and h["alpha"] in alphas and h["ci_low"] <= h["ci_high"]
    control = sweep(model, tok, reader, vec.random_like(seed=1), 1, [2.0, 1.0], prompt_ids, max_new_tokens=5,
                    batch_size=2)
    assert control.baseline.prompt_counts == base.prompt_counts  # same prompts, same α = 0
    c = result.against(control, 2.0)
    assert c["diff"] == pytest.approx(c["share"] - c["control_share"]) and c["ci_low"] <= c["ci_high"]
    rows = result.specificity(2.0)
    assert [r["group"] for r in rows] == list(range(reader.k)) and sum(r["change"] for r in rows) == pytest.approx(0)
    for progress in (False, True, None):  # what ret-steer passes for --quiet / the default
        again = sweep(model, tok, reader, vec, 1, [2.0, 1.0], prompt_ids, max_new_tokens=5, batch_size=2,
                      progress=progress)
        assert again.to_json() == result.to_json()
    with pytest.raises(InputError, match="target group 5 does not exist"):
        sweep(model, tok, reader, vec, 5, [1.0], prompt_ids)
    with pytest.raises(InputError, match="finite"):
        sweep(model, tok, reader, vec, 1, [float("nan")], prompt_ids)


# --------------------------------------------------------------------------- ret-steer CLI


@pytest.fixture(scope="module")
def ret_dir(tmp_path_factory, one_torch_thread):
    """A tiny-llama model dir, a store of it, and a ret-macro-style directory (ckpt + macrostates)."""
    from activation_cache.extraction import ExtractConfig, extract
    from activation_cache.models import load_model
    from activation_cache.reader import open_store
    from ret_toolkit.macro.assign import assign_groups, encode_store

    root = tmp_path_factory.mktemp("steer_cli")
    model_dir = save_tiny_model("llama", root / "tiny-llama")
    loaded = load_model(str(model_dir))
    out = root / "ret"
    out.mkdir()
    store = out / "trajectories.h5"
    extract(ExtractConfig(prompts="reasoning", limit=6, out=str(store), model=str(model_dir), generate=6,
                          layers="0,1", batch_size=6, chat=True), loaded=loaded, progress=False)
    with open_store(store) as s:
        name = s.model
    torch.manual_seed(0)
    ret = RETModule(d_input=D, window=3, z_dim=4, hidden=16, predictor_hidden=16, source_layers="0",
                    source_model=name).eval()
    encode_store(ret, store, out / "macrostates.h5", progress=False)
    import h5py

    with h5py.File(out / "macrostates.h5", "r") as f:
        z = f["z"][:]
    ret.centroids = torch.from_numpy(z[np.linspace(0, len(z) - 1, 3).astype(int)]).clone()
    torch.save({"state_dict": ret.state_dict(), "hyper_parameters": dict(ret.hparams),
                "pytorch-lightning_version": lightning.__version__,
                "macrostates": {"centroids": ret.centroids}}, out / "ret_macro.ckpt")
    assign_groups(out / "macrostates.h5", ret)
    return {"root": root, "model": str(model_dir), "ret": str(out)}


def _steer(capsys, *args):
    from ret_toolkit.cli.steer import main

    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse usage errors exit from parse_args
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(err, *needles):
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ret-steer: error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_cli_bad_input_is_one_line_exit_2(ret_dir, tmp_path, capsys):
    m, ret = ret_dir["model"], ret_dir["ret"]
    other = SteeringVector({0: torch.ones(48)})  # d_model of tiny GPT-2, not tiny Llama
    other.save(tmp_path / "wide")
    nan = SteeringVector({0: torch.ones(D)})
    tensors, _ = nan.save(tmp_path / "nan")
    from safetensors.torch import save_file

    save_file({"layer.0": torch.full((D,), float("nan"))}, str(tensors))
    cases = [
        (["--vector", tmp_path / "missing", "--prompt", "hi"], ["steering vector file not found"]),
        (["--ret", tmp_path / "nowhere", "--group", "1", "--prompt", "hi"], ["RET output directory not found"]),
        (["--ret", ret, "--group", "9", "--prompt", "hi", "--model", m], ["--group 9 does not exist", "0..2"]),
        (["--ret", ret, "--group", "1", "--detect", "1,5", "--prompt", "hi", "--model", m], ["--detect 5"]),
        (["--vector", tmp_path / "wide", "--prompt", "hi", "--model", m], ["d_model 48 but", "d_model 32"]),
        (["--vector", tmp_path / "nan", "--prompt", "hi", "--model", m], ["non-finite"]),
        (["--ret", ret, "--group", "1", "--prompt", "hi", "--alpha", "nan"], ["--alpha must be a finite number"]),
        (["--ret", ret, "--group", "1", "--prompt", "hi", "--sweep", "--out", tmp_path / "o", "--alphas", "0,nan"],
         ["every value must be a finite number"]),
        (["--ret", ret, "--group", "1", "--prompt", "hi", "--sweep"], ["--sweep needs --out"]),
        (["--group", "1", "--prompt", "hi"], ["--group needs --ret"]),
        (["--vector", tmp_path / "wide"], ["--prompt TEXT"]),
        (["--ret", ret, "--group", "1", "--prompts", tmp_path / "none.jsonl"], ["prompt file not found"]),
        (["--ret", ret, "--group", "1", "--prompt", "hi", "--alpha", "x"], ["invalid float value"]),
        ([], ["--vector PATH or --group G"]),
        (["--vector", tmp_path / "wide", "--prompt", "hi", "--save-vector", tmp_path / "copy"],
         ["--save-vector saves the vector built from --group"]),
        (["--ret", ret, "--group", "1", "--prompt", "hi", "--sweep", "--out", tmp_path / "wide.json"],
         ["wide.json exists and is not a directory"]),
    ]
    for args, needles in cases:
        rc, out, err = _steer(capsys, *args)
        assert rc == 2, (args, err)
        assert out == ""
        _one_line(err, *needles)


def test_cli_generates_closed_loop_and_sweeps(ret_dir, tmp_path, capsys):
    m, ret = ret_dir["model"], ret_dir["ret"]
    common = ["--ret", ret, "--group", "1", "--model", m, "--max-new-tokens", "4"]
    rc, out, err = _steer(capsys, *common, "--prompt", "What is 2 + 3?", "--prompt", "Add 4 and 5.",
                          "--save-vector", tmp_path / "g1")
    assert rc == 0, err
    assert out.count("=== prompt") == 2
    vec = SteeringVector.load(tmp_path / "g1")
    assert vec.construction["method"] == "groups" and vec.construction["group"] == 1 and vec.layers == [0]
    rc, out, err = _steer(capsys, *common, "--prompt", "What is 2 + 3?", "--detect", "0,2", "--when", "out")
    assert rc == 0, err
    assert "[closed loop: steered" in out
    rc, out, err = _steer(capsys, *common, "--prompts", "reasoning", "--limit", "3", "--sweep", "--alphas", "0.5,1",
                          "--out", tmp_path / "sw")
    assert rc == 0, err
    result = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [p["alpha"] for p in result["points"]] == [0.0, 0.5, 1.0]
    assert result["target_group"] == 1 and math.isfinite(result["share_gain"])
    assert "plotly" in (tmp_path / "sw" / "sweep.html").read_text()[:5000].lower()
    assert "best alpha" in out.splitlines()[-1]


def test_cli_sweep_with_other_settings_is_refused_before_generating(ret_dir, tmp_path, capsys, monkeypatch):
    m, ret = ret_dir["model"], ret_dir["ret"]
    sweep_args = ["--ret", ret, "--group", "1", "--model", m, "--max-new-tokens", "2", "--prompt", "What is 2 + 3?",
                  "--sweep", "--out", tmp_path / "sw"]
    rc, _, err = _steer(capsys, *sweep_args, "--alphas", "0.5")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "sw").iterdir()) == ["ret_runs.json", "sweep.html", "sweep.json"]
    before = file_digests(tmp_path)
    import activation_cache.models

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the refusal")

    with monkeypatch.context() as mp:
        mp.setattr(activation_cache.models, "load_model", no_model)
        for extra, differs in ((["--alphas", "1"], "alphas"), (["--alphas", "0.5", "--seed", "3"], "seed")):
            rc, out, err = _steer(capsys, *sweep_args, *extra)
            assert rc == 2 and out == ""
            line = one_error_line(err, "ret-steer")
            assert "other settings" in line and differs in line and "--overwrite" in line, line
            assert file_digests(tmp_path) == before
    rc, _, err = _steer(capsys, *sweep_args, "--alphas", "1", "--overwrite")
    assert rc == 0, err
    assert [p["alpha"] for p in json.loads((tmp_path / "sw" / "sweep.json").read_text())["points"]] == [0.0, 1.0]


def test_cli_save_vector_keeps_another_vector_unless_overwrite(ret_dir, tmp_path, capsys):
    m, ret = ret_dir["model"], ret_dir["ret"]
    args = ["--ret", ret, "--group", "1", "--model", m, "--max-new-tokens", "1", "--prompt", "hi",
            "--save-vector", tmp_path / "g1"]
    rc, _, err = _steer(capsys, *args)
    assert rc == 0, err
    before = file_digests(tmp_path)
    rc, _, err = _steer(capsys, *args)  # the same vector again: its files are left as they are
    assert rc == 0 and "already holds" in err, err
    assert file_digests(tmp_path) == before
    rc, out, err = _steer(capsys, *args, "--layers", "1")
    assert rc == 2 and out == ""  # refused before generating
    line = one_error_line(err, "ret-steer")
    assert "another steering vector" in line and "--overwrite" in line, line
    assert file_digests(tmp_path) == before
    (tmp_path / "notes.json").write_text("{}\n")  # a file of the user's own at PATH.json
    before = file_digests(tmp_path)
    rc, _, err = _steer(capsys, *args[:-1], tmp_path / "notes")
    assert rc == 2 and "not part of a saved steering vector" in one_error_line(err)
    assert file_digests(tmp_path) == before
    rc, _, err = _steer(capsys, *args, "--layers", "1", "--overwrite")
    assert rc == 0, err
    assert SteeringVector.load(tmp_path / "g1").layers == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g1.json", "g1.safetensors", "notes.json"]


def test_console_script_exit_2_no_traceback(tmp_path):
    script = Path(sys.executable).parent / "ret-steer"
    if not script.exists():
        pytest.skip("ret-steer console script not installed (pip install -e .)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([str(script), "--vector", str(tmp_path / "missing"), "--prompt", "hi"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    _one_line(p.stderr, "steering vector file not found")


def test_reader_needs_centroids_and_block_layers():
    no_groups = RETModule(d_input=D, window=3, z_dim=4, hidden=16, predictor_hidden=16, source_layers="0")
    with pytest.raises(InputError, match="no macrostate centroids") as err:
        MacrostateReader(no_groups)
    assert "\n" not in str(err.value)
    embed = RETModule(d_input=D, window=3, z_dim=4, hidden=16, predictor_hidden=16, source_layers="embed")
    embed.centroids = torch.zeros(2, 4)
    with pytest.raises(InputError, match="decoder-block layers"):
        MacrostateReader(embed)


def test_plain_generation_under_several_ranks_is_refused(ret_dir, capsys, monkeypatch):
    for k, v in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(k, v)
    rc, out, err = _steer(capsys, "--ret", ret_dir["ret"], "--group", "1", "--model", ret_dir["model"],
                          "--prompt", "hi")
    assert rc == 2 and out == ""
    assert "under torchrun (2 ranks) ret-steer shards an α sweep (--sweep) only" in one_error_line(err, "ret-steer")


def test_generate_without_a_tokenizer_is_refused(ret_dir):
    from transformers import AutoModelForCausalLM

    from ret_toolkit.steering import generate

    model = AutoModelForCausalLM.from_pretrained(ret_dir["model"])
    with pytest.raises(InputError, match="generate needs a LoadedModel"):
        generate(model, ["hi"])


def test_torchrun_sweep_equals_one_process(ret_dir, tmp_path, capsys):
    """2 gloo ranks split the prompts in whole batches; rank 0 writes the sweep one process writes."""
    m, ret = ret_dir["model"], ret_dir["ret"]
    args = ["--ret", ret, "--group", "1", "--model", m, "--max-new-tokens", "4", "--prompts", "reasoning",
            "--limit", "5", "--batch-size", "2", "--sweep", "--alphas", "0.5,1"]
    rc, _, err = _steer(capsys, *args, "--out", tmp_path / "one")
    assert rc == 0, err
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "2",
                          "--no-python", str(Path(sys.executable).parent / "ret-steer"), *map(str, args),
                          "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("best alpha") == 1  # rank 0 reports, rank 1 is silent
    one, two = (json.loads((tmp_path / d / "sweep.json").read_text()) for d in ("one", "two"))
    assert two["settings"]["n_prompts"] == 5
    for r in (one, two):  # built at another time
        del r["vector"]["created"]
    assert two == one
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["ret_runs.json", "sweep.html", "sweep.json"]


def test_generate_api_is_what_ret_steer_prints(ret_dir, capsys):
    """ret_toolkit.generate: open and closed loop, the same continuations and counts ret-steer prints."""
    import ret_toolkit as ret
    from activation_cache.models import load_model
    from ret_toolkit.steering import find_outputs, load_reader

    m, d = ret_dir["model"], ret_dir["ret"]
    model = load_model(m)
    vec = ret.group_vector(d, group=1, model=model)  # a ret-macro directory, resolved by find_outputs
    reader = load_reader(find_outputs(d).checkpoint, model)
    prompts = ["What is 2 + 3?", "Add 4 and 5."]
    plain = ret.generate(model, prompts, max_new_tokens=4)
    assert plain == ret.generate(model, prompts, vec, alpha=0.0, max_new_tokens=4)  # α = 0 is the plain model
    loop = ret.generate(model, prompts, vec, alpha=2.0, reader=reader, detect=[0, 2], when="out", max_new_tokens=4)
    assert [g.prompt for g in loop] == prompts and all(0 <= g.steered <= g.fed <= 4 for g in loop)
    rc, out, err = _steer(capsys, "--ret", d, "--group", "1", "--model", m, "--max-new-tokens", "4", "--alpha", "2",
                          "--prompt", prompts[0], "--prompt", prompts[1], "--detect", "0,2", "--when", "out")
    assert rc == 0, err
    for g in loop:
        assert g.text in out and f"steered {g.steered} of {g.fed} fed-back tokens" in out
    with pytest.raises(InputError, match="needs a reader and a vector"):
        ret.generate(model, prompts, detect=[0])
    left_out = ret.group_vector(d, group=1, model=model, exclude=[0, 1])  # built without the evaluation prompts
    assert left_out.meta["excluded_sequences"] == [0, 1]
    assert not torch.allclose(left_out[left_out.layers[0]], vec[vec.layers[0]])
    with pytest.raises(InputError, match="sequences must be in"):
        ret.group_vector(d, group=1, model=model, exclude=[10**6])


def test_group_vector_on_a_store_with_nan_names_the_store_and_the_first_bad_row(ret_dir, tmp_path):
    import re
    import shutil

    import h5py

    from ret_toolkit.steering.ret_source import RETOutputs, group_vector

    d = Path(ret_dir["ret"])
    store = Path(shutil.copy(d / "trajectories.h5", tmp_path / "nan.h5"))
    with h5py.File(store, "a") as f:
        firsts = set(f["offsets"][:-1].tolist())  # first tokens are not read: the first NaN row after them is
        bad = next(r for r in range(30, 60) if r not in firsts)
        f["hidden/0"][bad : bad + 5] = np.nan
    with pytest.raises(InputError, match=rf"^{re.escape(str(store))}: hidden states for layer 0 have non-finite "
                                         rf"values at row {bad}$"):
        group_vector(RETOutputs(d / "ret_macro.ckpt", d / "macrostates.h5", store), 1)
