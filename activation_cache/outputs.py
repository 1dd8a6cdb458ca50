"""Output files and directories: check everything first, then write atomically.

A refused or failed run must leave every file that existed before it
byte-identical. Two tools give that guarantee:

- :func:`atomic_path` / :func:`write_text` / :func:`write_json`: a file is
  written under a temporary name beside its target and renamed over it only
  when complete, so a reader (or a crash) never sees half a file.
- :class:`OutputDir`: a command's output directory. It records which command
  and settings produced it (``ret_runs.json``) and refuses, *before anything
  is written*, a run with other settings unless ``overwrite``. Files are
  written into a staging folder inside the directory and moved into place
  when the run has succeeded; a failed run only removes its staging folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from activation_cache.errors import InputError, option

MANIFEST = "ret_runs.json"
#: Prefix of a run's staging folder: ``.staging-<pid>-<random>``.
STAGING = ".staging-"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    Raises InputError (before the block runs) if the parent directory does not exist.
    """
    path = Path(path)
    parent = path.resolve().parent
    if not parent.is_dir():
        raise InputError(f"output directory does not exist: {parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes it 0600; a plain open() would not
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON (plus a final newline) to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=indent, default=_jsonable) + "\n")


def _jsonable(x: Any) -> Any:
    if hasattr(x, "to_json"):  # result objects (ret_toolkit.results, SweepResult)
        return x.to_json()
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item"):  # numpy / torch scalars
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def check_not_an_input(out: str | Path, inputs: dict[str, str | Path | None]) -> None:
    """InputError if output ``out`` is one of a command's ``inputs`` ({option name: path}).

    A command never writes over what it reads, ``overwrite`` or not.
    """
    out = Path(out).resolve()
    for name, path in inputs.items():
        if path is not None and Path(path).resolve() == out:
            raise InputError(f"{out} is this command's {option(name)} as well as its output; "
                             "choose another output path")


def differing_keys(old: dict, new: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """Sorted keys whose values differ between two settings dicts (a key missing on one side differs)."""
    return sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))


def normalise_settings(settings: dict) -> dict:
    """Settings as they compare after a JSON round trip (tuples -> lists, paths -> str)."""
    return json.loads(json.dumps(settings, sort_keys=True, default=_jsonable))


class OutputDir:
    """The output directory of one command, checked before anything is written.

    Args:
        path: the directory (created if missing; its parent may be missing too).
        command: the command that owns the run, e.g. ``"ret-macro"``.
        settings: everything that determines the outputs (JSON-able). A directory
            that already holds a run of ``command`` with other settings is refused
            unless ``overwrite``.
        files: names of the files this command writes; if the directory holds any
            of them but no record of ``command``, it is refused unless ``overwrite``.
        overwrite: replace the outputs of a run with other settings.

    Use::

        out = OutputDir(dir, "ret-macro", {"k": 12}, files=["metrics.json"])   # checks, writes nothing
        with out:                                  # creates the staging folder
            write_json(out.stage("metrics.json"), metrics)
        # on success: metrics.json moved into dir, ret_runs.json updated
    """

    def __init__(self, path: str | Path, command: str, settings: dict, *, files: Sequence[str] = (),
                 overwrite: bool = False):
        self.path = Path(path)
        self.command = command
        self.settings = normalise_settings(settings)
        self.files = list(files)
        self.overwrite = overwrite
        self._stage: Path | None = None
        self._staged: list[str] = []
        self._created = False
        self.check()

    # ----------------------------------------------------------------- check
    def _records(self) -> dict:
        f = self.path / MANIFEST
        if not f.is_file():
            return {}
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(f"{f}: unreadable run record ({e}); remove it or choose another output directory") from None
        return data if isinstance(data, dict) else {}

    def check(self) -> None:
        """InputError (one line) if this run may not write into the directory."""
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path} exists and is not a directory")
        if not self.path.exists() or self.overwrite:
            return
        stored = self._records().get(self.command)
        how = f"pass {option('overwrite', True)} to replace its results, or choose another output directory"
        if stored is not None:
            old = stored.get("settings", {})
            if old != self.settings:
                raise InputError(f"{self.path} holds a {self.command} run with other settings "
                                 f"(differs in {', '.join(differing_keys(old, self.settings))}); {how}")
            return
        present = [n for n in self.files if (self.path / n).exists()]
        if present:
            raise InputError(f"{self.path / present[0]} exists and was not written by {self.command}; {how}")

    def holds_this_run(self) -> bool:
        """Whether the directory already records a run of this command with these settings."""
        return self.path.is_dir() and (self._records().get(self.command) or {}).get("settings") == self.settings

    # ----------------------------------------------------------------- write
    def __enter__(self) -> "OutputDir":
        self.check()  # again: the directory may have changed since construction
        self._created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        _remove_stale_stages(self.path)
        self._stage = Path(tempfile.mkdtemp(prefix=f"{STAGING}{os.getpid()}-", dir=self.path))
        self._staged = []
        return self

    def stage(self, name: str) -> Path:
        """Where to write output ``name`` during the run (moved to ``path / name`` on success)."""
        if self._stage is None:
            raise RuntimeError("OutputDir.stage() outside its with-block")
        if name not in self._staged:
            self._staged.append(name)
        p = self._stage / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def final(self, name: str) -> Path:
        """Where output ``name`` lands."""
        return self.path / name

    def __exit__(self, exc_type, exc, tb) -> None:
        stage, self._stage = self._stage, None
        try:
            if exc_type is None:
                for name in self._staged:
                    src = stage / name
                    if src.exists():
                        dst = self.path / name
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        if dst.is_dir() and not dst.is_symlink():
                            shutil.rmtree(dst)
                        os.replace(src, dst)
                records = self._records()
                records[self.command] = {"settings": self.settings}
                write_json(self.path / MANIFEST, records)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
            if exc_type is not None and self._created:
                _remove_if_empty(self.path)  # a failed run leaves no empty directory behind


def with_options(record: dict, defaults: dict, values: dict) -> dict:
    """``record`` plus each of ``values`` that differs from its entry in ``defaults``.

    For options added after a command's first release: a run that leaves them at
    their defaults records what it recorded before, so its earlier run directory
    still matches.
    """
    return {**record, **{k: v for k, v in values.items() if v != defaults[k]}}


def _remove_stale_stages(path: Path) -> None:
    """Remove the staging folders that killed runs left in ``path`` (their process is gone)."""
    for stage in path.glob(f"{STAGING}*"):
        pid = stage.name[len(STAGING):].split("-")[0]
        if stage.is_dir() and not (pid.isdigit() and _alive(int(pid))):
            shutil.rmtree(stage, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()  # only an empty directory: what the run wrote into it directly (stores) stays
    except OSError:
        pass


__all__ = ["MANIFEST", "OutputDir", "atomic_path", "check_not_an_input", "differing_keys", "normalise_settings", "with_options", "write_json",
           "write_text"]
