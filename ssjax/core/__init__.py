"""The numerical core: pure, jittable functions of NamedTuple pytrees.

* :mod:`~ssjax.core.params` — Θ (``Params``) and its unconstrained coordinates;
* :mod:`~ssjax.core.model` — the closed-form forwards and the exact transition;
* :mod:`~ssjax.core.market` — ``MarketData``, the validated arrays every function takes;
* :mod:`~ssjax.core.filter` — the masked Kalman filter (``lax.scan``) and log-likelihood;
* :mod:`~ssjax.core.parallel_filter` — the same filter in parallel over time;
* :mod:`~ssjax.core.smoother` — the RTS smoother;
* :mod:`~ssjax.core.score` — the gradient by Fisher's identity;
* :mod:`~ssjax.core.simulate` — exact simulation.

Nothing here imports from another ssjax subpackage.
"""

from __future__ import annotations

from ssjax.core.filter import (
    FilterResult,
    Prior,
    default_prior,
    kalman_filter,
    log_likelihood_batch,
    log_likelihood_data,
    log_likelihood_terms,
)
from ssjax.core.market import (
    PAD_MULTIPLE,
    MarketData,
    check_tenor_order,
    dt_from_dates,
    make_market_data,
    padded_length,
    t_star_index,
    window_data,
    year_fraction,
)
from ssjax.core.model import (
    decay_integral,
    forward_curve,
    log_forward,
    measurement,
    transition,
)
from ssjax.core.parallel_filter import (
    PARALLEL_MIN_DATES,
    choose_method,
    kalman_filter_parallel,
    log_likelihood_auto,
    log_likelihood_parallel,
    log_likelihood_parallel_terms,
)
from ssjax.core.params import (
    PARAM_ORDER,
    Params,
    from_unconstrained,
    make_params,
    risk_neutral_drift,
    short_term_premium,
    to_unconstrained,
    validate_params,
)
from ssjax.core.score import (
    complete_data_objective,
    log_likelihood_fisher,
)
from ssjax.core.simulate import (
    Simulation,
    simulate,
)
from ssjax.core.smoother import (
    EStats,
    SmootherResult,
    expected_complete_loglik,
    prior_expected_loglik,
    rts_smoother,
)

__all__ = [
    "FilterResult",
    "kalman_filter",
    "log_likelihood_batch",
    "log_likelihood_data",
    "log_likelihood_terms",
    "default_prior",
    "Prior",
    "MarketData",
    "make_market_data",
    "check_tenor_order",
    "dt_from_dates",
    "window_data",
    "year_fraction",
    "t_star_index",
    "PAD_MULTIPLE",
    "padded_length",
    "decay_integral",
    "transition",
    "measurement",
    "log_forward",
    "forward_curve",
    "log_likelihood_parallel",
    "log_likelihood_parallel_terms",
    "kalman_filter_parallel",
    "log_likelihood_auto",
    "choose_method",
    "PARALLEL_MIN_DATES",
    "Params",
    "make_params",
    "to_unconstrained",
    "from_unconstrained",
    "validate_params",
    "risk_neutral_drift",
    "short_term_premium",
    "PARAM_ORDER",
    "log_likelihood_fisher",
    "complete_data_objective",
    "Simulation",
    "simulate",
    "SmootherResult",
    "rts_smoother",
    "EStats",
    "expected_complete_loglik",
    "prior_expected_loglik",
]
