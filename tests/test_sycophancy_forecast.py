"""Sycophancy forecast: trajectories with labels in /meta, feature positions, grouped CV,
AUROC / bootstrap, forecast.json contract and ret-forecast errors (tiny random models)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from activation_cache.annotate import add_meta
from activation_cache.errors import InputError
from activation_cache.extraction import extract
from activation_cache.models import load_model
from activation_cache.reader import open_store
from ret_toolkit.cli import forecast as forecast_cmd
from ret_toolkit.macro.assign import load_ret
from ret_toolkit.macro.module import RETModule
from ret_toolkit.sycophancy import load_bank
from ret_toolkit.sycophancy.external import read_anthropic_jsonl
from ret_toolkit.sycophancy.pushback import TEMPLATES
from ret_toolkit.sycophancy.conversation import second_turn_record
from ret_toolkit.sycophancy import external as external_mod
from ret_toolkit.sycophancy import trajectories as traj
from ret_toolkit.sycophancy.features import (FEATURE_SETS, ForecastData, extract_features, forecast_position,
                                            sequence_features)
from ret_toolkit.sycophancy.forecast import (auroc, bootstrap_auroc, cv_auroc, evaluate_forecast, fold_index,
                                            grouped_folds, oof_scores)
from tiny_models import save_tiny_model
from torchrun_trace import patch_labeller
from torchrun_trace import stub_first as _stub_first

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYER = "1"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama saved to disk, loaded, and a RET checkpoint (with centroids) for it."""
    root = tmp_path_factory.mktemp("syc_tiny")
    model_dir = save_tiny_model("llama", root / "llama")
    loaded = load_model(str(model_dir))
    torch.manual_seed(0)
    m = RETModule(d_input=32, window=4, z_dim=4, hidden=16, predictor_hidden=16,
                  source_model=loaded.name, source_layers=LAYER)
    m.centroids = torch.randn(5, 4)
    ckpt = root / "ret_macro.ckpt"
    # The layout Lightning writes; load_ret reads it with weights_only=True.
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams),
                "pytorch-lightning_version": lightning.__version__,
                "macrostates": {"centroids": m.centroids}}, ckpt)
    return {"dir": str(model_dir), "loaded": loaded, "ckpt": ckpt, "module": load_ret(ckpt)}


@pytest.fixture
def stub_labeller(monkeypatch):
    """Deterministic labels from ids and replies, so tiny random models give both classes
    (a random model never answers right)."""
    patch_labeller(monkeypatch)


@pytest.fixture(scope="module")
def traced(tiny, tmp_path_factory):
    """12 bank items x every pushback template, traced with the stub labeller."""
    mp = pytest.MonkeyPatch()
    patch_labeller(mp)
    try:
        items = traj.pick_items(load_bank(), 12)
        out = tmp_path_factory.mktemp("syc_traced")
        res = traj.trace_dataset(items, out, tiny["loaded"], LAYER,
                                 traj.TraceSettings(max_new_tokens=6, pushbacks="all", batch_size=32),
                                 model_spec=tiny["dir"], progress=False)
    finally:
        mp.undo()
    return items, res


# --------------------------------------------------------------------------- trajectories


def test_trace_puts_labels_and_conversation_ids_in_meta(traced):
    items, res = traced
    with open_store(res.store) as st:
        meta = {f: st.meta_column(f) for f in ("prompt_id", "conversation_id", "label", "caved", "turn_start", "pushback")}
        gen = [st.generated(s) for s in range(st.n_sequences)]
    assert meta["prompt_id"] == list(res.labels)
    assert [res.labels[p] for p in meta["prompt_id"]] == meta["label"]
    assert all(c == {"caved": "1", "held": "0", "unclear": ""}[lab] for c, lab in zip(meta["caved"], meta["label"]))
    # every pushback variant of an item shares its conversation id; ids are item ids
    assert all(p.split("~")[0] == c for p, c in zip(meta["prompt_id"], meta["conversation_id"]))
    assert {p.split("~")[1] for p in meta["prompt_id"]} == set(meta["pushback"])
    # the store holds the pushback prompt and the generated reply tokens
    assert all(g.any() and not g[0] for g in gen)
    assert all(int(t) > 0 for t in meta["turn_start"])


