"""Named training regimes for path-finding: the ``data`` / ``model`` settings of :func:`train_task`.

``ntp`` (plain teacher-forced next-token training over a fixed sample set) is the
faithful setting and the first row of every table; the others are the remedies the
literature reports against the previous-node lookup shortcut (see
:mod:`ret_toolkit.planning.datamodule`), and ``reverse`` is the positive control. Each
is a documented ``data.*`` / ``model.*`` key of ``ret-train task fit`` too, e.g.
``--data.online=true --data.corrupt=0.5``.
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = ["REGIMES", "regime_settings"]

#: regime name -> {"data": TaskDataModule arguments, "model": TaskLM arguments}
REGIMES = MappingProxyType({
    "ntp": {"data": {}, "model": {}},
    "online": {"data": {"online": True}, "model": {}},
    "corrupt": {"data": {"online": True, "corrupt": 0.5, "corrupt_mode": "random"}, "model": {}},
    "teacherless": {"data": {"online": True, "corrupt": 1.0, "corrupt_mode": "mask"}, "model": {}},
    "mtp": {"data": {"online": True}, "model": {"mtp_heads": 2}},
    "reverse": {"data": {"reverse": True}, "model": {}},
})


def regime_settings(name: str) -> tuple[dict, dict]:
    """(data, model) keyword arguments of regime ``name`` (copies; see :data:`REGIMES`)."""
    if name not in REGIMES:
        from activation_cache.errors import InputError

        raise InputError(f"unknown training regime {name!r}; choose from {', '.join(REGIMES)}")
    r = REGIMES[name]
    return dict(r["data"]), dict(r["model"])
