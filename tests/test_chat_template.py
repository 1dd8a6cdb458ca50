"""Chat templates for models that have none: --chat-template FILE / chat_template= on every chat path."""

from __future__ import annotations

import json

import lightning
import pytest
import torch

import ret_toolkit.cli.extract as extract_cmd
import ret_toolkit.cli.forecast as forecast_cmd
import ret_toolkit.cli.steer as steer_cmd
from activation_cache import InputError, read_chat_template, use_chat_template
from activation_cache.extraction import ExtractConfig, extract
from activation_cache.models import load_model
from activation_cache.reader import open_store
from file_checks import file_digests
from ret_toolkit.macro.module import RETModule
from torchrun_trace import patch_labeller
from tiny_models import CHAT_TEMPLATE, save_tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: another turn format than the tiny tokenizer's own, so a test can tell which one rendered
PLAIN = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
         "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_base")
    model = save_tiny_model("llama", root / "base-llama", chat_template=False)
    template = root / "plain.jinja"
    template.write_text(PLAIN)
    prompts = root / "prompts.txt"
    prompts.write_text("What is 2 + 3?\nAre you sure?\n")
    return dict(root=root, model=str(model), template=str(template), prompts=str(prompts))


def status(cmd, args) -> int:
    """Exit status of a console command run in process (argparse errors exit through SystemExit)."""
    try:
        return cmd.main(args)
    except SystemExit as e:
        return e.code


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_read_chat_template_from_a_file_or_as_text(base, tmp_path):
    assert read_chat_template(base["template"]) == PLAIN
    assert read_chat_template(CHAT_TEMPLATE) == CHAT_TEMPLATE  # Jinja text is the template itself
    with pytest.raises(InputError, match="chat template file not found: .*nope.jinja"):
        read_chat_template(tmp_path / "nope.jinja")
    (tmp_path / "empty.jinja").write_text("  \n")
    with pytest.raises(InputError, match="empty.jinja: chat template is empty"):
        read_chat_template(tmp_path / "empty.jinja")
    (tmp_path / "broken.jinja").write_text("line one\n{% for m in messages %}{{ m['content'] }}\n")
    with pytest.raises(InputError, match=r"broken.jinja:\d+: chat template does not parse"):
        read_chat_template(tmp_path / "broken.jinja")


def test_a_base_model_without_a_template_names_the_option(base, tmp_path):
    cfg = ExtractConfig(prompts=base["prompts"], out=str(tmp_path / "a.h5"), model=base["model"], chat=True)
    with pytest.raises(InputError, match="has no chat template .*: give one with chat_template"):
        extract(cfg, progress=False)
    assert not (tmp_path / "a.h5").exists()


def test_extract_renders_through_the_given_template(base, tmp_path):
    out = tmp_path / "t.h5"
    r = extract(ExtractConfig(prompts=base["prompts"], out=str(out), model=base["model"], chat=True,
                              chat_template=base["template"], layers="0"), progress=False)
    assert r.n_sequences == 2
    with open_store(out) as st:
        assert st.text(0) == "user: What is 2 + 3?\nassistant:"
        assert st.config["chat_template"] == base["template"]
    # the same prompts through another template are other tokens: the store refuses to resume them
    other = ExtractConfig(prompts=base["prompts"], out=str(out), model=base["model"], chat=True,
                          chat_template=CHAT_TEMPLATE, layers="0")
    before = file_digests(tmp_path)
    with pytest.raises(InputError, match="overwrite"):
        extract(other, progress=False)
    assert file_digests(tmp_path) == before


def test_a_loaded_model_takes_the_settings_template(base, tmp_path):
    loaded = load_model(base["model"])
    assert not loaded.tokenizer.chat_template
    extract(ExtractConfig(prompts=base["prompts"], out=str(tmp_path / "l.h5"), chat=True, layers="0",
                          chat_template=base["template"]), loaded=loaded, progress=False)
    assert loaded.tokenizer.chat_template == PLAIN
    assert use_chat_template(loaded, None).tokenizer.chat_template == PLAIN  # None keeps the current one
    assert load_model(base["model"], chat_template=CHAT_TEMPLATE).tokenizer.chat_template == CHAT_TEMPLATE


