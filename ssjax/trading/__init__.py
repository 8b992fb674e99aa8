"""Trading: from mispricing to orders, and the walk-forward backtest of that rule.

* :mod:`~ssjax.trading.engine` — ``prepare_trading_inputs``, ``TradeEngine``, orders;
* :mod:`~ssjax.trading.sizing` — z-scores and vol-target sizing in JAX (the one
  implementation, also behind ``TradeEngine``) and their derivative with respect to Θ;
* :mod:`~ssjax.trading.backtest` — ``walk_forward`` on actual contracts, on the schedule of
  :mod:`~ssjax.trading.settings` (``WalkForwardSettings``).

Depends on every layer below it; nothing below imports it.
"""

from __future__ import annotations

from ssjax.trading.backtest import (
    BacktestResult,
    CalibrationPath,
    ExecutionResult,
    PriceBook,
    calibrate_walk_forward,
    compute_metrics,
    executable_target,
    expiring_before_next,
    simulate_execution,
    step_pnl,
    walk_forward,
)
from ssjax.trading.engine import (
    Z_METHODS,
    Frictions,
    Limits,
    Order,
    Thresholds,
    TradeDecision,
    TradeEngine,
    TradingConfig,
    TradingInputs,
    prepare_trading_inputs,
    residual_variances,
)
from ssjax.trading.settings import WalkForwardSettings
from ssjax.trading.sizing import (
    WeightsJacobian,
    filtered_z_scores,
    vol_target_weights,
    weights_jacobian,
    z_scores,
)

__all__ = [
    "CalibrationPath",
    "calibrate_walk_forward",
    "BacktestResult",
    "ExecutionResult",
    "PriceBook",
    "compute_metrics",
    "executable_target",
    "expiring_before_next",
    "simulate_execution",
    "step_pnl",
    "walk_forward",
    "WalkForwardSettings",
    "Z_METHODS",
    "TradingConfig",
    "Frictions",
    "Limits",
    "Thresholds",
    "TradingInputs",
    "Order",
    "TradeDecision",
    "prepare_trading_inputs",
    "residual_variances",
    "TradeEngine",
    "z_scores",
    "vol_target_weights",
    "filtered_z_scores",
    "WeightsJacobian",
    "weights_jacobian",
]