def test_trace_counts_exclusions(traced):
    items, res = traced
    s = res.summary()
    n_first_ok = sum(_stub_first(it, "") for it in items)
    assert s["first_turn"] == {"correct": n_first_ok, "wrong": len(items) - n_first_ok, "unclear": 0}
    assert s["n_sequences"] == n_first_ok * 7 and s["n_pushbacks_per_item"] == 7
    assert s["exclusions"]["first_wrong"] == (len(items) - n_first_ok) * 7
    assert s["exclusions"]["second_unclear"] == sum(v == "unclear" for v in res.labels.values())
    assert s["n_kept"] + s["n_excluded"] == s["n_candidates"] == len(items) * 7
    assert 0 < s["n_positive"] < s["n_kept"]
    # per pushback template: the same items, and counts that add up to the totals
    by = s["by_template"]
    assert len(by) == 7 and {p.split("~")[1] for p in res.labels} == set(by)
    assert all(c["n"] == n_first_ok and c["kept"] + c["second_unclear"] == n_first_ok for c in by.values())
    assert sum(c["second_unclear"] for c in by.values()) == s["exclusions"]["second_unclear"]
    assert sum(c["caved"] for c in by.values()) == s["n_positive"]
    for name, c in by.items():
        labels = [lab for p, lab in res.labels.items() if p.split("~")[1] == name]
        assert c["caved"] == labels.count("caved") and c["exclusion_rate"] == labels.count("unclear") / n_first_ok
    from ret_toolkit.sycophancy.result import template_table
    assert template_table(by).count("\n") == 7
    with open_store(res.first_store) as st:
        assert st.meta_column("first_correct") == ["true" if _stub_first(it, "") else "false" for it in items]


def test_trace_reuses_stores(traced, tiny, stub_labeller):
    items, res = traced
    again = traj.trace_dataset(items, res.store.parent, tiny["loaded"], LAYER,
                               traj.TraceSettings(max_new_tokens=6, pushbacks="all", batch_size=32),
                               model_spec=tiny["dir"], progress=False)
    assert again.labels == res.labels


def _store_content(path):
    with open_store(path) as s:
        return (s.meta_column("prompt_id"), s.offsets.tolist(), s.h5["tokens"][: s.n_tokens].tolist(),
                s.hidden_dataset(LAYER)[: s.n_tokens], {f: s.meta_column(f) for f in s.meta_fields})


def test_torchrun_ranks_trace_what_one_process_traces(tiny, tmp_path, stub_labeller):
    """2 gloo ranks: each traces its share of both turns; the merged stores and labels equal one process's."""
    items = traj.pick_items(load_bank(), 12)
    one = traj.trace_dataset(items, tmp_path / "one", tiny["loaded"], LAYER,
                             traj.TraceSettings(max_new_tokens=6, pushbacks="all", batch_size=3),
                             model_spec=tiny["dir"], progress=False)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "2",
                          str(Path(__file__).parent / "torchrun_trace.py"), tiny["dir"], str(tmp_path / "two"), "12",
                          "3"], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "labels.json").read_text()) == one.labels
    for name in ("turn1.h5", "turn2.h5"):
        a, b = _store_content(tmp_path / "one" / name), _store_content(tmp_path / "two" / name)
        assert a[:3] == b[:3] and a[4] == b[4], name  # same sequences, tokens and /meta
        # A shard boundary inside a batch (turn 2: 63 sequences, batches of 3, 31 + 32 per rank)
        # batches some rows with other neighbours: float16 rounding may differ in the last bit.
        np.testing.assert_allclose(a[3].astype(np.float32), b[3].astype(np.float32), rtol=2e-3, atol=1e-6)
        assert (a[3] != b[3]).mean() < 1e-4
    assert sorted(p.name for p in (tmp_path / "two" / "turn2.shards").iterdir()) == ["00000-of-00002.h5",
                                                                                     "00001-of-00002.h5"]


def test_last_turn_start_is_where_the_pushback_starts(tiny):
    tok = tiny["loaded"].tokenizer
    msgs = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"},
            {"role": "user", "content": "No, it is 6."}]
    start = traj.last_turn_start(msgs, tok)
    ids = tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    assert tok.decode(ids[start:]).startswith("<|user|>No, it is 6.")
    assert traj.last_turn_start(msgs[:1], tok) == 0


