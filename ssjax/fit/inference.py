r"""Parameter uncertainty from exact derivatives of the log-likelihood.

* Hessian (model-based) covariance: Cov = (−∇²ℓ(θ̂))⁻¹ in the physical parameters, with the
  Hessian from autodiff (forward over forward mode; no finite differences).
* Robust sandwich covariance: H⁻¹ (Σ_t s_t s_tᵀ) H⁻¹ with s_t = ∇ℓ_t(θ̂) the per-date scores
  (forward-mode Jacobian of the per-date log-likelihood contributions).

Fixed parameters are excluded (their rows and columns are NaN).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from ssjax.core.filter import Prior, default_prior, log_likelihood_terms
from ssjax.core.market import MarketData
from ssjax.core.params import Params, flatten_params, unflatten_params

__all__ = ["Uncertainty", "parameter_uncertainty", "per_date_scores"]


class Uncertainty(NamedTuple):
    """Covariances of the flat physical parameter vector (``flatten_params`` order)."""

    hessian: Array  # [n, n] Hessian of the log-likelihood
    cov: Array  # [n, n] inverse of the negative Hessian (NaN where fixed)
    cov_robust: Array  # [n, n] sandwich form (NaN where fixed)
    scores: Array  # [T, n] per-date scores
    hessian_pd: Array  # bool: the negative Hessian (free block) is positive definite


def _loglik_t_flat(vec: Array, like: Params, data: MarketData, prior: Prior) -> Array:
    return log_likelihood_terms(unflatten_params(vec, like), data, prior)


def per_date_scores(
    vec: Array,
    like: Params,
    data: MarketData,
    prior: Prior | None = None,
    transform: Callable[[Params], Params] | None = None,
) -> Array:
    """Per-date scores s_t = ∇ℓ_t [T, n] at the flat vector ``vec`` (forward mode).

    ``vec`` is ``flatten_params`` of physical parameters shaped like ``like``, or of any
    coordinates that ``transform`` maps to physical parameters (``like`` is then a tree of
    those coordinates): ``transform=ssjax.core.params.from_unconstrained`` for the
    optimizer's unconstrained ones, :func:`ssjax.fit.coordinates.unconstrained_maps` for the
    spot–slope ones.
    The building block of the sandwich covariance, the OPG standard errors and the optimizer's
    BHHH scaling. Jittable.
    """
    prior = default_prior(data) if prior is None else prior

    def terms(v):
        p = unflatten_params(v, like)
        if transform is not None:
            p = transform(p)
        return log_likelihood_terms(p, data, prior)

    return jax.jacfwd(terms)(vec)


@jax.jit
def parameter_uncertainty(
    p: Params, data: MarketData, prior: Prior | None = None, free: Array | None = None
) -> Uncertainty:
    """Hessian and sandwich covariances of the physical parameters at ``p`` (jittable)."""
    prior = default_prior(data) if prior is None else prior
    vec = flatten_params(p)
    n = vec.shape[0]
    free = jnp.ones(n, bool) if free is None else jnp.asarray(free) > 0

    def summed_scores(v):
        s = per_date_scores(v, p, data, prior)  # [T, n]
        return jnp.sum(s, axis=0), s

    # forward over forward: one forward pass of the filter carries the n x n second-order
    # tangents and gives the scores on the way; it traces and compiles in about half the
    # time of jax.hessian's forward-over-reverse (no reverse scan to linearise), at the
    # same cost per call
    H, scores = jax.jacfwd(summed_scores, has_aux=True)(vec)
    H = 0.5 * (H + H.T)
    fm = free[:, None] & free[None, :]
    # invert the free block only: put identity on the fixed rows/cols, then blank them
    negH = jnp.where(fm, -H, jnp.eye(n, dtype=H.dtype))
    eig = jnp.linalg.eigvalsh(negH)
    pd = eig[0] > 0
    inv = jnp.linalg.inv(negH)
    B = scores.T @ scores
    robust = inv @ B @ inv
    nan = jnp.full_like(H, jnp.nan)
    cov = jnp.where(fm & pd, 0.5 * (inv + inv.T), nan)
    cov_robust = jnp.where(fm & pd, 0.5 * (robust + robust.T), nan)
    return Uncertainty(H, cov, cov_robust, scores, pd)
