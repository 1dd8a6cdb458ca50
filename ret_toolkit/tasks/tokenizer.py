"""A word-level tokenizer for task vocabularies: one token per whitespace-separated word.

Token ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3, then the vocabulary in order.
Encoding prepends ``<bos>``; decoding joins words with single spaces, so
``tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text`` for any text of
vocabulary words separated by single spaces.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

__all__ = ["SPECIAL_TOKENS", "task_tokenizer"]

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")

# The WordPiece decoder is the stock decoder that joins tokens with a space; it glues a
# token that starts with this prefix to the previous one, so no vocab word may start with it.
_CONTINUATION_PREFIX = "##"


def task_tokenizer(vocab: list[str]) -> PreTrainedTokenizerFast:
    """Word-level ``PreTrainedTokenizerFast`` over ``SPECIAL_TOKENS + vocab``.

    Left padding (generation batches end at the prompt's last word), ``<bos>`` prepended to
    every encoded text, and no clean-up of spaces on decode (it would turn ``"cat ."`` into
    ``"cat."``). Saves and loads with ``save_pretrained`` / ``AutoTokenizer.from_pretrained``.

    Raises ValueError for an empty vocabulary, duplicate words, words that are empty, contain
    whitespace, are special tokens or start with ``"##"``.
    """
    vocab = list(vocab)
    _check_vocab(vocab)
    ids = {w: i for i, w in enumerate([*SPECIAL_TOKENS, *vocab])}
    pad, bos, eos, unk = SPECIAL_TOKENS

    core = Tokenizer(models.WordLevel(vocab=ids, unk_token=unk))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, ids[bos])])
    core.decoder = decoders.WordPiece(prefix=_CONTINUATION_PREFIX, cleanup=False)
    # Registering the specials makes skip_special_tokens drop them on decode.
    core.add_special_tokens(list(SPECIAL_TOKENS))

    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk,
        padding_side="left", clean_up_tokenization_spaces=False)


def _check_vocab(vocab: list[str]) -> None:
    if not vocab:
        raise ValueError("vocab is empty")
    seen = set()
    for w in vocab:
        if not isinstance(w, str) or not w or w != w.strip() or len(w.split()) != 1:
            raise ValueError(f"vocab word {w!r} must be a non-empty string without whitespace")
        if w in SPECIAL_TOKENS:
            raise ValueError(f"vocab word {w!r} is a special token; leave specials out of the vocab")
        if w.startswith(_CONTINUATION_PREFIX):
            raise ValueError(f"vocab word {w!r} starts with {_CONTINUATION_PREFIX!r}, "
                             f"which the decoder would glue to the previous word")
        if w in seen:
            raise ValueError(f"vocab word {w!r} appears twice")
        seen.add(w)
