"""VQ-VAE probe: codebook (EMA, restarts, penalty), blocks from stores, training health, MI validation,
ret-train vq (CLI, DDP), ret-vq-codes, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from activation_cache.errors import InputError
from activation_cache.extraction import ExtractConfig, extract
from activation_cache.models import load_model
from activation_cache.reader import open_store
from ret_toolkit.cli import vq_codes as vq_codes_cmd
from ret_toolkit.cli.train import vq_cli
from ret_toolkit.vq import train as vq_train
from ret_toolkit.info import mutual_information, permutation_test
from ret_toolkit.vq import BlockSpec, Codebook, StoreBlocks
from ret_toolkit.vq.blocks import block_anchors, collate_cells
from ret_toolkit.vq.codebook import usage_entropy_loss
from ret_toolkit.vq.codes import load_vq, read_codes
from ret_toolkit.vq.fit import dataset_codes, fit_vq
from ret_toolkit.vq.synthetic import RandomEmbedding, SymbolSource, embedded_blocks
from file_checks import file_digests, one_error_line
from tiny_models import save_tiny_model

BIN = Path(sys.executable).parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- codebook ----


def test_ema_moves_used_codes_toward_their_mean_and_keeps_unit_norm():
    cb = Codebook(num_codes=4, dim=8, decay=0.5, dead_threshold=0.0)
    before = cb.embed.detach().clone()
    e = F.normalize(before[0] + 0.3 * torch.randn(16, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    codes = torch.zeros(16, dtype=torch.long)
    assert cb.update(e, codes, step=1) == 0
    mean = F.normalize(e.mean(0), dim=0)
    assert F.cosine_similarity(cb.embed[0], mean, dim=0) > F.cosine_similarity(before[0], mean, dim=0)
    torch.testing.assert_close(cb.embed.detach()[1:], before[1:])  # unused codes untouched by EMA
    torch.testing.assert_close(cb.embed.norm(dim=-1), torch.ones(4))


def test_dead_codes_are_reseeded_from_batch_encodings_deterministically():
    def run():
        cb = Codebook(num_codes=8, dim=4, decay=0.5, dead_threshold=0.5, seed=3)
        e = F.normalize(torch.randn(32, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
        codes = torch.zeros(32, dtype=torch.long)  # every encoding picks code 0
        n = sum(cb.update(e, codes, step=s) for s in range(1, 3))
        return cb, e, n

    cb, e, n = run()
    assert n >= 7 and int(cb.restarts) == n
    # every restarted code sits next to one of the batch encodings
    nearest = (F.normalize(cb.embed.detach()[1:], dim=-1) @ e.T).max(dim=1).values
    assert (nearest > 0.99).all()
    cb2, _, _ = run()
    torch.testing.assert_close(cb2.embed, cb.embed, rtol=0, atol=0)


def test_cosine_penalty_and_usage_entropy():
    cb = Codebook(num_codes=4, dim=4)
    with torch.no_grad():
        cb.embed.copy_(torch.eye(4))
    assert float(cb.cosine_penalty()) == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        cb.embed.copy_(torch.ones(4, 4))
    assert float(cb.cosine_penalty()) == pytest.approx(1.0, abs=1e-6)
    spread = torch.eye(4).repeat(8, 1)  # confident and spread over all codes
    collapsed = torch.zeros(32, 4)
    collapsed[:, 0] = 1.0  # confident, all on one code
    assert usage_entropy_loss(spread) < usage_entropy_loss(collapsed) - 1.0


# ---- blocks from a store ----


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Generate-mode stores (all layers) of a tiny GPT-2 (3 layers, d 48) and a tiny Llama (2 layers, d 32)."""
    root = tmp_path_factory.mktemp("vq")
    out = {}
    for arch, n in (("gpt2", 48), ("llama", 16)):
        model_dir = save_tiny_model(arch, root / arch)
        path = root / f"{arch}.h5"
        extract(ExtractConfig(prompts="reasoning", limit=n, out=str(path), model=str(model_dir), generate=10,
                              batch_size=8), loaded=load_model(str(model_dir)), progress=False)
        out[arch] = path
    return out


