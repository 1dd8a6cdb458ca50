"""How fast each console command answers ``--help``, against ``python -c "import torch"``, in the same run.

For every console command (as ``setup.cfg`` lists them, plus ``ret-train macro fit``, whose
help LightningCLI builds from the model classes) the benchmark times a fresh process that
runs the command's ``main(["--help"])``, and a fresh ``python -c "import torch"``; with
``--before REF`` also the same command from a checkout of REF (a ``git worktree``). The
sides alternate within every repetition (torch, now, before, torch, now, before, ...),
``--repeats`` times; each repetition gives one ratio per command, and the median ratio
is reported with its range.

    .venv/bin/python benchmarks/bench_cli_startup.py                      # ~1 min
    .venv/bin/python benchmarks/bench_cli_startup.py --before d7753bc     # ~3 min, with the old code
Last line: ``cli_help_vs_import_torch: <the largest median ratio of an argparse command>`` (goal < 0.5).
"""

from __future__ import annotations

import argparse
import configparser
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import report  # noqa: E402


def commands() -> dict[str, tuple[str, list[str]]]:
    """name -> (module with main, argv) for every console command's ``--help``."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = [x.strip() for x in cfg["options.entry_points"]["console_scripts"].splitlines() if x.strip()]
    out = {name.strip(): (target.strip().split(":")[0], ["--help"]) for name, target in (x.split("=") for x in lines)}
    out["ret-train macro fit"] = ("ret_toolkit.cli.train", ["macro", "fit", "--help"])
    return out


def seconds(code: str, path: str | None = None) -> float:
    """Wall time of a fresh interpreter running ``code`` (with ``path`` first on sys.path)."""
    env_code = f"import sys; sys.path.insert(0, {path!r}); " if path else ""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", env_code + code], capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{code!r} failed: {r.stderr.strip().splitlines()[-1:]}")
    return elapsed


def help_code(module: str, argv: list[str]) -> str:
    return f"from {module} import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--before", default=None, metavar="REF", help="also time the commands of this git ref")
    args = ap.parse_args()

    cmds = commands()
    before_dir = None
    if args.before:
        before_dir = Path(tempfile.mkdtemp(prefix="cli-before-")) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(before_dir), args.before], cwd=ROOT, check=True,
                       capture_output=True)
    times: dict[str, dict[str, list[float]]] = {name: {"torch": [], "now": [], "before": []} for name in cmds}
    try:
        for rep in range(args.repeats):
            for name, (module, argv) in cmds.items():
                times[name]["torch"].append(seconds("import torch"))
                times[name]["now"].append(seconds(help_code(module, argv)))
                if before_dir is not None:
                    try:
                        times[name]["before"].append(seconds(help_code(module, argv), str(before_dir)))
                    except SystemExit:  # a command the old code did not answer this way
                        pass
            print(f"repetition {rep + 1}/{args.repeats} done", flush=True)
    finally:
        if before_dir is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(before_dir)], cwd=ROOT, capture_output=True)

    rows = {}
    print(f"\n{'command':<22}{'--help s':>10}{'import torch s':>16}{'ratio (median [range])':>28}"
          + (f"{'before s':>10}{'before ratio':>14}" if before_dir else ""))
    for name, t in times.items():
        ratios = [a / b for a, b in zip(t["now"], t["torch"])]
        row = {"help_s": statistics.median(t["now"]), "import_torch_s": statistics.median(t["torch"]),
               "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
               "help_s_all": t["now"], "import_torch_s_all": t["torch"]}
        line = (f"{name:<22}{row['help_s']:>10.2f}{row['import_torch_s']:>16.2f}"
                f"{row['ratio_median']:>12.2f} [{row['ratio_min']:.2f}, {row['ratio_max']:.2f}]")
        if t["before"]:
            before = [a / b for a, b in zip(t["before"], t["torch"])]
            row.update(before_s=statistics.median(t["before"]), before_ratio_median=statistics.median(before),
                       before_ratio_min=min(before), before_ratio_max=max(before), before_s_all=t["before"])
            line += f"{row['before_s']:>10.2f}{row['before_ratio_median']:>14.2f}"
        rows[name] = row
        print(line)
    key = max(r["ratio_median"] for n, r in rows.items() if n != "ret-train macro fit")
    report("bench_cli_startup", "cli_help_vs_import_torch", key,
           {"repeats": args.repeats, "before": args.before, "commands": rows})


if __name__ == "__main__":
    main()
