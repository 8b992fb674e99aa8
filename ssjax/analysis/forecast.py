r"""h-step-ahead forecasts of log futures prices, and an out-of-sample walk forward.

**One origin** (:func:`forecast_log_futures`): given the filtered state x_t ~ N(m, P) at an
origin t, the state h steps later follows the exact transition over the elapsed time
τ = Σ Δt (the model is time-homogeneous and the OU transition composes exactly), under the
real-world measure:

.. math::
    m_{t+h|t} = \operatorname{diag}(e^{-\kappa\tau}, 1)\,m + (0, \mu\tau), \qquad
    P_{t+h|t} = \Phi P \Phi^\top + Q(\tau),

and the forecast of ln F for a contract with time to maturity Δ at t+h is
b(Δ)·X + Y + A(Δ) (the document's closed form), with variance
b²P₁₁ + 2bP₁₂ + P₂₂ (+ the tenor's noise variance s², for the observed price).

**Walk forward** (:func:`walk_forward_forecasts`): every ``refit_every`` dates, each model is
re-estimated on the data up to that date (expanding window, or the last ``window`` dates),
then the filter runs with those parameters and every origin until the next re-estimation
forecasts each tenor h dates ahead. Only prices up to the origin enter a forecast; the
target's time to maturity (a calendar fact) is taken from the panel. Models are the nested
family of :mod:`ssjax.fit.nested` plus the no-change forecast (``"random_walk"``:
ln F̂_{t+h,i} = ln F_{t,i}, the tenor's current price), the usual naive benchmark.

:func:`forecast_accuracy` gives RMSE and MAE per model, horizon and tenor;
:func:`forecast_dm_tests` Diebold–Mariano tests of one model against each other one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax import Array
from jax.typing import ArrayLike

from ssjax.core.filter import Prior, default_prior, kalman_filter
from ssjax.core.market import make_market_data
from ssjax.core.model import measurement, transition
from ssjax.core.params import Params
from ssjax.fit.nested import fit_nested, prior_cov
from ssjax.fit.stats import diebold_mariano, newey_west_lags
from ssjax.progress import progress_bar

__all__ = [
    "forecast_log_futures",
    "forecast_path",
    "walk_forward_forecasts",
    "forecast_accuracy",
    "forecast_dm_tests",
    "FORECAST_MODELS",
]

FORECAST_MODELS = ("random_walk", "gbm", "mean_reverting", "two_factor")
_Z95 = 1.959963984540054


def forecast_log_futures(
    p: Params,
    mean: ArrayLike,
    cov: ArrayLike,
    horizon: ArrayLike,
    ttm: ArrayLike,
    include_noise: bool = True,
) -> tuple[Array, Array]:
    """Forecast of ln F at ``horizon`` years after one origin (pure; vmap over origins).

    Args:
        p: parameters.
        mean, cov: the filtered state mean [2] and covariance [2, 2] at the origin.
        horizon: elapsed time τ ≥ 0 in years to the target date.
        ttm: times to maturity [M] of the target contracts at the target date.
        include_noise: add the measurement-noise variance (the variance of the observed
            price; False: of the model price b·X + Y + A).

    Returns:
        ``(mean [M], var [M])`` of ln F at the target date.
    """
    m = jnp.asarray(mean)
    P = jnp.asarray(cov)
    phi, c, Q = transition(p, horizon)
    Phi = jnp.diag(jnp.stack([phi, jnp.ones_like(phi)]))
    m_h = Phi @ m + c
    P_h = Phi @ P @ Phi.T + Q
    b, A = measurement(p, ttm)
    f = b * m_h[0] + m_h[1] + A
    v = b * b * P_h[0, 0] + 2.0 * b * P_h[0, 1] + P_h[1, 1]
    if include_noise:
        v = v + jnp.broadcast_to(jnp.asarray(p.meas_sd) ** 2, v.shape)
    return f, v


@jax.jit
def _forecast_all(p, means, covs, tau, ttm):
    return jax.vmap(forecast_log_futures, in_axes=(None, 0, 0, 0, 0))(p, means, covs, tau, ttm)


def forecast_path(
    p: Params, means: ArrayLike, covs: ArrayLike, dt: ArrayLike, ttm: ArrayLike, h: int
) -> tuple[np.ndarray, np.ndarray]:
    """Forecasts of ln F at t + h from every origin t = 0 … T−1−h.

    Args:
        p: parameters.
        means, covs: filtered state means [T, 2] and covariances [T, 2, 2].
        dt: step lengths [T−1] in years.
        ttm: times to maturity [T, M] (the targets' are rows h … T−1; NaN allowed).
        h: horizon in dates (≥ 1).

    Returns:
        ``(mean, var)``, each [T, M]: row t holds the forecast made at origin t for date
        t + h (NaN in the last h rows and where the target's ttm is NaN).
    """
    means = np.asarray(means, float)
    T = means.shape[0]
    if int(h) != h or h < 1:
        raise ValueError(f"h must be an integer >= 1, got {h!r}")
    h = int(h)
    ttm = np.asarray(ttm, float)
    if ttm.ndim != 2 or ttm.shape[0] != T:
        raise ValueError(f"ttm must have shape [T={T}, M], got {ttm.shape}")
    dt = np.broadcast_to(np.asarray(dt, float), (T - 1,))
    out_m = np.full(ttm.shape, np.nan)
    out_v = np.full(ttm.shape, np.nan)
    if h >= T:
        return out_m, out_v
    elapsed = np.concatenate([[0.0], np.cumsum(dt)])
    tau = elapsed[h:] - elapsed[:-h]
    tgt = ttm[h:]
    ok = np.isfinite(tgt)
    f, v = _forecast_all(
        p, jnp.asarray(means[: T - h]), jnp.asarray(np.asarray(covs, float)[: T - h]),
        jnp.asarray(tau), jnp.asarray(np.where(ok, tgt, 0.0)),
    )  # fmt: skip
    out_m[: T - h] = np.where(ok, np.asarray(f), np.nan)
    out_v[: T - h] = np.where(ok, np.asarray(v), np.nan)
    return out_m, out_v


def _filter_prior(model: str, data) -> Prior:
    prior = default_prior(data)
    return Prior(prior.mean, jnp.asarray(prior_cov(model, prior.cov), prior.cov.dtype))


_filter_jit = jax.jit(kalman_filter)


def walk_forward_forecasts(
    panel: Any,
    *,
    models: Sequence[str] = FORECAST_MODELS,
    horizons: Sequence[int] = (1, 4),
    min_window: int = 104,
    refit_every: int = 13,
    window: str = "expanding",
    window_length: int | None = None,
    risk_premium: bool = False,
    engine_options: dict | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Out-of-sample h-step forecasts of every tenor's log price, re-estimating as it goes.

    Args:
        panel: a :class:`ssjax.datasets.Panel` (``F_mkt [T, M]``, ``ttm``, ``dates``,
            ``dt``; ``mask`` optional).
        models: any of :data:`FORECAST_MODELS`.
        horizons: forecast horizons in dates (e.g. weeks on a weekly panel).
        min_window: dates in the first estimation window; the first origin is date
            ``min_window − 1``.
        refit_every: dates between re-estimations.
        window: ``"expanding"`` (all dates up to the origin) or ``"rolling"`` (the last
            ``window_length`` dates, default ``min_window``).
        risk_premium: fit the 2000 paper's risk-premium form of each model.
        engine_options: further :class:`ssjax.KalmanEngine` options.
        progress: a progress bar of the re-estimations (``None``: when stderr is a terminal
            or in a notebook; see :mod:`ssjax.progress`).

    Returns:
        Long DataFrame, one row per (model, h, origin, tenor) with a target observed:
        ``model, h, origin, target, tenor, forecast, actual, error`` (actual − forecast, in
        ln F), ``sd`` (predictive s.d. of the observed log price; NaN for the random walk),
        ``fit_date`` (last date of the estimation window) and ``optimum_reached`` (the
        fit stopped at an optimum, interior or on a boundary; False: it ran out of steps).
    """
    unknown = sorted(set(models) - set(FORECAST_MODELS))
    if unknown:
        raise ValueError(f"models: unknown {unknown}; choose from {list(FORECAST_MODELS)}")
    if window not in ("expanding", "rolling"):
        raise ValueError(f"window must be 'expanding' or 'rolling', got {window!r}")
    hs = [int(h) for h in horizons]
    if not hs or any(h < 1 for h in hs):
        raise ValueError(f"horizons must be integers >= 1, got {list(horizons)}")
    F = np.asarray(panel.F_mkt, float)
    if F.ndim != 2:
        raise ValueError(f"panel.F_mkt must have shape [T, M], got {F.shape}")
    T, M = F.shape
    mask = np.isfinite(F) if getattr(panel, "mask", None) is None else np.asarray(panel.mask)
    ttm = np.broadcast_to(np.asarray(panel.ttm, float), (T, M))
    ttm = np.where(mask, ttm, np.nan)
    dates = pd.DatetimeIndex(panel.dates)
    dt = np.asarray(panel.dt, float)
    wlen = min_window if window_length is None else int(window_length)
    if min_window < 10 or min_window > T - 1:
        raise ValueError(f"min_window must be in [10, T-1={T - 1}], got {min_window}")
    if refit_every < 1:
        raise ValueError(f"refit_every must be >= 1, got {refit_every}")
    if window == "rolling" and not 10 <= wlen <= min_window:
        raise ValueError(f"window_length must be in [10, min_window={min_window}], got {wlen}")
    names = list(getattr(panel, "tenor_names", None) or [f"T{i + 1}" for i in range(M)])
    logF = np.where(mask, np.log(np.where(mask, F, 1.0)), np.nan)
    data = make_market_data(F, np.nan_to_num(ttm), mask=mask, dt=dt)
    refits = list(range(min_window - 1, T - 1, refit_every))

    frames = []
    for model in models:
        fc = {h: (np.full((T, M), np.nan), np.full((T, M), np.nan)) for h in hs}
        fit_date = np.full(T, -1)
        conv = np.zeros(T, bool)
        if model == "random_walk":
            for h in hs:
                fc[h][0][: T - h] = logF[: T - h]
            fit_date[min_window - 1 :] = min_window - 1
            conv[:] = True
        else:
            prior = _filter_prior(model, data)
            bar = progress_bar(len(refits), f"forecast fits ({model})", progress, "fit")
            for k, r in enumerate(refits):
                stop = refits[k + 1] if k + 1 < len(refits) else T - 1
                lo = 0 if window == "expanding" else r + 1 - wlen
                fit = fit_nested(
                    model, F[lo : r + 1], ttm[lo : r + 1], mask=mask[lo : r + 1],
                    dt=dt[lo:r], risk_premium=risk_premium, engine_options=engine_options,
                )  # fmt: skip
                filt = _filter_jit(fit.params, data, prior)
                for h in hs:
                    m_h, v_h = forecast_path(
                        fit.params, filt.filtered_means, filt.filtered_covs, dt, ttm, h
                    )
                    fc[h][0][r:stop] = m_h[r:stop]
                    fc[h][1][r:stop] = v_h[r:stop]
                fit_date[r:stop] = r
                conv[r:stop] = fit.optimum_reached
                bar.set_postfix_str(
                    f"{dates[r].date()}: loglik {fit.loglik:.2f}, "
                    + ("optimum" if fit.optimum_reached else "NO optimum")
                )
                bar.update(1)
            bar.close()
        for h in hs:
            mean, var = fc[h]
            origins = np.arange(min_window - 1, T - h)
            tgt = origins + h
            f = mean[origins]
            a = logF[tgt]
            keep = np.isfinite(f) & np.isfinite(a)
            oi, ti = np.nonzero(keep)
            frames.append(
                pd.DataFrame(
                    {
                        "model": model,
                        "h": h,
                        "origin": dates[origins[oi]],
                        "target": dates[tgt[oi]],
                        "tenor": np.asarray(names, dtype=object)[ti],
                        "forecast": f[oi, ti],
                        "actual": a[oi, ti],
                        "error": a[oi, ti] - f[oi, ti],
                        "sd": np.sqrt(var[origins[oi], ti]),
                        "fit_date": dates[fit_date[origins[oi]]],
                        "optimum_reached": conv[origins[oi]],
                    }
                )
            )
    out = pd.concat(frames, ignore_index=True)
    out["tenor"] = pd.Categorical(out["tenor"], categories=names, ordered=True)
    out.attrs.update(window=window, min_window=min_window, refit_every=refit_every)
    return out


def forecast_accuracy(fc: pd.DataFrame, common: bool = True) -> pd.DataFrame:
    """RMSE and MAE of ``error`` per model, horizon and tenor (and pooled over tenors).

    Args:
        fc: :func:`walk_forward_forecasts` output.
        common: score every model on the same (h, origin, tenor) cells only (those all
            models forecast), so the rows are comparable.

    Returns:
        DataFrame indexed by (h, tenor, model) with ``rmse, mae, bias, n``; tenor ``"all"``
        pools the tenors. When ``fc`` has the predictive s.d. ``sd``, ``coverage95`` is the
        share of errors inside the central 95% predictive interval (±1.96 sd; NaN for a
        model without one, such as the random walk).
    """
    d = _common(fc) if common else fc
    d = d.assign(tenor=d["tenor"].astype(str))
    pooled = d.assign(tenor="all")
    rows = pd.concat([d, pooled], ignore_index=True)
    g = rows.groupby(["h", "tenor", "model"], sort=False)["error"]
    out = pd.DataFrame(
        {
            "rmse": g.apply(lambda e: float(np.sqrt(np.mean(e * e)))),
            "mae": g.apply(lambda e: float(np.mean(np.abs(e)))),
            "bias": g.mean(),
            "n": g.size(),
        }
    )
    if "sd" in rows:
        z = (rows["error"] / rows["sd"]).abs()
        inside = (z <= _Z95).where(np.isfinite(z))
        out["coverage95"] = inside.groupby([rows.h, rows.tenor, rows.model], sort=False).mean()
    return out


def _common(fc: pd.DataFrame) -> pd.DataFrame:
    n_models = fc["model"].nunique()
    key = ["h", "origin", "tenor"]
    cnt = fc.groupby(key, observed=True)["model"].transform("nunique")
    return fc[cnt == n_models]


def forecast_dm_tests(
    fc: pd.DataFrame,
    model: str = "two_factor",
    loss: str = "squared",
    lags: str | int = "auto",
) -> pd.DataFrame:
    """Diebold–Mariano tests of ``model`` against every other model, per horizon and tenor.

    The loss differential is d = L(e_model) − L(e_other) on the origins both forecast, so a
    negative statistic favours ``model``. The variance is a HAC (Bartlett / Newey–West)
    long-run variance with ``lags = max(h − 1, newey_west_lags(n))`` by default (h-step
    errors overlap, and misspecified models leave further autocorrelation), with the
    Harvey–Leybourne–Newbold small-sample correction.

    Returns:
        DataFrame indexed by (h, tenor, other) with ``dm_stat, p_value,
        p_value_model_better, mean_loss_diff, n, lags``.
    """
    if model not in set(fc["model"]):
        raise ValueError(f"fc has no forecasts of model {model!r}")
    rows = []
    for (h, tenor), g in fc.groupby(["h", "tenor"], observed=True, sort=True):
        wide = g.pivot_table(index="origin", columns="model", values="error", observed=True)
        if model not in wide:
            continue
        for other in wide.columns:
            if other == model:
                continue
            pair = wide[[model, other]].dropna()
            n = len(pair)
            if n < 3:
                continue
            L = max(int(h) - 1, newey_west_lags(n)) if lags == "auto" else int(lags)
            r = diebold_mariano(pair[model], pair[other], h=int(h), loss=loss, lags=min(L, n - 1))
            rows.append(
                {
                    "h": int(h),
                    "tenor": str(tenor),
                    "other": other,
                    "dm_stat": r.statistic,
                    "p_value": r.pvalue,
                    "p_value_model_better": r.pvalue_model1_better,
                    "mean_loss_diff": r.mean_loss_diff,
                    "n": r.n,
                    "lags": r.lags,
                }
            )
    out = pd.DataFrame(rows)
    if isinstance(fc["tenor"].dtype, pd.CategoricalDtype) and len(out):
        order = [str(c) for c in fc["tenor"].cat.categories]
        out["tenor"] = pd.Categorical(out["tenor"], categories=order, ordered=True)
    return out.set_index(["h", "tenor", "other"])
