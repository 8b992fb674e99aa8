r"""Position sizing and z-scores as pure JAX functions: one implementation for the trade
module (:class:`~ssjax.trading.engine.TradeEngine`, NumPy in and out) and for the derivative
of the weights with respect to Θ (:func:`weights_jacobian`).

* :func:`z_scores` — α over its s.d. where the s.d. is usable (above ``min_resid_sd``), else 0;
* :func:`vol_target_weights` — the volatility-target sizing with per-tenor and gross caps;
* :func:`filtered_z_scores` — the default z basis computed from Θ through the filter;
* :func:`weights_jacobian` — dw_t/dΘ through filter → F_model → z → weights.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from ssjax.analysis.sensitivity import jacobian
from ssjax.core.filter import Prior, default_prior, kalman_filter
from ssjax.core.market import MarketData
from ssjax.core.model import measurement
from ssjax.core.params import Params, flatten_params, unflatten_params

__all__ = [
    "z_scores",
    "vol_target_weights",
    "filtered_z_scores",
    "WeightsJacobian",
    "weights_jacobian",
]


def z_scores(alpha: ArrayLike, var: ArrayLike, ok: ArrayLike, min_resid_sd: float) -> Array:
    """z = α / sqrt(var) where ``ok`` and var > ``min_resid_sd``², else 0 (a tenor the model
    prices exactly, or one not observed or not tradable, has no usable z). Pure, jittable,
    differentiable where z ≠ 0; NaN variances count as unusable."""
    alpha = jnp.asarray(alpha)
    var = jnp.asarray(var, alpha.dtype)
    use = jnp.asarray(ok) & jnp.isfinite(var) & (var > jnp.asarray(min_resid_sd) ** 2)
    return jnp.where(use, alpha / jnp.sqrt(jnp.where(use, var, 1.0)), 0.0)


def vol_target_weights(
    z: ArrayLike,
    signals: ArrayLike,
    Sigma: ArrayLike,
    vol_target: float | ArrayLike,
    per_tenor: ArrayLike,
    gross: float | ArrayLike,
) -> Array:
    """The trade module's vol-target sizing as a pure, differentiable JAX function.

    raw = s·|z|; w = raw·vol_target/sqrt(rawᵀΣraw), clipped to ±per_tenor, then scaled down
    to the gross limit if Σ|w| exceeds it; zero when rawᵀΣraw is not positive. The same
    rule as :class:`ssjax.TradeEngine` with ``sizing="vol_target"`` (tested equal); the
    signals s ∈ {−1, 0, 1} (after hysteresis and top-K) are inputs, held fixed under
    differentiation, as they are piecewise constant in Θ.
    """
    z = jnp.asarray(z)
    raw = jnp.asarray(signals, z.dtype) * jnp.abs(z)
    var = raw @ jnp.asarray(Sigma, z.dtype) @ raw
    ok = var > 0
    w = raw * (vol_target / jnp.sqrt(jnp.where(ok, var, 1.0)))
    w = jnp.where(ok, w, 0.0)
    w = jnp.clip(w, -jnp.asarray(per_tenor), jnp.asarray(per_tenor))
    g = jnp.sum(jnp.abs(w))
    return jnp.where(g > gross, w * (gross / jnp.where(g > 0, g, 1.0)), w)


class WeightsJacobian(NamedTuple):
    """Vol-target weights at one date and their derivatives with respect to Θ."""

    weights: Array  # [M]
    d_theta: Array  # [M, n] dw/dθ through filter → F_model → z → weights
    z: Array  # [M] the z-scores
    dz_dtheta: Array  # [M, n]


def filtered_z_scores(
    p: Params, data: MarketData, prior: Prior, t: int | Array, min_resid_sd: float = 1e-6
) -> Array:
    """z_t of the trade module's default basis (``z_method="filtered"``), from Θ, in JAX.

    α = ln F_model − ln F_mkt with F_model from the filtered state x_{t|t}; its variance is
    diag(R − H P_{t|t} Hᵀ) where observed (:func:`ssjax.trading.residual_variances`); then
    :func:`z_scores` (unobserved tenors and s.d.s at or below ``min_resid_sd`` get z = 0).
    """
    filt = kalman_filter(p, data, prior)
    m, P = filt.filtered_means[t], filt.filtered_covs[t]
    ttm = data.ttm[t]
    obs = data.mask[t]
    b, A = measurement(p, ttm)
    log_model = b * m[0] + m[1] + A
    alpha = jnp.where(obs, log_model - jnp.where(obs, data.log_f[t], 0.0), 0.0)
    r = jnp.broadcast_to(p.meas_sd**2, ttm.shape)
    var = r - (b * b * P[0, 0] + 2.0 * b * P[0, 1] + P[1, 1])
    return z_scores(alpha, var, obs, min_resid_sd)


def weights_jacobian(
    p: Params,
    data: MarketData,
    t: int,
    signals: ArrayLike,
    Sigma: ArrayLike,
    *,
    vol_target: float = 0.10,
    per_tenor: float | ArrayLike = 1.0,
    gross: float = 3.0,
    prior: Prior | None = None,
    min_resid_sd: float = 1e-6,
) -> WeightsJacobian:
    """dw_t/dΘ of the vol-target weights at date index ``t``, end to end.

    The chain is the pipeline's default one: Θ → filtered state x_{t|t} (the filter run on
    ``data``) → ln F_model_t → α = ln F_model − ln F_mkt and its filtered-residual s.d. →
    z → :func:`vol_target_weights` with the given (fixed) ``signals`` and return covariance
    ``Sigma`` (estimated from market returns, so it does not depend on Θ).
    """
    prior = default_prior(data) if prior is None else prior
    M = data.log_f.shape[1]
    if not 0 <= int(t) < data.log_f.shape[0]:
        raise ValueError(f"t: date index {t} outside the panel's {data.log_f.shape[0]} dates")
    dtype = data.log_f.dtype
    per = jnp.broadcast_to(jnp.asarray(per_tenor, dtype), (M,))
    return _weights_program(
        p,
        data,
        prior,
        jnp.asarray(int(t)),
        jnp.asarray(signals, dtype),
        jnp.asarray(Sigma, dtype),
        jnp.asarray(vol_target, dtype),
        per,
        jnp.asarray(gross, dtype),
        jnp.asarray(min_resid_sd, dtype),
    )


@jax.jit
def _weights_program(p, data, prior, t, signals, Sigma, vol_target, per, gross, floor):
    vec = flatten_params(p)
    M = data.log_f.shape[1]

    def zf(v: Array) -> Array:
        return filtered_z_scores(unflatten_params(v, p), data, prior, t, floor)

    def wf(v: Array) -> Array:
        return vol_target_weights(zf(v), signals, Sigma, vol_target, per, gross)

    return WeightsJacobian(wf(vec), jacobian(wf, vec, M), zf(vec), jacobian(zf, vec, M))
