"""Re-run the README's blocks and write the figures they print into its ``text`` blocks.

    .venv/bin/python tests/readme_outputs.py            # list the outputs that changed (README untouched)
    .venv/bin/python tests/readme_outputs.py --write    # and write them into README.md (make readme-outputs)

``--write`` also records the environment of the run (versions, CPU, kernels,
threads) in ``benchmarks/results/readme_outputs.json``, which the README quotes
(``make readme-figures``) and the README test compares the CPU vendor with.

Runs only in the environment the README test compares digits in (see
readme_session.py), so the README's figures are always that environment's.
Only numbers change: an output line whose words changed, or that is no longer
printed, is listed for a hand edit and the README is left as it was. Prose that
quotes a figure is not touched; the listed old -> new lines tell what to look for.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from readme_blocks import read_blocks, refresh_output
from readme_session import README, RECORD, Session, environment_differences, session_environment, walk


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="write the new outputs into README.md")
    ap.add_argument("--dump", type=Path, help="also write every block's printed output to this JSON file")
    a = ap.parse_args(argv)
    elsewhere = environment_differences(vendor=False)
    if elsewhere:
        print("readme_outputs: not the locked environment (make venv builds it): " + "; ".join(elsewhere),
              file=sys.stderr)
        return 2
    text = README.read_text(encoding="utf-8")
    lines = text.split("\n")
    changed, unmatched, dump = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        s = Session(Path(tmp) / "clone")
        try:
            for block, run_block, out in walk(s, read_blocks(text)):
                dump.append({"line": run_block.line, "output_line": block.line, "out": out})
                new, missing = refresh_output(block.code, out)
                unmatched += [f"README.md:{block.line}: {m!r}" for m in missing]
                body = range(block.line, block.end - 1)  # 0-based indices of the lines inside the fence
                old_lines, new_lines = [lines[i] for i in body], new.rstrip("\n").split("\n")
                for i, old, fresh in zip(body, old_lines, new_lines):
                    if old != fresh:
                        changed.append(f"README.md:{i + 1}:\n  - {old.strip()}\n  + {fresh.strip()}")
                        lines[i] = fresh
        finally:
            s.close()
    if a.dump:
        a.dump.write_text(json.dumps(dump, indent=1) + "\n")
    print("\n".join(changed))
    if unmatched:
        print("lines no longer printed in this shape (edit by hand; README not written):\n  " + "\n  ".join(unmatched))
        return 1
    if a.write:
        if changed:
            README.write_text("\n".join(lines), encoding="utf-8")
        record = {"environment": session_environment(), "lock": [], "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        RECORD.write_text(json.dumps(record, indent=2) + "\n")
    print(f"readme_outputs: {len(changed)} line(s) changed" + (", written" if a.write and changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
