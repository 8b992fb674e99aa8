"""Small checks shared by the settings objects (``RollingConfig``, ``WalkForwardSettings``,
``TradingConfig``, ``ExecutionModel``): what counts as an integer or a number, and a
``replace`` that refuses unknown names."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

import numpy as np

__all__ = ["is_int", "is_number", "replace_settings"]

S = TypeVar("S")


def is_int(v: Any) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return not isinstance(v, bool) and isinstance(v, int | np.integer)


def is_number(v: Any, finite: bool = False) -> bool:
    """A real number (Python or NumPy int or float), not a bool; finite if asked."""
    ok = not isinstance(v, bool) and isinstance(v, int | float | np.integer | np.floating)
    return ok and (not finite or math.isfinite(v))


def replace_settings(obj: S, changes: dict[str, Any], what: str) -> S:
    """A copy of the frozen dataclass ``obj`` with ``changes`` (checked like a new one); a
    name that is not a field is refused: ``unknown <what> setting(s) [...]``."""
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise TypeError(f"unknown {what} setting(s) {unknown}; the settings are {sorted(names)}")
    return dataclasses.replace(obj, **changes)
