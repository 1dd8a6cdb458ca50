"""Sentences from a probabilistic context-free grammar, an Earley recognizer, and the grammar task.

The grammar task asks the model to finish a sentence: the prompt is the first words of a
sentence sampled from the PCFG, the target is the rest followed by ``"."``. Any grammatical
completion counts, not just the reference one.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np

from ret_toolkit.tasks.base import Task, TaskSample, words_until_stop

__all__ = ["PCFG", "DEFAULT_GRAMMAR", "GrammarTask"]

Rhs = tuple[str, ...]


@dataclass
class PCFG:
    """A probabilistic context-free grammar over words.

    Attributes:
        rules: nonterminal -> ``[(probability, right-hand side), ...]``. The keys are the
            nonterminals; every other symbol on a right-hand side is a terminal word.
            Each nonterminal's probabilities sum to 1 (within 1e-6); right-hand sides are
            non-empty (no epsilon rules).
        start: the start nonterminal.

    Raises ValueError on construction for bad probabilities, empty right-hand sides,
    terminals containing whitespace, an unknown start symbol, or a nonterminal that can
    never finish (derives no finite word string).
    """

    rules: dict[str, list[tuple[float, Rhs]]]
    start: str = "S"

    def __post_init__(self):
        if not isinstance(self.rules, dict) or not self.rules:
            raise ValueError("rules must be a non-empty dict: nonterminal -> [(prob, rhs), ...]")
        if self.start not in self.rules:
            raise ValueError(f"start symbol {self.start!r} has no rules")
        checked = {}
        for lhs, alts in self.rules.items():
            if not isinstance(lhs, str) or not lhs or len(lhs.split()) != 1:
                raise ValueError(f"nonterminal {lhs!r} must be a non-empty word without spaces")
            if not alts:
                raise ValueError(f"nonterminal {lhs!r} has no alternatives")
            checked[lhs] = [self._check_alt(lhs, alt) for alt in alts]
        self.rules = checked
        for lhs, alts in self.rules.items():
            total = sum(p for p, _ in alts)
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"probabilities of {lhs!r} sum to {total:.9g}, not 1")
        # Cumulative probabilities, for one uniform draw per expansion (much cheaper than rng.choice).
        self._cum = {lhs: np.cumsum([p for p, _ in alts]).tolist() for lhs, alts in self.rules.items()}
        self._fallback = self._shortest_alternatives()

    # ------------------------------------------------------------------ construction checks

    @staticmethod
    def _check_alt(lhs: str, alt) -> tuple[float, Rhs]:
        try:
            p, rhs = alt
        except (TypeError, ValueError):
            raise ValueError(f"rule of {lhs!r} must be a (probability, rhs) pair, got {alt!r}") from None
        if isinstance(rhs, str):
            rhs = (rhs,)  # a lone word written without the tuple
        rhs = tuple(rhs)
        if not rhs:
            raise ValueError(f"rule of {lhs!r} has an empty right-hand side (epsilon rules are not supported)")
        for sym in rhs:
            if not isinstance(sym, str) or not sym or len(sym.split()) != 1 or sym != sym.strip():
                raise ValueError(f"symbol {sym!r} in a rule of {lhs!r} must be a non-empty word without spaces")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p < 0:
            raise ValueError(f"probability {p!r} of {lhs!r} -> {' '.join(rhs)} must be a finite number >= 0")
        return float(p), rhs

    def _shortest_alternatives(self) -> dict[str, int]:
        """For each nonterminal, the alternative of least derivation height (ties: fewest words).

        Expanding always by these alternatives strictly lowers the height at every step, so it
        terminates; that is what sampling falls back to when the depth budget runs out.
        """
        inf = (math.inf, math.inf)
        best: dict[str, tuple[float, float]] = {a: inf for a in self.rules}  # (height, words)

        def cost(rhs):
            parts = [best[s] if s in self.rules else (0, 1) for s in rhs]
            return (1 + max(h for h, _ in parts), sum(n for _, n in parts))

        changed = True
        while changed:  # Bellman-Ford style fixed point; the grammar is small
            changed = False
            for lhs, alts in self.rules.items():
                c = min(cost(rhs) for p, rhs in alts if p > 0) if any(p > 0 for p, _ in alts) else inf
                if c < best[lhs]:
                    best[lhs], changed = c, True
        stuck = sorted(a for a, c in best.items() if c == inf)
        if stuck:
            raise ValueError(f"nonterminal(s) {stuck} can never finish: every alternative recurses forever")
        return {lhs: min((i for i, (p, _) in enumerate(alts) if p > 0), key=lambda i: cost(alts[i][1]))
                for lhs, alts in self.rules.items()}

    # ------------------------------------------------------------------ queries

    @property
    def nonterminals(self) -> list[str]:
        return list(self.rules)

    def terminals(self) -> list[str]:
        """All terminal words in first-appearance order over the rules."""
        seen: dict[str, None] = {}
        for alts in self.rules.values():
            for _, rhs in alts:
                for sym in rhs:
                    if sym not in self.rules:
                        seen.setdefault(sym)
        return list(seen)

    # ------------------------------------------------------------------ sampling

    def sample_words(self, rng: np.random.Generator, max_depth: int = 6, max_words: int = 40,
                     max_tries: int = 1000) -> list[str]:
        """One sentence as a list of words.

        Nonterminals at levels 0 .. max_depth - 1 of the derivation tree (the start symbol is
        level 0) expand at random by their probabilities; deeper ones by their shortest
        alternative, which keeps recursive rules (``NP -> NP PP``) from running away.
        Sentences longer than ``max_words`` are redrawn (at most ``max_tries`` times, then RuntimeError).
        """
        if max_depth < 1 or max_words < 1 or max_tries < 1:
            raise ValueError("max_depth, max_words and max_tries must be >= 1")
        for _ in range(max_tries):
            words: list[str] = []
            if self._expand(self.start, rng, max_depth, words, max_words):
                return words
        raise RuntimeError(f"no sentence of at most {max_words} words in {max_tries} draws")

    def _expand(self, sym: str, rng, depth: int, out: list[str], max_words: int) -> bool:
        """Append a derivation of ``sym`` to ``out``; False as soon as it passes ``max_words``."""
        alts = self.rules.get(sym)
        if alts is None:
            out.append(sym)
            return len(out) <= max_words
        if depth > 0:
            i = min(bisect.bisect_right(self._cum[sym], rng.random() * self._cum[sym][-1]), len(alts) - 1)
            # Skip zero-probability alternatives that float rounding could land on.
            if alts[i][0] == 0:
                i = self._fallback[sym]
        else:
            i = self._fallback[sym]
        return all(self._expand(s, rng, depth - 1, out, max_words) for s in alts[i][1])

    # ------------------------------------------------------------------ recognizing

    def is_grammatical(self, words: list[str]) -> bool:
        """Whether ``words`` derive from the start symbol (Earley recognizer; any grammar here).

        Rules of probability 0 still count as rules. The empty sentence is never grammatical
        (there are no epsilon rules).
        """
        words = list(words)
        n = len(words)
        if n == 0:
            return False
        # chart[i]: items (lhs, rhs, dot, origin) with rhs[:dot] spanning words[origin:i].
        chart: list[dict] = [dict() for _ in range(n + 1)]
        # waiting[i][B]: items in chart[i] whose next symbol is nonterminal B (for completion).
        waiting: list[dict[str, list]] = [dict() for _ in range(n + 1)]

        for _, rhs in self.rules[self.start]:
            chart[0][(self.start, rhs, 0, 0)] = None
        for pos in range(n + 1):
            agenda = list(chart[pos])  # chart[pos] so far: items scanned in from pos - 1

            def add(item):  # a new item at pos: record it and process it in this round
                if item not in chart[pos]:
                    chart[pos][item] = None
                    agenda.append(item)

            predicted = set()
            while agenda:
                lhs, rhs, dot, origin = agenda.pop()
                if dot < len(rhs):
                    sym = rhs[dot]
                    if sym in self.rules:
                        waiting[pos].setdefault(sym, []).append((lhs, rhs, dot, origin))
                        if sym not in predicted:
                            predicted.add(sym)
                            for _, alt in self.rules[sym]:
                                add((sym, alt, 0, pos))
                    elif pos < n and words[pos] == sym:
                        chart[pos + 1][(lhs, rhs, dot + 1, origin)] = None
                else:
                    # No epsilon rules, so origin < pos and chart[origin] is already complete.
                    for plhs, prhs, pdot, porigin in waiting[origin].get(lhs, ()):
                        add((plhs, prhs, pdot + 1, porigin))
            if pos < n and not chart[pos + 1]:
                return False  # no item scanned this word: nothing can recover
        return any(lhs == self.start and dot == len(rhs) and origin == 0
                   for lhs, rhs, dot, origin in chart[n])


def _words(*ws: str) -> list[tuple[float, Rhs]]:
    """Equiprobable one-word alternatives."""
    return [(1.0 / len(ws), (w,)) for w in ws]


#: An English-like toy grammar: sentences ``NP VP`` with prepositional phrases and relative
#: clauses (``the dog that saw a cat ...``) for nesting. No word belongs to two classes, so
#: swapping words of different classes almost always breaks the sentence.
DEFAULT_GRAMMAR = PCFG(
    rules={
        "S": [(1.0, ("NP", "VP"))],
        "NP": [(0.50, ("Det", "N")),
               (0.25, ("Det", "Adj", "N")),
               (0.15, ("NP", "PP")),
               (0.10, ("NP", "that", "VP"))],
        "VP": [(0.45, ("V", "NP")),
               (0.15, ("V",)),
               (0.25, ("V", "NP", "PP")),
               (0.15, ("V", "PP"))],
        "PP": [(1.0, ("P", "NP"))],
        "Det": _words("the", "a", "every", "some", "this", "my", "no", "one"),
        "N": _words("dog", "cat", "bird", "child", "teacher", "farmer", "king", "robot",
                    "river", "tree", "house", "garden"),
        "Adj": _words("big", "small", "red", "old", "young", "happy", "quiet", "green",
                      "strange", "tired"),
        "V": _words("saw", "liked", "chased", "found", "heard", "helped", "followed",
                    "watched", "visited", "remembered"),
        "P": _words("near", "under", "behind", "with", "beside", "above", "inside", "without"),
    },
    start="S",
)

PERIOD = "."


class GrammarTask(Task):
    """Finish a sentence of a PCFG.

    Text format (words)::

        prompt:  the first ``cut`` words of a sentence     e.g. "the old dog that"
        target:  the remaining words, then "."             e.g. "saw a cat ."

    Args:
        grammar: the PCFG (its terminals must not include ``"."``).
        prompt_words: a fixed cut (prompt length in words); sentences not longer than it are
            redrawn. Default None: a uniform random cut in ``[1, len - 1]``.
        max_depth: expansion depth before falling back to shortest alternatives.
        min_words, max_words: sentence length bounds in words (without the ``"."``); sentences
            outside them are redrawn. ``min_words`` is at least 2 so there is a cut.

    meta: ``{"task": "grammar", "sentence": the whole sentence without ".", "cut": int}``.
    """

    name = "grammar"
    decoding = "sample"  # recursive rules make greedy decoding of a trained model loop

    def __init__(self, grammar: PCFG = DEFAULT_GRAMMAR, prompt_words: int | None = None,
                 max_depth: int = 6, min_words: int = 3, max_words: int = 40):
        if not isinstance(grammar, PCFG):
            raise ValueError(f"grammar must be a PCFG, got {type(grammar).__name__}")
        if PERIOD in grammar.terminals():
            raise ValueError(f"the grammar may not use {PERIOD!r} as a word: it ends the target")
        if prompt_words is not None and prompt_words < 1:
            raise ValueError(f"prompt_words must be >= 1 or None, got {prompt_words}")
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")
        min_words = max(min_words, 2, (prompt_words or 0) + 1)
        if max_words < min_words:
            raise ValueError(f"max_words ({max_words}) must be >= {min_words} "
                             f"(min_words, and prompt_words + 1 with a fixed cut)")
        self.grammar, self.prompt_words = grammar, prompt_words
        self.max_depth, self.min_words, self.max_words = max_depth, min_words, max_words

    def vocab(self) -> list[str]:
        return [*self.grammar.terminals(), PERIOD]

    def sentence(self, rng: np.random.Generator, max_tries: int = 1000) -> list[str]:
        """A sentence with ``min_words <= len <= max_words`` words."""
        for _ in range(max_tries):
            words = self.grammar.sample_words(rng, max_depth=self.max_depth, max_words=self.max_words)
            if len(words) >= self.min_words:
                return words
        raise RuntimeError(f"no sentence of {self.min_words}..{self.max_words} words in {max_tries} draws; "
                           f"raise max_depth or lower min_words")

    def sample(self, rng: np.random.Generator) -> TaskSample:
        words = self.sentence(rng)
        cut = self.prompt_words if self.prompt_words is not None else int(rng.integers(1, len(words)))
        return TaskSample(prompt=" ".join(words[:cut]), target=" ".join([*words[cut:], PERIOD]),
                          meta={"task": self.name, "sentence": " ".join(words), "cut": cut})

    def score(self, sample: TaskSample, output: str) -> bool:
        """True when ``output`` reaches a ``"."`` (before any ``<eos>``) and prompt + output
        words before it form a grammatical sentence."""
        words, stop = words_until_stop(output)
        return stop == PERIOD and self.grammar.is_grammatical(sample.prompt.split() + words)
