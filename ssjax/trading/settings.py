"""``WalkForwardSettings``: the calibration schedule of a walk-forward backtest, checked once.

:func:`ssjax.trading.backtest.walk_forward` and
:func:`~ssjax.trading.backtest.calibrate_walk_forward` take one (or build one from their
keywords); what the trading rule does lives in :class:`ssjax.trading.engine.TradingConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ssjax.checks import is_int, replace_settings

__all__ = ["WalkForwardSettings"]


@dataclass(frozen=True)
class WalkForwardSettings:
    """When and how the walk-forward backtest recalibrates Θ; checked when made.

    ``walk_forward(panel, recalibrate_every=4)`` builds one from its keywords;
    ``walk_forward(panel, settings=WalkForwardSettings(min_window=52), warm_start=False)``
    starts from a given one and replaces the keywords passed. What depends on the panel
    (``start`` against its number of dates) is checked by the backtest.

    Attributes:
        min_window: dates before the first trading date (``start`` may not be earlier).
        recalibrate_every: dates between calibrations.
        warm_start: start each fit from the previous Θ (else from the data-derived start).
        start: first trading date index (``None``: ``min_window``).
        risk_premium, shared_noise: model variants (as in :class:`ssjax.KalmanEngine`).
        standard_errors: also record each calibration's outer-product-of-gradients standard
            errors (``se_<θ>`` columns of ``params``), which the parameter drift alerts need
            (:func:`ssjax.analysis.drift.walk_forward_alerts`).
    """

    min_window: int = 104
    recalibrate_every: int = 13
    warm_start: bool = True
    start: int | None = None
    risk_premium: bool = False
    shared_noise: bool = False
    standard_errors: bool = False

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> ValueError:
            value = getattr(self, name)
            return ValueError(f"WalkForwardSettings.{name} must be {want}, got {value!r}")

        for name in ("min_window", "recalibrate_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        if self.start is not None:
            if not is_int(self.start):
                raise bad("start", "None or an integer")
            if self.start < self.min_window:
                raise ValueError(
                    f"WalkForwardSettings.start={self.start} is before min_window={self.min_window}"
                )
        for name in ("warm_start", "risk_premium", "shared_noise", "standard_errors"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise bad(name, "True or False")

    @property
    def first(self) -> int:
        """The first trading date index (``start``, or ``min_window`` when not set)."""
        return self.min_window if self.start is None else int(self.start)

    def replace(self, **changes: Any) -> WalkForwardSettings:
        """A copy with ``changes`` (checked like a new one); unknown names are refused."""
        return replace_settings(self, changes, "walk-forward")

    def key(self) -> dict[str, Any]:
        """The settings as a plain dict, ``start`` resolved (what a calibration is keyed by)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["start"] = self.first
        return {k: (bool(v) if isinstance(v, np.bool_) else v) for k, v in out.items()}
