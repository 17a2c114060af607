"""Selector registry: ``get_selector(name, **params)`` returns an object with ``.select(...)``.

Each selector lives in its own module and registers itself with ``@register("name")``. Importing
``infosift.select`` imports every module of the package (``discover``), so a new selector is one new
file: no import list to keep in sync. Helper modules (base, celf, logdet...) register nothing; that is fine.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from infosift.select.base import SelectionError, SelectionResult, Selector, check_budget

_REGISTRY: dict[str, Callable[..., Selector]] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a selector available as ``get_selector(name)``."""

    def wrap(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"selector {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available() -> list[str]:
    return sorted(_REGISTRY)


def get_selector(name: str, **params) -> Selector:
    """Instantiate the selector registered under ``name`` with its construction parameters."""
    if name not in _REGISTRY:
        raise SelectionError(f"unknown selector {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name](**params)


def discover() -> list[str]:
    """Import every module of this package (on ``__path__``), which registers its selectors; return their names."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names


discover()

__all__ = [
    "SelectionError",
    "SelectionResult",
    "Selector",
    "available",
    "check_budget",
    "discover",
    "get_selector",
    "register",
]
