"""The scratch clone the README's blocks run in, and the walk that pairs each block with its printed output.

Used by the README test (``test_readme.py``) and by ``readme_outputs.py``, which
writes fresh outputs into the README. The copy holds what a clone holds (the
tracked files, and during development the files git does not ignore), with the
repository's ``.venv`` linked in. Blocks run as typed, with ``.venv/bin`` first on
PATH (what ``source .venv/bin/activate`` does).

The printed figures are the same on every run only in one environment: the
packages of ``constraints.txt``, the CPU kernels pinned to AVX2
(``PORTABLE_NUMERICS``), two threads, a fixed hash seed, and a CPU of the
vendor the outputs were made on (MKL's float32 matmul differs between Intel and
AMD). The session sets the kernels, threads and seed itself;
:func:`environment_differences` says how the rest differs from the record of
the run that wrote the README's outputs (``benchmarks/results/readme_outputs.json``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

from readme_blocks import Block
from ret_toolkit.environment import PORTABLE_NUMERICS, lock_differences

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LOCK = ROOT / "constraints.txt"
RECORD = ROOT / "benchmarks" / "results" / "readme_outputs.json"
_SOURCE_DIRS = {"activation_cache", "ret_toolkit", "tests", "docs", "examples", "notebooks", "benchmarks"}
#: Besides PORTABLE_NUMERICS: the thread count of the 2-core machines the outputs were made on, and
#: one string hash order (set iteration) for every run.
DETERMINISM = {**PORTABLE_NUMERICS, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "PYTHONHASHSEED": "0"}

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


def _session_env() -> dict[str, str]:
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "120", **DETERMINISM}
    env.pop("PYTHONPATH", None)
    return env


def session_environment() -> dict:
    """``ret_toolkit.environment_record()`` as the session's interpreters see it (its settings applied)."""
    code = "import json; from ret_toolkit import environment_record; print(json.dumps(environment_record()))"
    probe = subprocess.run([sys.executable, "-c", code], env=_session_env(), capture_output=True, text=True,
                           timeout=300)
    assert probe.returncode == 0, probe.stderr[-2000:]
    return json.loads(probe.stdout)


def environment_differences(vendor: bool = True) -> list[str]:
    """How this environment differs from the one the README's outputs come from; empty when it is that one.

    Checks the packages against ``constraints.txt``, that the session's
    interpreters run torch's AVX2 kernels (they cannot on a CPU without AVX2, or
    on another architecture), and the CPU vendor against the record of the run
    that wrote the outputs (unless ``vendor`` is false: a run that writes new
    outputs records its own).
    """
    out = lock_differences(LOCK)
    here = session_environment()
    if here["cpu_capability"] != "AVX2":
        out.append(f"torch CPU kernels {here['cpu_capability']} (the outputs were made with AVX2)")
    if not vendor:
        return out
    if not RECORD.exists():
        return out + [f"no record of the run that made the outputs ({RECORD.relative_to(ROOT)}; make readme-outputs)"]
    made = json.loads(RECORD.read_text())["environment"]
    if here["cpu_vendor"] != made["cpu_vendor"]:
        out.append(f"CPU vendor {here['cpu_vendor']} (the outputs were made on {made['cpu_vendor']}, "
                   "whose MKL matmul kernels differ)")
    return out


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
        self.env = _session_env()
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


def walk(session: Session, blocks: list[Block]) -> Iterator[tuple[Block, Block, str]]:
    """Run every runnable block in order; yield ``(text block, the block it shows, printed output)``.

    A ``text`` block is an output when it follows a run block with at most
    blank lines or a directive between them. Raises AssertionError at the first
    block that fails (exit status not 0, or an exception), with its output.
    """
    last = None
    for b in blocks:
        if b.lang in ("bash", "python"):
            if b.skip:
                last = None
                continue
            ok, out = session.run(b)
            assert ok, f"README.md:{b.line}: {b.lang} block failed:\n{b.code}\n--- output:\n{out[-4000:]}"
            last = (b, out)
        elif b.lang == "text" and last is not None and b.line - last[0].end <= 3:
            if not b.skip:
                yield b, last[0], last[1]
            last = None
        else:
            last = None
