"""Planning: task batches, the small-GPT LightningModule (MTP, export), ret-train task, the analyses and ret-planning."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from activation_cache.extraction import ExtractConfig, extract
from activation_cache.models import load_model
from activation_cache.reader import open_store
from ret_toolkit.cli import planning as planning_cmd
from ret_toolkit.cli.train import task_cli
from ret_toolkit.planning import PlanningInputs, ProbeSettings, TaskDataModule, TaskLM
from ret_toolkit.planning.datamodule import export_task_model
from ret_toolkit.planning.analysis import layer_groups, path_variables
from ret_toolkit.planning.run import run_planning, sentences
from ret_toolkit.tasks import write_prompts_jsonl

BIN = Path(sys.executable).parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_loss_mask_covers_the_answer_for_paths_and_everything_for_grammar():
    dm = TaskDataModule("pathfinding", n_train=8, n_val=4)
    dm.setup()
    s, enc = dm.train_samples[0], dm.train_set[0]
    n_prompt = len(dm.tokenizer(s.prompt)["input_ids"])
    assert enc["input_ids"][0] == dm.bos_id and enc["input_ids"][-1] == dm.eos_id
    assert enc["loss_mask"] == [0] * n_prompt + [1] * (len(enc["input_ids"]) - n_prompt)
    assert dm.tokenizer.decode(enc["input_ids"][n_prompt:-1]) == s.target
    g = TaskDataModule("grammar", n_train=8, n_val=4)
    g.setup()
    assert g.train_set[0]["loss_mask"] == [0] + [1] * (len(g.train_set[0]["input_ids"]) - 1)
    batch = dm.collate(dm.train_set[:3])
    lengths = [len(x["input_ids"]) for x in dm.train_set[:3]]
    assert batch["input_ids"].shape == (3, max(lengths)) and batch["attention_mask"].sum(1).tolist() == lengths


def test_grammar_completions_are_sampled_and_paths_greedy():
    from ret_toolkit.planning.decode import complete, decoding_of, task_accuracy_of

    torch.manual_seed(0)
    g = TaskDataModule("grammar", n_train=8, n_val=40)
    g.setup()
    m = TaskLM(vocab_size=g.vocab_size, bos_id=g.bos_id, eos_id=g.eos_id, pad_id=g.pad_id, n_layer=1, n_embd=16,
               n_head=2)
    prompts = [s.prompt for s in g.val_samples[:8]]
    a = complete(m.model, g.tokenizer, prompts, 6, sample=True, seed=1)
    assert a == complete(m.model, g.tokenizer, prompts, 6, sample=True, seed=1)  # seeded
    assert a != complete(m.model, g.tokenizer, prompts, 6, sample=True, seed=2)
    greedy = complete(m.model, g.tokenizer, prompts, 6)
    assert greedy == complete(m.model, g.tokenizer, prompts, 6)
    assert decoding_of(g.task) == "sample" and decoding_of(TaskDataModule("pathfinding").task) == "greedy"
    acc = task_accuracy_of(m.model, g.tokenizer, g.task, g.val_samples)
    assert acc["n"] == 40 and acc["decoding"] == "sample" and 0.0 <= acc["accuracy"] < 0.5  # untrained


def test_training_lowers_the_loss_and_mtp_heads_train_too():
    torch.manual_seed(0)
    dm = TaskDataModule("grammar", n_train=256, n_val=32, batch_size=32)
    dm.setup()
    m = TaskLM(vocab_size=dm.vocab_size, bos_id=dm.bos_id, eos_id=dm.eos_id, pad_id=dm.pad_id, n_layer=2, n_embd=32,
               n_head=2, mtp_heads=2, lr=3e-3, warmup_steps=5)
    batch = dm.collate(dm.train_set[:64])
    before = m.losses(batch)
    assert set(before) == {"ntp", "mtp"}
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(60):
        loss = sum(m.losses(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = m.losses(batch)
    assert after["ntp"] < 0.75 * before["ntp"] and after["mtp"] < 0.9 * before["mtp"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-layer path-finding GPT from `ret-train task fit` (one short epoch: structure, not skill)."""
    root = tmp_path_factory.mktemp("task")
    cli = task_cli(["fit", "--data.task=pathfinding", "--data.n_train=512", "--data.n_val=64", "--data.batch_size=64",
                    "--model.n_layer=2", "--model.n_embd=32", "--model.n_head=2", "--model.eval_samples=32",
                    "--trainer.max_epochs=1", f"--trainer.default_root_dir={root}",
                    f"--trainer.logger.init_args.save_dir={root}", "--trainer.enable_progress_bar=false",
                    "--trainer.enable_model_summary=false"])
    assert len(cli.model.accuracy_history) == 1 and 0.0 <= cli.model.accuracy_history[0] <= 1.0
    model_dir = export_task_model(cli.model, cli.datamodule.tokenizer, root / "model")
    return model_dir, cli


