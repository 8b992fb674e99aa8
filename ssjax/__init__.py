"""ssjax: the Schwartz–Smith two-factor model in JAX.

Differentiable Kalman filtering and calibration of commodity futures curves, and the
pipeline from model-vs-market mispricing to trading orders.

Importing ssjax turns on JAX's float64 mode (``jax_enable_x64``): fits run in float64 by
default (``KalmanEngine.fit`` always fits in float64; the core functions and
``recalibrate(dtype=jnp.float32)`` keep float32 arrays in float32). It also
turns on a persistent XLA compilation cache in the user's cache folder, so that later processes
reuse the compiled programs (:mod:`ssjax.compile_cache`; ``SSJAX_CACHE_DIR=off`` turns it off).
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

from ssjax import compile_cache  # noqa: E402

compile_cache._enable_default()

from ssjax import analysis, core, data, datasets, fit, rolling, trading  # noqa: E402
from ssjax._version import __version__  # noqa: E402
from ssjax.core import (  # noqa: E402
    FilterResult,
    MarketData,
    Params,
    Prior,
    Simulation,
    SmootherResult,
    default_prior,
    dt_from_dates,
    forward_curve,
    from_unconstrained,
    kalman_filter,
    log_forward,
    log_likelihood_batch,
    log_likelihood_data,
    log_likelihood_fisher,
    log_likelihood_terms,
    make_market_data,
    make_params,
    measurement,
    rts_smoother,
    simulate,
    to_unconstrained,
    transition,
)
from ssjax.data import (  # noqa: E402
    Panel,
    ParquetStore,
    nearby_panel,
    read_settlements,
)
from ssjax.fit import (  # noqa: E402
    FitStatus,
    KalmanEngine,
    KalmanFit,
    MLEResult,
    ModelForward,
    Uncertainty,
    compute_model_forward,
    default_start,
    fit_mle,
    log_likelihood,
    model_forwards,
    parameter_uncertainty,
)
from ssjax.rolling import RollingConfig, RollingResult, recalibrate  # noqa: E402
from ssjax.trading import (  # noqa: E402
    Order,
    TradeEngine,
    TradingConfig,
    WalkForwardSettings,
    prepare_trading_inputs,
    walk_forward,
)

__all__ = [
    # the layers
    "core",
    "data",
    "datasets",
    "fit",
    "rolling",
    "analysis",
    "trading",
    # calibrate a curve
    "KalmanEngine",
    "KalmanFit",
    "FitStatus",
    "compute_model_forward",
    "ModelForward",
    "model_forwards",
    "log_likelihood",
    "fit_mle",
    "MLEResult",
    "default_start",
    "Uncertainty",
    "parameter_uncertainty",
    # the numerical core
    "MarketData",
    "make_market_data",
    "dt_from_dates",
    "Params",
    "make_params",
    "to_unconstrained",
    "from_unconstrained",
    "Prior",
    "default_prior",
    "FilterResult",
    "kalman_filter",
    "log_likelihood_batch",
    "log_likelihood_data",
    "log_likelihood_fisher",
    "log_likelihood_terms",
    "SmootherResult",
    "rts_smoother",
    "forward_curve",
    "log_forward",
    "measurement",
    "transition",
    "Simulation",
    "simulate",
    # data
    "Panel",
    "nearby_panel",
    "read_settlements",
    "ParquetStore",
    # rolling recalibration
    "recalibrate",
    "RollingConfig",
    "RollingResult",
    # trading
    "prepare_trading_inputs",
    "TradingConfig",
    "TradeEngine",
    "Order",
    "walk_forward",
    "WalkForwardSettings",
    "__version__",
]
