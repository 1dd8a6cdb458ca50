"""ret-train macro (LightningCLI, DDP), macrostates, evaluation contract, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from activation_cache.errors import InputError
from activation_cache.extraction import ExtractConfig, extract
from activation_cache.models import load_model
from activation_cache.reader import open_store
from ret_toolkit.cli import macro as macro_cmd
from ret_toolkit.cli import train as train_cmd
from ret_toolkit.cli.train import macro_cli
from ret_toolkit.macro.assign import load_ret
from ret_toolkit.macro.datamodule import TrajectoryDataModule
from ret_toolkit.storeset import split_sequences
from ret_toolkit.macro.pipeline import build_macrostates, checkpoint_split
from file_checks import file_digests, one_error_line
from tiny_models import save_tiny_model

BIN = Path(sys.executable).parent
METHODS = ("ret", "kmeans_raw", "kmeans_pca", "kmeans_window")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A generate-mode store of a tiny Llama (40 prompts) and one of a tiny GPT-2."""
    root = tmp_path_factory.mktemp("macro")
    out = {}
    for arch in ("llama", "gpt2"):
        model_dir = save_tiny_model(arch, root / arch)
        loaded = load_model(str(model_dir))
        path = root / f"{arch}.h5"
        extract(ExtractConfig(prompts="reasoning", limit=40, out=str(path), model=str(model_dir), generate=12,
                              batch_size=8), loaded=loaded, progress=False)
        out[arch] = path
    return out


def _fit(store: Path, root: Path, *extra: str):
    return macro_cli(["fit", f"--data.stores=[{store}]", "--data.layers=1", "--data.window=4", "--data.max_horizon=2",
                      "--data.batch_size=64", "--model.hidden=32", "--model.predictor_hidden=32", "--model.z_dim=4",
                      "--model.collapse_threshold=1.5", "--trainer.max_epochs=2", f"--trainer.default_root_dir={root}",
                      f"--trainer.logger.init_args.save_dir={root}", "--trainer.enable_progress_bar=false",
                      "--trainer.enable_model_summary=false", *extra])


