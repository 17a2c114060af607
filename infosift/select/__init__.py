"""Selector registry: ``get_selector(name, **params)`` returns an object with ``.select(...)``.

Each selector lives in its own module and registers itself with ``@register("name")``; the
modules are imported here so that importing ``infosift.select`` fills the registry.
"""

from __future__ import annotations

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


# Importing the modules registers them. Keep this list in sync with the files in this package.
from infosift.select import density as _density  # noqa: E402,F401
from infosift.select import dsir as _dsir  # noqa: E402,F401
from infosift.select import fishersft as _fishersft  # noqa: E402,F401
from infosift.select import gip as _gip  # noqa: E402,F401
from infosift.select import random as _random  # noqa: E402,F401
from infosift.select import sentence_od as _sentence_od  # noqa: E402,F401

__all__ = ["SelectionError", "SelectionResult", "Selector", "available", "check_budget", "get_selector", "register"]
