"""Calibration: Θ by maximum likelihood or EM, and what a fit knows about itself.

* :mod:`~ssjax.fit.mle` — L-BFGS on the exact log-likelihood, data-derived starts;
* :mod:`~ssjax.fit.linesearch` — its zoom line search;
* :mod:`~ssjax.fit.coordinates` — its coordinates (spot–slope ones for the κ → 0, ρ → −1 ridge);
* :mod:`~ssjax.fit.em` — structured EM (smoother E-step, ECM M-step);
* :mod:`~ssjax.fit.optimum` — bounds, degenerate end points, multi-start designs;
* :mod:`~ssjax.fit.inference` — standard errors from exact derivatives;
* :mod:`~ssjax.fit.engine` — ``KalmanEngine`` and ``compute_model_forward``;
* :mod:`~ssjax.fit.results` — ``KalmanFit``, the result people read;
* :mod:`~ssjax.fit.nested` — one-factor restrictions; :mod:`~ssjax.fit.stats` — tests.

Depends on :mod:`ssjax.core`.
"""

from __future__ import annotations

from ssjax.fit.em import (
    EM_STATUS_MESSAGES,
    EMResult,
    EStats,
    MStep,
    e_step,
    expected_complete_loglik,
    fit_em,
    m_step,
)
from ssjax.fit.engine import (
    KalmanEngine,
    ModelForward,
    compute_model_forward,
    log_likelihood,
    model_forwards,
)
from ssjax.fit.inference import (
    Uncertainty,
    parameter_uncertainty,
    per_date_scores,
)
from ssjax.fit.linesearch import (
    ZoomState,
    scale_by_zoom_linesearch,
)
from ssjax.fit.mle import (
    BOUNDARY,
    FTOL,
    GTOL,
    MAX_STEPS,
    NONFINITE,
    STATUS_MESSAGES,
    MLEResult,
    check_fit_options,
    default_start,
    fit_mle,
    negative_loglik,
    status_message,
    stopped,
)
from ssjax.fit.nested import (
    NESTED_MODELS,
    SWITCHED_OFF,
    NestedModel,
    compare_nested,
    fit_nested,
)
from ssjax.fit.optimum import (
    BOUND_TOL,
    BOUNDARY_MESSAGE,
    DEGENERATE_FIELDS,
    FitStatus,
    StartDesign,
    at_bounds,
    bound_names,
    bound_vector,
    degenerate,
    describe_bounds,
    move_inside,
    multi_start,
    offset_start,
    pull_back,
    stack_params,
    start_design,
)
from ssjax.fit.results import (
    KalmanFit,
)
from ssjax.fit.stats import (
    DieboldMarianoResult,
    InformationCriteria,
    LikelihoodRatioResult,
    diebold_mariano,
    information_criteria,
    likelihood_ratio_test,
    newey_west_lags,
    newey_west_variance,
)

__all__ = [
    "EMResult",
    "EStats",
    "e_step",
    "expected_complete_loglik",
    "m_step",
    "MStep",
    "fit_em",
    "EM_STATUS_MESSAGES",
    "KalmanEngine",
    "compute_model_forward",
    "ModelForward",
    "log_likelihood",
    "model_forwards",
    "Uncertainty",
    "parameter_uncertainty",
    "per_date_scores",
    "scale_by_zoom_linesearch",
    "ZoomState",
    "MLEResult",
    "fit_mle",
    "default_start",
    "status_message",
    "check_fit_options",
    "negative_loglik",
    "STATUS_MESSAGES",
    "GTOL",
    "FTOL",
    "MAX_STEPS",
    "NONFINITE",
    "BOUNDARY",
    "stopped",
    "NestedModel",
    "NESTED_MODELS",
    "SWITCHED_OFF",
    "fit_nested",
    "compare_nested",
    "FitStatus",
    "BOUNDARY_MESSAGE",
    "BOUND_TOL",
    "DEGENERATE_FIELDS",
    "at_bounds",
    "bound_vector",
    "degenerate",
    "bound_names",
    "describe_bounds",
    "move_inside",
    "pull_back",
    "start_design",
    "multi_start",
    "offset_start",
    "StartDesign",
    "stack_params",
    "KalmanFit",
    "DieboldMarianoResult",
    "LikelihoodRatioResult",
    "InformationCriteria",
    "newey_west_lags",
    "newey_west_variance",
    "diebold_mariano",
    "likelihood_ratio_test",
    "information_criteria",
]