def test_block_positions_and_anchors(stores):
    prefix = BlockSpec(layers="1-2", start=None, stop=0, max_positions=5)
    assert prefix.positions(12) == (7, 12)
    assert prefix.positions(3) == (0, 3)
    ahead = BlockSpec(layers="-1", start=3, stop=4)
    assert ahead.positions(10) == (13, 14)
    with pytest.raises(InputError, match="empty"):
        BlockSpec(start=2, stop=2)
    with open_store(stores["gpt2"]) as st:
        a = block_anchors(st, [prefix, ahead], "prompt_end")
        n_prompt = [int((~st.generated(s)).sum()) for s in range(st.n_sequences)]
        lengths = st.lengths()
        expect = [(s, n_prompt[s]) for s in range(st.n_sequences) if n_prompt[s] + 4 <= lengths[s]]
        assert a.tolist() == [list(x) for x in expect] and len(a) > 0
        every = block_anchors(st, [ahead], "all", stride=2, sequences=[0, 1])
        assert set(every[:, 0]) == {0, 1} and (every[:, 1] % 2 == 0).all()
        assert ((every[:, 1] + 4) <= lengths[every[:, 0]]).all()
        fixed = block_anchors(st, [prefix], "3")
        assert (fixed[:, 1] == 3).all() and len(fixed) == st.n_sequences
        with pytest.raises(InputError, match="unknown anchor"):
            block_anchors(st, [prefix], "middle")
        with pytest.raises(InputError, match="meta/nope"):
            block_anchors(st, [prefix], "meta:nope")
        with pytest.raises(InputError, match="unknown layer 7"):
            BlockSpec(layers="7").layer_names(st)


