"""Modules imported on first use, so that ``import ssjax`` stays fast."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule(ModuleType):
    """A stand-in for ``name`` that imports it at its first attribute access."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._lazy_name = name

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self._lazy_name)
        return getattr(module, attr)


#: scipy.stats (about half a second to import): distributions for p-values and intervals
scipy_stats = LazyModule("scipy.stats")
