"""Range checks for the hyperparameters of the Lightning modules and data modules.

A YAML value such as ``lr: -5`` or ``data.window: 0`` is refused when the
module is built, before any data is read or a step is trained, with a line
that names the key as the config spells it (``model.lr``, ``data.window``).
"""

from __future__ import annotations

import math
from typing import Any

from activation_cache.errors import InputError

#: rule -> (test, what the value must be)
RULES = {
    "positive": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "non_negative": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "count": (lambda v: float(v).is_integer() and v >= 1, "an integer >= 1"),
    "index": (lambda v: float(v).is_integer() and v >= 0, "an integer >= 0"),
    "unit": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
}


def check_hparams(owner: str, values: dict[str, Any], rules: dict[str, str]) -> None:
    """InputError (one line) for the first ``values[name]`` that breaks ``RULES[rules[name]]``.

    ``owner`` is the config section (``"model"`` or ``"data"``).
    """
    for name, rule in rules.items():
        value = values[name]
        test, need = RULES[rule]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not test(value):
            raise InputError(f"{owner}.{name} must be {need}, got {value!r}")


__all__ = ["check_hparams"]