def test_train_task_builds_what_ret_train_task_builds(trained, tmp_path):
    """ret_toolkit.planning.train_task: the same wiring, weights and exported model as `ret-train task fit`."""
    from activation_cache.errors import InputError
    from ret_toolkit.planning import train_task

    _, cli = trained
    run = train_task("pathfinding", data={"n_train": 512, "n_val": 64, "batch_size": 64},
                     model={"n_layer": 2, "n_embd": 32, "n_head": 2, "eval_samples": 32}, max_epochs=1,
                     root_dir=tmp_path, progress=False)
    for (k, a), (_, b) in zip(cli.model.state_dict().items(), run.module.state_dict().items()):
        assert torch.equal(a, b), k
    assert run.accuracy == cli.model.accuracy_history and (run.model_dir / "config.json").is_file()
    assert run.checkpoint.is_file()
    from ret_toolkit.planning.train import WIRED_KEYS, wired_arguments

    assert sorted(wired_arguments(cli.datamodule)) == sorted(WIRED_KEYS)  # what ret-train links is what train_task() wires
    with pytest.raises(InputError, match="vocab_size of the task model come from the data module"):
        train_task(model={"vocab_size": 7}, max_epochs=1, root_dir=tmp_path / "bad")


def test_exported_model_loads_and_traces_like_any_model(trained, tmp_path):
    model_dir, cli = trained
    loaded = load_model(str(model_dir))
    assert loaded.arch.n_layers == 2
    ids = cli.datamodule.collate(cli.datamodule.val_set[:2])
    with torch.no_grad():
        a = loaded.model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
        b = cli.model.model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("reverse", [False, True])
def test_path_variables_read_the_models_choice(trained, tmp_path, reverse):
    """On a forward-mode store of the reference answers, the 'choice' is the sample's target path
    (reversed answers too: their first hop is the goal's predecessor)."""
    from ret_toolkit.tasks import PathTask

    model_dir, cli = trained
    samples = PathTask(reverse=reverse).samples(12, seed=5)
    prompts = tmp_path / "p.jsonl"
    write_prompts_jsonl(sentences(samples), prompts)
    store = tmp_path / "s.h5"
    extract(ExtractConfig(prompts=str(prompts), out=str(store), model=str(model_dir), batch_size=8), progress=False)
    tok = cli.datamodule.tokenizer
    anchors = np.array([[i, len(tok(s.prompt)["input_ids"])] for i, s in enumerate(samples)])
    v = path_variables(str(store), anchors, n_buckets=8)
    assert v["choice"].tolist() == [int(s.meta["target_path"]) for s in samples]
    for s, u, d in zip(samples, v["unused"], v["decoy"]):
        other, decoy = (json.loads(s.meta[k]) for k in ("path1" if s.meta["target_path"] == 2 else "path2", "decoy"))
        if reverse:
            other, decoy = other[::-1], decoy[::-1]
        assert u == int(other[1][1:]) % 8 and d == int(decoy[1][1:]) % 8


def test_layer_groups():
    assert layer_groups(4, 2) == ["0-1", "2-3"]
    assert layer_groups(30, 3) == ["0-9", "10-19", "20-29"]
    assert layer_groups(2, 3) == ["0-0", "1-1"]


