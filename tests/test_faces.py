"""The public faces: each package's ``__init__`` exposes verbs and main types, and the rest of the tree uses them.

Notebooks and benchmarks import only from the faces (or from a submodule a face's
docstring documents, where its helpers live); no module imports a private
name of another; library code never imports the console commands.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FACES = ["activation_cache", "ret_toolkit", *(f"ret_toolkit.{p}" for p in
                                             ("blocking", "info", "macro", "planning", "steering", "sycophancy", "tasks", "viz",
                                              "vq"))]


def _imports(source: str, where: str):
    """``(module, names, line)`` of every ``from m import ...`` / ``import m`` in ``source``."""
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno


def _notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    return "\n".join(line for block in code for line in block.splitlines() if not line.lstrip().startswith(("%", "!")))


def _sources(*dirs: str):
    for d in dirs:
        for p in sorted((ROOT / d).rglob("*.py")):
            yield p, p.read_text(encoding="utf-8")


@pytest.mark.parametrize("face", FACES)
def test_every_public_name_resolves_and_is_not_a_module(face):
    mod = importlib.import_module(face)
    assert mod.__all__ == sorted(set(mod.__all__), key=mod.__all__.index), f"{face}.__all__ repeats a name"
    for name in mod.__all__:
        value = getattr(mod, name)
        assert not isinstance(value, types.ModuleType), f"{face}.{name} is a module, not a verb or type"
    with pytest.raises(AttributeError, match="no attribute"):
        getattr(mod, "no_such_name")


def test_public_names_survive_importing_a_submodule_of_the_same_name():
    # Importing package.x sets the package's attribute x to the module, which would
    # shadow a lazily exported verb x (``from activation_cache import extract``); in a
    # fresh interpreter, so that every submodule is imported for the first time.
    code = textwrap.dedent(f"""
        import importlib, pathlib, types
        bad = []
        for face in {FACES!r}:
            mod = importlib.import_module(face)
            here = pathlib.Path(mod.__file__).parent
            subs = {{p.stem for p in here.glob("*.py")}} | {{p.parent.name for p in here.glob("*/__init__.py")}}
            for name in sorted(set(mod.__all__) & subs):
                importlib.import_module(face + "." + name)
                if isinstance(getattr(mod, name), types.ModuleType):
                    bad.append(face + "." + name)
        print(bad)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"public names shadowed by their submodule: {out.stdout}"


def _documented_submodules(face: str) -> dict[str, set[str]]:
    """Submodules a face's docstring names (``:mod:`~pkg.sub```) -> their public names (``__all__``).

    A face lists verbs and main types; its helpers stay in submodules it documents.
    """
    names = re.findall(r":mod:`~?(" + re.escape(face) + r"\.[a-z_.]+)`", importlib.import_module(face).__doc__ or "")
    out = {}
    for name in names:
        mod = importlib.import_module(name)
        out[name] = set(getattr(mod, "__all__", [n for n in vars(mod) if not n.startswith("_")]))
    return out


def test_notebooks_and_benchmarks_import_only_public_faces():
    faces = {f: set(importlib.import_module(f).__all__) for f in FACES}
    for face in FACES:
        faces.update(_documented_submodules(face))
    files = [(p, p.read_text(encoding="utf-8")) for p in sorted((ROOT / "benchmarks").glob("*.py"))]
    files += [(p, _notebook_code(p)) for p in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    assert len(files) >= 15
    bad = []
    for path, code in files:
        for module, names, line in _imports(code, str(path)):
            if module.split(".")[0] not in ("ret_toolkit", "activation_cache"):
                continue
            where = f"{path.relative_to(ROOT)}:{line}"
            if module not in faces:
                bad.append(f"{where}: imports from {module}, not a public face or a submodule it documents")
            else:
                bad += [f"{where}: {module}.{n} is not public" for n in names if n not in faces[module]]
    assert not bad, "\n".join(bad)


def test_no_module_imports_a_private_name_of_another():
    bad = [f"{p.relative_to(ROOT)}:{line}: from {module} import {n}"
           for p, code in _sources("ret_toolkit", "activation_cache", "benchmarks", "tests")
           for module, names, line in _imports(code, str(p))
           if module.split(".")[0] in ("ret_toolkit", "activation_cache")
           for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, "\n".join(bad)


def test_library_code_never_imports_the_console_commands():
    bad = [f"{p.relative_to(ROOT)}:{line}: {module}"
           for p, code in _sources("ret_toolkit", "activation_cache")
           if "cli" not in p.relative_to(ROOT).parts
           for module, _, line in _imports(code, str(p)) if module.startswith("ret_toolkit.cli")]
    assert not bad, "\n".join(bad)


def test_importing_the_faces_stays_cheap():
    code = ("import sys, activation_cache, ret_toolkit, ret_toolkit.sycophancy; "
            "print(sorted(m for m in ('torch', 'nnsight', 'lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_the_sycophancy_and_planning_faces_list_verbs_and_main_types_only():
    from ret_toolkit import planning, sycophancy

    assert len(sycophancy.__all__) <= 14, sycophancy.__all__
    assert not {"pick_items", "read_replies", "auroc_table", "forecast_position", "TEMPLATES"} & set(sycophancy.__all__)
    documented = _documented_submodules("ret_toolkit.sycophancy")
    assert "pick_items" in documented["ret_toolkit.sycophancy.trajectories"]
    assert len(planning.__all__) <= 14, planning.__all__