def test_choice_items_are_one_turn(tiny, tmp_path, monkeypatch):
    path = tmp_path / "nlp.jsonl"
    rows = [{"question": f"I agree with claim {i}. Do you?\n\nChoices:\n (A) Agree\n (B) Disagree\n\nAnswer:",
             "answer_matching_behavior": " (A)", "answer_not_matching_behavior": " (B)"} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = read_anthropic_jsonl(path)
    # label_choices (used by the tracer) looks the rule up in the external module
    monkeypatch.setattr(external_mod, "chose_sycophantic", lambda it, r: [True, False, None][(int(it.id.split(":")[1]) - 1) % 3])
    res = traj.trace_dataset(items, tmp_path / "out", tiny["loaded"], LAYER, traj.TraceSettings(max_new_tokens=4),
                             model_spec=tiny["dir"], progress=False)
    assert res.first_store is None and res.store.name == "choice.h5"
    assert list(res.labels.values()) == ["caved", "held", "unclear"] * 2
    assert res.exclusions["choice_unclear"] == 2
    with open_store(res.store) as st:
        assert st.meta_column("caved") == ["1", "0", ""] * 2
        assert st.meta_column("conversation_id") == [it.id for it in items]


def test_add_meta_rules(traced):
    _, res = traced
    with open_store(res.store) as st:
        n = st.n_sequences
    with pytest.raises(InputError, match="values for"):
        add_meta(res.store, {"x": ["a"] * (n + 1)})
    with pytest.raises(InputError, match="written by the extraction"):
        add_meta(res.store, {"prompt_id": ["a"] * n}, replace=True)
    with pytest.raises(InputError, match="exists"):
        add_meta(res.store, {"label": ["a"] * n})
    with pytest.raises(InputError, match="strings"):
        add_meta(res.store, {"y": [1] * n})


# --------------------------------------------------------------------------- feature positions


def test_forecast_position():
    assert forecast_position(10, 5, 0) == 9  # last prompt token
    assert forecast_position(10, 5, 1) == 10  # after the first reply token
    assert forecast_position(10, 5, 16) == 14  # the reply ended: its last row
    with pytest.raises(ValueError):
        forecast_position(0, 5, 0)


def test_sequence_features_read_the_right_rows():
    n_prompt, n_reply, turn_start, K = 7, 5, 3, 4
    T = n_prompt + n_reply
    h = np.arange(T, dtype=np.float32)[:, None].repeat(3, 1)  # row t holds t
    z = -np.arange(T, dtype=np.float32)[:, None].repeat(2, 1)
    groups = np.arange(T) % K
    f = sequence_features(h, z, groups, n_prompt, n_reply, turn_start, (0, 1, 2, 4, 8), K)
    for k, row in ((0, 6), (1, 7), (2, 8), (4, 10), (8, 11)):
        ret, raw = f["ret"][k], f["raw_pca"][k]
        assert raw[0] == row and ret[0] == -row  # value at the position
        assert raw[3] == pytest.approx(np.mean(range(turn_start, row + 1)))  # mean over the turn
        assert ret[2] == pytest.approx(-np.mean(range(turn_start, row + 1)))
        hist = ret[4:]
        assert hist.sum() == pytest.approx(1.0) and len(hist) == K
        assert hist == pytest.approx(np.bincount(np.arange(turn_start, row + 1) % K, minlength=K) / (row + 1 - turn_start))
        assert f["length"][k] == pytest.approx(np.log([n_prompt, n_prompt - turn_start]))


def _second_turn_messages(items, res, tokenizer) -> dict[str, list[dict]]:
    """prompt id -> the turn-2 messages traced for it (rebuilt: no prompt files are written)."""
    by_id, templates = {it.id: it for it in items}, {t.name: t for t in TEMPLATES}
    firsts = traj.read_replies(res.first_store, tokenizer)
    out = {}
    for pid in res.labels:
        item_id, name = pid.split("~")
        out[pid] = second_turn_record(by_id[item_id], firsts[item_id], template=templates[name])["messages"]
    return out


def test_store_features_k0_is_last_pushback_token(traced, tiny):
    items, res = traced
    data = extract_features(res.store, tiny["module"], leads=(0, 1, 2, 4), progress=False)
    tok = tiny["loaded"].tokenizer
    assert not list(res.store.parent.glob("*.jsonl"))  # prompts are passed in memory
    messages = _second_turn_messages(items, res, tok)
    with open_store(res.store) as st:
        pids = st.meta_column("prompt_id")
        for i in (0, len(data) // 2, len(data) - 1):
            s = pids.index(data.ids[i])
            gen, tokens, h = st.generated(s), st.tokens(s), st.hidden(s, LAYER).astype(np.float32)
            rendered = tok.apply_chat_template(messages[data.ids[i]], tokenize=False, add_generation_prompt=True)
            prompt_ids = tok(rendered, add_special_tokens=False)["input_ids"]
            n_p = len(prompt_ids)
            assert data.n_prompt[i] == n_p and not gen[:n_p].any() and gen[n_p:].all()
            assert tokens[n_p - 1] == prompt_ids[-1]  # k = 0: the last token of the pushback prompt
            D = h.shape[1]
            for k in (0, 1, 2, 4):
                row = n_p - 1 + min(k, int(gen.sum()))
                assert data.features["raw_pca"][k][i][:D] == pytest.approx(h[row], abs=1e-6)
                z = tiny["module"].encode_sequence(torch.from_numpy(h)).numpy()
                assert data.features["ret"][k][i][:4] == pytest.approx(z[row], abs=1e-5)
    assert set(data.features) == set(FEATURE_SETS)
    assert data.y.tolist() == [int(res.labels[p] == "caved") for p in data.ids]
    assert data.n_unlabelled == sum(v == "unclear" for v in res.labels.values())


def test_features_need_centroids_and_labels(traced, tiny):
    _, res = traced
    m = load_ret(tiny["ckpt"])
    m.centroids = None
    with pytest.raises(InputError, match="centroids"):
        extract_features(res.store, m, progress=False)
    with pytest.raises(InputError, match="not a labelled sycophancy store"):
        extract_features(res.first_store, tiny["module"], progress=False)


# --------------------------------------------------------------------------- CV, AUROC, bootstrap


def test_grouped_folds_keep_conversations_together():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 3)
    y = (rng.random(120) < 0.7).astype(int)
    folds = grouped_folds(y, groups, 5, seed=1)
    assert len(folds) == 5
    seen = np.zeros(120, int)
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])
        assert set(y[te]) == {0, 1}
        seen[te] += 1
    assert (seen == 1).all()
    # fewer groups of a class than folds: fewer folds; one class: a clear error
    y2 = np.zeros(120, int)
    y2[groups < 3] = 1
    assert len(grouped_folds(y2, groups, 5)) == 3
    with pytest.raises(InputError, match="both caved and held"):
        grouped_folds(np.ones(10, int), np.arange(10))


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 5, 300).astype(float)
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert np.isnan(auroc(np.ones(5), np.arange(5)))


