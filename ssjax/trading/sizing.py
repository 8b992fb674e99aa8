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


def _neutral_direction(raw: Array, L: Array) -> Array:
    """The signal direction made neutral to the rows of ``L`` [k, M] without trading against
    a signal: the least-squares projection of ``raw`` onto {u : L u = 0} over the tenors
    with a signal; a tenor whose projected weight changes sign leaves the set and the
    projection is redone (at most M rounds), so every weight kept has its signal's sign.
    Zero when no such portfolio exists (e.g. Y-neutral with every signal of one sign)."""
    M = raw.shape[0]

    def project(active: Array) -> Array:
        La = L * active  # the constraints over the active tenors
        G = La @ La.T
        y = jnp.linalg.pinv(G, hermitian=True) @ (La @ raw)
        return jnp.where(active, raw - La.T @ y, 0.0)

    def body(_: int, active: Array) -> Array:
        u = project(active)
        return active & (u * raw > 0)

    active = jax.lax.fori_loop(0, M, body, raw != 0)
    return project(active)


def vol_target_weights(
    z: ArrayLike,
    signals: ArrayLike,
    Sigma: ArrayLike,
    vol_target: float | ArrayLike,
    per_tenor: ArrayLike,
    gross: float | ArrayLike,
    net: float | ArrayLike = jnp.inf,
    neutral: ArrayLike | None = None,
    redistribute: bool = True,
) -> Array:
    """The trade module's vol-target sizing as a pure, differentiable JAX function.

    1. direction: raw = s·|z| (the signals s ∈ {−1, 0, 1}, after hysteresis and top-K, are
       inputs held fixed under differentiation, as they are piecewise constant in Θ); with
       ``neutral`` [k, M] (factor loadings, e.g. the model's e^{−κΔ} for X and 1 for Y),
       made neutral to those factors without trading against a signal
       (:func:`_neutral_direction`);
    2. scale: w = raw·vol_target/sqrt(rawᵀΣraw) (zero when rawᵀΣraw is not positive);
    3. per-tenor caps ±per_tenor: with ``redistribute`` (default, and only without
       ``neutral``), capped tenors are held at their cap and the others scaled up to reach
       the vol target again where they can (repeated until no new tenor hits its cap);
       otherwise, and with ``neutral`` (to keep the neutrality exact), every weight is
       scaled down together until none exceeds its cap;
    4. limits that scale the whole book down: the gross Σ|w| <= ``gross`` and the net
       |Σw| <= ``net``.

    The same rule as :class:`ssjax.TradeEngine` with ``sizing="vol_target"`` (tested equal).
    """
    z = jnp.asarray(z)
    dtype = z.dtype
    Sigma = jnp.asarray(Sigma, dtype)
    cap = jnp.broadcast_to(jnp.asarray(per_tenor, dtype), z.shape)
    raw = jnp.asarray(signals, dtype) * jnp.abs(z)
    if neutral is not None:
        raw = _neutral_direction(raw, jnp.asarray(neutral, dtype))

    def scaled(u: Array) -> Array:
        var = u @ Sigma @ u
        ok = var > 0
        return jnp.where(ok, u * (vol_target / jnp.sqrt(jnp.where(ok, var, 1.0))), 0.0)

    w = scaled(raw)
    if redistribute and neutral is None:
        M = z.shape[0]

        def body(_: int, w: Array) -> Array:
            fixed = jnp.abs(w) >= cap * (1 - 1e-12)
            wf = jnp.where(fixed, jnp.sign(raw) * cap, 0.0)
            f = jnp.where(fixed, 0.0, raw)
            a, b, d = f @ Sigma @ f, f @ Sigma @ wf, wf @ Sigma @ wf
            disc = b * b - a * (d - vol_target**2)
            ok = (a > 0) & (disc >= 0)
            # (the guards keep the derivative finite where a branch is not taken)
            root = (-b + jnp.sqrt(jnp.where(ok & (disc > 0), disc, 1.0))) / jnp.where(ok, a, 1.0)
            c = jnp.where(ok & (disc > 0), root, jnp.where(ok, -b / jnp.where(ok, a, 1.0), 0.0))
            return jnp.clip(wf + jnp.maximum(c, 0.0) * f, -cap, cap)

        w = jax.lax.fori_loop(0, M, body, jnp.clip(w, -cap, cap))
    else:
        over = jnp.max(jnp.where(cap > 0, jnp.abs(w) / jnp.where(cap > 0, cap, 1.0), 0.0))
        w = w / jnp.where(over > 1, over, 1.0)
        w = jnp.where(cap > 0, w, 0.0)
    g = jnp.sum(jnp.abs(w))
    w = w * jnp.where(g > gross, gross / jnp.where(g > gross, g, 1.0), 1.0)
    n = jnp.abs(jnp.sum(w))
    return w * jnp.where(n > net, net / jnp.where(n > net, n, 1.0), 1.0)


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