@pytest.fixture(scope="module")
def trained(stores, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cli = _fit(stores["llama"], root)
    return Path(cli.trainer.checkpoint_callback.last_model_path), cli


def test_the_checkpoint_records_its_split_and_the_pipeline_reads_it_back(trained, stores, tmp_path):
    ckpt, cli = trained
    data = torch.load(ckpt, map_location="cpu", weights_only=True)
    recorded = data["TrajectoryDataModule"]["splits"][str(Path(stores["llama"]).resolve())]
    tr, va = cli.datamodule.splits[0]
    assert recorded == {"train": tr.tolist(), "val": va.tolist()}
    n = len(tr) + len(va)
    got = checkpoint_split(ckpt, stores["llama"], n)
    assert [g.tolist() for g in got] == [tr.tolist(), va.tolist()]
    # known answer: a planted split is what is read back (it is not drawn again from the seed)
    planted = {"train": list(range(2, n)), "val": [0, 1]}
    data["TrajectoryDataModule"]["splits"][str(Path(stores["llama"]).resolve())] = planted
    torch.save(data, tmp_path / "planted.ckpt")
    got = checkpoint_split(tmp_path / "planted.ckpt", stores["llama"], n)
    assert [g.tolist() for g in got] == [planted["train"], planted["val"]]
    # a store of fewer sequences than the split names is refused in one line
    with pytest.raises(InputError, match="split names sequences up to"):
        checkpoint_split(tmp_path / "planted.ckpt", stores["llama"], 2)
    # an older checkpoint without the record: drawn again from val_fraction / split_seed, the same split
    del data["TrajectoryDataModule"]
    torch.save(data, tmp_path / "old.ckpt")
    assert [g.tolist() for g in checkpoint_split(tmp_path / "old.ckpt", stores["llama"], n)] == [tr.tolist(),
                                                                                               va.tolist()]


def test_resuming_with_another_split_is_refused(trained, stores, tmp_path):
    ckpt, _ = trained
    with pytest.raises(InputError, match="another train/validation split"):
        _fit(stores["llama"], tmp_path, "--data.split_seed=7", "--trainer.max_epochs=3", f"--ckpt_path={ckpt}")


def test_split_is_by_sequence_and_seeded():
    tr, va = split_sequences(50, 0.2, seed=3)
    assert len(va) == 10 and len(tr) == 40 and not set(tr) & set(va)
    assert np.array_equal(va, split_sequences(50, 0.2, seed=3)[1])
    assert not np.array_equal(va, split_sequences(50, 0.2, seed=4)[1])


def test_datamodule_windows_never_cross_split(stores):
    dm = TrajectoryDataModule([str(stores["llama"])], layers="1", window=4, max_horizon=2, batch_size=16)
    dm.setup("fit")
    with open_store(stores["llama"]) as st:
        off = st.offsets
    train, val = dm.splits[0]
    seq_of_row = np.searchsorted(off, np.arange(off[-1]), side="right") - 1
    tr_ds, va_ds = dm.train_set.datasets[0], dm.val_set.datasets[0]
    assert set(seq_of_row[tr_ds.starts]) <= set(train) and set(seq_of_row[va_ds.starts]) <= set(val)
    # window end stays in the same sequence
    assert np.array_equal(seq_of_row[tr_ds.starts], seq_of_row[tr_ds.starts + 5])
    mean, std = dm.standardization
    assert mean.shape == (dm.n_features,) and torch.isfinite(std).all()


def test_fit_writes_checkpoint_with_stats_and_provenance(trained):
    ckpt, cli = trained
    assert ckpt.is_file()
    m = load_ret(ckpt)
    assert m.hparams.source_model.endswith("llama") and m.hparams.source_layers == ["1"]
    assert not torch.allclose(m.h_std, torch.ones_like(m.h_std))  # statistics came from the store
    assert (ckpt.parent.parent / "metrics.csv").is_file()
    assert cli.model.effective_rank_history and all(r > 1.5 for _, r in cli.model.effective_rank_history)


def test_fit_is_reproducible(stores, tmp_path):
    a = _fit(stores["llama"], tmp_path / "a", "--trainer.max_epochs=1")
    b = _fit(stores["llama"], tmp_path / "b", "--trainer.max_epochs=1")
    for (k, va), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(va, vb), k


def test_python_train_matches_ret_train_and_keeps_provenance(stores, tmp_path):
    """ret_toolkit.macro.train builds what ret-train macro fit builds: same weights, same wiring."""
    from activation_cache.errors import InputError
    from ret_toolkit.macro import train

    cli = _fit(stores["llama"], tmp_path / "cli", "--trainer.max_epochs=1")
    run = train([stores["llama"]], layers="1", data={"window": 4, "max_horizon": 2, "batch_size": 64},
                model={"hidden": 32, "predictor_hidden": 32, "z_dim": 4, "collapse_threshold": 1.5},
                max_epochs=1, root_dir=tmp_path / "py", progress=False)
    for (k, va), (_, vb) in zip(cli.model.state_dict().items(), run.module.state_dict().items()):
        assert torch.equal(va, vb), k
    assert run.checkpoint.is_file() and run.checkpoint.parent.parent.name == "version_0"
    m = load_ret(run.checkpoint)
    assert (m.hparams.source_layers, m.hparams.window, m.hparams.max_horizon) == (["1"], 4, 2)
    assert m.hparams.source_model == cli.model.hparams.source_model
    from ret_toolkit.macro.train import WIRED_KEYS, wired_arguments

    assert sorted(wired_arguments(cli.datamodule)) == sorted(WIRED_KEYS)  # what ret-train links is what train() wires
    with pytest.raises(InputError, match="window of the RET encoder come from the data module"):
        train([stores["llama"]], layers="1", model={"window": 3}, max_epochs=1, root_dir=tmp_path / "bad")


def test_resume_from_ckpt_path(trained, stores, tmp_path):
    ckpt, _ = trained
    cli = _fit(stores["llama"], tmp_path, "--trainer.max_epochs=3", f"--ckpt_path={ckpt}")
    assert cli.trainer.current_epoch == 3 and cli.trainer.global_step > 0


def test_macrostates_contract(trained, stores, tmp_path):
    ckpt, _ = trained
    res = build_macrostates(ckpt, stores["llama"], tmp_path, n_macrostates=5, progress=False)
    m = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("n_train_sequences", "n_heldout_sequences", "k", "effective_rank"):
        assert isinstance(m[key], (int, float))
    assert m["n_train_sequences"] + m["n_heldout_sequences"] == 40 and m["k"] == 5
    for name in METHODS:
        assert set(m["temporal_consistency"][name]) >= {"p_same_next", "mean_run_length"}
        assert 0 <= m["token_mi_bits"][name] and 0 < m["group_occupancy_max"][name] <= 1
    assert set(m["closure_gap"]) >= {"ret", "kmeans_pca", "kmeans_window"}
    s = res.summary
    assert s["k"] == 5 and len(s["groups"]) == 5
    assert abs(sum(g["share"] for g in s["groups"]) - 1) < 1e-9
    # groups are streamed to HDF5, one per token, and the checkpoint now carries centroids
    import h5py
    with h5py.File(res.macro_file) as f, open_store(stores["llama"]) as st:
        assert f["group"].shape == (st.n_tokens,) and f["z"].shape == (st.n_tokens, 4)
        assert f["group"][:].max() < 5
        pairs = sum(n - 1 for n in st.lengths())
    assert np.array(s["transition_counts"]).sum() == pairs
    assert load_ret(res.checkpoint).centroids.shape == (5, 4)


def test_ret_macro_cli_and_report(trained, stores, tmp_path, capsys):
    ckpt, _ = trained
    args = ["--ckpt", str(ckpt), "--store", str(stores["llama"]), "--out", str(tmp_path / "o"), "--quiet"]
    rc = macro_cmd.main([*args, "--n-macrostates", "4"])
    assert rc == 0
    html = (tmp_path / "o" / "report.html").read_text()
    assert "Trajectories" in html and "P(same next)" in html
    assert "held-out P(same next)" in capsys.readouterr().out
    # another number of macrostates into the same --out (through the deprecated --k): refused before
    # anything is written
    before = file_digests(tmp_path)
    assert macro_cmd.main([*args, "--k", "3"]) == 2
    deprecation, err = capsys.readouterr().err.split("\n", 1)
    assert deprecation == "ret-macro: --k is deprecated and will be removed; use --n-macrostates"
    line = one_error_line(err, "ret-macro")
    assert "other settings" in line and "k" in line and "--overwrite" in line, line
    assert file_digests(tmp_path) == before


def test_default_root_dir_alone_moves_logs_and_checkpoints(stores, tmp_path):
    cli = macro_cli(["fit", f"--data.stores=[{stores['llama']}]", "--data.layers=1", "--data.window=4",
                     "--data.max_horizon=2", "--data.batch_size=64", "--model.hidden=16", "--model.predictor_hidden=16",
                     "--model.z_dim=4", "--model.collapse_threshold=1.5", "--trainer.max_epochs=1",
                     f"--trainer.default_root_dir={tmp_path / 'mine'}", "--trainer.enable_progress_bar=false"])
    ckpt = Path(cli.trainer.checkpoint_callback.last_model_path)
    assert ckpt == tmp_path / "mine" / "ret" / "version_0" / "checkpoints" / "last.ckpt" and ckpt.is_file()
    assert (tmp_path / "mine" / "ret" / "version_0" / "metrics.csv").is_file()


def test_second_fit_refused_by_bad_input_leaves_the_runs_directory(trained, stores, capsys):
    ckpt, _ = trained
    runs = ckpt.parents[3]  # <root>/ret/version_0/checkpoints/last.ckpt
    assert (runs / "ret" / "version_0" / "metrics.csv").is_file(), runs
    before = file_digests(runs)
    rc = train_cmd.main(["macro", "fit", f"--data.stores=[{stores['llama']}]", "--data.layers=embed",
                         "--trainer.max_epochs=1", f"--trainer.default_root_dir={runs}",
                         f"--trainer.logger.init_args.save_dir={runs}", "--trainer.enable_progress_bar=false"])
    assert "not in the store" in _one_line_error(capsys, rc)
    assert file_digests(runs) == before


def test_ret_demo_with_other_settings_is_refused_before_writing(stores, tmp_path, capsys, monkeypatch):
    from activation_cache.outputs import OutputDir
    from ret_toolkit.cli import demo as demo_cmd
    from ret_toolkit.demo import DemoInputs, DemoSettings, run_demo

    model = str(stores["llama"].parent / "llama")
    out = tmp_path / "demo"
    small = DemoSettings(n_prompts=8, generate=4, epochs=1, batch_size=4, n_macrostates=2, layer="middle")
    staged, stage = [], OutputDir.stage
    monkeypatch.setattr(OutputDir, "stage", lambda self, name: (staged.append(name), stage(self, name))[1])
    metrics = run_demo(DemoInputs(out=str(out), model=model), small, progress=False).metrics
    assert metrics["k"] == 2 and (out / "report.html").is_file() and (out / "trajectories.h5").is_file()
    # one pass: each file staged once, the demo's own block already in the metrics
    assert sorted(n for n in staged if n.endswith((".json", ".html"))) == ["metrics.json", "report.html",
                                                                          "summary.json"], staged
    assert json.loads((out / "metrics.json").read_text())["demo"]["settings"]["n_macrostates"] == 2
    assert not list(out.rglob("*.lock")) and not list(out.glob(".staging-*"))
    capsys.readouterr()
    before = file_digests(tmp_path)
    assert demo_cmd.main(["--out", str(out), "--quick", "--model", model, "--quiet"]) == 2
    line = one_error_line(capsys.readouterr().err, "ret-demo")
    assert "other settings" in line and "--overwrite" in line, line
    assert file_digests(tmp_path) == before


def _one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_store_from_another_model_is_refused(trained, stores, tmp_path, capsys):
    ckpt, _ = trained
    rc = macro_cmd.main(["--ckpt", str(ckpt), "--store", str(stores["gpt2"]), "--out", str(tmp_path), "--quiet"])
    assert "trained on" in _one_line_error(capsys, rc)


def test_empty_store_is_refused(stores, tmp_path, capsys):
    from activation_cache.writer import StoreSpec, StoreWriter

    empty = tmp_path / "empty.h5"
    with StoreWriter(empty, StoreSpec("m", "r", 8, 2, ["1"], {"x": 1})):
        pass
    rc = train_cmd.main(["macro", "fit", f"--data.stores=[{empty}]", f"--trainer.default_root_dir={tmp_path}"])
    assert "no committed sequences" in _one_line_error(capsys, rc)


def test_missing_checkpoint_and_bad_k(stores, tmp_path, capsys):
    rc = macro_cmd.main(["--ckpt", str(tmp_path / "nope.ckpt"), "--store", str(stores["llama"]), "--out", str(tmp_path)])
    assert "not found" in _one_line_error(capsys, rc)


def test_unknown_config_key_is_an_error(stores, tmp_path):
    r = subprocess.run([str(BIN / "ret-train"), "macro", "fit", f"--data.stores=[{stores['llama']}]", "--model.no_such_key=3",
                        f"--trainer.default_root_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "no_such_key" in r.stderr and "Traceback" not in r.stderr


def test_print_config_is_complete():
    r = subprocess.run([str(BIN / "ret-train"), "macro", "fit", "--print_config"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for key in ("z_dim:", "ema_start:", "var_weight:", "collapse_threshold:", "stores:", "window:", "max_epochs:", "seed_everything:"):
        assert key in r.stdout


def test_ddp_two_cpu_processes(stores, tmp_path):
    """`ret-train macro` unchanged under strategy=ddp with 2 gloo processes."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    probe = tmp_path / "probe.json"
    r = subprocess.run([
        str(BIN / "ret-train"), "macro", "fit", f"--data.stores=[{stores['llama']}]", "--data.layers=1",
        "--data.window=4", "--data.max_horizon=2", "--data.batch_size=32", "--model.hidden=32", "--model.predictor_hidden=32",
        "--model.z_dim=4", "--model.collapse_threshold=1.5", "--trainer.max_epochs=2", "--trainer.accelerator=cpu",
        "--trainer.strategy=ddp", "--trainer.devices=2", f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+=ddp_probe.SameWeightsProbe", f"--trainer.callbacks.out={probe}",
    ], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpts = list(tmp_path.rglob("last.ckpt"))
    assert len(ckpts) == 1
    m = load_ret(ckpts[0])
    assert all(torch.isfinite(p).all() for p in m.target.parameters())
    # both ranks ended with bit-identical online and EMA target weights, and saw different data
    seen = json.loads(probe.read_text())
    assert seen["world"] == 2 and seen["same_online"] and seen["same_target"] and seen["different_batches"]
    metrics = (ckpts[0].parent.parent / "metrics.csv").read_text()
    assert "effective_rank" in metrics


def test_package_top_exposes_the_main_verbs_lazily():
    """``import ret_toolkit`` gives the verbs of the main job, each the very function of its subpackage."""
    code = ("import sys, ret_toolkit as r; lazy = 'ret_toolkit.macro.train' not in sys.modules; "
            "from ret_toolkit.macro import train; from activation_cache.extraction import extract; "
            "assert r.train_ret is train and r.extract is extract and 'steer' in dir(r); "
            "print(lazy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"  # nothing heavy is imported before a verb is used
    import ret_toolkit

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ret_toolkit.nope
