"""Tests for activation_cache.prompts: file formats, errors, built-in sets, rendering."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from activation_cache.errors import InputError
from activation_cache.prompts import Prompt, builtin_prompt_sets, read_prompts, render_prompt

SETS_DIR = Path(__file__).resolve().parents[1] / "activation_cache" / "prompt_sets"
CATEGORIES = {"arithmetic", "word_problem", "unit_conversion", "factual",
              "step_by_step", "comparison", "sequence", "logic"}


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(path: Path, *records) -> Path:
    """Write records (dicts, or raw strings for broken lines) one a line."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    return write(path, "\n".join(lines) + "\n")


def raises_input_error(spec, *fragments) -> str:
    """read_prompts(spec) must raise a one-line InputError containing fragments."""
    with pytest.raises(InputError) as info:
        read_prompts(spec)
    msg = str(info.value)
    assert "\n" not in msg
    for frag in fragments:
        assert str(frag) in msg, (frag, msg)
    return msg


# ---------------------------------------------------------------- happy paths


def test_txt_file(tmp_path):
    p = write(tmp_path / "qs.txt", "What is 2 + 2?\n\n   \nName a colour.\r\nLast line")
    prompts = read_prompts(p)
    assert [x.text for x in prompts] == ["What is 2 + 2?", "Name a colour.", "Last line"]
    assert [x.prompt_id for x in prompts] == ["qs:1", "qs:4", "qs:5"]
    assert all(x.messages is None and x.meta == {} for x in prompts)
    assert prompts[1].source == f"{p}:4"


def test_str_path_and_utf8(tmp_path):
    p = write(tmp_path / "u.txt", "\ufeffWas ist größer: 3 oder 4?\n")
    [prompt] = read_prompts(str(p))
    assert prompt.text == "Was ist größer: 3 oder 4?"


def test_jsonl_text_messages_and_meta(tmp_path):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    p = jsonl(tmp_path / "set.jsonl",
              {"id": "a1", "text": "Q one", "answer": "7", "n": 3, "ok": True,
               "extra": {"b": [1, 2], "a": None}},
              {"messages": msgs, "category": "chat"},
              {"id": 42, "text": "Q three"})
    a, b, c = read_prompts(p)
    assert (a.prompt_id, a.text, a.messages) == ("a1", "Q one", None)
    assert a.meta == {"answer": "7", "n": "3", "ok": "true",
                      "extra": '{"a": null, "b": [1, 2]}'}
    assert b.prompt_id == "set:2" and b.text is None
    assert b.messages == tuple(msgs) and b.meta == {"category": "chat"}
    assert c.prompt_id == "42" and c.meta == {}
    assert all(isinstance(v, str) for x in (a, b, c) for v in x.meta.values())


def test_ids_stable_and_unique(tmp_path):
    p = jsonl(tmp_path / "s.jsonl", {"text": "x"}, "", {"text": "y"}, {"id": "s:9", "text": "z"})
    first, second = read_prompts(p), read_prompts(p)
    assert first == second
    assert [x.prompt_id for x in first] == ["s:1", "s:3", "s:9"]


# ---------------------------------------------------------------- file errors


def test_missing_file(tmp_path):
    raises_input_error(tmp_path / "nope.txt", "prompt file not found", "nope.txt")


def test_directory(tmp_path):
    raises_input_error(tmp_path, str(tmp_path), "directory")


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
@pytest.mark.parametrize("name", ["e.txt", "e.jsonl"])
def test_empty_file(tmp_path, name, content):
    p = write(tmp_path / name, content)
    raises_input_error(p, f"prompt file {p} contains no prompts")


def test_unknown_extension(tmp_path):
    p = write(tmp_path / "prompts.csv", "a,b\n")
    raises_input_error(p, str(p), ".txt or .jsonl expected")


def test_bad_utf8(tmp_path):
    p = write(tmp_path / "bad.txt", b"fine\nbad \xff byte\n")
    raises_input_error(p, f"{p}:2", "UTF-8")


# ---------------------------------------------------------------- record errors


@pytest.mark.parametrize("bad, fragment", [
    ('{"text": "unterminated', "malformed JSON"),
    ('["text", "x"]', "JSON object"),
    ('"just a string"', "JSON object"),
    ('{"category": "x"}', "neither"),
    ('{"text": "x", "messages": [{"role": "user", "content": "y"}]}', "both"),
    ('{"text": ""}', "non-empty string"),
    ('{"text": "   "}', "non-empty string"),
    ('{"text": 5}', "non-empty string"),
    ('{"messages": []}', "non-empty list"),
    ('{"messages": "hi"}', "non-empty list"),
    ('{"messages": [{"role": "user"}]}', "messages[0]"),
    ('{"messages": [{"role": "user", "content": "a"}, "b"]}', "messages[1]"),
    ('{"messages": [{"role": "robot", "content": "a"}]}', "robot"),
    ('{"messages": [{"role": "user", "content": 3}]}', "content"),
    ('{"id": [1], "text": "x"}', '"id"'),
    ('{"id": "", "text": "x"}', '"id"'),
    # strings HDF5 cannot hold: refused with the prompt id and the field
    ('{"id": "q7", "text": "a\\u0000b"}', "'q7': field 'text' contains a NUL character"),
    ('{"id": "a\\u0000", "text": "x"}', "field 'id' contains a NUL character"),
    ('{"id": "q7", "text": "x", "note": "\\ud800"}', "'q7': field 'note' contains a lone surrogate (\\ud800)"),
    ('{"id": "q7", "text": "\\udfff"}', "field 'text' contains a lone surrogate"),
    ('{"id": "q7", "messages": [{"role": "user", "content": "\\u0000"}]}', "field 'messages[0].content'"),
    ('{"id": "q7", "text": "x", "a/b": "y"}', "field named 'a/b'"),
    ('{"id": "q7", "text": "x", "": "y"}', "field named ''"),
])
def test_bad_record_names_file_and_line(tmp_path, bad, fragment):
    p = jsonl(tmp_path / "r.jsonl", {"text": "good"}, bad)
    raises_input_error(p, f"{p}:2", fragment)


