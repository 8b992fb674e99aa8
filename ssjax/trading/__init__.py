"""Trading: from mispricing to orders, and the walk-forward backtest of that rule.

* :mod:`~ssjax.trading.engine` — ``prepare_trading_inputs``, ``TradeEngine``, orders;
* :mod:`~ssjax.trading.sizing` — z-scores and vol-target sizing in JAX (the one
  implementation, also behind ``TradeEngine``) and their derivative with respect to Θ;
* :mod:`~ssjax.trading.execution` — fills with a lag, rolls, costs and P&L on actual
  contracts; :mod:`~ssjax.trading.metrics` — statistics with their uncertainty;
* :mod:`~ssjax.trading.backtest` — ``walk_forward`` on actual contracts, on the schedule of
  :mod:`~ssjax.trading.settings` (``WalkForwardSettings``).

Depends on every layer below it; nothing below imports it.
"""

from __future__ import annotations

from ssjax.trading.backtest import (
    BacktestResult,
    CalibrationPath,
    calibrate_walk_forward,
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
from ssjax.trading.execution import (
    ExecutionModel,
    ExecutionResult,
    PriceBook,
    executable_target,
    expiring_before_next,
    passive_returns,
    simulate_execution,
    step_pnl,
)
from ssjax.trading.metrics import compute_metrics, deflated_sharpe, round_trips, yearly_metrics
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
    "ExecutionModel",
    "ExecutionResult",
    "PriceBook",
    "compute_metrics",
    "executable_target",
    "expiring_before_next",
    "simulate_execution",
    "step_pnl",
    "passive_returns",
    "yearly_metrics",
    "round_trips",
    "deflated_sharpe",
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
