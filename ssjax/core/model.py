r"""The Schwartz–Smith two-factor model as a linear-Gaussian state-space model.

State x_t = [X_t, Y_t] with ln S_t = X_t + Y_t and (theory document, §1)

.. math::
    dX = -\kappa X\,dt + \sigma_X dW^X, \qquad dY = \mu\,dt + \sigma_Y dW^Y,
    \qquad \mathrm{Corr}(dW^X, dW^Y) = \rho.

**Transition** over a step of length Δt uses the exact conditional moments:
E[X_{t+Δt}|X_t] = X_t e^{-κΔt}, E[Y_{t+Δt}|Y_t] = Y_t + μΔt,
Var[X] = σ_X²(1−e^{−2κΔt})/(2κ), Var[Y] = σ_Y²Δt, Cov = ρσ_Xσ_Y(1−e^{−κΔt})/κ.

**Measurement** of ln F at time to maturity Δ (the document's boxed closed form):
ln F(t, t+Δ) = e^{−κΔ} X_t + Y_t + A(Δ),

.. math::
    A(\Delta) = \mu^*\Delta - \lambda_X\frac{1-e^{-\kappa\Delta}}{\kappa}
      + \tfrac12\Big[\sigma_X^2\frac{1-e^{-2\kappa\Delta}}{2\kappa} + \sigma_Y^2\Delta
      + 2\rho\sigma_X\sigma_Y\frac{1-e^{-\kappa\Delta}}{\kappa}\Big],

where μ* = μ and λ_X = 0 in the document's model (the 2000 paper's risk-premium form
frees them). The spot is the Δ = 0 case: ln S = X + Y.

All functions here handle ONE date (or one step); callers ``vmap`` over dates and tenors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from ssjax.core.params import Params, risk_neutral_drift, short_term_premium

__all__ = [
    "decay_integral",
    "transition",
    "measurement",
    "log_forward",
    "forward_curve",
]


def decay_terms(kappa: ArrayLike, t: ArrayLike) -> tuple[Array, Array, Array]:
    r"""(e^{−κt}, (1 − e^{−κt})/κ, (1 − e^{−2κt})/(2κ)) from ONE transcendental evaluation.

    With g₁ = (1 − e^{−κt})/κ, the third term is g₁(1 + e^{−κt})/2 exactly. g₁ uses
    ``-expm1(-κt)/κ`` away from zero and its Taylor series t(1 − x/2 + x²/6 − x³/24), x = κt,
    for |x| < 1e-4, with the double-``where`` trick so gradients stay finite at κ = 0.
    """
    kappa = jnp.asarray(kappa)
    t = jnp.asarray(t)
    x = kappa * t
    one_minus_e = -jnp.expm1(-x)
    small = jnp.abs(x) < 1e-4
    # 1/κ once (κ is a scalar): a multiply per element instead of a divide; the guard keeps
    # the unused branch and its gradient finite when κ is (nearly) zero
    inv_k = 1.0 / jnp.where(jnp.abs(kappa) < 1e-100, jnp.ones_like(kappa), kappa)
    series = t * (1.0 - x * (0.5 - x * (1.0 / 6.0 - x / 24.0)))
    g1 = jnp.where(small, series, one_minus_e * inv_k)
    e = 1.0 - one_minus_e
    return e, g1, 0.5 * g1 * (1.0 + e)


def decay_integral(kappa: ArrayLike, t: ArrayLike) -> Array:
    r"""(1 − e^{−κt})/κ = ∫_0^t e^{−κs} ds, stable as κt → 0 (value and gradients)."""
    return decay_terms(kappa, t)[1]


def transition(p: Params, dt: ArrayLike) -> tuple[Array, Array, Array]:
    """Exact transition over one step of length ``dt`` (years).

    Returns:
        ``(phi, c, Q)``: x_{t+dt} = diag(phi, 1) x_t + c + w, w ~ N(0, Q); ``phi`` scalar,
        ``c`` shape [2], ``Q`` shape [2, 2].
    """
    phi, g1, g2 = decay_terms(p.kappa, dt)
    q11 = p.sigma_x**2 * g2
    q12 = p.rho * p.sigma_x * p.sigma_y * g1
    q22 = p.sigma_y**2 * dt
    c = jnp.stack([jnp.zeros_like(q22), p.mu * dt])
    Q = jnp.stack([jnp.stack([q11, q12]), jnp.stack([q12, q22])])
    return phi, c, Q


def measurement(p: Params, ttm: ArrayLike) -> tuple[Array, Array]:
    """Loading on X and intercept of ln F at times to maturity ``ttm`` (any shape).

    Returns:
        ``(b, A)`` with ln F = b·X + Y + A: b = e^{−κΔ}, A = A(Δ) (the boxed closed form).
    """
    ttm = jnp.asarray(ttm)
    b, g1, g2 = decay_terms(p.kappa, ttm)
    var_term = p.sigma_x**2 * g2 + p.sigma_y**2 * ttm + 2.0 * p.rho * p.sigma_x * p.sigma_y * g1
    A = risk_neutral_drift(p) * ttm - short_term_premium(p) * g1 + 0.5 * var_term
    return b, A


def log_forward(p: Params, state: ArrayLike, ttm: ArrayLike) -> Array:
    """ln F(t, t+Δ) for one state ``[X, Y]`` and times to maturity ``ttm`` (any shape)."""
    state = jnp.asarray(state)
    b, A = measurement(p, ttm)
    return b * state[..., 0] + state[..., 1] + A


@jax.jit
def forward_curve(p: Params, state: ArrayLike, ttm: ArrayLike) -> Array:
    """F(t, t+Δ) = exp(ln F) for one date: ``state`` [2], ``ttm`` [M] → [M].

    Vectorize over dates with ``jax.vmap(forward_curve, in_axes=(None, 0, 0))``.
    """
    return jnp.exp(log_forward(p, state, ttm))
