"""Check, then write: OutputDir records, refusals and staging; atomic files; prompts in memory."""

from __future__ import annotations

import json
import os

import pytest

from activation_cache.errors import InputError, cli_words
from activation_cache.outputs import MANIFEST, OutputDir, atomic_path, differing_keys, write_json
from activation_cache.prompts import Prompt, prompts_from_records
from file_checks import file_digests


def test_differing_keys_counts_missing_keys_and_ignores_some():
    assert differing_keys({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 0}) == ["b", "c"]
    assert differing_keys({"a": 1, "t": 1}, {"a": 1, "t": 2}, ignore=("t",)) == []


def test_output_dir_records_settings_and_refuses_others_without_writing(tmp_path):
    out = tmp_path / "run"
    with OutputDir(out, "cmd", {"k": 12}, files=["a.json"]) as od:
        write_json(od.stage("a.json"), {"x": 1})
        assert not (out / "a.json").exists()  # staged until the run succeeds
    assert json.loads((out / MANIFEST).read_text()) == {"cmd": {"settings": {"k": 12}}}
    before = file_digests(out)
    with pytest.raises(InputError, match=r"holds a cmd run with other settings \(differs in k\); pass overwrite=True"):
        OutputDir(out, "cmd", {"k": 8}, files=["a.json"])
    with cli_words(), pytest.raises(InputError, match="pass --overwrite"):
        OutputDir(out, "cmd", {"k": 8}, files=["a.json"])
    OutputDir(out, "cmd", {"k": 12}, files=["a.json"])  # the same settings: fine
    OutputDir(out, "other", {"k": 8}, files=["b.json"])  # another command's files: fine
    assert file_digests(out) == before


def test_output_dir_failed_run_leaves_earlier_outputs_and_no_staging(tmp_path):
    out = tmp_path / "run"
    with OutputDir(out, "cmd", {"k": 1}, files=["a.json"]) as od:
        write_json(od.stage("a.json"), {"x": 1})
    before = file_digests(out)
    with pytest.raises(RuntimeError, match="boom"):
        with OutputDir(out, "cmd", {"k": 1}, files=["a.json"]) as od:
            write_json(od.stage("a.json"), {"x": 2})
            raise RuntimeError("boom")
    assert file_digests(out) == before and sorted(p.name for p in out.iterdir()) == ["a.json", MANIFEST]


def test_output_dir_removes_the_staging_folders_of_killed_runs_only(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    with OutputDir(out, "cmd", {"k": 1}, files=["a.json"]) as od:
        write_json(od.stage("a.json"), {"x": 1})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = out / f".staging-{int(dead.stdout)}-abc"  # a run killed mid-write left this
    (killed / "big").mkdir(parents=True)
    (killed / "big" / "macrostates.h5").write_bytes(b"x" * 1000)
    running = out / f".staging-{os.getpid()}-xyz"  # a run still going (this process)
    running.mkdir()
    with OutputDir(out, "cmd", {"k": 1}, files=["a.json"]) as od:
        write_json(od.stage("a.json"), {"x": 2})
    assert not killed.exists() and running.is_dir()
    assert json.loads((out / "a.json").read_text()) == {"x": 2}


def test_output_dir_refuses_foreign_files_a_file_path_and_a_bad_record(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.json").write_text("{}")
    with pytest.raises(InputError, match="a.json exists and was not written by cmd"):
        OutputDir(tmp_path / "d", "cmd", {}, files=["a.json"])
    OutputDir(tmp_path / "d", "cmd", {}, files=["a.json"], overwrite=True)
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="exists and is not a directory"):
        OutputDir(tmp_path / "f", "cmd", {})
    (tmp_path / "d" / MANIFEST).write_text("{not json")
    with pytest.raises(InputError, match="unreadable run record"):
        OutputDir(tmp_path / "d", "cmd", {})


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["t.txt"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    with pytest.raises(InputError, match="output directory does not exist"):
        with atomic_path(tmp_path / "missing" / "x"):
            pass


def test_prompts_from_records_takes_strings_dicts_and_prompts():
    ps = prompts_from_records(["What is 2 + 2?", {"id": "q", "text": "Hi", "topic": "x"},
                               Prompt("p", None, ({"role": "user", "content": "Hey"},), {}, "here")], name="mine")
    assert [p.prompt_id for p in ps] == ["mine:1", "q", "p"] and ps[1].meta == {"topic": "x"}
    for records, message in [([], "no prompts in prompts"), (["  "], r"prompts\[0\]: empty prompt"),
                             ([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}],
                              r"prompts\[1\]: duplicate prompt id 'a' \(first at prompts\[0\]\)"),
                             ([{"txt": "x"}], r"prompts\[0\]: record has neither")]:
        with pytest.raises(InputError, match=message):
            prompts_from_records(records)
