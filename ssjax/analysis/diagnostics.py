r"""Filter diagnostics: standardized innovations, residual tests, NIS bands, fit-error tables.

Under a correctly specified model with the true Θ, the one-step-ahead innovations
v_t = y_t − E[y_t | past] of the Kalman filter are independent over dates, Gaussian, with
covariance S_t = H_t P_{t|t−1} H_tᵀ + R restricted to the tenors observed at t. This module
turns that into checks:

* **marginal** standardized innovations u_{t,i} = v_{t,i} / √S_{t,ii} per tenor
  (:func:`standardized_innovations`): each tenor's series is ≈ iid N(0, 1) over dates, but
  the tenors are correlated with each other on a date (S_t is not diagonal);
* **jointly whitened** innovations e_t = L_t⁻¹ v_t with L_t the Cholesky factor of S_t
  (:func:`whitened_innovations`): iid N(0, I) over dates *and* tenors; component i is the
  innovation of tenor i given the tenors before it on that date. Their squared norm is the
  **normalized innovation squared** NIS_t = v_tᵀ S_t⁻¹ v_t ~ χ²(n_t), n_t = number observed;
* Ljung–Box (no autocorrelation) and Jarque–Bera (normality) tests, NaN-aware
  (:func:`ljung_box`, :func:`jarque_bera`); χ² bands for the NIS (:func:`nis_bands`,
  :func:`nis_summary`);
* fit errors per tenor in the layout of Table 3 of Schwartz and Smith (2000): mean error,
  s.d. of the error and mean absolute error (:func:`fit_error_table`);
* :func:`diagnostics_report` collects all of it for a fit, :func:`plot_diagnostics` draws it.

The first date(s) are dominated by the prior (P0 = I by default, far wider than the data), so
the report leaves ``burn_in`` dates (default 1) out of the statistics.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax import Array
from jax.typing import ArrayLike

from ssjax._lazy import scipy_stats as stats
from ssjax.core.filter import FilterResult, Prior, default_prior, kalman_filter
from ssjax.core.market import MarketData
from ssjax.core.model import forward_curve, measurement
from ssjax.core.params import Params

__all__ = [
    "JointInnovations",
    "LjungBoxResult",
    "JarqueBeraResult",
    "NISBands",
    "DiagnosticsReport",
    "standardized_innovations",
    "whitened_innovations",
    "autocorrelation",
    "ljung_box",
    "jarque_bera",
    "nis_bands",
    "nis_summary",
    "fit_error_table",
    "diagnostics_report",
    "plot_diagnostics",
]


# --------------------------------------------------------------------------------------
# Innovations
# --------------------------------------------------------------------------------------
def standardized_innovations(
    filter_result: FilterResult, mask: ArrayLike | None = None
) -> np.ndarray:
    """Marginal standardized innovations v_{t,i} / √S_{t,ii}: ``[T, M]``, NaN where masked.

    Args:
        filter_result: output of :func:`ssjax.kalman_filter`.
        mask: bool ``[T, M]``, True = observed (e.g. ``data.mask``); default: the entries
            with a positive innovation variance (the filter sets masked ones to 0).

    Each tenor's series is ≈ iid N(0, 1) under the model, but tenors are correlated on a
    date; :func:`whitened_innovations` gives the jointly whitened version.
    """
    v = np.asarray(filter_result.innovations, dtype=float)
    s = np.asarray(filter_result.innovation_vars, dtype=float)
    m = s > 0 if mask is None else np.asarray(mask, bool)
    if m.shape != v.shape:
        raise ValueError(f"mask must have the innovations' shape {v.shape}, got {m.shape}")
    m = m & (s > 0)
    return np.where(m, v / np.sqrt(np.where(m, s, 1.0)), np.nan)


class JointInnovations(NamedTuple):
    """Jointly whitened innovations of every date (N = M tenors, plus the spot if present)."""

    whitened: np.ndarray  # [T, N] L_t⁻¹ v_t, NaN where masked
    nis: np.ndarray  # [T] v_tᵀ S_t⁻¹ v_t (0 on a date with no observation)
    nobs: np.ndarray  # [T] observations on the date = degrees of freedom of the NIS
    logdet: np.ndarray  # [T] log|S_t| over the observed entries


def joint_innovations(p: Params, data: MarketData, filt: FilterResult) -> tuple[Array, ...]:
    """Jittable core of :func:`whitened_innovations`: (whitened, nis, nobs, logdet), jnp."""
    dtype = data.log_f.dtype
    mask = data.mask
    b, _ = measurement(p, jnp.where(mask, data.ttm, 0.0))  # [T, M] loadings on X
    sd = jnp.broadcast_to(p.meas_sd, data.log_f.shape[-1:]).astype(dtype)
    v = filt.innovations
    if data.log_s is not None:
        b = jnp.concatenate([b, jnp.ones_like(b[:, :1])], axis=1)
        sd = jnp.concatenate([sd, jnp.reshape(p.spot_sd, (1,)).astype(dtype)])
        v = jnp.concatenate([v, filt.spot_innovations[:, None]], axis=1)
        mask = jnp.concatenate([mask, data.mask_s[:, None]], axis=1)
    P = filt.predicted_covs  # [T, 2, 2]
    p11, p12, p22 = (P[:, 0, 0, None, None], P[:, 0, 1, None, None], P[:, 1, 1, None, None])
    bi, bj = b[:, :, None], b[:, None, :]
    S = bi * bj * p11 + (bi + bj) * p12 + p22 + jnp.diag(sd * sd)
    # masked rows/columns become the identity: the Cholesky factor of the observed block (in
    # tenor order) with identity rows for the missing entries, whose whitened values are 0
    mm = mask[:, :, None] & mask[:, None, :]
    eye = jnp.eye(S.shape[-1], dtype=dtype)
    S = jnp.where(mm, S, eye)
    L = jnp.linalg.cholesky(S)
    vm = jnp.where(mask, v, 0.0)
    e = jax.scipy.linalg.solve_triangular(L, vm[..., None], lower=True)[..., 0]
    nis = jnp.sum(e * e, axis=-1)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)
    nan = jnp.asarray(jnp.nan, dtype)
    return jnp.where(mask, e, nan), nis, jnp.sum(mask, axis=-1), logdet


_filter_jit = jax.jit(kalman_filter)
_joint_jit = jax.jit(joint_innovations)
_prior_jit = jax.jit(default_prior)


def whitened_innovations(
    params: Params,
    data: MarketData,
    filter_result: FilterResult | None = None,
    prior: Prior | None = None,
) -> JointInnovations:
    """Jointly whitened innovations L_t⁻¹ v_t, the NIS v_tᵀS_t⁻¹v_t and its degrees of freedom.

    S_t = H_t P_{t|t−1} H_tᵀ + R over the entries observed at t (H_t rows (e^{−κΔ}, 1), R the
    measurement variances); L_t its lower Cholesky factor, in tenor order (the spot, when the
    data have one, is the last column). −½(n_t log 2π + log|S_t| + NIS_t) is the filter's
    ``loglik_t``.

    Args:
        params: the parameters the filter ran with.
        data: the panel.
        filter_result: :func:`ssjax.kalman_filter` output for ``params`` and ``data``
            (computed, with ``prior``, when omitted).
        prior: prior of the state at the first date (default :func:`ssjax.default_prior`).
    """
    if filter_result is None:
        filter_result = _filter_jit(params, data, _prior_jit(data) if prior is None else prior)
    if np.shape(filter_result.innovations) != np.shape(data.log_f):
        raise ValueError(
            f"filter_result has innovations of shape {np.shape(filter_result.innovations)} "
            f"for data of shape {np.shape(data.log_f)}"
        )
    e, nis, nobs, logdet = _joint_jit(params, data, filter_result)
    return JointInnovations(
        np.asarray(e), np.asarray(nis), np.asarray(nobs, dtype=int), np.asarray(logdet)
    )


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------
def _vector(name: str, x: ArrayLike) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    return a


def autocorrelation(x: ArrayLike, nlags: int) -> np.ndarray:
    """Sample autocorrelations r_0..r_nlags of a series with gaps (NaN = missing).

    r_k = Σ d_t d_{t+k} / Σ d_t² over the pairs with both ends observed, d = x − mean
    (missing values keep their place in time, they are not closed up). Without NaN this is
    the usual (biased, demeaned) estimator of ``statsmodels.tsa.stattools.acf``.
    """
    a = _vector("x", x)
    if int(nlags) != nlags or nlags < 0:
        raise ValueError(f"nlags must be a non-negative integer, got {nlags}")
    nlags = int(nlags)
    f = np.isfinite(a)
    if f.sum() < 2:
        raise ValueError(f"x: needs at least 2 finite values, got {int(f.sum())}")
    if nlags >= a.size:
        raise ValueError(f"nlags must be below the series length {a.size}, got {nlags}")
    d = np.where(f, a - a[f].mean(), 0.0)
    denom = float(np.sum(d * d))
    if denom == 0.0:
        raise ValueError("x is constant: its autocorrelations are undefined")
    return np.array([np.sum(d[: a.size - k] * d[k:]) / denom for k in range(nlags + 1)])


class LjungBoxResult(NamedTuple):
    """Ljung–Box portmanteau test of no autocorrelation up to ``lags``."""

    statistic: float  # Q = n(n+2) Σ_k r_k² / (n − k)
    pvalue: float  # P(χ²(df) > Q)
    lags: int
    df: int  # lags − model_dof
    nobs: int  # finite values used


def ljung_box(x: ArrayLike, lags: int = 10, model_dof: int = 0) -> LjungBoxResult:
    """Ljung–Box Q statistic for lags 1..``lags`` and its χ²(lags − model_dof) p-value.

    Args:
        x: a series [T]; NaN marks a missing value (it keeps its place in time, see
            :func:`autocorrelation`; n is the number of finite values).
        lags: the number of autocorrelations in Q.
        model_dof: degrees of freedom to subtract (e.g. fitted ARMA terms); 0 for filter
            innovations.

    Without NaN this equals ``statsmodels.stats.diagnostic.acorr_ljungbox(x, [lags],
    model_df=model_dof)``.
    """
    if int(lags) != lags or lags < 1:
        raise ValueError(f"lags must be a positive integer, got {lags}")
    if int(model_dof) != model_dof or not 0 <= model_dof < lags:
        raise ValueError(f"model_dof must be an integer in [0, lags={lags}), got {model_dof}")
    a = _vector("x", x)
    n = int(np.isfinite(a).sum())
    if n <= lags + 1:
        raise ValueError(f"x: {n} finite values are too few for lags={lags}")
    r = autocorrelation(a, int(lags))[1:]
    k = np.arange(1, int(lags) + 1)
    q = float(n * (n + 2) * np.sum(r * r / (n - k)))
    df = int(lags - model_dof)
    return LjungBoxResult(q, float(stats.chi2.sf(q, df)), int(lags), df, n)


class JarqueBeraResult(NamedTuple):
    """Jarque–Bera test of normality."""

    statistic: float  # n/6 · (S² + (K − 3)²/4)
    pvalue: float  # P(χ²(2) > JB)
    skew: float  # S, from biased central moments
    kurtosis: float  # K (not excess: 3 for a normal law)
    nobs: int


def jarque_bera(x: ArrayLike) -> JarqueBeraResult:
    """Jarque–Bera statistic, χ²(2) p-value, skewness and kurtosis of the finite values of x.

    The same statistic as ``scipy.stats.jarque_bera`` (biased moments); NaN values are
    ignored.
    """
    a = np.asarray(x, dtype=float).ravel()
    a = a[np.isfinite(a)]
    n = a.size
    if n < 3:
        raise ValueError(f"x: needs at least 3 finite values, got {n}")
    d = a - a.mean()
    m2 = float(np.mean(d**2))
    if m2 == 0.0:
        raise ValueError("x is constant: skewness and kurtosis are undefined")
    s = float(np.mean(d**3)) / m2**1.5
    k = float(np.mean(d**4)) / m2**2
    jb = n / 6.0 * (s * s + 0.25 * (k - 3.0) ** 2)
    return JarqueBeraResult(jb, float(stats.chi2.sf(jb, 2)), s, k, n)


class NISBands(NamedTuple):
    """Two-sided χ²(n_t) band of the NIS on every date (NaN where n_t = 0)."""

    lower: np.ndarray  # [T]
    upper: np.ndarray  # [T]
    level: float


def _level(level: float) -> float:
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return float(level)


def nis_bands(nobs_t: ArrayLike, level: float = 0.95) -> NISBands:
    """χ² quantiles (1 ∓ level)/2 with ``nobs_t`` degrees of freedom on every date.

    A correctly specified model puts the NIS outside its band on a fraction 1 − level of the
    dates (below on half, above on half).
    """
    level = _level(level)
    n = np.asarray(nobs_t, dtype=float)
    if np.any(~np.isfinite(n)) or np.any(n < 0):
        raise ValueError("nobs_t must be finite and >= 0")
    alpha = 1.0 - level
    pos = n > 0
    lo = np.where(pos, stats.chi2.ppf(alpha / 2, np.where(pos, n, 1.0)), np.nan)
    hi = np.where(pos, stats.chi2.isf(alpha / 2, np.where(pos, n, 1.0)), np.nan)
    return NISBands(lo, hi, level)


def nis_summary(nis: ArrayLike, nobs_t: ArrayLike, level: float = 0.95) -> pd.Series:
    """How the NIS sits in its χ² bands: fractions outside, a binomial test and a total test.

    Returns a Series with ``dates`` (with an observation), ``expected_outside`` (1 − level),
    ``frac_below``, ``frac_above``, ``frac_outside``, ``binom_pvalue`` (two-sided binomial
    test of the count outside against 1 − level), ``mean_nis_per_dof`` (Σ NIS / Σ n_t, ≈ 1),
    ``total_nis``, ``total_dof`` and ``total_pvalue`` (two-sided: Σ NIS ~ χ²(Σ n_t) when the
    dates are independent, as the innovations are under the model).
    """
    x = np.asarray(nis, dtype=float).ravel()
    n = np.asarray(nobs_t, dtype=float).ravel()
    if x.shape != n.shape:
        raise ValueError(f"nis and nobs_t differ in length: {x.shape[0]} and {n.shape[0]}")
    bands = nis_bands(n, level)
    use = (n > 0) & np.isfinite(x)
    d = int(use.sum())
    if d == 0:
        raise ValueError("nobs_t: no date has an observation")
    below = int(np.sum(x[use] < bands.lower[use]))
    above = int(np.sum(x[use] > bands.upper[use]))
    alpha = 1.0 - bands.level
    total, dof = float(x[use].sum()), float(n[use].sum())
    p_total = 2.0 * min(stats.chi2.cdf(total, dof), stats.chi2.sf(total, dof))
    return pd.Series(
        {
            "dates": d,
            "expected_outside": alpha,
            "frac_below": below / d,
            "frac_above": above / d,
            "frac_outside": (below + above) / d,
            "binom_pvalue": float(stats.binomtest(below + above, d, alpha).pvalue),
            "mean_nis_per_dof": total / dof,
            "total_nis": total,
            "total_dof": dof,
            "total_pvalue": min(p_total, 1.0),
        }
    )


# --------------------------------------------------------------------------------------
# Fit errors (Schwartz–Smith 2000, Table 3 layout)
# --------------------------------------------------------------------------------------
def _fit_errors(F_mkt, F_model, mask, in_logs: bool) -> tuple[np.ndarray, np.ndarray]:
    Fm = np.asarray(F_mkt, dtype=float)
    Fo = np.asarray(F_model, dtype=float)
    if Fm.ndim == 1:
        Fm = Fm[:, None]
    if Fo.shape != Fm.shape:
        raise ValueError(f"F_model must have F_mkt's shape {Fm.shape}, got {Fo.shape}")
    ok = np.isfinite(Fm) & np.isfinite(Fo)
    if in_logs:
        ok &= (Fm > 0) & (Fo > 0)
    if mask is not None:
        m = np.asarray(mask, bool)
        if m.shape != Fm.shape:
            raise ValueError(f"mask must have F_mkt's shape {Fm.shape}, got {m.shape}")
        ok &= m
    if in_logs:
        err = np.log(np.where(ok, Fo, 1.0)) - np.log(np.where(ok, Fm, 1.0))
    else:
        err = Fo - Fm
    return np.where(ok, err, np.nan), ok


def fit_error_table(
    F_mkt: ArrayLike,
    F_model: ArrayLike,
    mask: ArrayLike | None = None,
    in_logs: bool = True,
    tenor_names: list[str] | None = None,
) -> pd.DataFrame:
    """Fit errors per tenor in the layout of Schwartz–Smith (2000), Table 3.

    The error is **model minus market**: ln F_model − ln F_mkt (``in_logs=True``, about the
    relative error) or F_model − F_mkt. Rows are tenors; columns ``mean_error``,
    ``sd_error`` (sample s.d., ddof = 1), ``mean_abs_error``, ``rmse`` and ``n`` (entries
    used: observed in ``mask`` — default all — and finite, and positive in logs).

    Args:
        F_mkt: market prices [T, M].
        F_model: model prices [T, M] (e.g. ``fit.F_model_path``).
        mask: bool [T, M], True = use the entry.
        in_logs: errors of ln F (default) or of F.
        tenor_names: row labels (default ``T1..TM``).
    """
    err, ok = _fit_errors(F_mkt, F_model, mask, in_logs)
    M = err.shape[1]
    names = [f"T{i + 1}" for i in range(M)] if tenor_names is None else list(tenor_names)
    if len(names) != M:
        raise ValueError(f"tenor_names has {len(names)} entries for {M} tenors")
    rows = []
    for i in range(M):
        e = err[ok[:, i], i]
        n = e.size
        rows.append(
            {
                "mean_error": e.mean() if n else np.nan,
                "sd_error": e.std(ddof=1) if n > 1 else np.nan,
                "mean_abs_error": np.abs(e).mean() if n else np.nan,
                "rmse": math.sqrt(np.mean(e * e)) if n else np.nan,
                "n": n,
            }
        )
    out = pd.DataFrame(rows, index=pd.Index(names, name="tenor"))
    out.attrs["error"] = "ln F_model - ln F_mkt" if in_logs else "F_model - F_mkt"
    return out


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------
@dataclass(eq=False)
class DiagnosticsReport:
    """Output of :func:`diagnostics_report`: tables, and the series :func:`plot_diagnostics`
    draws.

    Tables: ``innovations`` (per tenor: statistics of the marginal standardized
    innovations), ``whitened`` (the same for the jointly whitened ones), ``nis`` (one row,
    :func:`nis_summary`) and ``fit_errors`` (:func:`fit_error_table`, in logs).
    """

    innovations: pd.DataFrame
    whitened: pd.DataFrame
    nis: pd.DataFrame
    fit_errors: pd.DataFrame
    standardized: np.ndarray  # [T, M]
    whitened_values: np.ndarray  # [T, N]
    nis_t: np.ndarray  # [T]
    nobs_t: np.ndarray  # [T]
    bands: NISBands
    errors: np.ndarray  # [T, M] ln F_model − ln F_mkt, NaN where not used
    dates: pd.DatetimeIndex | None
    tenor_names: list[str]
    lags: int
    burn_in: int

    def to_text(self) -> str:
        """A plain-text rendering of the four tables (for a terminal or a report file)."""
        fmt = {"float_format": lambda v: f"{v:.4g}"}
        parts = [
            "Standardized innovations (marginal, per tenor):",
            self.innovations.to_string(**fmt),
            "",
            "Jointly whitened innovations:",
            self.whitened.to_string(**fmt),
            "",
            f"NIS against its chi-square {self.bands.level:.0%} bands:",
            self.nis.to_string(**fmt),
            "",
            f"Fit errors ({self.fit_errors.attrs.get('error', '')}):",
            self.fit_errors.to_string(**fmt),
        ]
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.to_text()


def _series_table(u: np.ndarray, names: list[str], lags: int) -> pd.DataFrame:
    rows = []
    for i in range(u.shape[1]):
        x = u[:, i]
        f = np.isfinite(x)
        n = int(f.sum())
        r: dict[str, Any] = {"n": n, "mean": np.nan, "sd": np.nan}
        if n:
            r["mean"] = float(x[f].mean())
            r["sd"] = float(x[f].std(ddof=1)) if n > 1 else np.nan
        lb_lags = min(lags, n - 2)
        try:
            lb = ljung_box(x, lb_lags)
            r.update(lb_lags=lb.lags, lb_stat=lb.statistic, lb_pvalue=lb.pvalue)
        except ValueError:
            r.update(lb_lags=max(lb_lags, 0), lb_stat=np.nan, lb_pvalue=np.nan)
        try:
            jb = jarque_bera(x)
            r.update(jb_stat=jb.statistic, jb_pvalue=jb.pvalue, skew=jb.skew, kurtosis=jb.kurtosis)
        except ValueError:
            r.update(jb_stat=np.nan, jb_pvalue=np.nan, skew=np.nan, kurtosis=np.nan)
        rows.append(r)
    return pd.DataFrame(rows, index=pd.Index(names, name="tenor"))


_filtered_forwards = jax.jit(jax.vmap(forward_curve, in_axes=(None, 0, 0)))


def diagnostics_report(
    source: Any,
    data: MarketData | None = None,
    *,
    filter_result: FilterResult | None = None,
    prior: Prior | None = None,
    F_model: ArrayLike | None = None,
    lags: int = 10,
    level: float = 0.95,
    burn_in: int = 1,
    tenor_names: list[str] | None = None,
    dates: ArrayLike | None = None,
) -> DiagnosticsReport:
    """Innovation tests, NIS bands and the fit-error table of a fitted model.

    Args:
        source: a :class:`ssjax.KalmanFit` (its parameters, data, prior, filter result,
            ``F_model_path``, tenor names and dates are used), or a :class:`ssjax.Params`
            with ``data``, or a ``(params, data)`` tuple.
        data: the panel, when ``source`` is a Params.
        filter_result: the filter output for ``source`` (computed when omitted).
        prior: the filter's prior (default :func:`ssjax.default_prior`).
        F_model: model prices [T, M] for the fit-error table; default the fit's
            ``F_model_path`` or, for Params, the filtered model forwards (each date's
            curve from the state filtered on that date's data).
        lags: Ljung–Box lags (reduced for a tenor with too few observations).
        level: coverage of the NIS bands.
        burn_in: leading dates left out of every statistic (the prior dominates them).
        tenor_names, dates: labels (default the fit's, else ``T1..TM`` and none).
    """
    from ssjax.fit.results import KalmanFit

    if isinstance(source, tuple) and not isinstance(source, Params):
        if len(source) != 2:
            raise ValueError("source: a tuple must be (params, data)")
        source, data = source
    if isinstance(source, KalmanFit):
        params = source.params
        data = source.extra.get("data") if data is None else data
        prior = source.extra.get("prior") if prior is None else prior
        filter_result = source.filter_result if filter_result is None else filter_result
        F_model = source.F_model_path if F_model is None else F_model
        tenor_names = source.tenor_names if tenor_names is None else tenor_names
        dates = source.dates if dates is None else dates
        if data is None:
            raise ValueError("source: this KalmanFit carries no data; pass data=")
    elif isinstance(source, Params):
        params = source
        if data is None:
            raise ValueError("data is required when source is a Params")
    else:
        raise ValueError(
            f"source must be a KalmanFit, a Params or a (params, data) tuple, got {type(source)}"
        )
    if not isinstance(data, MarketData):
        raise ValueError(f"data must be a MarketData, got {type(data)}")
    if int(burn_in) != burn_in or not 0 <= burn_in < data.n_dates - 2:
        raise ValueError(f"burn_in must be an integer in [0, T - 2), got {burn_in}")
    if int(lags) != lags or lags < 1:
        raise ValueError(f"lags must be a positive integer, got {lags}")
    _level(level)
    burn_in, lags = int(burn_in), int(lags)
    T, M = data.n_dates, data.n_tenors
    prior = _prior_jit(data) if prior is None else prior
    if filter_result is None:
        filter_result = _filter_jit(params, data, prior)
    joint = whitened_innovations(params, data, filter_result)
    mask = np.asarray(data.mask)
    u = standardized_innovations(filter_result, mask)
    names = [f"T{i + 1}" for i in range(M)] if tenor_names is None else list(tenor_names)
    if len(names) != M:
        raise ValueError(f"tenor_names has {len(names)} entries for {M} tenors")
    names_w = names + (["spot"] if joint.whitened.shape[1] > M else [])
    dates_idx = None
    if dates is not None:
        dates_idx = pd.DatetimeIndex(pd.to_datetime(np.asarray(dates)))
        if len(dates_idx) != T:
            raise ValueError(f"dates has {len(dates_idx)} entries for T={T} dates")

    keep = np.arange(T) >= burn_in
    u_s = np.where(keep[:, None], u, np.nan)
    w_s = np.where(keep[:, None], joint.whitened, np.nan)
    summ = nis_summary(joint.nis[keep], joint.nobs[keep], level)
    nis_df = pd.DataFrame([summ], index=pd.Index(["all"], name="observables"))

    F_mkt = np.where(mask, np.exp(np.asarray(data.log_f)), np.nan)
    if F_model is None:
        F_model = _filtered_forwards(params, filter_result.filtered_means, data.ttm)
    F_model = np.asarray(F_model, dtype=float)
    err, _ = _fit_errors(F_mkt, F_model, mask & keep[:, None], True)
    table = fit_error_table(F_mkt, F_model, mask & keep[:, None], True, names)
    return DiagnosticsReport(
        innovations=_series_table(u_s, names, lags),
        whitened=_series_table(w_s, names_w, lags),
        nis=nis_df,
        fit_errors=table,
        standardized=u,
        whitened_values=joint.whitened,
        nis_t=joint.nis,
        nobs_t=joint.nobs,
        bands=nis_bands(joint.nobs, level),
        errors=err,
        dates=dates_idx,
        tenor_names=names,
        lags=lags,
        burn_in=burn_in,
    )


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------
def _figure(n_panels: int, width: float = 9.0, height: float = 1.9):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, max(2.6, height * n_panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_panels, 1, squeeze=False)[:, 0]
    return fig, axes


def _grid_figure(n: int, size: float = 2.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(n, 3)
    rows = -(-n // cols)
    fig = Figure(figsize=(size * cols + 0.5, size * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def plot_diagnostics(
    report: Any,
    out_dir: str | os.PathLike,
    *,
    prefix: str = "",
    dpi: int = 100,
    **report_kwargs: Any,
) -> list[Path]:
    """Write the diagnostic plots as PNG files in ``out_dir`` and return their paths.

    Files: ``standardized_innovations.png`` (each tenor's marginal standardized innovations
    over time with ±1.96), ``acf.png`` (their autocorrelations with ±1.96/√n),
    ``qq.png`` (normal QQ plots), ``nis.png`` (the NIS with its χ² band) and
    ``fit_errors.png`` (ln F_model − ln F_mkt per tenor), each name preceded by ``prefix``.
    Drawn with matplotlib's Agg canvas (no display, pyplot's state untouched).

    Args:
        report: a :class:`DiagnosticsReport`, or anything :func:`diagnostics_report` takes
            (then built with ``report_kwargs``).
        out_dir: the folder (created if missing).
        prefix: prepended to every file name.
        dpi: resolution.
    """
    if not isinstance(report, DiagnosticsReport):
        report = diagnostics_report(report, **report_kwargs)
    elif report_kwargs:
        raise ValueError(f"report is already a DiagnosticsReport; unexpected {list(report_kwargs)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    r = report
    T, M = r.standardized.shape
    x = r.dates if r.dates is not None else np.arange(T)
    keep = np.arange(T) >= r.burn_in
    paths: list[Path] = []

    def save(fig, name: str) -> None:
        path = out / f"{prefix}{name}.png"
        fig.savefig(path, dpi=dpi)
        paths.append(path)

    fig, axes = _figure(M)
    for i, ax in enumerate(axes):
        ax.plot(x, r.standardized[:, i], lw=0.6, color="C0")
        for y in (-1.96, 1.96):
            ax.axhline(y, color="0.5", lw=0.6, ls="--")
        ax.axhline(0.0, color="0.3", lw=0.5)
        ax.set_ylabel(r.tenor_names[i])
    axes[0].set_title("Standardized innovations (marginal, per tenor)")
    save(fig, "standardized_innovations")

    u = np.where(keep[:, None], r.standardized, np.nan)
    fig, axes = _grid_figure(M)
    for i, ax in enumerate(axes):
        n = int(np.isfinite(u[:, i]).sum())
        nl = min(max(r.lags, 10), max(n - 2, 1), T - 1)
        try:
            acf = autocorrelation(u[:, i], nl)
        except ValueError:
            acf = np.full(nl + 1, np.nan)
        ax.bar(np.arange(1, nl + 1), acf[1:], width=0.6, color="C0")
        if n:
            band = 1.96 / math.sqrt(n)
            ax.axhspan(-band, band, color="0.85", zorder=0)
        ax.axhline(0.0, color="0.3", lw=0.5)
        ax.set_title(f"ACF {r.tenor_names[i]}")
        ax.set_xlabel("lag")
    save(fig, "acf")

    fig, axes = _grid_figure(M)
    for i, ax in enumerate(axes):
        s = np.sort(u[np.isfinite(u[:, i]), i])
        if s.size:
            q = stats.norm.ppf((np.arange(1, s.size + 1) - 0.5) / s.size)
            ax.plot(q, s, ".", ms=2.5, color="C0")
            lim = max(abs(q[0]), abs(q[-1]), abs(s[0]), abs(s[-1]))
            ax.plot([-lim, lim], [-lim, lim], color="0.4", lw=0.7)
        ax.set_title(f"Normal QQ {r.tenor_names[i]}")
        ax.set_xlabel("normal quantile")
    save(fig, "qq")

    fig, axes = _figure(1, height=3.2)
    ax = axes[0]
    ax.plot(x, np.where(r.nobs_t > 0, r.nis_t, np.nan), lw=0.6, color="C0", label="NIS")
    ax.plot(x, r.bands.upper, lw=0.8, color="C3", ls="--", label=f"{r.bands.level:.0%} band")
    ax.plot(x, r.bands.lower, lw=0.8, color="C3", ls="--")
    frac = float(r.nis["frac_outside"].iloc[0])
    ax.set_title(f"Normalized innovation squared vs chi-square(n_t): {frac:.1%} outside")
    ax.set_yscale("log")
    ax.legend(loc="upper right", fontsize="small")
    save(fig, "nis")

    fig, axes = _figure(M)
    for i, ax in enumerate(axes):
        ax.plot(x, r.errors[:, i], lw=0.6, color="C2")
        ax.axhline(0.0, color="0.3", lw=0.5)
        row = r.fit_errors.iloc[i]
        ax.set_ylabel(r.tenor_names[i])
        ax.set_title(
            f"mean {row['mean_error']:.2e}, s.d. {row['sd_error']:.2e}, "
            f"MAE {row['mean_abs_error']:.2e}",
            fontsize="small",
            loc="right",
        )
    axes[0].set_title("Fit errors ln F_model - ln F_mkt", loc="left")
    save(fig, "fit_errors")
    return paths
