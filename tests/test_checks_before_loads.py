"""What can be checked without the model is checked before the model is loaded (or a GGUF converted),
and a refused or failed run leaves nothing behind that blocks its fix."""

from __future__ import annotations

import lightning
import pytest
import torch

import activation_cache.models as models
import ret_toolkit.cli.forecast as forecast_cmd
import ret_toolkit.cli.steer as steer_cmd
from activation_cache.errors import InputError, cli_words, option
from activation_cache.outputs import OutputDir
from activation_cache.quiet import gguf_conversion_bar
from ret_toolkit.macro.module import RETModule
from ret_toolkit.steering import SteeringVector
from tiny_models import save_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny_model("llama", tmp_path_factory.mktemp("before_load") / "tiny-llama"))


@pytest.fixture
def no_load(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(models, "_from_pretrained", refuse)


def error_line(capsys, prog: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"{prog}: error: "), err
    return err


def test_steer_refuses_a_vector_of_another_model_before_loading(model_dir, tmp_path, capsys, no_load):
    SteeringVector({0: torch.ones(32)}, model="some-other-model").save(tmp_path / "v")
    assert steer_cmd.main(["--model", model_dir, "--vector", str(tmp_path / "v"), "--prompt", "hi"]) == 2
    line = error_line(capsys, "ret-steer")
    assert "built for model 'some-other-model'" in line and "run with --model some-other-model" in line
    assert "model_name=" not in line  # the Python keyword is not the CLI's word


def test_forecast_refuses_a_checkpoint_of_another_model_before_loading_and_writes_nothing(model_dir, tmp_path, capsys,
                                                                                         no_load):
    m = RETModule(d_input=32, window=4, z_dim=4, hidden=16, predictor_hidden=16, source_model="some-other-model",
                  source_layers="1")
    ckpt = tmp_path / "ret_macro.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams),
                "pytorch-lightning_version": lightning.__version__,
                "macrostates": {"centroids": torch.randn(3, 4)}}, ckpt)
    out = tmp_path / "fc"
    assert forecast_cmd.main(["--dataset", "bank", "--model", model_dir, "--macro-ckpt", str(ckpt),
                              "--out", str(out), "--quiet"]) == 2
    line = error_line(capsys, "ret-forecast")
    assert "trained on 'some-other-model'" in line and "--model some-other-model" in line
    assert not out.exists()


def test_a_failed_run_removes_the_output_directory_it_created(tmp_path):
    out = tmp_path / "new" / "dir"
    with pytest.raises(InputError):
        with OutputDir(out, "ret-x", {"a": 1}, files=["x.json"]):
            raise InputError("failed half way")
    assert not out.exists() and (tmp_path / "new").is_dir()  # only the directory the run itself made goes
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError):
        with OutputDir(out, "ret-x", {"a": 1}, files=["x.json"]):
            raise InputError("failed half way")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_option_spells_the_whole_fix():
    assert option("dtype", "bfloat16") == "dtype='bfloat16'"
    with cli_words():
        assert option("dtype", "bfloat16") == "--dtype bfloat16"
        assert option("overwrite", True) == "--overwrite"
        assert option("n_boot", flag="--bootstrap") == "--bootstrap"


@pytest.mark.parametrize("show", [True, False])
def test_quiet_hides_the_gguf_conversion_bar(show):
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.tqdm
    with gguf_conversion_bar(show):
        bar = gguf_utils.tqdm(range(3))
        assert bar.disable is (not show)
        bar.close()
    assert gguf_utils.tqdm is original