def _synthetic(separable: bool, n=240, seed=0) -> ForecastData:
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n // 2), 2).astype(object)
    y = (rng.random(n) < 0.6).astype(int)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    if separable:
        X[:, 0] += 4 * (2 * y - 1)
    feats = {name: {0: X} for name in FEATURE_SETS}
    return ForecastData(ids=np.arange(n).astype(object), conversations=groups, y=y, leads=(0,), features=feats,
                        n_prompt=np.full(n, 10), n_reply=np.full(n, 5))


def test_auroc_separable_vs_random():
    sep = evaluate_forecast(_synthetic(True, n=160), repeats=1, n_boot=60, progress=False)["auroc"]
    rnd = evaluate_forecast(_synthetic(False, n=160), repeats=1, n_boot=60, progress=False)["auroc"]
    fixed = evaluate_forecast(_synthetic(True, n=160), repeats=1, n_boot=60, progress=False, ci="fixed")["auroc"]
    assert fixed["ret"]["0"]["ci"] == "fixed scores" and sep["ret"]["0"]["ci"] == "refit"
    assert fixed["ret"]["0"]["mean"] == sep["ret"]["0"]["mean"]  # the same fits; only the interval differs
    with pytest.raises(ValueError, match="ci must be"):
        evaluate_forecast(_synthetic(True, n=40), repeats=1, n_boot=20, progress=False, ci="bca")
    for name in ("ret", "raw_pca", "length"):
        assert sep[name]["0"]["mean"] > 0.97 and sep[name]["0"]["ci_low"] > 0.9
        r = rnd[name]["0"]
        assert abs(r["mean"] - 0.5) < 0.1 and r["ci_low"] < 0.5 < r["ci_high"]
    assert sep["majority"]["0"]["mean"] == 0.5 == rnd["majority"]["0"]["ci_high"]


def test_random_labels_average_to_chance():
    """Within-fold AUROC has no below-chance bias on label noise (pooled out-of-fold scores can)."""
    vals = []
    for seed in range(8):
        d = _synthetic(False, n=120, seed=seed)
        folds = grouped_folds(d.y, d.conversations, 5, seed)
        s = oof_scores(d.features["ret"][0], d.y, d.conversations, folds, "logistic")
        vals.append(cv_auroc(d.y, [s], [fold_index(folds, len(d.y))]))
    assert abs(np.mean(vals) - 0.5) < 0.05


def _design_world(n_conv=150, seed=0, ret_signal=0.0):
    """Seven pushback templates per conversation with planted caving rates 0.2..0.8 by template;
    ``ret`` features carry a per-sequence signal of the label beyond the template when ``ret_signal`` > 0."""
    rng = np.random.default_rng(seed)
    templates = np.tile(np.arange(7), n_conv)
    groups = np.repeat(np.arange(n_conv), 7).astype(object)
    rate = 0.2 + 0.1 * templates
    latent = rng.random(templates.size)
    y = (latent < rate).astype(int)
    noise = rng.normal(size=(y.size, 6)).astype(np.float32)
    ret = rng.normal(size=(y.size, 6)).astype(np.float32)
    ret[:, 0] += ret_signal * (2 * y - 1)
    design = np.eye(7, dtype=np.float32)[templates]
    feats = {"ret": {0: ret}, "raw_pca": {0: noise}, "length": {0: noise[:, :2]}, "design": {0: design}}
    return ForecastData(ids=np.arange(y.size).astype(object), conversations=groups, y=y, leads=(0,), features=feats,
                        n_prompt=np.full(y.size, 10), n_reply=np.full(y.size, 5))


def test_design_baseline_and_paired_differences_recover_the_planted_answer():
    """Caving planted by template only: the design baseline finds it and RET (noise) does not beat it;
    with a planted signal beyond the template, RET beats design with a paired CI above 0."""
    only_design = evaluate_forecast(_design_world(), repeats=1, n_boot=60, progress=False)
    a, d = only_design["auroc"], only_design["differences"]
    assert a["design"]["0"]["ci_low"] > 0.6  # rates 0.2..0.8 by template: AUROC about 0.7
    assert abs(a["ret"]["0"]["mean"] - 0.5) < 0.06 and d["ret-design"]["0"]["ci_high"] < 0
    assert d["ret-raw_pca"]["0"]["ci_low"] < 0 < d["ret-raw_pca"]["0"]["ci_high"]  # noise vs noise: no difference
    beyond = evaluate_forecast(_design_world(ret_signal=1.5), repeats=1, n_boot=60, progress=False)["differences"]
    assert beyond["ret-design"]["0"]["ci_low"] > 0 and beyond["ret-design"]["0"]["p_value"] < 0.01


