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

import jax.numpy as jnp
from jax import Array, lax

from .data import MarketData
from .filter import FilterResult, Prior, kalman_filter
from .params import Params

__all__ = ["SmootherResult", "rts_smoother"]


class SmootherResult(NamedTuple):
    """Smoothed moments (shapes for T dates) together with the filter pass they came from."""

    smoothed_means: Array  # [T, 2]
    smoothed_covs: Array  # [T, 2, 2]
    lag_one_covs: Array  # [T-1, 2, 2]: Cov(x_{t+1}, x_t | all data)
    gains: Array  # [T-1, 2, 2]: smoother gains J_t
    filter: FilterResult


def _sym(a: Array) -> Array:
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def rts_smoother(
    p: Params,
    data: MarketData,
    prior: Prior | None = None,
    filter_result: FilterResult | None = None,
) -> SmootherResult:
    """Run the RTS smoother (running the filter first unless ``filter_result`` is given)."""
    filt = kalman_filter(p, data, prior) if filter_result is None else filter_result
    phi = jnp.exp(-p.kappa * data.dt)  # [T-1]
    Pf = filt.filtered_covs[:-1]  # [T-1, 2, 2]
    Pp_next = filt.predicted_covs[1:]
    # P^f F^T: scale the first column by phi
    PfFt = Pf * jnp.stack([phi, jnp.ones_like(phi)], -1)[:, None, :]
    # J = (P^f F^T) (P^p)^{-1}; P^p symmetric, so J^T = (P^p)^{-1} (F P^f)
    J = jnp.swapaxes(jnp.linalg.solve(Pp_next, jnp.swapaxes(PfFt, -1, -2)), -1, -2)

    def step(carry, x):
        ms_next, Ps_next = carry
        mf, Pf_t, mp_next, Pp_n, J_t = x
        ms = mf + J_t @ (ms_next - mp_next)
        Ps = _sym(Pf_t + J_t @ (Ps_next - Pp_n) @ J_t.T)
        cross = Ps_next @ J_t.T
        return (ms, Ps), (ms, Ps, cross)

    last = (filt.filtered_means[-1], filt.filtered_covs[-1])
    xs = (filt.filtered_means[:-1], Pf, filt.predicted_means[1:], Pp_next, J)
    _, (ms, Ps, cross) = lax.scan(step, last, xs, reverse=True)
    smoothed_means = jnp.concatenate([ms, last[0][None]], 0)
    smoothed_covs = jnp.concatenate([Ps, last[1][None]], 0)
    return SmootherResult(smoothed_means, smoothed_covs, cross, J, filt)
