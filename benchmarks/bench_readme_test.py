"""How long the README test takes at this commit against an earlier one, in the same run.

The README test (``tests/test_readme.py::test_readme_runs_as_written``) runs every block of
the README in a scratch clone, so its time is mostly the processes the README starts. This
benchmark checks out REF (``--before``) and the working commit (``--after``, default HEAD)
as ``git worktree``s, gives each a virtual environment of its own that layers the checkout
over this repository's ``.venv`` (so each side imports its own code, console commands
included, with the same packages), and runs the README test of each side in turn,
alternating (before, after, before, after, ...) ``--repeats`` times. Each repetition
gives one ratio after/before; the median ratio is reported with its range.

    .venv/bin/python benchmarks/bench_readme_test.py --before d7753bc --repeats 2   # ~40 min
Last line: ``readme_test_after_vs_before: <median ratio>`` (below 1: the README test got faster).
"""

from __future__ import annotations

import argparse
import configparser
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import report  # noqa: E402

TEST = "tests/test_readme.py::test_readme_runs_as_written"


def checkout(ref: str, where: Path) -> Path:
    """A worktree of ``ref`` with a ``.venv`` whose packages are this repository's, its code first."""
    subprocess.run(["git", "worktree", "add", "--detach", str(where), ref], cwd=ROOT, check=True,
                   capture_output=True)
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    venv = where / ".venv"
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    shared = sysconfig.get_path("purelib")
    # The checkout comes first on sys.path; the shared site dir (and its editable finder for
    # ROOT, which sits after the path finder) only supplies what the checkout does not have.
    (site / "checkout.pth").write_text(f"{where}\nimport site; site.addsitedir({shared!r})\n")
    # Every tool of the shared .venv (torchrun, pytest, jupyter...) runs on this interpreter...
    for src in (Path(sys.prefix) / "bin").iterdir():
        dst = venv / "bin" / src.name
        if dst.exists() or not src.is_file():
            continue
        head, _, rest = src.read_bytes().partition(b"\n")
        if head.startswith(b"#!") and sys.prefix.encode() in head:
            dst.write_bytes(f"#!{venv / 'bin' / 'python'}".encode() + b"\n" + rest)
            dst.chmod(0o755)
    # ... and the console commands are the checkout's own (its setup.cfg may name others).
    cfg = configparser.ConfigParser()
    cfg.read(where / "setup.cfg")
    for line in cfg["options.entry_points"]["console_scripts"].splitlines():
        if "=" not in line:
            continue
        name, target = (x.strip() for x in line.split("="))
        module, func = target.split(":")
        script = venv / "bin" / name
        script.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {module} import {func}\n"
                          f"sys.exit({func}())\n")
        script.chmod(0o755)
    return where


def run_test(where: Path) -> tuple[float, bool]:
    """Seconds of one README test run in ``where`` (a fresh process), and whether it passed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    t0 = time.perf_counter()
    r = subprocess.run([str(where / ".venv" / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-m", "integration", TEST], cwd=where, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout[-3000:], flush=True)
    return time.perf_counter() - t0, r.returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="the earlier commit")
    ap.add_argument("--after", default="HEAD", help="the later commit (default HEAD)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    sha = {side: subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, check=True, capture_output=True,
                                text=True).stdout.strip() for side, ref in (("before", args.before),
                                                                            ("after", args.after))}
    with tempfile.TemporaryDirectory(prefix="bench_readme_") as tmp:
        trees = {side: checkout(ref, Path(tmp) / side) for side, ref in sha.items()}
        try:
            times = {"before": [], "after": []}
            passed = {"before": [], "after": []}
            for i in range(args.repeats):
                for side in ("before", "after"):
                    s, ok = run_test(trees[side])
                    times[side].append(s)
                    passed[side].append(ok)
                    print(f"repeat {i + 1}/{args.repeats} {side} ({sha[side]}): {s:.0f} s, "
                          f"{'passed' if ok else 'FAILED'}", flush=True)
        finally:
            for where in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, capture_output=True)
    ratios = [a / b for a, b in zip(times["after"], times["before"])]
    details = {"commits": sha, "seconds": times, "passed": passed, "ratios": ratios,
               "median_ratio": statistics.median(ratios), "range": [min(ratios), max(ratios)],
               "command": f"benchmarks/bench_readme_test.py --before {args.before} --repeats {args.repeats}"}
    report("bench_readme_test", "readme_test_after_vs_before", statistics.median(ratios), details)


if __name__ == "__main__":
    main()
