"""Command-line flags generated from a settings dataclass, and the settings read back from them.

Every field made with :func:`activation_cache.settings.setting` becomes the flag
``--field-name`` with the field's default, type and help; :func:`settings_from`
builds the dataclass from the parsed flags. :func:`flag_mismatches` is the
check that a command's flags and its settings agree (the test runs it on every
console command).

Kept small and import-light on purpose: a command answers ``--help`` before
torch is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
import types
import typing
from typing import Any, Callable, Iterable, Union

from activation_cache.errors import InputError, cli_words
from activation_cache.settings import SETTING, Flag, flag_of
from ret_toolkit.cli.base import OneLineParser


def checked(check: Callable[[str], object] | str, default: object = None) -> Callable[[str], str]:
    """An argparse ``type`` that validates a flag with ``check`` at parse time and keeps its spelling.

    ``check`` may be ``"module:function"``, imported only when the flag is given: argparse
    also passes a text default through ``type``, and the default (``auto``) needs no check.
    """
    def parse(text: str) -> str:
        if text == default:
            return text
        fn = check
        if isinstance(fn, str):
            module, _, name = fn.partition(":")
            fn = getattr(importlib.import_module(module), name)
        try:
            with cli_words():
                fn(text)
        except InputError as e:
            # argparse already names the flag: "argument --device: 'cuda' is not available..."
            raise argparse.ArgumentTypeError(re.sub(r"^--[a-z-]+:? ", "", str(e))) from None
        return text

    return parse


def _parsed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def read(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{e}, got {text!r}") from None

    return read


def _chosen(words: dict[str, Any]) -> Callable[[str], Any]:
    def read(text: str) -> Any:
        if text not in words:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(words)})")
        return words[text]

    return read


class _Renamed(argparse.Action):
    """A flag that takes a value under its name and under deprecated aliases, which warn on stderr."""

    def __init__(self, option_strings, dest, aliases=(), **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.aliases = aliases

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.aliases:
            print(f"{parser.prog}: {option_string} is deprecated and will be removed; use {self.option_strings[0]}",
                  file=sys.stderr)
        setattr(namespace, self.dest, values)


class _AppendTuple(argparse.Action):
    """A repeatable flag of a tuple field: each use adds one value (the default stays an immutable tuple)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, (*(getattr(namespace, self.dest) or ()), values))


def _base_type(hint: Any) -> Any:
    """``int | None`` -> int, ``str | Sequence`` -> str: the type a flag's text becomes."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return str if str in args else args[0]
    return hint


def _add(target, f: dataclasses.Field, hint: Any) -> None:
    spec: Flag = f.metadata[SETTING]
    flag = flag_of(f.name)
    required = f.default is dataclasses.MISSING
    kw: dict[str, Any] = dict(dest=f.name, help=spec.help)
    if not required:
        kw["default"] = f.default
    else:
        kw["required"] = True
    if spec.metavar:
        kw["metavar"] = spec.metavar
    base = _base_type(hint)
    if isinstance(spec.choices, dict):
        kw.update(type=_chosen(dict(spec.choices)), metavar=spec.metavar or "{" + ",".join(spec.choices) + "}")
    elif spec.repeat:
        kw["action"] = _AppendTuple
    elif base is bool:
        kw["action"] = argparse.BooleanOptionalAction if f.default is True else "store_true"
    elif spec.parse is not None:
        kw["type"] = _parsed(spec.parse)
    elif spec.check is not None:
        kw["type"] = checked(spec.check, f.default)
    elif base in (int, float):
        kw["type"] = base
    if spec.choices is not None and not isinstance(spec.choices, dict):
        kw["choices"] = list(spec.choices)
    if spec.aliases:
        if "action" in kw:
            raise TypeError(f"{flag}: deprecated aliases are for flags that take a value")
        kw.update(action=_Renamed, aliases=spec.aliases)
    action = target.add_argument(flag, *spec.aliases, **kw)
    if spec.aliases:
        # Help and error messages name the flag alone; the parser still matches the aliases
        # (it looks them up in its own table, filled above).
        action.option_strings = [flag]


def add_settings(parser: argparse.ArgumentParser, cls: type, *, skip: Iterable[str] = ()) -> None:
    """One flag per :func:`~activation_cache.settings.setting` field of ``cls`` (except ``skip``).

    Fields with a ``group`` go into that ``--help`` section (shared between calls on one parser).
    """
    hints = typing.get_type_hints(cls)
    groups = parser.__dict__.setdefault("_setting_groups", {})
    skip = set(skip)
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(SETTING)
        if spec is None or not spec.cli or f.name in skip:
            continue
        if spec.group and spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(spec.group)
        _add(groups[spec.group] if spec.group else parser, f, hints[f.name])


def settings_parser(prog: str, description: str, settings: Iterable[type]) -> argparse.ArgumentParser:
    """A command's parser: one flag per field of each settings class, then ``--quiet`` (no progress bars)."""
    p = OneLineParser(prog=prog, description=description)
    for cls in settings:
        add_settings(p, cls)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def settings_from(cls: type, args: argparse.Namespace, **given: Any) -> Any:
    """``cls`` built from the parsed flags of its fields, plus ``given`` (fields the command sets itself)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return cls(**{**values, **given})


#: Flags every command has that are not settings of its job.
STANDARD_FLAGS = frozenset({"help", "version"})


def flag_mismatches(parser: argparse.ArgumentParser, settings: Iterable[type], command_flags: Iterable[str] = ()
                    ) -> list[str]:
    """Every way the flags of ``parser`` differ from the fields of ``settings`` (empty when they agree).

    Each flag must be the field of the same name with dashes, with the field's
    default (a required flag for a field without one), unless it is one of
    ``command_flags``: how the command runs (``--quiet``, ``--dry-run``), not what the job is.
    """
    fields = {f.name: f for cls in settings for f in dataclasses.fields(cls)}
    own = STANDARD_FLAGS | set(command_flags)
    problems = []
    for action in parser._actions:
        if action.dest in own:
            continue
        f = fields.get(action.dest)
        if f is None:
            problems.append(f"{'/'.join(action.option_strings) or action.dest}: no settings field {action.dest!r}")
            continue
        if flag_of(f.name) not in action.option_strings:
            problems.append(f"field {f.name!r}: flag {flag_of(f.name)} missing (has {', '.join(action.option_strings)})")
        if f.default is dataclasses.MISSING:
            if not action.required:
                problems.append(f"{flag_of(f.name)}: field {f.name!r} is required but the flag is optional")
        elif action.default != f.default or type(action.default) is not type(f.default):
            problems.append(f"{flag_of(f.name)}: default {action.default!r} but field {f.name!r} has {f.default!r}")
    return problems
