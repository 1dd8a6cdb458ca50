"""Read the README's fenced blocks and check printed output against them (used by test_readme.py).

Conventions the README follows (an HTML comment on the line before a fence):

- ```` ```bash ```` and ```` ```python ```` blocks run, in order, in one scratch
  directory; python blocks share one interpreter (like notebook cells).
- ```` ```text ```` directly after a runnable block (nothing but blank lines or a
  directive between them) is its expected output: every
  non-blank line must appear in the actual output, in order. Numbers must
  match as printed (or within ``<!-- readme: tolerance X -->``); times
  (``39 s``, ``12.3 tok/s``) and ``...`` match anything.
- ``<!-- readme: skip (reason) -->`` before a block: not run (and an output
  block after it is not compared); the README puts a quick twin beside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FENCE = re.compile(r"^```(\w*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*readme:\s*(.*?)\s*-->\s*$")
_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_TIME = re.compile(rf"{_NUMBER}\s?(?:s|min|tok/s|windows/s|seq/s)\b")
#: an elision (group 1), a time (group 2) or a figure (group 3)
_NUMBER_TOKEN = re.compile(rf"(\.\.\.|…)|({_TIME.pattern})|({_NUMBER})")


@dataclass
class Block:
    lang: str  # bash | python | text | other
    code: str
    line: int  # 1-based line of the opening fence
    end: int  # 1-based line of the closing fence
    directive: str = ""  # text of a <!-- readme: ... --> comment just before the fence

    @property
    def skip(self) -> bool:
        return self.directive.startswith("skip")

    @property
    def tolerance(self) -> float:
        m = re.match(r"tolerance\s+(" + _NUMBER + ")", self.directive)
        return float(m[1]) if m else 0.0


def read_blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown text, with the directive that precedes it."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        d = _DIRECTIVE.match(lines[j]) if j >= 0 else None
        start, i = i, i + 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        blocks.append(Block(m[1] or "text", "\n".join(body) + "\n", start + 1, i + 1, d[1] if d else ""))
        i += 1
    return blocks


def _line_pattern(expected: str) -> tuple[re.Pattern, list[str]]:
    """A regex for one expected line; the numbers it must see, in order."""
    parts, numbers, pos = [], [], 0
    for m in _NUMBER_TOKEN.finditer(expected):
        parts.append(re.escape(expected[pos:m.start()]))
        if m[1]:
            parts.append(".*?")
        elif m[2]:
            parts.append(rf"{_NUMBER}\s?\S*")
        else:
            parts.append(f"({_NUMBER})")
            numbers.append(m[3])
        pos = m.end()
    parts.append(re.escape(expected[pos:]))
    pattern = re.sub(r"(\\ )+", r"\\s+", "".join(parts))
    return re.compile(pattern), numbers


def _close(expected: str, actual: str, tolerance: float) -> bool:
    if tolerance == 0:
        return expected == actual
    return abs(float(expected) - float(actual)) <= tolerance + 1e-12


def _matches(expected: str, actual: str, tolerance: float, numbers: bool, past_misses: bool = False):
    """Yield ``(expected line, match, near)`` for each non-blank expected line, in order, up to the first miss
    (or every line, with ``past_misses``: a miss then leaves the search where it was).

    ``match`` is the regex match of the actual line that answers it, or None (a
    miss). A line of the right shape with other numbers answers it only when
    ``numbers`` is false; otherwise the first such line is ``near``, for the message.
    """
    out = [line.strip() for line in actual.replace("\r", "\n").splitlines() if line.strip()]
    k = 0
    for want in (line.strip() for line in expected.splitlines()):
        if not want:
            continue
        pattern, figures = _line_pattern(want)
        near = None
        for idx in range(k, len(out)):
            m = pattern.fullmatch(out[idx])
            if not m:
                continue
            if not numbers or all(_close(e, a, tolerance) for e, a in zip(figures, m.groups())):
                k = idx + 1
                yield want, m, None
                break
            near = near or m
        else:
            yield want, None, near
            if not past_misses:
                return


def compare_output(expected: str, actual: str, tolerance: float = 0.0, numbers: bool = True) -> str | None:
    """None if every non-blank expected line occurs in ``actual`` in order; else what is missing.

    ``numbers=False`` compares the shape of each line only: any number matches a number.
    """
    for want, m, near in _matches(expected, actual, tolerance, numbers):
        if m is None:
            got = f"; nearest line with other numbers: {near.string!r}" if near else ""
            return f"expected line not found (in order): {want!r}{got}"
    return None


def refresh_output(expected: str, actual: str) -> tuple[str, list[str]]:
    """``expected`` with the numbers of ``actual`` written in; and the lines it could not match.

    Each expected line is matched to the actual output by shape (as
    ``compare_output(numbers=False)``); its numbers are replaced by the printed
    ones, and everything else (elisions, times, spacing) is kept.
    """
    lines = expected.splitlines()
    wanted = iter(i for i, line in enumerate(lines) if line.strip())
    unmatched = []
    for (want, m, _), i in zip(_matches(expected, actual, 0.0, numbers=False, past_misses=True), wanted):
        if m is None:
            unmatched.append(want)
            continue
        lead = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        if not any(t[1] or t[2] for t in _NUMBER_TOKEN.finditer(want)):
            lines[i] = lead + m.string  # the printed line itself, with its column alignment
            continue
        printed = iter(m.groups())
        lines[i] = lead + _NUMBER_TOKEN.sub(lambda t: next(printed) if t[3] else t[0], want)
    return "\n".join(lines) + ("\n" if expected.endswith("\n") else ""), unmatched
