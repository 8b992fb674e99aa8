r"""The optimizer's coordinates: the factors' own (default) and spot–slope, for the ridge.

:func:`ssjax.core.params.to_unconstrained` gives the optimizers log κ, log σ_X, log σ_Y and
artanh ρ. On some panels the likelihood rises along a **ridge** out of the parameter space:
κ → 0, σ_X ≈ σ_Y → ∞, ρ → −1. The two factors then cancel in ln S = X + Y, and what the
futures see is the spot Z = X + Y and a slope W = κX:

.. math::

    \ln F(t, T) ≈ Z − W Δ + \ldots, \qquad dW = −κ W\,dt + κσ_X\,dW^X,
    \qquad dZ = (μ − W)\,dt + σ_X\,dW^X + σ_Y\,dW^Y,

a model whose own parameters stay finite there: the slope's volatility s = κσ_X, the spot's
volatility v = √(σ_X² + σ_Y² + 2ρσ_Xσ_Y) and the correlation c = (σ_X + ρσ_Y)/v of the slope
and spot shocks. In the factors' coordinates L-BFGS walks along that curved valley in
hundreds of steps (300–950 on the simulated copper and Brent panels of
``experiments/bench_scale.py``); in (log(κ − κ₀), log s, log v, artanh c) it is a single
flat direction, log κ, and the same windows take 50–200 steps to the same or a higher
log-likelihood (``docs/design.md``).

The map is a bijection of the model's domain onto κ > κ₀, s > 0, v > 0, |c| < 1 (with
σ_Y = √((σ_X − cv)² + v²(1 − c²)) and ρ = (cv − σ_X)/σ_Y), except for the floor
κ₀ = :data:`KAPPA_FLOOR`: below it the factors' variances (σ_X ≈ s/κ) exceed what float64
can cancel in ln S. κ₀ lies below the boundary threshold of κ
(:data:`ssjax.fit.optimum.BOUND_TOL`), so a fit that rests on it reports ``BOUNDARY``.

Away from the ridge neither system is better (on real panels the step counts and optima
differ both ways), so the factors' coordinates stay the default, and the rolling fits take
the spot–slope ones for a window whose start is on the ridge (:func:`on_ridge`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from ssjax.core.params import Params, from_unconstrained, to_unconstrained

__all__ = [
    "KAPPA_FLOOR",
    "RIDGE",
    "to_spot_slope",
    "from_spot_slope",
    "on_ridge",
    "unconstrained_maps",
]

#: κ₀: the spot–slope coordinates keep κ above it (per year; below BOUND_TOL["scale"])
KAPPA_FLOOR = 5e-5
#: a start is on the ridge when κ is below ``kappa`` and 1 + ρ below ``one_plus_rho``
RIDGE = {"kappa": 1e-2, "one_plus_rho": 1e-3}


def _root_sum(x: Array, y: Array, one_minus: Array, one_plus: Array) -> Array:
    """√(x² + y²(1 − c)(1 + c)), kept above the dtype's smallest normal (its derivative is
    finite at 0: the unselected branch of a per-lane choice may get there)."""
    sq = x * x + y * y * one_minus * one_plus
    return jnp.sqrt(jnp.maximum(sq, jnp.finfo(jnp.result_type(sq)).tiny))


def to_spot_slope(p: Params) -> Params:
    """Factors → spot–slope: a ``Params`` whose ``kappa, sigma_x, sigma_y, rho`` hold
    κ − κ₀, s = κσ_X, v and c (the other fields unchanged). A κ at or below the floor
    maps to 0.1 κ₀ above it."""
    k, a, b, r = p.kappa, p.sigma_x, p.sigma_y, p.rho
    # v² = (σ_X + ρσ_Y)² + σ_Y²(1 − ρ)(1 + ρ): no cancellation beyond σ_X + ρσ_Y's
    m = a + r * b
    v = _root_sum(m, b, 1.0 - r, 1.0 + r)
    # (|c| = 1 only at |ρ| = 1 exactly: kept a hair inside, so that its artanh is finite)
    c = jnp.clip(m / v, -1.0 + 1e-12, 1.0 - 1e-12)
    return p._replace(
        kappa=jnp.maximum(k - KAPPA_FLOOR, 0.1 * KAPPA_FLOOR), sigma_x=k * a, sigma_y=v, rho=c
    )


def from_spot_slope(q: Params) -> Params:
    """Spot–slope → factors (the inverse of :func:`to_spot_slope` above the floor)."""
    k = q.kappa + KAPPA_FLOOR
    s, v, c = q.sigma_x, q.sigma_y, q.rho
    a = s / k
    d = a - c * v
    # (the guard matters only for the unselected branch of a per-lane choice: c may be ±1)
    b = _root_sum(d, v, 1.0 - c, 1.0 + c)
    return q._replace(kappa=k, sigma_x=a, sigma_y=b, rho=-d / b)


@jax.jit
def on_ridge(p: Params) -> Array:
    """True where ``p`` lies on the two-factor ridge (κ small and ρ near −1: :data:`RIDGE`)."""
    return (jnp.asarray(p.kappa) < RIDGE["kappa"]) & (
        1.0 + jnp.asarray(p.rho) < RIDGE["one_plus_rho"]
    )


def unconstrained_maps(
    spot_slope: ArrayLike | None = None,
) -> tuple[Callable[[Params], Params], Callable[[Params], Params]]:
    """``(to_u, from_u)``: physical ↔ unconstrained parameters in the factors' coordinates
    (``spot_slope`` None or False) or the spot–slope ones (True). ``spot_slope`` may be a
    traced boolean (one choice per lane of a vmapped batch: both maps are computed and one
    is selected, a few scalar operations)."""
    if spot_slope is None:
        return to_unconstrained, from_unconstrained
    flag = jnp.asarray(spot_slope, bool)

    def pick(a: Params, b: Params) -> Params:
        return jax.tree.map(lambda x, y: jnp.where(flag, x, y), a, b)

    def to_u(p: Params) -> Params:
        return pick(to_unconstrained(to_spot_slope(p)), to_unconstrained(p))

    def from_u(u: Params) -> Params:
        return pick(from_spot_slope(from_unconstrained(u)), from_unconstrained(u))

    return to_u, from_u
