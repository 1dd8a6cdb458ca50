"""The README is a contract: every bash/python block runs, in order, in a fresh copy of the repository.

The printed output is compared with the ``text`` block that follows, where the
README shows one (readme_blocks.py has the conventions: skip and tolerance
directives). Figures are compared digit for digit only in the environment they
come from (readme_session.py: the lock file, pinned CPU kernels, fixed threads);
elsewhere every block still runs and every line must appear, but numbers may
differ, and the test says so.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from readme_blocks import compare_output, read_blocks, refresh_output
from readme_session import README, ROOT, Session, environment_differences, walk


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
    elsewhere = environment_differences()
    if elsewhere:
        warnings.warn("README figures compared by shape only, not digit for digit: this is not the locked "
                      "environment (make test builds it): " + "; ".join(elsewhere))
    s = Session(tmp_path / "clone")
    failures = []
    try:
        for text, run_block, out in walk(s, blocks):
            problem = compare_output(text.code, out, text.tolerance, numbers=not elsewhere)
            if problem:
                failures.append(f"README.md:{text.line} (output of the block at line {run_block.line}): "
                                f"{problem}\n--- actual output:\n{out[-3000:]}")
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
    drifted = text.replace("`mi_speedup_vs_sklearn: 51.82`", "`mi_speedup_vs_sklearn: 52.82`")
    assert mod.render(drifted)[1] == ["bench_mi: `mi_speedup_vs_sklearn: 52.82` -> `mi_speedup_vs_sklearn: 51.82`"]


def test_shape_only_comparison_and_refresh():
    assert compare_output("a 0.853 b", "a 0.911 b", numbers=False) is None
    assert compare_output("a 0.853 b", "a 0.911 c", numbers=False) is not None  # the words still count
    assert compare_output("a 0.853 b\nc 3", "c 3\na 0.9 b", numbers=False) is not None  # so does the order
    new, missing = refresh_output("  a 0.853   b\nq 1\n\nwrote ...: 5 rows in 3 s\nr 2\n",
                                  "x\na 0.9 b\nwrote /tmp/a.h5: 7 rows in 12 s\n")
    assert new == "  a 0.9 b\nq 1\n\nwrote ...: 7 rows in 3 s\nr 2\n"  # elision and time kept
    assert missing == ["q 1", "r 2"]  # every line not printed is listed, and the lines after a miss still refresh
    assert compare_output(new.replace("q 1\n", "").replace("r 2\n", ""), "a 0.9 b\nwrote /x: 7 rows in 1 s") is None