def test_paired_bootstrap_null_covers_zero():
    """Two feature sets of pure noise: the paired CI of their AUROC difference covers 0 in most worlds."""
    from ret_toolkit.sycophancy.forecast import paired_bootstrap_auroc

    covered = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 2, 200)
        g = np.repeat(np.arange(100), 2)
        f = g % 5
        covered += (lambda c: c["ci_low"] <= 0 <= c["ci_high"])(
            paired_bootstrap_auroc(y, [rng.normal(size=200)], [rng.normal(size=200)], [f], g, n_boot=200, seed=seed))
    assert covered >= 17  # 95 % nominal; 17 of 20 is below it by 2 binomial s.d.


def test_design_features_are_one_hot_per_factor():
    from ret_toolkit.sycophancy.features import design_features

    X = design_features({"pushback": ["b", "a", "b"], "kind": ["x", "x", "y"]}, 3)
    assert X.tolist() == [[0, 1, 1, 0], [1, 0, 1, 0], [0, 1, 0, 1]]
    assert design_features({}, 4).shape == (4, 1)


def test_bootstrap_is_seeded_and_resamples_conversations():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = y + rng.normal(0, 1, 60)
    f = np.arange(60) % 3
    g = np.repeat(np.arange(20), 3)
    a = bootstrap_auroc(y, [s], [f], g, n_boot=100, seed=3)
    assert a == bootstrap_auroc(y, [s], [f], g, n_boot=100, seed=3)
    assert a["ci_low"] < a["mean"] < a["ci_high"] and a["n_boot_used"] == 100
    # one conversation: every resample is that conversation -> the CI collapses to the estimate
    one = bootstrap_auroc(y, [s], [f], np.zeros(60), n_boot=20, seed=0)
    assert one["ci_low"] == pytest.approx(one["mean"]) == pytest.approx(one["ci_high"])


# --------------------------------------------------------------------------- ret-forecast


def _error_line(capsys, rc: int) -> str:
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_writes_forecast_json(tiny, tmp_path, stub_labeller, capsys):
    out = tmp_path / "fc"
    rc = forecast_cmd.main(["--dataset", "bank", "--model", tiny["dir"], "--macro-ckpt", str(tiny["ckpt"]),
                            "--out", str(out), "--n-items", "20", "--pushbacks", "all", "--leads", "0,1,2",
                            "--max-new-tokens", "4", "--repeats", "1", "--n-boot", "50", "--batch-size", "32",
                            "--quiet"])
    assert rc == 0
    r = json.loads((out / "forecast.json").read_text())
    assert r["n_items"] == 20 and r["n_positive"] > 0 and r["n_excluded"] > 0
    assert r["n_kept"] + r["n_excluded"] == 20 * 7
    assert set(r["auroc"]) == {"ret", "raw_pca", "length", "design", "majority"}
    assert set(r["differences"]) == {"ret-raw_pca", "ret-length", "ret-design"}
    for by_k in r["differences"].values():
        assert list(by_k) == ["0", "1", "2"]
        for c in by_k.values():
            assert c["ci_low"] <= c["diff"] <= c["ci_high"] and 0 <= c["p_value"] <= 1
    for by_k in r["auroc"].values():
        assert list(by_k) == ["0", "1", "2"]
        for c in by_k.values():
            assert {"mean", "ci_low", "ci_high"} <= set(c) and c["ci_low"] <= c["mean"] <= c["ci_high"]
    assert (out / "forecast.html").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "caving rate" in printed and "lead=0" in printed and "ret-design" in printed


def test_cli_in_domain_adds_its_row_and_paired_differences(tiny, tmp_path, stub_labeller, capsys):
    out = tmp_path / "fc"
    rc = forecast_cmd.main(["--dataset", "bank", "--model", tiny["dir"], "--macro-ckpt", str(tiny["ckpt"]),
                            "--out", str(out), "--n-items", "20", "--pushbacks", "all", "--leads", "0,2",
                            "--max-new-tokens", "4", "--repeats", "1", "--n-boot", "50", "--batch-size", "32",
                            "--in-domain", "--in-domain-epochs", "1", "--quiet"])
    assert rc == 0
    r = json.loads((out / "forecast.json").read_text())
    assert r["config"]["in_domain"] is True and r["forecast"]["fold_feature_repeats"] == 1
    assert 0 <= r["auroc"]["in_domain"]["2"]["mean"] <= 1
    assert {"in_domain-ret", "in_domain-design"} <= set(r["differences"])
    assert "in_domain-ret" in capsys.readouterr().out
    assert len(list((out / "in_domain_runs").glob("fold*"))) == r["forecast"]["n_splits"]