def test_duplicate_ids_name_both_lines(tmp_path):
    p = jsonl(tmp_path / "d.jsonl", {"id": "q", "text": "a"}, {"text": "b"},
              {"id": "q", "text": "c"})
    raises_input_error(p, f"{p}:3", "duplicate", "'q'", "line 1")


# ---------------------------------------------------------------- built-in sets


def test_builtin_sets_listed():
    assert {"reasoning", "chat"} <= set(builtin_prompt_sets())


def test_builtin_reasoning():
    prompts = read_prompts("builtin:reasoning")
    assert len(prompts) >= 240
    ids = [p.prompt_id for p in prompts]
    assert len(set(ids)) == len(ids)
    assert len({p.text for p in prompts}) == len(prompts)
    assert {p.meta["category"] for p in prompts} == CATEGORIES
    assert all(p.text and p.messages is None for p in prompts)
    assert all(set(p.meta) <= {"category", "answer"} for p in prompts)
    assert sum("answer" in p.meta for p in prompts) >= 200
    assert read_prompts("reasoning") == prompts  # bare name when no such file


def test_builtin_heldout_is_fresh():
    """The held-out set shares no text or id with ``reasoning`` and covers its templated categories."""
    held, base = read_prompts("builtin:reasoning_heldout"), read_prompts("builtin:reasoning")
    assert len(held) >= 400
    assert not {p.text for p in held} & {p.text for p in base}
    assert not {p.prompt_id for p in held} & {p.prompt_id for p in base}
    assert len({p.text for p in held}) == len(held)
    assert {p.meta["category"] for p in held} == CATEGORIES - {"factual"}


def test_builtin_chat_set_has_messages():
    prompts = read_prompts("builtin:chat")
    assert prompts and all(p.messages and p.text is None for p in prompts)


def test_bare_name_prefers_existing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "reasoning", "x\n")  # exists, so it is read as a file
    raises_input_error("reasoning", ".txt or .jsonl expected")


def test_unknown_builtin_lists_available():
    raises_input_error("builtin:nope", "nope", "reasoning", "chat")


def test_generator_reproduces_committed_sets():
    spec = importlib.util.spec_from_file_location("make_reasoning", SETS_DIR / "make_reasoning.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, build in mod.OUTPUTS.items():
        assert mod.render(build()) == (SETS_DIR / name).read_text(encoding="utf-8"), name


# ---------------------------------------------------------------- rendering

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def tiny_tokenizer(chat_template: str | None = TEMPLATE):
    """A word-level tokenizer built in memory, optionally with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "hello", "world"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")
    fast.chat_template = chat_template
    return fast


def prompt(text=None, messages=None) -> Prompt:
    return Prompt(prompt_id="p1", text=text, messages=messages, meta={}, source="f.jsonl:3")


def test_render_text_plain_and_chat():
    tok = tiny_tokenizer()
    assert render_prompt(prompt(text="hello world"), tok) == "hello world"
    assert render_prompt(prompt(text="hello"), tok, chat=True) == "<user>hello</s><assistant>"


def test_render_messages():
    msgs = ({"role": "system", "content": "S"}, {"role": "user", "content": "U"})
    out = render_prompt(prompt(messages=msgs), tiny_tokenizer(), chat=False)
    assert out == "<system>S</s><user>U</s><assistant>"


def test_render_from_file(tmp_path):
    p = jsonl(tmp_path / "c.jsonl", {"messages": [{"role": "user", "content": "hi"}]})
    [x] = read_prompts(p)
    assert render_prompt(x, tiny_tokenizer()) == "<user>hi</s><assistant>"


@pytest.mark.parametrize("kwargs, chat", [
    ({"messages": ({"role": "user", "content": "U"},)}, False),
    ({"text": "hello"}, True),
])
def test_render_without_chat_template(kwargs, chat):
    tok = tiny_tokenizer(chat_template=None)
    with pytest.raises(InputError) as info:
        render_prompt(prompt(**kwargs), tok, chat=chat)
    msg = str(info.value)
    assert "f.jsonl:3" in msg and "chat_template" in msg and "\n" not in msg
    assert render_prompt(prompt(text="hello"), tok) == "hello"  # plain text still fine


def test_render_template_error_is_input_error():
    tok = tiny_tokenizer("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(InputError, match="f.jsonl:3.*roles must alternate"):
        render_prompt(prompt(text="hello"), tok, chat=True)
