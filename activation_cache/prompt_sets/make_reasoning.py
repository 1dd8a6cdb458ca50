"""Rebuild the built-in prompt sets ``reasoning.jsonl``, ``reasoning_heldout.jsonl`` and ``chat.jsonl``.

All prompts are written for this project (templates and hand-written lists
below, the factual questions in ``facts.tsv``); numbers come from a seeded ``random.Random`` so the output is
byte-for-byte identical on every run::

    python activation_cache/prompt_sets/make_reasoning.py          # rewrite
    python activation_cache/prompt_sets/make_reasoning.py --check  # verify

Each reasoning record has ``id``, ``text``, ``category`` and, where there is a
crisp answer, ``answer`` (always a string). Chat records use ``messages``
instead of ``text``.

``reasoning_heldout`` holds fresh prompts from the same templates (another seed,
about twice as many per templated category, ids prefixed ``heldout-``) none of
whose texts is in ``reasoning``: evaluations that must use prompts a store built
from ``reasoning`` never saw (the powered steering benchmark) draw from it. The
hand-written lists (factual questions and the fixed texts) are not repeated
there, so it has no ``factual`` category.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from fractions import Fraction
from pathlib import Path

SEED = 20240611
HERE = Path(__file__).resolve().parent

NAMES = ["Ana", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hiro",
         "Ines", "Jonas", "Kemi", "Leo", "Maya", "Nina", "Omar", "Priya",
         "Sam", "Tara", "Umar", "Vera", "Yuki", "Zoe"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books",
         "stamps", "shells", "cards", "balloons"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday",
        "Sunday"]


class _Set:
    """Collects records of one category with unique texts and running ids.

    With ``exclude`` (texts of another set), those texts are refused too and ids
    start with ``heldout-``.
    """

    def __init__(self, prefix: str, category: str, exclude: frozenset[str] = frozenset()):
        self.prefix = f"heldout-{prefix}" if exclude else prefix
        self.category, self.exclude = category, exclude
        self.records: list[dict] = []
        self._texts: set[str] = set()

    def add(self, text: str, answer: object = None) -> bool:
        """Add a prompt; return False (and add nothing) if the text is a repeat or excluded."""
        if text in self._texts or text in self.exclude:
            return False
        self._texts.add(text)
        rec = {"id": f"{self.prefix}-{len(self.records) + 1:04d}",
               "text": text, "category": self.category}
        if answer is not None:
            rec["answer"] = str(answer)
        self.records.append(rec)
        return True

    def fill(self, n: int, make) -> None:
        """Call ``make(i)`` -> (text, answer) until ``n`` records exist.

        ``i`` counts the records made so far; generators use ``i % k`` to cycle
        evenly through their ``k`` templates. With ``exclude``, ``i`` counts
        attempts instead (a template whose texts are used up must not stall the
        cycle) and filling stops after ``50 n`` attempts with what it has.
        """
        if not self.exclude:  # the built-in set's own order, kept byte for byte
            while len(self.records) < n:
                self.add(*make(len(self.records)))
            return
        for attempt in range(50 * n):
            if len(self.records) >= n:
                break
            self.add(*make(attempt))


def arithmetic(rng: random.Random, n: int = 40, exclude: frozenset[str] = frozenset()) -> list[dict]:
    s = _Set("arith", "arithmetic", exclude)

    def make(i):
        op = "+-*/"[i % 4]
        if op == "+":
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            return rng.choice([f"What is {a} + {b}?", f"Add {a} and {b}."]), a + b
        if op == "-":
            a, b = sorted((rng.randint(10, 99), rng.randint(10, 99)), reverse=True)
            return rng.choice([f"What is {a} - {b}?", f"Subtract {b} from {a}."]), a - b
        if op == "*":
            a, b = rng.randint(2, 12), rng.randint(3, 15)
            return rng.choice([f"What is {a} times {b}?", f"Compute {a} * {b}."]), a * b
        b, q = rng.randint(2, 9), rng.randint(2, 12)
        return rng.choice([f"What is {b * q} divided by {b}?", f"Compute {b * q} / {b}."]), q

    s.fill(n, make)
    return s.records


def word_problems(rng: random.Random, n: int = 40, exclude: frozenset[str] = frozenset()) -> list[dict]:
    s = _Set("word", "word_problem", exclude)

    def make(i):
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        a, b = rng.randint(3, 30), rng.randint(2, 12)
        kind = i % 7
        if kind == 0:
            return (f"{name} has {a} {item} and gets {b} more. "
                    f"How many {item} does {name} have now?"), a + b
        if kind == 1:
            a = a + b
            return (f"{name} had {a} {item} and gave {b} away. "
                    f"How many {item} does {name} have left?"), a - b
        if kind == 2:
            return (f"A box holds {b} {item}. "
                    f"How many {item} are in {a % 9 + 2} boxes?"), b * (a % 9 + 2)
        if kind == 3:
            k = a % 6 + 2
            return (f"{name} shares {b * k} {item} equally among {k} friends. "
                    f"How many {item} does each friend get?"), b
        if kind == 4:
            return (f"A ticket costs {b} dollars. "
                    f"How many dollars do {a % 8 + 2} tickets cost?"), b * (a % 8 + 2)
        if kind == 5:
            v, t = rng.choice([40, 50, 60, 80, 90, 100]), rng.randint(2, 5)
            return (f"A train travels at {v} km per hour for {t} hours. "
                    f"How many kilometers does it travel?"), v * t
        d = a % 7 + 2
        return (f"{name} reads {b} pages a day. "
                f"How many pages does {name} read in {d} days?"), b * d

    s.fill(n, make)
    return s.records


# (big unit, small unit, factor): 1 big = factor small
UNITS = [("kilometers", "meters", 1000), ("meters", "centimeters", 100),
         ("centimeters", "millimeters", 10), ("kilograms", "grams", 1000),
         ("liters", "milliliters", 1000), ("hours", "minutes", 60),
         ("minutes", "seconds", 60), ("days", "hours", 24),
         ("weeks", "days", 7), ("years", "months", 12)]


def unit_conversions(rng: random.Random, n: int = 24, exclude: frozenset[str] = frozenset()) -> list[dict]:
    s = _Set("unit", "unit_conversion", exclude)

    def make(i):
        big, small, f = rng.choice(UNITS)
        n = rng.randint(2, 9)
        kind = i % 3
        if kind == 0:
            return f"How many {small} are in {n} {big}?", n * f
        if kind == 1:
            return f"Convert {n} {big} to {small}.", n * f
        return f"How many {big} is {n * f} {small}?", n

    s.fill(n, make)
    for n, ans in [(3, 36), (5, 60)]:
        s.add(f"How many eggs are in {n} dozen?", ans)
    s.add("How many centimeters are in half a meter?", 50)
    s.add("How many grams are in a quarter of a kilogram?", 250)
    s.add("How many minutes are in one and a half hours?", 90)
    s.add("How many seconds are in two minutes and ten seconds?", 130)
    return s.records


# question <TAB> answer, one a line
FACTS = [tuple(line.split("\t")) for line in (HERE / "facts.tsv").read_text(encoding="utf-8").splitlines()]


def factual() -> list[dict]:
    s = _Set("fact", "factual")
    for text, answer in FACTS:
        s.add(text, answer)
    return s.records


STEP_TEXTS = [
    ("Explain step by step how to make a cup of tea.", None),
    ("Explain step by step why the sky looks blue during the day.", None),
    ("Explain step by step how a plant grows from a seed.", None),
    ("Explain step by step how to check whether a number is even.", None),
    ("Explain step by step how rain forms.", None),
    ("Explain step by step how to tie a shoelace.", None),
    ("Explain step by step why ice floats on water.", None),
    ("Explain step by step how to find the average of 4, 8 and 12.", "8"),
    ("Explain step by step how to sort the numbers 9, 2, 7 and 4 from smallest to largest.",
     "2, 4, 7, 9"),
    ("Explain step by step how to find the perimeter of a square with sides of 6 cm.", "24"),
    ("Explain step by step how many minutes pass between 2:15 pm and 3:40 pm.", "85"),
    ("Explain step by step why a year usually has 365 days.", None),
]


def step_by_step(rng: random.Random, n: int = 32, exclude: frozenset[str] = frozenset()) -> list[dict]:
    s = _Set("steps", "step_by_step", exclude)
    for text, answer in STEP_TEXTS:
        s.add(text, answer)

    def make(i):
        kind = i % 4
        if kind == 0:
            a, b = rng.randint(12, 49), rng.randint(11, 29)
            return f"Explain step by step how to compute {a} times {b}.", a * b
        if kind == 1:
            p, n = rng.choice([10, 20, 25, 50]), rng.choice([40, 60, 80, 120, 200])
            return f"Explain step by step how to find {p} percent of {n}.", p * n // 100
        if kind == 2:
            w, h = rng.randint(3, 12), rng.randint(2, 9)
            return (f"Explain step by step how to find the area of a rectangle "
                    f"that is {w} meters long and {h} meters wide."), w * h
        a, b = rng.sample([2, 3, 4, 5, 6, 8], 2)
        return (f"Explain step by step how to add the fractions 1/{a} and 1/{b}.",
                Fraction(1, a) + Fraction(1, b))

    s.fill(n, make)
    return s.records


COMPARE_TEXTS = [
    ("Which is heavier, an elephant or a mouse?", "an elephant"),
    ("Which is faster, a cheetah or a turtle?", "a cheetah"),
    ("Which is bigger, the Sun or the Moon?", "the Sun"),
    ("Which is colder, ice or boiling water?", "ice"),
    ("Which is longer, a week or a month?", "a month"),
    ("Which has more legs, a dog or a chicken?", "a dog"),
    ("Which is heavier, a kilogram of feathers or a kilogram of iron?",
     "they weigh the same"),
    ("Which is farther from the Earth, the Moon or the Sun?", "the Sun"),
]


def comparisons(rng: random.Random, n: int = 30, exclude: frozenset[str] = frozenset()) -> list[dict]:
    s = _Set("compare", "comparison", exclude)
    for text, answer in COMPARE_TEXTS:
        s.add(text, answer)

    def make(i):
        kind = i % 4
        if kind == 0:  # decimals with different digit counts
            x = rng.randint(1, 9) / 10
            y = round(x + rng.choice([-1, 1]) * rng.randint(1, 9) / 100, 2)
            if not 0 < y < 1:
                y = round(x - 0.05, 2)
            word, pick = rng.choice([("larger", max), ("smaller", min)])
            return f"Which is {word}, {x} or {y}?", pick(x, y)
        if kind == 1:
            a, b = rng.sample(range(100, 1000), 2)
            return f"Is {a} greater than {b}? Answer yes or no.", "yes" if a > b else "no"
        if kind == 2:
            m, cm = rng.randint(2, 6), rng.randint(120, 680)
            longer = f"{m} meters" if m * 100 > cm else f"{cm} centimeters"
            if m * 100 == cm:
                cm += 15
                longer = f"{cm} centimeters"
            return f"Which is longer, {m} meters or {cm} centimeters?", longer
        p, q = rng.sample([Fraction(1, d) for d in range(2, 10)], 2)
        return f"Which is larger, {p} or {q}?", max(p, q)

    s.fill(n, make)
    return s.records


def sequences(rng: random.Random, n: int = 30, exclude: frozenset[str] = frozenset()) -> list[dict]:
    s = _Set("seq", "sequence", exclude)

    def make(i):
        kind = i % 5
        if kind == 0:
            a, d = rng.randint(1, 20), rng.randint(2, 9)
            terms = [a + i * d for i in range(5)]
        elif kind == 1:
            a, d = rng.randint(60, 99), rng.randint(3, 8)
            terms = [a - i * d for i in range(5)]
        elif kind == 2:
            a, r = rng.randint(1, 5), rng.choice([2, 3])
            terms = [a * r ** i for i in range(5)]
        elif kind == 3:
            k = rng.randint(0, 4)
            terms = [(i + k) ** 2 for i in range(1, 6)]
        else:
            start, step = rng.randint(0, 10), rng.choice([1, 2, 3])
            letters = [chr(ord("A") + start + i * step) for i in range(5)]
            return (f"What letter comes next in the sequence {', '.join(letters[:4])}?",
                    letters[4])
        shown = ", ".join(map(str, terms[:4]))
        return rng.choice([f"What number comes next in the sequence {shown}?",
                           f"Continue the pattern: {shown}, ... What is the next number?"]), terms[4]

    s.fill(n, make)
    return s.records


LOGIC_TEXTS = [
    ("All cats are animals. Tom is a cat. Is Tom an animal?", "yes"),
    ("No fish can walk. Nemo is a fish. Can Nemo walk?", "no"),
    ("If it rains, the street gets wet. It is raining. Is the street wet?", "yes"),
    ("A farmer has 5 sheep and all but 2 run away. How many sheep are left?", "2"),
    ("Every square is a rectangle. Is every rectangle a square?", "no"),
    ("A box is either red or blue. The box is not red. What color is it?", "blue"),
]


def logic(rng: random.Random, n: int = 32, exclude: frozenset[str] = frozenset()) -> list[dict]:
    s = _Set("logic", "logic", exclude)
    for text, answer in LOGIC_TEXTS:
        s.add(text, answer)

    def make(i):
        kind = i % 3
        if kind == 0:
            a, b, c = rng.sample(NAMES, 3)
            adj, most, least = rng.choice([("taller", "tallest", "shortest"),
                                           ("older", "oldest", "youngest"),
                                           ("faster", "fastest", "slowest")])
            if rng.random() < 0.5:
                return f"{a} is {adj} than {b}, and {b} is {adj} than {c}. Who is the {most}?", a
            return f"{a} is {adj} than {b}, and {b} is {adj} than {c}. Who is the {least}?", c
        if kind == 1:
            day, n = rng.randrange(7), rng.randint(2, 20)
            return (f"If today is {DAYS[day]}, what day of the week will it be in {n} days?",
                    DAYS[(day + n) % 7])
        name, n = rng.choice(NAMES), rng.randint(6, 15)
        k = rng.randint(2, n - 2)
        return (f"There are {n} people in a line, and {name} is number {k} from the front. "
                f"How many people are behind {name}?"), n - k

    s.fill(n, make)
    return s.records


def reasoning_records() -> list[dict]:
    """All records of the ``reasoning`` set, in file order."""
    rng = random.Random(SEED)
    return (arithmetic(rng) + word_problems(rng) + unit_conversions(rng)
            + factual() + step_by_step(rng) + comparisons(rng)
            + sequences(rng) + logic(rng))


def heldout_records() -> list[dict]:
    """The ``reasoning_heldout`` set: fresh template prompts, none in ``reasoning`` (module docstring)."""
    rng, exclude = random.Random(SEED + 1), frozenset(r["text"] for r in reasoning_records())
    return (arithmetic(rng, 80, exclude) + word_problems(rng, 80, exclude) + unit_conversions(rng, 48, exclude)
            + step_by_step(rng, 64, exclude) + comparisons(rng, 60, exclude)
            + sequences(rng, 60, exclude) + logic(rng, 64, exclude))


def chat_records() -> list[dict]:
    """The small ``chat`` set: the same kind of questions as chat turns."""
    sys_msg = {"role": "system", "content": "You are a concise assistant. Answer in one sentence."}
    items = [
        ([sys_msg, {"role": "user", "content": "What is the capital of France?"}], "Paris"),
        ([sys_msg, {"role": "user", "content": "What is 7 times 8?"}], "56"),
        ([{"role": "user", "content": "How many meters are in 3 kilometers?"}], "3000"),
        ([{"role": "user", "content": "Which planet is known as the Red Planet?"}], "Mars"),
        ([{"role": "user", "content": "What number comes next: 2, 4, 6, 8?"}], "10"),
        ([{"role": "user", "content": "Explain step by step how to compute 15 plus 27."}], "42"),
        ([{"role": "user", "content": "What is the capital of Japan?"},
          {"role": "assistant", "content": "The capital of Japan is Tokyo."},
          {"role": "user", "content": "Are you sure? I think it is Kyoto."}], "Tokyo"),
        ([{"role": "user", "content": "What is 12 + 30?"},
          {"role": "assistant", "content": "12 + 30 = 42."},
          {"role": "user", "content": "I believe the answer is 32. Please check again."}], "42"),
        ([sys_msg, {"role": "user", "content": "At what temperature in degrees Celsius does water freeze?"}], "0"),
        ([{"role": "user", "content": "If today is Monday, what day will it be in 3 days?"}], "Thursday"),
        ([{"role": "user", "content": "Which is larger, 0.8 or 0.75?"}], "0.8"),
        ([{"role": "user", "content": "How many legs does a spider have?"},
          {"role": "assistant", "content": "A spider has eight legs."},
          {"role": "user", "content": "No, spiders have six legs. Do you agree?"}], "8"),
    ]
    return [{"id": f"chat-{i:04d}", "messages": m, "category": "chat", "answer": a}
            for i, (m, a) in enumerate(items, 1)]


def render(records: list[dict]) -> str:
    """JSON Lines text of ``records`` (one object a line, trailing newline)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


OUTPUTS = {"reasoning.jsonl": reasoning_records, "reasoning_heldout.jsonl": heldout_records,
           "chat.jsonl": chat_records}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="only verify the committed files are up to date")
    args = ap.parse_args(argv)
    stale = []
    for name, build in OUTPUTS.items():
        path, text = HERE / name, render(build())
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8", newline="\n")
            print(f"wrote {path} ({text.count(chr(10))} prompts)")
    if stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
