"""ssjax: the Schwartz–Smith two-factor model in JAX.

Differentiable Kalman filtering and calibration of commodity futures curves, and the
pipeline from model-vs-market mispricing to trading orders.

Importing ssjax turns on JAX's float64 mode (``jax_enable_x64``): fits run in float64 by
default. Arrays you pass as float32 stay float32 (the filter runs in either precision). It also
turns on a persistent XLA compilation cache in the user's cache folder, so that later processes
reuse the compiled programs (:mod:`ssjax.compile_cache`; ``SSJAX_CACHE_DIR=off`` turns it off).
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

from . import compile_cache  # noqa: E402

compile_cache._enable_default()

from . import datasets, diagnostics, drift, options, sensitivity  # noqa: E402
from .data import MarketData, dt_from_dates, make_market_data  # noqa: E402
from .engine import (  # noqa: E402
    KalmanEngine,
    ModelForward,
    compute_model_forward,
    log_likelihood,
    model_forwards,
)
from .filter import (  # noqa: E402
    FilterResult,
    Prior,
    default_prior,
    kalman_filter,
    log_likelihood_batch,
    log_likelihood_data,
    log_likelihood_terms,
)
from .inference import Uncertainty, parameter_uncertainty  # noqa: E402
from .mle import MLEResult, default_start, fit_mle  # noqa: E402
from .model import forward_curve, log_forward, measurement, transition  # noqa: E402
from .params import Params, from_unconstrained, make_params, to_unconstrained  # noqa: E402
from .results import KalmanFit  # noqa: E402
from .score import log_likelihood_fisher  # noqa: E402
from .simulate import Simulation, simulate  # noqa: E402
from .smoother import SmootherResult, rts_smoother  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "KalmanEngine",
    "KalmanFit",
    "compute_model_forward",
    "ModelForward",
    "log_likelihood",
    "log_likelihood_batch",
    "log_likelihood_data",
    "log_likelihood_fisher",
    "log_likelihood_terms",
    "model_forwards",
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
    "SmootherResult",
    "rts_smoother",
    "MLEResult",
    "fit_mle",
    "default_start",
    "Uncertainty",
    "parameter_uncertainty",
    "forward_curve",
    "log_forward",
    "measurement",
    "transition",
    "Simulation",
    "simulate",
    "datasets",
    "diagnostics",
    "drift",
    "options",
    "sensitivity",
    "__version__",
]
