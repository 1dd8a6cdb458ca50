"""Prompt sources: plain-text files, JSON Lines files and built-in sets.

A prompt source is named by a *spec*:

- ``prompts.txt``: one prompt a line; blank lines are skipped.
- ``prompts.jsonl``: one JSON object a line with either ``"text"`` (a string)
  or ``"messages"`` (chat turns ``[{"role": ..., "content": ...}, ...]``), an
  optional ``"id"`` and any other fields, which are carried into
  :attr:`Prompt.meta` (and from there into the HDF5 store's ``/meta``).
- ``builtin:reasoning`` (or just ``reasoning`` when no such file exists): a
  set shipped in ``activation_cache/prompt_sets/``; see
  :func:`builtin_prompt_sets`.

Every problem with the input raises :class:`~activation_cache.errors.InputError`
with a one-line message naming the file (and line).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

from activation_cache.errors import InputError, option

__all__ = ["Prompt", "read_prompts", "builtin_prompt_sets", "render_prompt", "read_chat_template", "ROLES"]

ROLES = ("user", "system", "assistant")
BUILTIN_PREFIX = "builtin:"
_EXTENSIONS = (".txt", ".jsonl")


@dataclass(frozen=True)
class Prompt:
    """One prompt: plain ``text`` or chat ``messages`` (exactly one is set).

    ``prompt_id`` is the record's ``"id"`` (as a string) or, without one,
    ``"<file stem>:<line number>"``. ``meta`` holds every other input field as
    a string (non-strings JSON-encoded with sorted keys). ``source`` is
    ``"path:line"`` for error messages.
    """

    prompt_id: str
    text: str | None
    messages: tuple[dict, ...] | None
    meta: dict[str, str]
    source: str


def builtin_prompt_sets() -> list[str]:
    """Names of the prompt sets shipped with the package, sorted."""
    return sorted(p.name[: -len(".jsonl")] for p in _builtin_dir().iterdir()
                  if p.name.endswith(".jsonl"))


def read_prompts(spec: str | os.PathLike) -> list[Prompt]:
    """Read prompts from a ``.txt`` / ``.jsonl`` file or a built-in set name.

    Raises :class:`InputError` (one line, naming file and line) for a missing
    or empty file, malformed records, duplicate ids or an unknown set.
    """
    text_spec = os.fspath(spec)
    if isinstance(spec, str) and spec.startswith(BUILTIN_PREFIX):
        return _read_file(_builtin_path(spec[len(BUILTIN_PREFIX):]))
    path = Path(text_spec).expanduser()
    if not path.exists():
        if isinstance(spec, str) and spec in builtin_prompt_sets():
            return _read_file(_builtin_path(spec))
        sets = ", ".join(builtin_prompt_sets())
        raise InputError(f"prompt file not found: {path} "
                         f"(built-in sets: {sets}; use builtin:<name>)")
    return _read_file(path)


def render_prompt(prompt: Prompt, tokenizer, chat: bool = False) -> str:
    """The string to feed the model for ``prompt``.

    Chat messages (or plain text when ``chat=True``, wrapped as one user turn)
    go through ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``;
    plain text with ``chat=False`` is returned unchanged.
    """
    if prompt.messages is None and not chat:
        return prompt.text
    messages = (list(prompt.messages) if prompt.messages is not None
                else [{"role": "user", "content": prompt.text}])
    if not getattr(tokenizer, "chat_template", None):
        why = "has chat messages" if prompt.messages is not None else "is to be rendered as chat"
        raise InputError(f"{prompt.source}: prompt {prompt.prompt_id!r} {why} but the model's tokenizer has no "
                         f"chat template (a base model?): give one with {option('chat_template', flag='--chat-template FILE')}")
    from jinja2 import TemplateError  # a dependency of transformers' chat templates

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
    except TemplateError as e:  # e.g. the template rejects the turn order
        raise InputError(f"{prompt.source}: chat template failed for prompt "
                         f"{prompt.prompt_id!r}: {_one_line(e)}") from e


def read_chat_template(spec: str | os.PathLike) -> str:
    """The Jinja text of a chat template given as a file path or as the template itself.

    A string that contains ``{{`` or ``{%`` is the template (as vLLM's
    ``--chat-template`` accepts it); anything else is a path to a ``.jinja`` file
    (``transformers`` saves a tokenizer's template as ``chat_template.jinja``).
    The template must parse, so a broken file is refused before a model loads.

    Raises:
        InputError: a missing, unreadable or empty file, or a template that does not parse.
    """
    text = os.fspath(spec)
    where = "the chat template"
    if "{{" not in text and "{%" not in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise InputError(f"chat template file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read chat template {path}: {_one_line(e)}") from e
        where = str(path)
        if not text.strip():
            raise InputError(f"{path}: chat template is empty")
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:  # parsed as transformers compiles it (sandboxed, with loop controls)
        ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(text)
    except TemplateSyntaxError as e:
        raise InputError(f"{where}:{e.lineno}: chat template does not parse: {e.message}") from e
    return text


# --------------------------------------------------------------------------
# file reading


def _builtin_dir():
    return resources.files("activation_cache") / "prompt_sets"


def _builtin_path(name: str) -> Path:
    """Path of built-in set ``name``, or InputError listing the available ones."""
    available = builtin_prompt_sets()
    if name not in available:
        raise InputError(f"unknown built-in prompt set {name!r} "
                         f"(available: {', '.join(available)})")
    return Path(os.fspath(_builtin_dir() / f"{name}.jsonl"))


def _read_file(path: Path) -> list[Prompt]:
    """Parse one prompt file and check ids are unique."""
    if path.is_dir():
        raise InputError(f"prompt file {path} is a directory, not a file")
    ext = path.suffix.lower()
    if ext not in _EXTENSIONS:
        raise InputError(f"prompt file {path} has unknown extension "
                         f"{path.suffix or '(none)'!r}: .txt or .jsonl expected")
    parse = _parse_txt_line if ext == ".txt" else _parse_jsonl_line
    prompts, first_seen = [], {}
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        prompt = parse(line, path, lineno)
        if prompt.prompt_id in first_seen:
            raise InputError(f"{path}:{lineno}: duplicate prompt id "
                             f"{prompt.prompt_id!r} (first on line {first_seen[prompt.prompt_id]})")
        first_seen[prompt.prompt_id] = lineno
        prompts.append(prompt)
    if not prompts:
        raise InputError(f"prompt file {path} contains no prompts")
    return prompts


def text_lines(path: Path, what: str = "prompt file"):
    """Yield ``(1-based line number, line without its line ending)`` decoded as UTF-8.

    InputError (one line, naming ``what`` and the path) for an unreadable file, or
    ``FILE:LINE`` for a line that is not valid UTF-8. A leading byte-order mark is dropped.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {what} {path}: {e.strerror or e}") from e
    if data.startswith(b"\xef\xbb\xbf"):  # tolerate a UTF-8 byte-order mark
        data = data[3:]
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        try:
            yield lineno, raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise InputError(f"{path}:{lineno}: not valid UTF-8 "
                             f"(byte {e.start + 1} of the line)") from None


def _parse_txt_line(line: str, path: Path, lineno: int) -> Prompt:
    return Prompt(prompt_id=f"{path.stem}:{lineno}", text=line, messages=None,
                  meta={}, source=f"{path}:{lineno}")


def _parse_jsonl_line(line: str, path: Path, lineno: int) -> Prompt:
    where = f"{path}:{lineno}"
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
    return _parse_record(rec, path.stem, lineno, where)


def _parse_record(rec, stem: str, lineno: int, where: str) -> Prompt:
    if not isinstance(rec, dict):
        raise InputError(f"{where}: expected a JSON object, got {_json_type(rec)}")
    has_text, has_messages = "text" in rec, "messages" in rec
    if has_text == has_messages:
        which = "both" if has_text else "neither"
        raise InputError(f'{where}: record has {which} of "text" and "messages" '
                         f"(exactly one is required)")
    text = messages = None
    if has_text:
        text = rec["text"]
        if not isinstance(text, str) or not text.strip():
            raise InputError(f'{where}: "text" must be a non-empty string')
    else:
        messages = _check_messages(rec["messages"], where)
    prompt = Prompt(prompt_id=_prompt_id(rec, stem, lineno, where), text=text,
                    messages=messages, meta=_meta(rec), source=where)
    _check_storable(prompt, where)
    return prompt


def _check_storable(prompt: Prompt, where: str) -> None:
    """InputError naming the prompt and field if a string cannot go into the store.

    HDF5 stores UTF-8 strings that end at a NUL, and a lone surrogate (which JSON's
    ``\\udXXX`` escapes can produce) has no UTF-8 form: such input is refused, not altered.
    Field names become ``/meta/<field>`` datasets, so they may not hold ``/`` either.
    """
    fields = [("id", prompt.prompt_id), ("text", prompt.text or "")]
    fields += [(f"messages[{i}].content", m["content"]) for i, m in enumerate(prompt.messages or ())]
    fields += [(name, value) for name, value in prompt.meta.items()]
    for name in prompt.meta:
        if not name.strip() or "/" in name or name == "." or _unstorable(name):
            raise InputError(f"{where}: prompt {prompt.prompt_id!r} has a field named {name!r}; field names "
                             "must be non-empty, without '/', NUL characters or lone surrogates")
    for name, value in fields:
        bad = _unstorable(value)
        if bad:
            raise InputError(f"{where}: prompt {prompt.prompt_id!r}: field {name!r} contains {bad}, "
                             "which HDF5 strings cannot hold; remove it from the input")


def _unstorable(text: str) -> str | None:
    """What in ``text`` HDF5 cannot store as UTF-8 ("a NUL character", "a lone surrogate"), or None."""
    if "\x00" in text:
        return "a NUL character (\\u0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"a lone surrogate (\\u{ord(text[e.start]):04x})"
    return None


def prompts_from_records(records: Sequence[str | dict | Prompt], name: str = "prompts") -> list[Prompt]:
    """Prompts held in memory: plain strings, JSONL-style records or :class:`Prompt` objects.

    A string is a text prompt with id ``"<name>:<i>"`` (1-based); a dict follows
    the ``.jsonl`` rules (``text`` or ``messages``, optional ``id``, other fields
    to ``meta``). Errors name ``<name>[i]``; ids must be unique.
    """
    prompts, first_seen = [], {}
    for i, rec in enumerate(records):
        where = f"{name}[{i}]"
        if isinstance(rec, Prompt):
            prompt = rec
            _check_storable(prompt, where)
        elif isinstance(rec, str):
            if not rec.strip():
                raise InputError(f"{where}: empty prompt")
            prompt = Prompt(prompt_id=f"{name}:{i + 1}", text=rec, messages=None, meta={}, source=where)
            _check_storable(prompt, where)
        else:
            prompt = _parse_record(rec, name, i + 1, where)
        if prompt.prompt_id in first_seen:
            raise InputError(f"{where}: duplicate prompt id {prompt.prompt_id!r} (first at {name}[{first_seen[prompt.prompt_id]}])")
        first_seen[prompt.prompt_id] = i
        prompts.append(prompt)
    if not prompts:
        raise InputError(f"no prompts in {name}")
    return prompts


def _check_messages(value, where: str) -> tuple[dict, ...]:
    """Validate chat turns; return them as a tuple of fresh {role, content} dicts."""
    if not isinstance(value, list) or not value:
        raise InputError(f'{where}: "messages" must be a non-empty list of '
                         f'{{"role", "content"}} objects')
    turns = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise InputError(f'{where}: messages[{i}] must be an object with exactly '
                             f'"role" and "content"')
        if m["role"] not in ROLES:
            raise InputError(f"{where}: messages[{i}] has role {m['role']!r}, "
                             f"expected one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise InputError(f'{where}: messages[{i}] "content" must be a string')
        turns.append({"role": m["role"], "content": m["content"]})
    return tuple(turns)


def _prompt_id(rec: dict, stem: str, lineno: int, where: str) -> str:
    if "id" not in rec:
        return f"{stem}:{lineno}"
    value = rec["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise InputError(f'{where}: "id" must be a non-empty string or an integer')
    return str(value)


def _meta(rec: dict) -> dict[str, str]:
    """Every field except text/messages/id, as strings (JSON for non-strings)."""
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False)
            for k, v in rec.items() if k not in ("text", "messages", "id")}


def _json_type(value) -> str:
    return {list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__
