r"""The log-likelihood's gradient by Fisher's identity: one filter pass and one smoother pass.

For any quantity θ the model depends on (Θ, the noise s.d.s, the data, the prior),

.. math::
    \nabla_\theta \log p(y;\theta) = \mathrm{E}\big[\nabla_\theta \log p(x, y;\theta)
        \,\big|\, y\big] = \nabla_\theta Q(\theta; \bar\theta)\big|_{\bar\theta=\theta},

where Q is the EM's expected complete-data log-likelihood
(:func:`ssjax.core.smoother.expected_complete_loglik`) taken under the smoothed moments at θ̄.
The identity is exact, not an approximation: differentiating under the integral,
∇p(y) = ∫∇p(x, y)dx = p(y) E[∇ log p(x, y) | y].

So the gradient needs the filter (forward scan, which also gives the value), the RTS smoother
(a reverse scan of a few scalar operations per date) and the gradient of Q, which is a sum of
[T, M] elementwise terms with no recursion in it. Reverse-mode autodiff of the filter's scan
instead stores every step's intermediates and runs a transposed scan whose body is several
times the forward one. :func:`log_likelihood_fisher` wraps the filter in a
``jax.custom_vjp`` whose backward pass is the smoother plus the vjp of Q.

What works on it: ``jax.grad`` / ``value_and_grad`` / ``vjp`` with respect to every input
(parameters, data, prior), ``vmap``, ``jit``, and forward-over-reverse, so ``jax.hessian``
(the backward pass, smoother included, is itself differentiated). Pure forward mode
(``jax.jvp``, ``jax.jacfwd`` of the value) is not defined for a ``custom_vjp`` in JAX: use
:func:`ssjax.core.filter.log_likelihood_data` there, the same function with plain autodiff.
:func:`ssjax.fit.mle.fit_mle` uses it with ``gradient="fisher"``; the EM's ECME steps use it.

Precision. The identity is exact but its terms are not equally well conditioned in floating
point: with a measurement s.d. s the observation terms are E[residual]/s², and the smoothed
residual of a tenor the data pin (s → 0) is a small difference of O(1) numbers. The Fisher
gradient then keeps fewer digits than autodiff through the filter: checked against central
differences of a 40-digit decimal filter on a 40-date panel with one s.d. of 1e-5, autodiff
was within 4e-9 of them and the Fisher gradient within 7e-5 (the gradient's max-norm: 59).
Away from such tiny s.d.s the two agree to ~1e-9 relative.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array, lax

from ssjax.core.filter import Prior, _run, default_prior
from ssjax.core.market import MarketData
from ssjax.core.params import Params
from ssjax.core.smoother import (
    EStats,
    _lag_one,
    _mat,
    _rts,
    expected_complete_loglik,
    prior_expected_loglik,
)

__all__ = ["log_likelihood_fisher", "complete_data_objective"]


def complete_data_objective(p: Params, data: MarketData, prior: Prior, stats: EStats) -> Array:
    """Q(θ; θ̄) including the prior's term: its gradient at θ = θ̄ is the score."""
    ones = jnp.ones(data.dt.shape, data.log_f.dtype)
    return expected_complete_loglik(p, data, stats, ones) + prior_expected_loglik(prior, stats)


def _stats(p: Params, data: MarketData, predicted, filtered, loglik) -> EStats:
    phi = jnp.exp(-p.kappa * data.dt)
    smoothed, gains = _rts(phi, filtered, predicted)
    s1, s2, s11, s12, s22 = smoothed
    return EStats(
        means=jnp.stack([s1, s2], -1),
        covs=_mat(s11, s12, s12, s22),
        lag_one=_mat(*_lag_one(smoothed, gains)),
        loglik=loglik,
    )


# the filter's scan unrolled 4 steps, the smoother's not (why: docs/design.md, "unroll")
_UNROLL = 4


@jax.custom_vjp
def _loglik(p: Params, data: MarketData, prior: Prior) -> Array:
    return jnp.sum(_run(p, data, prior, keep_path=False, unroll=_UNROLL)[1])


def _loglik_fwd(p: Params, data: MarketData, prior: Prior):
    _, loglik_t, out = _run(p, data, prior, keep_path=True, unroll=_UNROLL)
    loglik = jnp.sum(loglik_t)
    return loglik, (p, data, prior, out[1], out[2], loglik)


def _loglik_bwd(res, g):
    p, data, prior, predicted, filtered, loglik = res
    stats = _stats(p, data, predicted, filtered, loglik)
    _, vjp = jax.vjp(lambda q, d, pr: complete_data_objective(q, d, pr, stats), p, data, prior)
    return vjp(g)


_loglik.defvjp(_loglik_fwd, _loglik_bwd)


@jax.jit
def log_likelihood_fisher(p: Params, data: MarketData, prior: Prior | None = None) -> Array:
    """The exact log-likelihood (same value as :func:`ssjax.core.filter.log_likelihood_data`)
    whose reverse-mode gradient comes from Fisher's identity (see the module docstring).

    The gradient equals plain autodiff's to ~1e-7 relative on the bundled panel (the tests
    check it; see the module docstring for tiny noise s.d.s). It costs a filter pass, a
    smoother pass and a vectorized vjp instead of the filter's transposed scan.
    """
    prior = default_prior(data) if prior is None else prior
    return _loglik(*_centered(p, data, prior))


def _centered(p: Params, data: MarketData, prior: Prior):
    """Shift ln F, ln S and the prior's Y by the panel's mean observed ln F, c.

    Y enters every observation with loading 1 and has a random-walk transition, so
    (ln F − c, ln S − c, Y − c) is the same model: the log-likelihood and all its
    derivatives are unchanged for any fixed c (c is held fixed under differentiation).
    What changes is rounding: when a noise s.d. s is tiny the score's terms are
    E[residual]/s², and a smoothed mean of size |Y| carries an absolute error ~ε|Y|, so
    bringing |Y| from ln(price) ~ 3–5 to ~0.1–0.5 gains an order of magnitude there.
    """
    w = data.mask.astype(data.log_f.dtype)
    c = lax.stop_gradient(jnp.sum(w * data.log_f) / jnp.maximum(jnp.sum(w), 1.0))
    shifted = data._replace(log_f=jnp.where(data.mask, data.log_f - c, data.log_f))
    if data.log_s is not None:
        shifted = shifted._replace(log_s=jnp.where(data.mask_s, data.log_s - c, data.log_s))
    prior = Prior(prior.mean - jnp.stack([jnp.zeros_like(c), c]), prior.cov)
    return p, shifted, prior