def _checksums(root) -> dict[str, str | None]:
    """Every path under ``root`` (hidden ones too): sha256 of files, None for folders."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def test_cli_refuses_other_settings_before_writing_and_reuses_stores(tiny, tmp_path, stub_labeller, capsys,
                                                                      monkeypatch):
    calls = []  # (store, overwrite, new sequences) of every extraction

    def spy(cfg, **kw):
        r = extract(cfg, **kw)
        calls.append((Path(cfg.out).name, cfg.overwrite, r.new_sequences))
        return r

    monkeypatch.setattr(traj, "extract", spy)
    out = tmp_path / "fc"
    base = ["--dataset", "bank", "--model", tiny["dir"], "--macro-ckpt", str(tiny["ckpt"]), "--out", str(out),
            "--n-items", "12", "--pushbacks", "all", "--leads", "0,1", "--max-new-tokens", "3", "--folds", "3",
            "--repeats", "1", "--n-boot", "20", "--batch-size", "32", "--quiet"]
    assert forecast_cmd.main(base) == 0
    capsys.readouterr()
    before = _checksums(out)
    assert set(before) == {"turn1.h5", "turn2.h5", "forecast.json", "forecast.html", "ret_runs.json"}
    calls.clear()

    # other settings: refused in one line before the model is loaded; not a byte changes
    line = _error_line(capsys, forecast_cmd.main(base + ["--n-boot", "30"]))
    assert "holds a ret-forecast run with other settings (differs in n_boot)" in line and "--overwrite" in line
    assert _checksums(out) == before and not calls

    # the same settings, checkpoint, model and stores: the results are reused, nothing is traced or written
    assert forecast_cmd.main(base) == 0
    assert not calls and _checksums(out) == before
    first = json.loads((out / "forecast.json").read_text())
    assert set(first["inputs"]) == {"macro_ckpt_sha256", "model_revision", "stores"}
    assert set(first["inputs"]["stores"]) == {"turn1.h5", "turn2.h5"}
    # ... but not once an input differs from what the results record: the stores are reused, the rest reruns
    (out / "forecast.json").write_text(json.dumps({**first, "inputs": {**first["inputs"], "macro_ckpt_sha256": "x"}}))
    assert forecast_cmd.main(base) == 0
    assert calls == [("turn1.h5", False, 0), ("turn2.h5", False, 0)]
    assert json.loads((out / "forecast.json").read_text())["inputs"] == first["inputs"]
    calls.clear()

    # --overwrite replaces the results; stores whose extraction config matches are still reused ...
    assert forecast_cmd.main(base + ["--n-boot", "30", "--overwrite"]) == 0
    assert calls == [("turn1.h5", False, 0), ("turn2.h5", False, 0)]
    assert json.loads((out / "forecast.json").read_text())["forecast"]["n_boot"] == 30
    calls.clear()
    # ... and those whose config differs are re-traced
    assert forecast_cmd.main(base + ["--max-new-tokens", "4", "--overwrite"]) == 0
    assert [(name, ow) for name, ow, _ in calls] == [("turn1.h5", True), ("turn2.h5", True)]
    assert all(n > 0 for _, _, n in calls)
    with open_store(out / "turn2.h5") as st:
        assert st.config["generate"] == 4
    assert not [p for p in out.iterdir() if p.name.startswith(".") or p.suffix in (".jsonl", ".lock", ".tmp")]
    capsys.readouterr()
    # now the directory holds the last run's settings: the first ones are refused
    assert "(differs in max_new_tokens)" in _error_line(capsys, forecast_cmd.main(base))


@pytest.mark.parametrize("args, message", [
    (["--dataset", "nope.jsonl"], "unknown sycophancy dataset"),
    (["--dataset", "bank", "--leads", "0,x"], "comma-separated integers"),
    (["--dataset", "bank", "--leads", "0,64"], "--max-new-tokens 40 must be"),
    (["--dataset", "bank", "--pushbacks", "some"], "invalid choice"),
    (["--dataset", "bank", "--n-items", "0"], "--n-items must be >= 1"),
    (["--dataset", "bank", "--in-domain", "--in-domain-epochs", "0"], "--in-domain-epochs must be >= 1"),
    (["--dataset", "bank", "--macro-ckpt", "missing.ckpt"], "RET checkpoint not found"),
])
def test_cli_bad_input_is_one_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = {"--macro-ckpt": "missing.ckpt", "--out": str(tmp_path / "o")}
    argv = list(args) + [x for k, v in base.items() if k not in args for x in (k, v)]
    try:
        rc = forecast_cmd.main(argv)
    except SystemExit as e:  # argparse usage errors exit from the parser (one line, status 2)
        rc = e.code
    assert message in _error_line(capsys, rc)


def test_cli_malformed_jsonl_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "syc.jsonl"
    good = {"question": "Q?\n (A) Agree\n (B) Disagree", "answer_matching_behavior": " (A)",
            "answer_not_matching_behavior": " (B)"}
    path.write_text(json.dumps(good) + "\n" + '{"question": "broken"\n')
    line = _error_line(capsys, forecast_cmd.main(["--dataset", str(path), "--macro-ckpt", "x.ckpt",
                                                  "--out", str(tmp_path / "o")]))
    assert f"{path}:2:" in line


def test_cli_checkpoint_of_another_model(tiny, tmp_path, capsys):
    m = RETModule(d_input=32, window=4, z_dim=4, hidden=16, predictor_hidden=16, source_model="other-model",
                  source_layers=LAYER)
    m.centroids = torch.randn(3, 4)
    ckpt = tmp_path / "other.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams),
                "pytorch-lightning_version": lightning.__version__, "macrostates": {"centroids": m.centroids}}, ckpt)
    line = _error_line(capsys, forecast_cmd.main(["--dataset", "bank", "--model", tiny["dir"], "--macro-ckpt", str(ckpt),
                                                  "--out", str(tmp_path / "o"), "--n-items", "2"]))
    assert "trained on 'other-model'" in line


def test_cli_layer_that_selects_several_layers_is_refused_before_tracing(tiny, tmp_path, capsys):
    out = tmp_path / "o"
    line = _error_line(capsys, forecast_cmd.main(["--dataset", "bank", "--model", tiny["dir"], "--macro-ckpt",
                                                  str(tiny["ckpt"]), "--out", str(out), "--n-items", "2",
                                                  "--layer", "0-1"]))
    assert "--layer '0-1' selects 2 layers; the raw baseline reads one" in line
    assert not out.exists()


def test_console_script_bad_dataset(tmp_path):
    """The installed ``ret-forecast``: one line on stderr, exit 2, no traceback."""
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "ret-forecast"
    if not exe.exists():
        pytest.skip("ret-forecast is not installed in this environment (pip install -e .)")
    p = subprocess.run([str(exe), "--dataset", str(tmp_path / "missing.jsonl"), "--macro-ckpt", "x.ckpt",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr
    assert "unknown sycophancy dataset" in p.stderr


# --------------------------------------------------------------------------- in-domain RET


def test_fold_dependent_features_are_fitted_and_scored_per_fold():
    """(n_folds, N, F) features: fold j's probe is fitted on X[j]'s training rows and scores X[j]'s test rows."""
    from ret_toolkit.sycophancy.forecast import fit_model

    d = _synthetic(True, n=120)
    folds = grouped_folds(d.y, d.conversations, 4, seed=0)
    rng = np.random.default_rng(1)
    X = np.stack([rng.normal(size=(120, 3)) for _ in folds])
    got = oof_scores(X, d.y, d.conversations, folds, "logistic")
    for j, (tr, te) in enumerate(folds):
        want = fit_model("logistic", X[j][tr], d.y[tr], d.conversations[tr]).predict_proba(X[j][te])[:, 1]
        assert got[te] == pytest.approx(want)


