"""The README is a contract: every bash/python block runs, in order, in a fresh copy of the repository.

The copy holds what a clone holds (the tracked files, and during development
the files git does not ignore), with the repository's ``.venv`` linked in.
Blocks run as typed, with ``.venv/bin`` first on PATH (what
``source .venv/bin/activate`` does); the printed output is compared with the
``text`` block that follows, where the README shows one. See readme_blocks.py
for the conventions (skip and tolerance directives).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from readme_blocks import Block, compare_output, read_blocks

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_SOURCE_DIRS = {"activation_cache", "ret_toolkit", "tests", "docs", "examples", "notebooks", "benchmarks"}

# One interpreter for all python blocks, like the cells of a notebook.
_WORKER = textwrap.dedent('''
    import contextlib, io, json, sys, traceback
    namespace = {"__name__": "__main__"}
    proto = sys.stdout
    for line in sys.stdin:
        code = json.loads(line)["code"]
        buf, ok = io.StringIO(), True
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            try:
                exec(compile(code, "<README block>", "exec"), namespace)
            except BaseException:
                ok = False
                traceback.print_exc()
        proto.write(json.dumps({"ok": ok, "out": buf.getvalue()}) + "\\n")
        proto.flush()
''')


class Session:
    """The scratch directory, its environment and the shared Python interpreter."""

    def __init__(self, work: Path):
        self.work = work
        work.mkdir()
        def git_files(*args: str) -> list[str]:
            out = subprocess.run(["git", "ls-files", "-z", *args], cwd=ROOT, check=True, capture_output=True, text=True)
            return [n for n in out.stdout.split("\0") if n]

        # Tracked files, plus new source files not committed yet -- but not the outputs of
        # README commands someone ran in the checkout (gen.h5, macro/, ...): a clone has none.
        new = [n for n in git_files("-o", "--exclude-standard") if n.split("/")[0] in _SOURCE_DIRS]
        for name in git_files() + new:
            src, dst = ROOT / name, work / name
            if src.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        (work / ".venv").symlink_to(ROOT / ".venv")  # `source .venv/bin/activate` works as in a clone
        self.env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
                    "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "120"}
        self.env.pop("PYTHONPATH", None)
        self.python = subprocess.Popen([sys.executable, "-u", "-c", _WORKER], cwd=work, env=self.env,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, block: Block) -> tuple[bool, str]:
        code = block.code
        if block.lang == "bash":
            p = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=self.work, env=self.env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
            return p.returncode == 0, p.stdout
        self.python.stdin.write(json.dumps({"code": code}) + "\n")
        self.python.stdin.flush()
        reply = json.loads(self.python.stdout.readline())
        return reply["ok"], reply["out"]

    def close(self) -> None:
        self.python.stdin.close()
        self.python.wait(timeout=60)


def test_readme_blocks_parse():
    blocks = read_blocks(README.read_text(encoding="utf-8"))
    runnable = [b for b in blocks if b.lang in ("bash", "python")]
    assert len(runnable) >= 20
    for b in blocks:
        if b.directive:
            assert b.skip or b.tolerance, f"README.md:{b.line}: unknown directive {b.directive!r}"
        if b.skip:
            assert "(" in b.directive, f"README.md:{b.line}: a skipped block must say why"


def test_compare_output_rules():
    assert compare_output("a 0.853 b\nc 3", "x\na 0.853   b\nzz\nc 3\n") is None
    assert compare_output("a 0.853", "a 0.854") is not None
    assert compare_output("a 0.853", "a 0.854", tolerance=0.002) is None
    assert compare_output("done in 39 s: x", "done in 61 s: x") is None  # times vary
    assert compare_output("c 3\na 1", "a 1\nc 3") is not None  # order matters
    assert compare_output("wrote ...: 5 rows", "wrote /tmp/a.h5: 5 rows") is None


@pytest.mark.integration
@pytest.mark.timeout(1500)
def test_readme_runs_as_written(tmp_path):
    blocks = read_blocks(README.read_text(encoding="utf-8"))
    s = Session(tmp_path / "clone")
    failures, last = [], None
    try:
        for b in blocks:
            if b.lang in ("bash", "python"):
                if b.skip:
                    last = None
                    continue
                ok, out = s.run(b)
                assert ok, f"README.md:{b.line}: {b.lang} block failed:\n{b.code}\n--- output:\n{out[-4000:]}"
                last = (b, out)
            elif b.lang == "text" and last is not None and b.line - last[0].end <= 3:
                run_block, out = last
                if not b.skip:
                    problem = compare_output(b.code, out, b.tolerance)
                    if problem:
                        failures.append(f"README.md:{b.line} (output of the block at line {run_block.line}): "
                                        f"{problem}\n--- actual output:\n{out[-3000:]}")
                last = None
            else:
                last = None
    finally:
        s.close()
    assert not failures, "\n\n".join(failures)


def test_readme_full_demo_table_matches_archived_metrics():
    """The full demo's table in the README is the archived metrics.json of that run, as ret-demo prints it."""
    from ret_toolkit.macro.pipeline import format_metrics

    metrics = json.loads((ROOT / "benchmarks" / "results" / "demo_metrics.json").read_text())
    assert metrics["demo"]["quick"] is False
    assert format_metrics(metrics) in README.read_text(encoding="utf-8")


def test_readme_figures_are_the_archived_results():
    """Every benchmark key figure and the full demo table are those of benchmarks/results (make readme-figures)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "benchmarks" / "readme_figures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = README.read_text(encoding="utf-8")
    rendered, changes = mod.render(text)
    assert not changes, f"README figures differ from benchmarks/results (run make readme-figures): {changes}"
    assert rendered == text
    # the check can fail: a planted drift in one figure is found
    drifted = text.replace("`mi_speedup_vs_sklearn: 60.6`", "`mi_speedup_vs_sklearn: 61.6`")
    assert mod.render(drifted)[1] == ["bench_mi: `mi_speedup_vs_sklearn: 61.6` -> `mi_speedup_vs_sklearn: 60.6`"]