def test_cli_flag_is_checked_before_the_model_loads(base, tmp_path, capsys, monkeypatch):
    import activation_cache.models as models

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(models, "_from_pretrained", no_load)
    missing = str(tmp_path / "missing.jinja")
    cases = [
        (extract_cmd, ["--model", base["model"], "--prompts", base["prompts"], "--out", str(tmp_path / "x.h5"),
                       "--chat", "--chat-template", missing]),
        (steer_cmd, ["--model", base["model"], "--vector", str(tmp_path / "v"), "--prompt", "hi",
                     "--chat-template", missing]),
        (forecast_cmd, ["--dataset", "bank", "--model", base["model"], "--macro-ckpt", str(tmp_path / "c.ckpt"),
                        "--out", str(tmp_path / "fc"), "--chat-template", missing]),
    ]
    for cmd, args in cases:
        assert status(cmd, args) == 2
        assert "--chat-template: chat template file not found" in one_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_cli_extract_without_a_template_names_the_flag(base, tmp_path, capsys):
    rc = extract_cmd.main(["--model", base["model"], "--prompts", base["prompts"], "--out", str(tmp_path / "x.h5"),
                           "--chat", "--quiet"])
    assert rc == 2
    assert "give one with --chat-template FILE" in one_line(capsys.readouterr().err)
    rc = extract_cmd.main(["--model", base["model"], "--prompts", base["prompts"], "--out", str(tmp_path / "x.h5"),
                           "--chat", "--chat-template", base["template"], "--layers", "0", "--quiet"])
    assert rc == 0
    with open_store(tmp_path / "x.h5") as st:
        assert st.text(1) == "user: Are you sure?\nassistant:"


def test_steer_refuses_a_template_with_no_chat(base, tmp_path, capsys):
    rc = status(steer_cmd, ["--model", base["model"], "--vector", str(tmp_path / "v"), "--prompt", "hi",
                            "--no-chat", "--chat-template", base["template"]])
    assert rc == 2
    line = one_line(capsys.readouterr().err)
    assert "--chat-template" in line and "--no-chat" in line


def test_forecast_runs_on_a_base_model_through_a_template(base, tmp_path, capsys, monkeypatch):
    loaded = load_model(base["model"])
    torch.manual_seed(0)
    m = RETModule(d_input=32, window=4, z_dim=4, hidden=16, predictor_hidden=16,
                  source_model=loaded.name, source_layers="1")
    ckpt = tmp_path / "ret_macro.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams),
                "pytorch-lightning_version": lightning.__version__,
                "macrostates": {"centroids": torch.randn(5, 4)}}, ckpt)
    patch_labeller(monkeypatch)
    args = ["--dataset", "bank", "--model", base["model"], "--macro-ckpt", str(ckpt), "--out", str(tmp_path / "fc"),
            "--n-items", "20", "--pushbacks", "all", "--leads", "0,1", "--max-new-tokens", "4", "--repeats", "1",
            "--n-boot", "20", "--batch-size", "32", "--quiet"]
    assert forecast_cmd.main(args) == 2
    assert "give one with --chat-template FILE" in one_line(capsys.readouterr().err)
    assert forecast_cmd.main(args + ["--chat-template", base["template"]]) == 0
    record = json.loads((tmp_path / "fc" / "forecast.json").read_text())
    assert record["config"]["chat_template"] == base["template"] and record["n_kept"] > 0
    with open_store(tmp_path / "fc" / "turn2.h5") as st:
        assert st.text(0).startswith("user: ") and "\nassistant: " in st.text(0)