def test_fold_dependent_set_recovers_planted_signal_and_its_null():
    """A fold-dependent set with a planted label signal beats noise RET (paired CI above 0, first repeat);
    one of pure noise sits at chance with a CI covering 0.5. It is called with the first repeat's folds."""
    data = _design_world(n_conv=80)
    rng = np.random.default_rng(3)
    seen = []

    def planted(folds, signal):
        seen.append(folds)
        return [{0: (rng.normal(size=(len(data), 4)) + signal * (2 * data.y - 1)[:, None]).astype(np.float32)}
                for _ in folds]

    r = evaluate_forecast(data, repeats=2, n_boot=60, progress=False,
                          fold_features={"in_domain": lambda f: planted(f, 1.5)})
    want = grouped_folds(data.y, data.conversations, 5, 0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(seen[0], want))
    assert r["auroc"]["in_domain"]["0"]["ci_low"] > 0.8
    assert r["differences"]["in_domain-ret"]["0"]["ci_low"] > 0
    assert set(r["differences"]) >= {"in_domain-ret", "in_domain-design", "in_domain-raw_pca", "in_domain-length"}
    assert r["settings"]["fold_feature_repeats"] == 1
    null = evaluate_forecast(data, repeats=1, n_boot=60, progress=False,
                             fold_features={"in_domain": lambda f: planted(f, 0.0)})["auroc"]["in_domain"]["0"]
    assert null["ci_low"] < 0.5 < null["ci_high"]


def test_in_domain_ret_trains_on_training_conversations_only(traced, tiny, tmp_path):
    from ret_toolkit.macro.pipeline import checkpoint_split
    from ret_toolkit.sycophancy.in_domain import in_domain_features, training_sequences

    _, res = traced
    data = extract_features(res.store, tiny["module"], leads=(0, 2), progress=False)
    folds = grouped_folds(data.y, data.conversations, 3, seed=0)
    feats = in_domain_features(res.store, data, folds, tiny["module"], tmp_path / "runs", epochs=1, stride=2,
                               progress=False)
    assert len(feats) == len(folds) >= 2
    d, K = tiny["module"].hparams.z_dim, tiny["module"].centroids.shape[0]
    assert all(f[k].shape == (len(data), 2 * d + K) and np.isfinite(f[k]).all() for f in feats for k in (0, 2))
    assert not np.allclose(feats[0][0], feats[1][0])  # one encoder per fold
    with open_store(res.store) as st:
        conv, n = st.meta_column("conversation_id"), st.n_sequences
    for j, (_, te) in enumerate(folds):
        ckpt = next((tmp_path / "runs" / f"fold{j}").rglob("last.ckpt"))
        train, val = checkpoint_split(ckpt, res.store, n)
        read = {conv[s] for s in np.concatenate([train, val])}
        assert read and not read & set(data.conversations[te])
    with pytest.raises(InputError, match="grouped"):
        training_sequences(conv, [conv[0]], [conv[0]])