def test_run_planning_writes_every_analysis_with_cis_and_nulls(trained, tmp_path):
    model_dir, _ = trained
    s = ProbeSettings(epochs=1, batch_size=64, num_codes=8, dim=16, n_permutations=10, n_boot=10, history_blocks=2)
    job = PlanningInputs(model=str(model_dir), task="pathfinding", out=str(tmp_path / "plan"), n=160)
    r = run_planning(job, s, progress=False)
    saved = json.loads((tmp_path / "plan" / "planning.json").read_text())
    assert saved["accuracy"]["n"] == 160 and (tmp_path / "plan" / "planning.html").stat().st_size > 10_000
    curve = r["horizon"]["curve"]
    assert [c["tau"] for c in curve] == list(range(1, len(curve) + 1)) and 1 <= len(curve) <= 6
    b = r["branch"]
    assert b["n"] + b["n_invalid_first_hop"] == 160 and b["prefix_block"]["stop"] == 1  # position T included
    assert b["min_answers"] == 2 * 8 * 8
    if b["n"] >= b["min_answers"]:
        p = b["paired"]
        assert p["ci_low"] <= p["difference"] <= p["ci_high"] and 0 < p["p_value"] <= 1
    else:  # too few answers for the table: no test rather than a meaningless one
        assert b["paired"] is None and "the test needs 128" in b["note"]
    given = [c["given_tokens"] for c in curve]
    assert all(g["n"] == c["n"] and g["n_strata"] >= 1 for g, c in zip(given, curve))
    for c in curve + given + r["history"]["cells"]:
        assert c["ci_low"] <= c["ci_high"] and "null_mean" in c and 0 < c["p_value"] <= 1
    assert "tau= 1" in r.table() and "given tokens" in r.table()
    assert len(r["history"]["cells"]) == 2 * 2  # layer groups x earlier blocks
    with open_store(tmp_path / "plan" / "trajectories.h5") as st:
        assert st.n_sequences == 160 and st.generated(0).any()


def _checksums(root: Path) -> dict[str, str | None]:
    """Every path under ``root`` (hidden ones too): sha256 of files, None for folders."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def test_ret_planning_refuses_other_settings_before_writing(trained, tmp_path, capsys, monkeypatch):
    model_dir, _ = trained
    # Smaller probes than the CLI builds (it has no flags for these), so three runs stay quick.
    monkeypatch.setattr("ret_toolkit.planning.analysis.ProbeSettings",
                        functools.partial(ProbeSettings, num_codes=8, dim=16, batch_size=64, history_blocks=1))
    out = tmp_path / "plan"
    base = ["--model", str(model_dir), "--task", "pathfinding", "--out", str(out), "--n", "100", "--epochs", "1",
            "--max-tau", "3", "--n-permutations", "5", "--n-boot", "5", "--quiet"]
    assert planning_cmd.main(base) == 0
    before = _checksums(out)
    assert set(before) == {"trajectories.h5", "planning.json", "planning.html", "ret_runs.json"}  # no prompts.jsonl
    capsys.readouterr()

    def no_model(*a, **kw):
        raise AssertionError("the model was loaded before the output directory was checked")

    with monkeypatch.context() as m:
        m.setattr("ret_toolkit.planning.run.load_model", no_model)
        rc = planning_cmd.main(base + ["--n-permutations", "6"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "holds a ret-planning run with other settings (differs in probe)" in err[0] and "--overwrite" in err[0]
    assert _checksums(out) == before

    assert planning_cmd.main(base) == 0  # the same settings: rerun
    assert set(_checksums(out)) == set(before)
    assert planning_cmd.main(base + ["--n-permutations", "6", "--overwrite"]) == 0
    assert json.loads((out / "planning.json").read_text())["settings"]["n_permutations"] == 6
    runs = json.loads((out / "ret_runs.json").read_text())
    assert runs["ret-planning"]["settings"]["probe"]["n_permutations"] == 6
    assert set(_checksums(out)) == set(before)  # no staging folder, lock or prompt file left


def test_ret_planning_bad_model_is_one_line_exit_2(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([str(BIN / "ret-planning"), "--model", str(tmp_path / "nope"), "--task", "pathfinding",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300, env=env)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert planning_cmd.parser().parse_args(["--model", "m", "--task", "grammar", "--out", "o"]).n == 2000


def test_ret_planning_needs_at_least_one_sample(tmp_path, capsys):
    rc = planning_cmd.main(["--model", str(tmp_path), "--task", "grammar", "--out", str(tmp_path / "o"), "--n", "0"])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert rc == 2 and len(err) == 1 and "--n must be >= 1, got 0" in err[0], err
    assert not (tmp_path / "o").exists()


def test_a_task_with_an_unknown_decoding_is_a_clear_error():
    from ret_toolkit.planning.decode import decoding_of

    task = TaskDataModule("pathfinding").task
    task.decoding = "beam"
    with pytest.raises(ValueError, match="decoding 'beam'"):
        decoding_of(task)
