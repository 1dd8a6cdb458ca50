"""Package faces that import their modules on first use, so ``import activation_cache`` stays cheap.

A face maps each public name to the module that defines it::

    __getattr__, __dir__, __all__ = lazy_exports(__name__, {"extract": "activation_cache.extraction", ...})

``from package import name`` and ``package.name`` both work; the module is
imported the first time one of its names is asked for.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import Callable

__all__ = ["lazy_exports"]


def lazy_exports(package: str, names: dict[str, str], eager: dict[str, object] | None = None
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package`` exposing ``names`` (public name -> defining module).

    A module written ``"pkg.mod:attr"`` exports its ``attr`` under the public name.

    ``eager`` names are already in the package namespace (e.g. ``__version__``) and
    are listed in ``__all__`` too.
    """
    public = sorted({*names, *(eager or {})})

    def __getattr__(name: str) -> object:
        try:
            module, _, attr = names[name].partition(":")
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(import_module(module), attr or name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return public

    face = sys.modules[package]
    face._lazy_names = frozenset(names)
    face.__class__ = _Face
    return __getattr__, __dir__, public


class _Face(types.ModuleType):
    """A package face whose exported name is not replaced by the submodule of the same name.

    Importing ``pkg.train`` binds ``pkg.train`` to that module; where the face exports the
    function ``train`` (defined in ``pkg/train.py``), the function must stay what the name means,
    as it did when faces imported their names eagerly.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if (isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}"
                and name in self.__dict__.get("_lazy_names", ())):
            return
        super().__setattr__(name, value)
