r"""Rauch–Tung–Striebel smoother for the two-factor model: a reverse ``lax.scan``.

Given the filter's moments, with F_t = diag(e^{−κΔt_t}, 1) the transition from date t to
t+1 and J_t = P^f_t F_tᵀ (P^p_{t+1})^{-1} (computed for all dates at once, before the scan):

.. math::
    m^s_t = m^f_t + J_t (m^s_{t+1} - m^p_{t+1}),\qquad
    P^s_t = P^f_t + J_t (P^s_{t+1} - P^p_{t+1}) J_t^\top,

and the lag-one cross-covariances Cov(x_{t+1}, x_t | all data) = P^s_{t+1} J_tᵀ that the
EM algorithm needs.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array, lax

from ssjax.core.filter import LOG_2PI, FilterResult, Prior, _observation_rows, kalman_filter
from ssjax.core.market import MarketData
from ssjax.core.model import transition
from ssjax.core.params import Params

__all__ = [
    "SmootherResult",
    "rts_smoother",
    "EStats",
    "expected_complete_loglik",
    "prior_expected_loglik",
]


class SmootherResult(NamedTuple):
    """Smoothed moments (shapes for T dates) together with the filter pass they came from."""

    smoothed_means: Array  # [T, 2]
    smoothed_covs: Array  # [T, 2, 2]
    lag_one_covs: Array  # [T-1, 2, 2]: Cov(x_{t+1}, x_t | all data)
    gains: Array  # [T-1, 2, 2]: smoother gains J_t
    filter: FilterResult


def _rts(phi, filtered, predicted, unroll: int = 1):
    """The RTS recursions in scalar form (the 2×2 algebra written out, as in the filter).

    ``phi`` [T-1]; ``filtered`` and ``predicted`` are 5-tuples of [T] vectors
    (m1, m2, p11, p12, p22). Returns the smoothed 5-tuple ([T] each) and the gains
    (J11, J12, J21, J22), [T-1] each. Everything but the recursion itself (the gains,
    which need no smoothed quantity) is vectorized over dates before the scan.
    """
    fm1, fm2, f11, f12, f22 = filtered
    pm1, pm2, n11, n12, n22 = (x[1:] for x in predicted)
    # J = P^f Fᵀ (P^p_{t+1})^{-1} with F = diag(phi, 1): P^f Fᵀ scales column 1 by phi
    a11, a12, a21, a22 = phi * f11[:-1], f12[:-1], phi * f12[:-1], f22[:-1]
    inv_det = 1.0 / (n11 * n22 - n12 * n12)
    j11 = (a11 * n22 - a12 * n12) * inv_det
    j12 = (a12 * n11 - a11 * n12) * inv_det
    j21 = (a21 * n22 - a22 * n12) * inv_det
    j22 = (a22 * n11 - a21 * n12) * inv_det

    def step(carry, x):
        s1, s2, s11, s12, s22 = carry
        m1, m2, k11, k12, k22, q1, q2, q11, q12, q22, g11, g12, g21, g22 = x
        d1, d2 = s1 - q1, s2 - q2
        e11, e12, e22 = s11 - q11, s12 - q12, s22 - q22  # P^s_{t+1} − P^p_{t+1}
        # J D Jᵀ, D symmetric
        h11 = g11 * e11 + g12 * e12
        h12 = g11 * e12 + g12 * e22
        h21 = g21 * e11 + g22 * e12
        h22 = g21 * e12 + g22 * e22
        new = (
            m1 + g11 * d1 + g12 * d2,
            m2 + g21 * d1 + g22 * d2,
            k11 + h11 * g11 + h12 * g12,
            k12 + 0.5 * (h11 * g21 + h12 * g22 + h21 * g11 + h22 * g12),
            k22 + h21 * g21 + h22 * g22,
        )
        return new, new

    last = tuple(x[-1] for x in filtered)
    xs = tuple(x[:-1] for x in filtered) + (pm1, pm2, n11, n12, n22, j11, j12, j21, j22)
    _, out = lax.scan(step, last, xs, reverse=True, unroll=unroll)
    smoothed = tuple(jnp.concatenate([o, l[None]]) for o, l in zip(out, last, strict=True))
    return smoothed, (j11, j12, j21, j22)


def _lag_one(smoothed, gains):
    """Cov(x_{t+1}, x_t | all data) = P^s_{t+1} J_tᵀ as (c11, c12, c21, c22), [T-1] each."""
    _, _, s11, s12, s22 = (x[1:] for x in smoothed)
    j11, j12, j21, j22 = gains
    return (
        s11 * j11 + s12 * j12,
        s11 * j21 + s12 * j22,
        s12 * j11 + s22 * j12,
        s12 * j21 + s22 * j22,
    )


def _mat(a11, a12, a21, a22):
    return jnp.stack([jnp.stack([a11, a12], -1), jnp.stack([a21, a22], -1)], -2)


def _split(means, covs):
    return (means[:, 0], means[:, 1], covs[:, 0, 0], covs[:, 0, 1], covs[:, 1, 1])


@jax.jit
def rts_smoother(
    p: Params,
    data: MarketData,
    prior: Prior | None = None,
    filter_result: FilterResult | None = None,
) -> SmootherResult:
    """Run the RTS smoother (running the filter first unless ``filter_result`` is given)."""
    filt = kalman_filter(p, data, prior) if filter_result is None else filter_result
    phi = jnp.exp(-p.kappa * data.dt)  # [T-1]
    smoothed, gains = _rts(
        phi,
        _split(filt.filtered_means, filt.filtered_covs),
        _split(filt.predicted_means, filt.predicted_covs),
    )
    s1, s2, s11, s12, s22 = smoothed
    return SmootherResult(
        smoothed_means=jnp.stack([s1, s2], -1),
        smoothed_covs=_mat(s11, s12, s12, s22),
        lag_one_covs=_mat(*_lag_one(smoothed, gains)),
        gains=_mat(*gains),
        filter=filt,
    )


class EStats(NamedTuple):
    """Smoothed moments (the sufficient statistics of the EM's Q and of the Fisher score)."""

    means: Array  # [T, 2]
    covs: Array  # [T, 2, 2]
    lag_one: Array  # [T-1, 2, 2] Cov(x_{t+1}, x_t | all data)
    loglik: Array  # () observed-data log-likelihood at the E-step parameters


def transition_weights(data: MarketData) -> Array:
    """w_t for the step t → t+1: 1 if any observation lies at t+1 or later, else 0."""
    obs = jnp.any(data.mask, axis=1)
    if data.mask_s is not None:
        obs = obs | data.mask_s
    later = jnp.flip(jnp.cumsum(jnp.flip(obs.astype(jnp.int32)))) > 0  # any obs at >= t
    return later[1:].astype(data.log_f.dtype)


def expected_sq_resid(p: Params, data: MarketData, stats: EStats):
    """E[(y − h x − A)²] for every observable [N, T], the mask [N, T] and the s.d.s [N]."""
    b, resid, mask, sd = _observation_rows(p, data)
    m1, m2 = stats.means[:, 0], stats.means[:, 1]
    p11, p12, p22 = stats.covs[:, 0, 0], stats.covs[:, 0, 1], stats.covs[:, 1, 1]
    e = resid - b * m1 - m2
    v = e * e + b * b * p11 + 2.0 * b * p12 + p22
    return jnp.where(mask, v, 0.0), mask, sd


def expected_complete_loglik(
    p: Params, data: MarketData, stats: EStats, weights: Array | None = None
) -> Array:
    """Q(Θ): the expected complete-data log-likelihood given the E-step statistics.

    (Without the constant prior term.) ``weights`` [T-1] weight each transition term; the
    default drops steps into an unobserved tail (see the module docstring).
    """
    w_t = transition_weights(data) if weights is None else weights
    v, mask, sd = expected_sq_resid(p, data, stats)
    inv_var = 1.0 / (sd * sd)
    n_i = jnp.sum(mask, axis=1).astype(v.dtype)
    meas = -0.5 * jnp.sum(n_i * (LOG_2PI + 2.0 * jnp.log(sd)) + inv_var * jnp.sum(v, axis=1))

    phi, c, Q = jax.vmap(lambda d: transition(p, d))(data.dt)
    q11, q12, q22 = Q[:, 0, 0], Q[:, 0, 1], Q[:, 1, 1]
    m, P, C = stats.means, stats.covs, stats.lag_one
    d1 = m[1:, 0] - phi * m[:-1, 0]
    d2 = m[1:, 1] - m[:-1, 1] - c[:, 1]
    e11 = P[1:, 0, 0] - 2.0 * phi * C[:, 0, 0] + phi * phi * P[:-1, 0, 0]
    e12 = P[1:, 0, 1] - C[:, 0, 1] - phi * C[:, 1, 0] + phi * P[:-1, 0, 1]
    e22 = P[1:, 1, 1] - 2.0 * C[:, 1, 1] + P[:-1, 1, 1]
    s11, s12, s22 = d1 * d1 + e11, d1 * d2 + e12, d2 * d2 + e22
    det = q11 * q22 - q12 * q12
    tr = (q22 * s11 - 2.0 * q12 * s12 + q11 * s22) / det
    trans = -0.5 * jnp.sum(w_t * (2.0 * LOG_2PI + jnp.log(det) + tr))
    return meas + trans


def prior_expected_loglik(prior: Prior, stats: EStats) -> Array:
    """E[log N(x_0; x0, P0) | all data]: the prior's term of the complete-data likelihood."""
    m0, P0 = prior.mean, prior.cov
    d = stats.means[0] - m0
    s11, s12, s22 = (stats.covs[0] + jnp.outer(d, d))[jnp.array([0, 0, 1]), jnp.array([0, 1, 1])]
    p11, p12, p22 = P0[0, 0], P0[0, 1], P0[1, 1]
    det = p11 * p22 - p12 * p12
    return -0.5 * (2.0 * LOG_2PI + jnp.log(det) + (p22 * s11 - 2.0 * p12 * s12 + p11 * s22) / det)