def test_sequences_restrict_the_split():
    from ret_toolkit.storeset import split_sequences

    tr, va = split_sequences(50, 0.25, 0, sequences=[3, 7, 9, 11, 20, 30, 41, 49])
    assert sorted(np.concatenate([tr, va]).tolist()) == [3, 7, 9, 11, 20, 30, 41, 49] and len(va) == 2
    assert np.array_equal(split_sequences(50, 0.2, 3)[1], split_sequences(50, 0.2, 3, sequences=None)[1])
    with pytest.raises(InputError, match=r"indices in 0\.\.49"):
        split_sequences(50, 0.2, 0, sequences=[10, 50])


def test_sequences_select_from_one_store_only(traced):
    from ret_toolkit.storeset import StoreSet

    _, res = traced
    with pytest.raises(InputError, match="one store"):
        StoreSet.open([res.store, res.store], sequences=[0])


def _planted_store(path, planted: bool, n_conv=60, n_templates=4, n_prompt=12, n_reply=6, onset=2, seed=0):
    """A labelled forecasting store written by hand: noise hidden states, and (``planted``) the label
    written into dimension 0 of every row from reply token ``onset`` on, so a forecaster can read it
    at k >= onset and not before (the states at k < onset never contain it)."""
    from activation_cache.writer import Batch, StoreSpec, StoreWriter

    rng = np.random.default_rng(seed)
    n = n_conv * n_templates
    y = rng.integers(0, 2, n)
    T = n_prompt + n_reply
    h = rng.normal(size=(n, T, 32)).astype(np.float32)
    if planted:
        h[:, n_prompt - 1 + onset:, 0] += 3.0 * (2 * y - 1)[:, None]
    gen = np.zeros(T, bool)
    gen[n_prompt:] = True
    meta = [{"prompt_id": f"p{s}", "caved": str(y[s]), "conversation_id": f"c{s // n_templates}",
             "turn_start": "6", "pushback": f"t{s % n_templates}", "kind": "fact"} for s in range(n)]
    spec = StoreSpec("planted", "r", 32, 2, ["1"], {"planted": planted},
                     meta_fields=["prompt_id", "caved", "conversation_id", "turn_start", "pushback", "kind"],
                     dtype="float32")
    with StoreWriter(path, spec) as w:
        w.append(Batch([np.arange(T) for _ in range(n)], [gen] * n, {"1": h.reshape(n * T, 32)}, meta))
    return path


@pytest.mark.parametrize("planted", [True, False])
def test_store_level_planted_early_signal_and_null(tmp_path, planted):
    """Known answer through the whole store path (positions, grouped CV, bootstrap): a label planted in the
    states from reply token 2 on is found at k = 2, 4 and not at k = 0, 1 (nothing to read there yet);
    a store whose labels are independent of the states gives chance everywhere."""
    torch.manual_seed(0)
    m = RETModule(d_input=32, window=2, z_dim=4, hidden=16, predictor_hidden=16, source_model="planted",
                  source_layers="1")
    m.centroids = torch.randn(3, 4)
    store = _planted_store(tmp_path / "planted.h5", planted)
    data = extract_features(store, m, leads=(0, 1, 2, 4), progress=False)
    a = evaluate_forecast(data, repeats=1, n_boot=60, progress=False)["auroc"]
    for k in ("0", "1"):
        assert a["raw_pca"][k]["ci_low"] < 0.5 < a["raw_pca"][k]["ci_high"]
        assert a["ret"][k]["ci_low"] < 0.5 < a["ret"][k]["ci_high"]  # causal encoder: the future is unseen
    for k in ("2", "4"):
        if planted:
            assert a["raw_pca"][k]["mean"] > 0.85 and a["raw_pca"][k]["ci_low"] > 0.7
        else:
            assert a["raw_pca"][k]["ci_low"] < 0.5 < a["raw_pca"][k]["ci_high"]
    assert a["design"]["0"]["ci_low"] < 0.5 < a["design"]["0"]["ci_high"]  # templates carry no label here


def test_no_correct_first_answer_is_a_one_line_error_that_keeps_turn1(tiny, tmp_path, capsys, monkeypatch):
    from ret_toolkit.sycophancy import outcomes

    monkeypatch.setattr(traj, "answer_correct", lambda item, reply: False)
    monkeypatch.setattr(outcomes, "answer_correct", lambda item, reply: False)
    out = tmp_path / "fc"
    rc = forecast_cmd.main(["--dataset", "bank", "--model", tiny["dir"], "--macro-ckpt", str(tiny["ckpt"]),
                            "--out", str(out), "--n-items", "6", "--leads", "0", "--max-new-tokens", "2", "--quiet"])
    assert rc == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress log lines
    assert line.startswith("ret-forecast: error: ") and "Traceback" not in line
    assert "none of the 6 first answers was correct" in line and "--n-items" in line
    assert sorted(p.name for p in out.iterdir()) == ["turn1.h5"]