def test_store_blocks_hold_the_exact_cells(stores):
    spec = BlockSpec(layers="0,2", start=-3, stop=1)
    with open_store(stores["gpt2"]) as st:
        anchors = block_anchors(st, [spec], "prompt_end")
        ds = StoreBlocks(stores["gpt2"], spec, anchors)
        s, t = anchors[5]
        item = ds[5]
        assert item["cells"].shape == (8, 48)
        assert item["layer"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
        assert item["pos"].tolist() == [-3, -2, -1, 0] * 2
        want = np.concatenate([st.hidden(int(s), 0)[t - 3 : t + 1], st.hidden(int(s), 2)[t - 3 : t + 1]])
        np.testing.assert_array_equal(item["cells"].numpy(), want.astype(np.float32))
    prefix = StoreBlocks(stores["gpt2"], BlockSpec(layers="-1", start=None, stop=0), anchors[:4])
    batch = collate_cells([prefix[i] for i in range(4)])
    lengths = [len(prefix[i]["layer"]) for i in range(4)]
    assert batch["mask"].sum(1).tolist() == lengths and batch["cells"].shape[1] == max(lengths)


# ---- training on synthetic sources with known MI ----


def _synthetic_pair(src: SymbolSource, n: int, seed: int = 0):
    x, y = src.sample(2 * n, np.random.default_rng(seed))
    ex, ey = RandomEmbedding(src.n_symbols, n_cells=4, d=32, seed=1), RandomEmbedding(src.n_symbols, n_cells=2, d=32, seed=2)
    return ((embedded_blocks(x[:n], ex, 3), embedded_blocks(x[n:], ex, 4)),
            (embedded_blocks(y[:n], ey, 5), embedded_blocks(y[n:], ey, 6)))


SMALL = dict(max_epochs=6, batch_size=128, dim=64, depth=1)


def test_vq_code_mi_tracks_true_mi():
    """Quick version of benchmarks/bench_mi_validation.py: three sources, small models."""
    est, null = [], []
    for src in (SymbolSource(8, 1.0), SymbolSource(4, 0.0), SymbolSource(8, 0.0)):  # 0, 2, 3 bits
        (x_tr, x_te), (y_tr, y_te) = _synthetic_pair(src, 2048)
        mx, my = fit_vq(x_tr, **SMALL), fit_vq(y_tr, seed=1, **SMALL)
        cx, cy = dataset_codes(mx, x_te), dataset_codes(my, y_te)
        est.append((src.true_mi_bits, mutual_information(cx, cy, estimator="miller_madow")))
        null.append(permutation_test(cx, cy, n_permutations=100, estimator="miller_madow"))
        assert mx.health_history[-1]["dead_code_fraction"] <= 0.1
        assert mx.health_history[-1]["recon_ev"] > 0.3
    (t0, m0), (t2, m2), (t3, m3) = est
    # independent source: at N = 2048 over 32 x 32 codes the estimator's own floor is ~0.15 bit;
    # the permutation null is how that is told apart from information
    assert null[0]["p_value"] > 0.01 and abs(m0 - null[0]["null_mean"]) < 0.05, (est, null[0])
    assert null[1]["p_value"] < 0.01 and null[2]["p_value"] < 0.01
    assert m0 < m2 < m3, est
    assert abs(m2 - t2) / t2 < 0.15 and abs(m3 - t3) / t3 < 0.15, est


def test_dead_code_restarts_keep_the_codebook_alive():
    """Two symbols, 32 codes: without restarts most codes die; with them (default) almost none."""
    (x_tr, _), _ = _synthetic_pair(SymbolSource(2, 0.0), 2048)
    without = fit_vq(x_tr, dead_threshold=0.0, entropy_weight=0.0, **SMALL)
    default = fit_vq(x_tr, **SMALL)
    dead_without = without.health_history[-1]["dead_code_fraction"]
    dead_default = default.health_history[-1]["dead_code_fraction"]
    assert dead_without >= 0.4 and dead_default <= 0.1, (dead_without, dead_default)
    assert int(default.codebook.restarts) > 0 and int(without.codebook.restarts) == 0


# ---- ret-train vq, ret-vq-codes ----


def _vq_fit(store: Path, root: Path, *extra: str):
    return vq_cli(["fit", f"--data.stores=[{store}]", "--data.block.layers=1-2", "--data.block.max_positions=6",
                   "--data.align_with=[{layers: '-1', start: 2, stop: 3}]", "--data.batch_size=16",
                   "--model.dim=32", "--model.depth=1", "--model.num_codes=8", "--trainer.max_epochs=2",
                   f"--trainer.default_root_dir={root}", f"--trainer.logger.init_args.save_dir={root}",
                   "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *extra])


def test_ret_train_vq_checkpoint_codes_and_reproducibility(stores, tmp_path, capsys):
    cli = _vq_fit(stores["gpt2"], tmp_path / "a")
    ckpt = Path(cli.trainer.checkpoint_callback.last_model_path)
    m = load_vq(ckpt)
    assert m.hparams.source_model and m.hparams.block_info["layer_names"] == ["1", "2"]
    assert m.hparams.n_layers == 2 and m.hparams.d_input == 48 and m.hparams.max_offset == 6
    assert len(m.health_history) == 0  # not saved; metrics.csv has them
    metrics = (ckpt.parent.parent / "metrics.csv").read_text()
    for key in ("code_perplexity", "dead_code_fraction", "recon_ev"):
        assert key in metrics
    # the Python API builds and wires what ret-train builds: same seed, same weights
    run = vq_train([stores["gpt2"]], BlockSpec("1-2", None, 0, 6),
                   data={"align_with": [BlockSpec("-1", 2, 3)], "batch_size": 16},
                   model={"dim": 32, "depth": 1, "num_codes": 8}, max_epochs=2, root_dir=tmp_path / "b", progress=False)
    for p, q in zip(cli.model.parameters(), run.module.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert load_vq(run.checkpoint).hparams.block_info == m.hparams.block_info
    from ret_toolkit.vq.train import WIRED_KEYS, wired_arguments

    assert sorted(wired_arguments(cli.datamodule)) == sorted(WIRED_KEYS)  # what ret-train links is what train() wires
    with pytest.raises(InputError, match="seed of the VQ model come from the data module"):
        vq_train([stores["gpt2"]], model={"seed": 3}, max_epochs=1, root_dir=tmp_path / "c")

    out = tmp_path / "codes.h5"
    assert vq_codes_cmd.main(["--ckpt", str(ckpt), "--store", str(stores["gpt2"]), "--out", str(out), "--quiet"]) == 0
    assert "blocks" in capsys.readouterr().out
    codes = read_codes(out)
    with open_store(stores["gpt2"]) as st:
        expect = block_anchors(st, [BlockSpec("1-2", None, 0, 6), BlockSpec("-1", 2, 3)], "prompt_end")
    assert np.array_equal(np.stack([codes["sequence"], codes["anchor"]], 1), expect)
    assert codes["codes"].min() >= 0 and codes["codes"].max() < 8
    assert json.loads(codes["block"])["max_positions"] == 6
    # two files over different blocks line up row by row when given the same --align range
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    assert vq_codes_cmd.main(["--ckpt", str(ckpt), "--store", str(stores["gpt2"]), "--out", str(a), "--quiet",
                              "--anchor", "all", "--align=-6:3"]) == 0
    assert vq_codes_cmd.main(["--ckpt", str(ckpt), "--store", str(stores["gpt2"]), "--out", str(b), "--quiet",
                              "--anchor", "all", "--start=-2", "--stop", "0", "--align=-6:3"]) == 0
    ra, rb = read_codes(a), read_codes(b)
    assert len(ra["codes"]) > len(codes["codes"])
    assert np.array_equal(ra["sequence"], rb["sequence"]) and np.array_equal(ra["anchor"], rb["anchor"])
    with open_store(stores["gpt2"]) as st:
        assert (ra["anchor"] >= 6).all() and (ra["anchor"] + 3 <= st.lengths()[ra["sequence"]]).all()
    assert json.loads(rb["block"])["start"] == -2


@pytest.fixture(scope="module")
def vq_ckpt(stores, tmp_path_factory) -> Path:
    cli = _vq_fit(stores["gpt2"], tmp_path_factory.mktemp("vq_ckpt"), "--trainer.max_epochs=1")
    return Path(cli.trainer.checkpoint_callback.last_model_path)


def test_vq_codes_with_other_settings_is_refused_and_leaves_the_file(stores, vq_ckpt, tmp_path, capsys):
    out = tmp_path / "codes.h5"
    args = ["--ckpt", str(vq_ckpt), "--store", str(stores["gpt2"]), "--out", str(out), "--quiet"]
    assert vq_codes_cmd.main(args) == 0
    settings = json.loads(read_codes(out)["settings"])
    assert settings["anchor"] == "prompt_end" and settings["block"]["layers"] == "1-2"
    capsys.readouterr()
    before = file_digests(tmp_path)
    for extra, differs in ((["--anchor", "all"], "anchor"), (["--start=-2", "--stop", "0"], "block"),
                           (["--align=-6:3"], "align_with")):
        assert vq_codes_cmd.main(args + extra) == 2
        line = one_error_line(capsys.readouterr().err, "ret-vq-codes")
        assert "other settings" in line and differs in line and "--overwrite" in line, line
        assert file_digests(tmp_path) == before
    (tmp_path / "other.h5").write_text("not codes\n")
    before = file_digests(tmp_path)
    assert vq_codes_cmd.main([*args[:-2], str(tmp_path / "other.h5"), "--quiet"]) == 2
    assert "not a VQ codes file" in one_error_line(capsys.readouterr().err)
    assert file_digests(tmp_path) == before
    # the same settings spelled out are the same run; --overwrite replaces, through a temporary file
    assert vq_codes_cmd.main(args + ["--anchor", "prompt_end"]) == 0
    assert vq_codes_cmd.main(args + ["--anchor", "all", "--overwrite"]) == 0
    assert json.loads(read_codes(out)["settings"])["anchor"] == "all"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.h5", "other.h5"]


def test_print_config_has_block_keys(capsys):
    with pytest.raises(SystemExit):
        vq_cli(["fit", "--print_config"], run=True)
    text = capsys.readouterr().out
    for key in ("block:", "max_positions:", "align_with:", "anchor:", "num_codes:", "dead_threshold:", "entropy_weight:"):
        assert key in text, key


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=600, env=env)


def test_bad_input_is_one_line_exit_2(stores, tmp_path, capsys):
    from ret_toolkit.cli import train as train_cmd
    from ret_toolkit.cli import vq_codes as codes_cmd

    cli = _vq_fit(stores["gpt2"], tmp_path / "run")
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    cases = [
        (("ret-vq-codes", "--ckpt", ckpt, "--store", str(stores["llama"]), "--out", str(tmp_path / "x.h5")), "trained on"),
        (("ret-vq-codes", "--ckpt", str(tmp_path / "nope.ckpt"), "--store", str(stores["gpt2"]), "--out", str(tmp_path / "x.h5")), "not found"),
        (("ret-vq-codes", "--ckpt", str(stores["gpt2"]), "--store", str(stores["gpt2"]), "--out", str(tmp_path / "x.h5")), "not a loadable VQ checkpoint"),
        (("ret-vq-codes", "--ckpt", ckpt, "--store", str(stores["gpt2"]), "--out", str(tmp_path / "x.h5"), "--layers", "0"), "trained on 2"),
        (("ret-vq-codes", "--ckpt", ckpt, "--store", str(stores["gpt2"]), "--out", str(tmp_path / "x.h5"), "--align", "5"), "START:STOP"),
        (("ret-train", "vq", "fit", f"--data.stores=[{stores['gpt2']}]", "--data.block.layers=9"), "unknown layer 9"),
        (("ret-train", "vq", "fit", f"--data.stores=[{stores['gpt2']}]", "--data.block.start=50", "--data.block.stop=60",
          f"--trainer.default_root_dir={tmp_path}"), "no anchor"),
        (("ret-train", "vq", "fit", f"--data.stores=[{stores['gpt2']}]", "--model.no_such_key=1"), "no_such_key"),
        (("ret-vq-codes", "--ckpt", ckpt, "--store", str(stores["gpt2"]), "--out", str(tmp_path / "x.h5"),
          "--batch-size", "0"), "--batch-size and --anchor-stride must be >= 1"),
        (("ret-vq-codes", "--ckpt", ckpt, "--store", str(stores["gpt2"]), "--out", str(tmp_path / "x.h5"),
          "--start", "two"), "expected an integer offset"),
        (("ret-vq-codes", "--ckpt", ckpt, "--store", str(stores["gpt2"]), "--out", str(tmp_path / "x.h5"),
          "--start", "500", "--stop", "501", "--quiet"), "nothing written"),
    ]
    mains = {"ret-vq-codes": codes_cmd.main, "ret-train": train_cmd.main}
    for i, (args, words) in enumerate(cases):
        if i in (0, 5):  # one real console-script process per command: exit status, no traceback
            r = _run(*args)
            rc, err = r.returncode, r.stderr
        else:  # the rest in-process (the same run_cli path, without ~7 s of imports each)
            capsys.readouterr()
            rc = mains[args[0]](list(args[1:]))
            err = capsys.readouterr().err
        lines = [x for x in err.strip().splitlines() if x.strip()]
        assert rc == 2, (args, err[-2000:])
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in err, (args, err[-2000:])
    assert not (tmp_path / "x.h5").exists()


def test_ddp_two_processes_keep_identical_codebooks(stores, tmp_path):
    """Under strategy=ddp the EMA codebook, its usage statistics and restarts stay identical on both ranks."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    probe = tmp_path / "probe.json"
    r = subprocess.run([
        str(BIN / "ret-train"), "vq", "fit", f"--data.stores=[{stores['gpt2']}]", "--data.block.layers=-1",
        "--data.block.start=-2", "--data.block.stop=1", "--data.anchor=all", "--data.batch_size=32",
        "--model.dim=32", "--model.depth=1", "--model.num_codes=16", "--model.dead_threshold=1.0",
        "--trainer.max_epochs=2", "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false", "--trainer.callbacks+=ddp_probe.SameWeightsProbe",
        f"--trainer.callbacks.out={probe}",
    ], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(probe.read_text())
    assert seen["world"] == 2 and seen["different_batches"]
    assert seen["same_parameters"] and seen["same_buffers"], seen
    m = load_vq(next(tmp_path.rglob("last.ckpt")))
    assert int(m.codebook.restarts) > 0  # the restart path ran under DDP too
