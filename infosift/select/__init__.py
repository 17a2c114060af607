"""Selector registry: ``get_selector(name, **params)`` returns an object with ``.select(...)``.

Each selector lives in its own module and registers itself with ``@register("name")``. Importing
``infosift.select`` imports every module of the package (``discover``), so a new selector is one new
file: no import list to keep in sync. Helper modules (base, celf, logdet...) register nothing; that is fine.
"""

from __future__ import annotations

import importlib
import inspect
import math
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


def distributable(name: str) -> bool:
    """Whether the selector ``name`` can run as GreeDi (partitions / engine); False for unknown names."""
    return bool(getattr(_REGISTRY.get(name), "distributable", False))


def check_params(name: str, params: dict) -> None:
    """Names and numbers checked against the constructor's signature, so a typo or a NaN ridge is one clear
    SelectionError at construction instead of a TypeError (or a silent NaN objective) deep in the greedy."""
    sig = inspect.signature(_REGISTRY[name].__init__)
    known = [k for k in sig.parameters if k != "self"]
    for key, value in params.items():
        open_ended = any(q.kind is q.VAR_KEYWORD for q in sig.parameters.values())
        if key not in sig.parameters and not open_ended:
            raise SelectionError(f"selector {name!r} has no parameter {key!r}; known: {', '.join(known)}")
        default = sig.parameters[key].default if key in sig.parameters else None
        if isinstance(default, bool) or not isinstance(default, int | float) or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SelectionError(f"selector {name!r} parameter {key!r} must be a finite number, got {value!r}")
        if isinstance(default, int) and not isinstance(value, int):
            raise SelectionError(f"selector {name!r} parameter {key!r} must be a whole number, got {value!r}")


def get_selector(
    name: str,
    *,
    partitions: int | None = None,
    engine: str | None = None,
    ray_address: str | None = None,
    **params,
) -> Selector:
    """Instantiate the selector registered under ``name`` with its construction parameters.

    ``partitions`` / ``engine`` run a distributable selector (fishersft, sentence_od) as GreeDi, the two-round
    distributed greedy of select/greedi.py: ``engine="local"`` in this process, ``engine="ray"`` with round 1
    as Ray tasks (infosift/scale/select.py, imported only then; ``ray_address``: None starts a local Ray).
    """
    if name not in _REGISTRY:
        raise SelectionError(f"unknown selector {name!r}; available: {', '.join(available())}")
    check_params(name, params)
    selector = _REGISTRY[name](**params)
    if partitions is None and engine is None and ray_address is None:
        return selector
    from infosift.select.greedi import Distributed, check_distributable, check_engine, check_partitions

    check_distributable(selector)
    engine = check_engine(engine or "local")
    check_partitions(1 if partitions is None else partitions)
    if engine == "local":
        if ray_address is not None:
            raise SelectionError(f"ray_address {ray_address!r} is only used with engine='ray'")
        return Distributed(selector, 1 if partitions is None else partitions, engine)
    from infosift.scale.select import ray_round1

    return Distributed(selector, 1 if partitions is None else partitions, engine, ray_round1(ray_address))


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
    "distributable",
    "discover",
    "get_selector",
    "register",
]
