r"""One-factor models as restrictions of the two-factor state space, and their comparison.

The document's model is ln S = X + Y with X an Ornstein–Uhlenbeck deviation and Y a
Brownian motion with drift. Two classic one-factor models are nested in it:

* ``"gbm"`` — **geometric Brownian motion** (a random walk in ln S with drift): X is switched
  off (σ_X = 0 and the prior of X is the point mass at 0, so X ≡ 0; κ and ρ are then
  unidentified and held fixed). ln F(t, T) = Y_t + (μ + σ_Y²/2)Δ, i.e. Black's model with
  a constant futures-curve slope. Free: σ_Y, μ and the noise s.d.s.
* ``"mean_reverting"`` — the **one-factor mean-reverting** model (Schwartz 1997, model 1):
  Y is switched off (σ_Y = 0, μ = 0, so Y is a constant level learned by the filter from
  its prior; ρ is unidentified and held at 0). ln S reverts to that level at rate κ.
  Free: κ, σ_X and the noise s.d.s.
* ``"two_factor"`` — the document's model, all of Θ free.

Each is fitted by the same :class:`ssjax.KalmanEngine` (exact likelihood, same prior for the
free state, same optimizer), so log-likelihoods, AIC/BIC and likelihood-ratio statistics are
comparable. A variance switched off is held at ``SWITCHED_OFF`` = 1e-8 (Θ keeps σ > 0), which
changes the log-likelihood by far less than the optimizer's tolerance.

With ``risk_premium=True`` (the 2000 paper's form) the two-factor model also frees λ_X and
μ*; the GBM holds λ_X = 0 (there is no X) and frees μ*; the mean-reverting model holds
μ* = 0 (a constant level carries no drift) and frees λ_X.

**Likelihood-ratio tests against the two-factor model are non-standard**: each null puts a
variance on the boundary (σ² = 0), and the parameters of the switched-off factor (κ, or ρ)
are then unidentified (Davies' problem). :func:`compare_nested` reports the Self–Liang
50:50 χ² mixture p-value for the boundary and notes that it is approximate; with the LR
statistics seen on futures panels (hundreds of nats) no reasonable null distribution
changes the conclusion.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from jax.typing import ArrayLike

from ssjax.fit.stats import information_criteria, likelihood_ratio_test

__all__ = ["NestedModel", "NESTED_MODELS", "SWITCHED_OFF", "fit_nested", "compare_nested"]

SWITCHED_OFF = 1e-8


class NestedModel(NamedTuple):
    """A restriction of the two-factor model.

    Attributes:
        name: key in :data:`NESTED_MODELS`.
        label: a human-readable name for tables.
        held: ``{parameter: value}`` held fixed (the document's model).
        held_risk_premium: further ``{parameter: value}`` held in the risk-premium form.
        x_off: True when X is switched off entirely (prior variance of X set to 0).
        boundary: True when the restriction puts a variance on its boundary (LR tests).
    """

    name: str
    label: str
    held: dict[str, float]
    held_risk_premium: dict[str, float]
    x_off: bool
    boundary: bool


NESTED_MODELS: dict[str, NestedModel] = {
    "gbm": NestedModel(
        "gbm",
        "GBM (one factor, random walk)",
        {"sigma_x": SWITCHED_OFF, "kappa": 1.0, "rho": 0.0},
        {"lambda_x": 0.0},
        x_off=True,
        boundary=True,
    ),
    "mean_reverting": NestedModel(
        "mean_reverting",
        "One-factor mean reverting",
        {"sigma_y": SWITCHED_OFF, "mu": 0.0, "rho": 0.0},
        {"mu_star": 0.0},
        x_off=False,
        boundary=True,
    ),
    "two_factor": NestedModel("two_factor", "Two-factor (Schwartz–Smith)", {}, {}, False, False),
}


def prior_cov(model: str | NestedModel, P0: ArrayLike | None = None) -> np.ndarray:
    """The model's prior covariance of (X, Y): ``P0`` (default I₂), with X's row and column
    set to 0 when the model switches X off (X ≡ 0 from the first date)."""
    P = np.eye(2) if P0 is None else np.array(P0, dtype=float)
    if _model(model).x_off:
        P[0, :] = 0.0
        P[:, 0] = 0.0
    return P


def _model(model: str | NestedModel) -> NestedModel:
    if isinstance(model, NestedModel):
        return model
    if model not in NESTED_MODELS:
        raise ValueError(f"model must be one of {sorted(NESTED_MODELS)}, got {model!r}")
    return NESTED_MODELS[model]


def nested_setup(
    model: str | NestedModel, risk_premium: bool = False
) -> tuple[dict[str, float], dict[str, bool]]:
    """``(theta0, fixed)`` for :meth:`ssjax.KalmanEngine.fit` / ``KalmanEngine(fixed=…)``."""
    m = _model(model)
    held = dict(m.held)
    if risk_premium:
        held.update(m.held_risk_premium)
    return held, {k: True for k in held}


def fit_nested(
    model: str | NestedModel,
    F_mkt: ArrayLike,
    ttm: ArrayLike,
    *,
    risk_premium: bool = False,
    theta0: Mapping[str, Any] | None = None,
    P0: ArrayLike | None = None,
    engine_options: Mapping[str, Any] | None = None,
    **fit_kwargs: Any,
):
    """Fit one of :data:`NESTED_MODELS` with :class:`ssjax.KalmanEngine`.

    Args:
        model: ``"gbm"``, ``"mean_reverting"`` or ``"two_factor"`` (or a :class:`NestedModel`).
        F_mkt, ttm: the panel, as for :meth:`ssjax.KalmanEngine.fit`.
        risk_premium: fit the 2000 paper's risk-premium form of the model.
        theta0: starting values of the free parameters (the held ones cannot be overridden).
        P0: prior covariance of (X, Y); default I₂, with X's variance set to 0 when the model
            switches X off.
        engine_options: further :class:`ssjax.KalmanEngine` options (``fixed`` merges).
        **fit_kwargs: passed to :meth:`ssjax.KalmanEngine.fit` (``dates``, ``dt``, ``mask``,
            ``t_star``, ``x0``, ``tenor_names``…).

    Returns:
        :class:`ssjax.fit.results.KalmanFit`; ``fit.extra["nested_model"]`` names the model and
        ``fit.n_params`` counts only the free parameters.
    """
    from ssjax.fit.engine import KalmanEngine

    m = _model(model)
    held, fixed = nested_setup(m, risk_premium)
    start = dict(theta0 or {})
    clash = sorted(set(start) & set(held))
    if clash:
        raise ValueError(f"theta0 sets {clash}, which the {m.name!r} model holds fixed")
    start.update(held)
    opts = dict(engine_options or {})
    opts["fixed"] = {**dict(opts.get("fixed") or {}), **fixed}
    if m.x_off:
        P0 = prior_cov(m, P0)
    eng = KalmanEngine(risk_premium=risk_premium, **opts)
    fit = eng.fit(F_mkt, ttm, theta0=start or None, P0=P0, **fit_kwargs)
    fit.extra["nested_model"] = m.name
    return fit


def compare_nested(
    fits: Mapping[str, Any],
    full: str = "two_factor",
    n_obs: str = "prices",
) -> pd.DataFrame:
    """Log-likelihoods, information criteria and LR tests of nested fits against ``full``.

    Args:
        fits: ``{model name: KalmanFit}`` — each a :func:`fit_nested` result on the same
            data (names from :data:`NESTED_MODELS`, or any fit whose ``free`` parameters are
            a subset of the full model's).
        full: the key of the unrestricted model.
        n_obs: BIC's n: ``"prices"`` (the number of observed prices, as
            :attr:`KalmanFit.bic`) or ``"dates"``; every model is scored with the same n.

    Returns:
        DataFrame indexed by model: ``label, n_params, loglik, aic, bic, aicc``, and against
        the full model ``lr, df, p_value`` (boundary mixture where the restriction puts a
        variance at zero), plus ``converged`` (an interior optimum) and
        ``at_bound`` (the free parameters that ended at a bound).
    """
    if full not in fits:
        raise ValueError(f"fits has no {full!r} entry (the unrestricted model)")
    if n_obs not in ("dates", "prices"):
        raise ValueError(f"n_obs must be 'dates' or 'prices', got {n_obs!r}")
    ref = fits[full]
    ref_n = _n_obs(ref, n_obs)
    rows = []
    for name, fit in fits.items():
        n = _n_obs(fit, n_obs)
        if n != ref_n:
            raise ValueError(
                f"fits[{name!r}] has {n} observations but fits[{full!r}] has {ref_n}: "
                "models must be fitted to the same data"
            )
        k = int(fit.n_params)
        ic = information_criteria(float(fit.loglik), k, n)
        row = {
            "label": NESTED_MODELS[name].label if name in NESTED_MODELS else name,
            "n_params": k,
            "loglik": float(fit.loglik),
            "aic": ic.aic,
            "bic": ic.bic,
            "aicc": ic.aicc,
        }
        if name == full:
            row.update(lr=np.nan, df=np.nan, p_value=np.nan)
        else:
            df = int(ref.n_params) - k
            if df < 1:
                raise ValueError(f"fits[{name!r}] is not a restriction of {full!r} ({k} params)")
            boundary = NESTED_MODELS[name].boundary if name in NESTED_MODELS else False
            t = likelihood_ratio_test(float(fit.loglik), float(ref.loglik), df, boundary)
            row.update(lr=t.statistic, df=df, p_value=t.pvalue)
        row["converged"] = bool(fit.converged)
        row["at_bound"] = ", ".join(fit.at_bound)
        rows.append(row)
    out = pd.DataFrame(rows, index=pd.Index(list(fits), name="model"))
    out["df"] = out["df"].astype("Int64")
    return out


def _n_obs(fit: Any, how: str) -> int:
    if how == "prices":
        return int(fit.nobs)
    return int(len(fit.state_path))
