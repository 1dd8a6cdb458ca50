"""User-facing errors.

Every problem caused by the user's input (a missing file, a malformed line, an
unknown layer, a mismatched store...) raises :class:`InputError` with a one-line
message that says *what* is wrong and *where*. The CLIs print that line and exit
with status 2, without a traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: a one-line message, exit status 2 in CLIs."""

    exit_code = 2
