"""Chat conversations as token ids with a completion mask: which tokens the fine-tune learns.

A conversation is a list of ``{"role", "content"}`` turns ending with an assistant
turn (a JSON Lines record with ``"messages"``, as :func:`activation_cache.read_prompts`
reads them). Its *completion tokens* are the tokens of the last assistant turn
(``train_on="last"``) or of every assistant turn (``"all"``), end-of-turn marker
included, as the chat template renders them; everything else is prompt.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

from activation_cache.errors import InputError

__all__ = ["TRAIN_ON", "encode_conversation"]

TRAIN_ON = ("last", "all")


def _render(tokenizer, messages: Sequence[dict], generation: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation)


def encode_conversation(tokenizer, messages: Sequence[dict[str, Any]], train_on: Literal["last", "all"] = "last",
                        where: str = "conversation") -> tuple[list[int], list[bool]]:
    """``(ids, completion)``: the rendered conversation's token ids and, per token, whether it is a completion token.

    The character span of assistant turn i is what rendering turns ``[:i+1]`` adds to
    rendering ``[:i]`` with the generation prompt; tokens are assigned by their offsets.
    InputError (naming ``where``) when the tokenizer has no chat template, the last
    turn is not the assistant's, or the template does not render turns prefix-wise.
    """
    if train_on not in TRAIN_ON:
        raise InputError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(f"{where}: the tokenizer has no chat template (a base model?); give one with chat_template")
    if not messages or messages[-1].get("role") != "assistant":
        raise InputError(f"{where}: the last turn must be the assistant's (the completion to learn)")
    text = _render(tokenizer, messages, False)
    turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    spans = []
    for i in turns[-1:] if train_on == "last" else turns:
        start, end = _render(tokenizer, messages[:i], True), _render(tokenizer, messages[: i + 1], False)
        if not (text.startswith(start) and text.startswith(end) and len(end) > len(start)):
            raise InputError(f"{where}: the chat template does not render the conversation turn by turn "
                             "(its prefix changes with later turns); completion tokens cannot be located")
        spans.append((len(start), len(end)))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    completion = [any(a <= lo < b for a, b in spans) for lo, _ in enc["offset_mapping"]]
    if not any(completion):
        raise InputError(f"{where}: the assistant turn renders to no tokens")
    return list(enc["input_ids"]), completion
