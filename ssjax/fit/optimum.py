r"""Where a fit ends, and where it starts: bounds, degenerate end points, multi-start designs.

The two-factor likelihood of a real futures panel is often multi-modal, and some of its
local maxima sit on the boundary of the parameter space:

* a **measurement s.d. → 0**: a tenor priced exactly by the two factors. With M > 2 tenors
  this is common and is usually the real maximum (the fit is fine; its Wald s.e. for that
  s.d. is not);
* a **degenerate model**: |ρ| → 1 (the two factors move as one), σ_X or σ_Y → 0 (a factor
  vanishes), κ → 0 (X is a second random walk, not identified against Y) or κ → ∞ (X decays
  within hours: white noise beside the measurement noise). On NYMEX natural gas and ICE
  Brent an L-BFGS run from the data-derived start can end at such a point hundreds of nats
  below the maximum of the same window.

The optimizers work in unconstrained coordinates (log for scales, arctanh for ρ), so a run
that heads for a bound stops with a vanishing gradient and would call itself converged.
:func:`at_bounds` says which free parameters ended at a bound (status ``BOUNDARY`` in
:mod:`ssjax.fit.mle` and :mod:`ssjax.fit.em`: *converged* means an interior optimum only);
:func:`move_inside` moves the degenerate coordinates of such a point back inside (the engine
restarts from there); :func:`start_design` spreads starting points around the data-derived
start, and :func:`multi_start` holds them as one batch that the fits ``vmap`` over.

Thresholds (:data:`BOUND_TOL`): a scale (κ, σ_X, σ_Y, a noise s.d.) below ``1e-4`` (in
ln F units per √year, per year for κ: 0.01% of the price, far below any exchange tick; the
optimizers stop on the flat log-scale direction anywhere between 1e-4 and 1e-40), κ above
``1e3`` per year (a half-life of 6 hours), and 1 − |ρ| below ``1e-6``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ssjax.core.params import Params, flatten_params, param_names, unflatten_params

__all__ = [
    "BOUNDARY",
    "FitStatus",
    "BOUNDARY_MESSAGE",
    "BOUND_TOL",
    "DEGENERATE_FIELDS",
    "at_bounds",
    "bound_vector",
    "degenerate",
    "bound_names",
    "describe_bounds",
    "move_inside",
    "pull_back",
    "start_design",
    "multi_start",
    "offset_start",
    "StartDesign",
    "stack_params",
]


class FitStatus(IntEnum):
    """How a fit ended: one set of codes for :func:`ssjax.fit.mle.fit_mle`,
    :func:`ssjax.fit.em.fit_em`, :class:`ssjax.KalmanFit` and :class:`ssjax.RollingResult`.

    ``GTOL`` and ``FTOL`` are the two ways to converge (an interior optimum); ``BOUNDARY`` is
    a stopping rule that fired with a free parameter at a bound of its domain (the point may be
    the maximum, but it is not an interior optimum); ``MAX_STEPS`` and ``NONFINITE`` did not
    converge. EM converges by ``FTOL`` only (its rule is a relative log-likelihood change).
    """

    RUNNING = 0
    GTOL = 1  # gradient norm below gtol
    FTOL = 2  # relative objective change below ftol (EM: below tol)
    MAX_STEPS = 3  # the step (EM: iteration) budget ran out
    NONFINITE = 4  # the objective or gradient became non-finite
    BOUNDARY = 5  # stopped with a free parameter at a bound

    @property
    def converged(self) -> bool:
        """An interior optimum (``GTOL`` or ``FTOL``)."""
        return self in (FitStatus.GTOL, FitStatus.FTOL)


BOUNDARY = FitStatus.BOUNDARY
BOUNDARY_MESSAGE = "stopped at a boundary of the parameter space (not an interior optimum)"
#: a scale parameter below ``scale`` or a correlation with 1 − |ρ| below ``rho`` is at its bound
BOUND_TOL = {"scale": 1e-4, "rho": 1e-6, "kappa_max": 1e3}
#: the fields whose bound makes the two-factor model degenerate (escaped by the engine)
DEGENERATE_FIELDS = ("kappa", "sigma_x", "sigma_y", "rho")
_SCALES = ("kappa", "sigma_x", "sigma_y", "meas_sd", "spot_sd")


@jax.jit
def at_bounds(p: Params) -> Params:
    """Per parameter (same tree as ``p``): True where it sits at a bound of its domain.

    Pure and jittable (also on NumPy arrays): scales below ``BOUND_TOL["scale"]``, κ above
    ``BOUND_TOL["kappa_max"]`` too, 1 − |ρ| below ``BOUND_TOL["rho"]``; drifts and risk
    premia have no bounds.
    """
    out = {}
    for name, v in p._asdict().items():
        if v is None:
            out[name] = None
        elif name == "kappa":  # κ → 0: X a second random walk; κ → ∞: X white noise
            a = jnp.asarray(v)
            out[name] = (a < BOUND_TOL["scale"]) | (a > BOUND_TOL["kappa_max"])
        elif name in _SCALES:
            out[name] = jnp.asarray(v) < BOUND_TOL["scale"]
        elif name == "rho":
            out[name] = 1.0 - jnp.abs(jnp.asarray(v)) < BOUND_TOL["rho"]
        else:
            out[name] = jnp.zeros(jnp.shape(v), bool)
    return Params(**out)


@jax.jit
def bound_vector(p: Params, free: Array | None = None) -> Array:
    """:func:`at_bounds` flattened like :func:`ssjax.core.params.flatten_params`; fixed
    parameters (``free == 0``) never count (a restriction held at 0 is not an end point)."""
    flags = flatten_params(at_bounds(p))
    return flags if free is None else flags & (jnp.asarray(free) > 0)


@jax.jit
def degenerate(p: Params, free: Array | None = None) -> Array:
    """True where a free κ, σ_X, σ_Y or ρ is at its bound (the model is degenerate there)."""
    flags = bound_vector(p, free)
    return jnp.any(flags[: len(DEGENERATE_FIELDS)])


def bound_names(p: Params, free=None, tenor_names=None) -> list[str]:
    """Names (as in ``KalmanFit.names``) of the free parameters at a bound (host side)."""
    flags = np.asarray(bound_vector(p, free))
    return [n for n, f in zip(param_names(p, tenor_names), flags, strict=True) if f]


def describe_bounds(p: Params, free=None, tenor_names=None) -> str:
    """The parameters at a bound, in words (``""`` when none)."""
    parts = []
    for n in bound_names(p, free, tenor_names):
        if n.startswith("meas_sd"):
            parts.append(f"{n} → 0 (that tenor is priced exactly)")
        elif n == "spot_sd":
            parts.append("spot_sd → 0 (the spot is priced exactly)")
        elif n == "rho":
            parts.append(f"rho → {'+' if float(np.asarray(p.rho)) > 0 else '-'}1 (one factor)")
        elif n == "kappa" and float(np.asarray(p.kappa)) > 1.0:
            parts.append("kappa → ∞ (X decays within hours: white noise, not a factor)")
        elif n == "kappa":
            parts.append("kappa → 0 (X is a second random walk)")
        else:
            parts.append(f"{n} → 0 (that factor vanishes)")
    return "; ".join(parts)


@jax.jit
def move_inside(
    p: Params, ref: Params, rho: float | Array = 0.0, free: Array | None = None
) -> Params:
    """``p`` with its degenerate coordinates moved back inside the parameter space.

    κ, σ_X and σ_Y at their bound take their value in ``ref`` (a data-derived start); a ρ at
    ±1 becomes ``rho``. Everything else (noise s.d.s included), and every parameter held
    fixed (``free == 0``), is left as it is. Jittable.
    """
    b = at_bounds(p)
    moved = p._replace(
        kappa=jnp.where(b.kappa, ref.kappa, p.kappa),
        sigma_x=jnp.where(b.sigma_x, ref.sigma_x, p.sigma_x),
        sigma_y=jnp.where(b.sigma_y, ref.sigma_y, p.sigma_y),
        rho=jnp.where(b.rho, jnp.asarray(rho, jnp.asarray(p.rho).dtype), p.rho),
    )
    if free is None:
        return moved
    v = jnp.where(jnp.asarray(free) > 0, flatten_params(moved), flatten_params(p))
    return unflatten_params(v, p)


@jax.jit
def pull_back(p: Params, ref: Params, floor: float | Array, cap_rho: bool | Array = True) -> Params:
    """``p`` moved off the boundary of the parameter space before it is used as a start.

    Each noise s.d. (and σ_X) is raised to at least ``floor`` × its value in ``ref`` (a
    data-derived start), and |ρ| is capped at ``1 − floor / 10`` unless ``cap_rho`` is false
    (a traced boolean is fine: a point on the κ → 0, ρ → −1 ridge keeps its ρ, see
    :mod:`ssjax.fit.coordinates`). The likelihood is flat in
    log s.d. as an s.d. heads to zero, so an optimum with a tenor fitted exactly (s.d. ≈ 1e-10)
    used as a start pins that tenor: L-BFGS sees no gradient to leave it even where the next
    window's optimum has the s.d. well above zero. ``floor = 0`` leaves ``p`` unchanged.
    """

    def lo(a, b):
        return None if a is None else jnp.maximum(a, floor * b)

    lim = 1.0 - 0.1 * jnp.minimum(floor, 1.0)
    return p._replace(
        sigma_x=lo(p.sigma_x, ref.sigma_x),
        meas_sd=lo(p.meas_sd, ref.meas_sd),
        spot_sd=lo(p.spot_sd, ref.spot_sd),
        rho=jnp.where((floor > 0) & cap_rho, jnp.clip(p.rho, -lim, lim), p.rho),
    )


class StartDesign(NamedTuple):
    """Fixed offsets that turn one data-derived start into ``n`` starts (host arrays).

    Start k multiplies κ, σ_X, σ_Y and each noise s.d. by ``exp(log_scale[k])`` and sets
    ρ to ``rho[k]``; start 0 is the data-derived start itself (zero offsets, ``keep_rho``).
    """

    log_scale: np.ndarray  # [n, 4]: κ, σ_X, σ_Y, every noise s.d.
    rho: np.ndarray  # [n]
    keep_rho: np.ndarray  # [n] bool: start k keeps the start's own ρ


def start_design(n: int, seed: int = 0) -> StartDesign:
    """``n`` starting offsets: the data-derived start, then points spread over log κ
    (±1.5), log σ_X (±1), log σ_Y (±0.7), the noise s.d.s (±1) and ρ of both signs.

    Stratified: each offset takes its ``n − 1`` values from evenly spaced strata (shuffled
    independently by ``seed``), so a handful of starts already covers every range; ρ
    alternates in sign, its magnitude stratified over [0.1, 0.85].
    """
    if n < 1:
        raise ValueError(f"the number of starts must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    k = n - 1
    half = np.array([1.5, 1.0, 0.7, 1.0])
    log_scale = np.zeros((n, 4))
    rho = np.zeros(n)
    keep = np.zeros(n, bool)
    keep[0] = True
    if k:
        u = (np.arange(k)[:, None] + rng.uniform(size=(k, 4))) / k  # one stratum each
        for j in range(4):
            u[:, j] = u[rng.permutation(k), j]
        log_scale[1:] = (2.0 * u - 1.0) * half
        mag = 0.1 + 0.75 * (np.arange(k) + rng.uniform(size=k)) / k
        sign = np.where(np.arange(k) % 2 == 0, -1.0, 1.0)
        rho[1:] = sign * mag[rng.permutation(k)]
    return StartDesign(log_scale, rho, keep)


def offset_start(start: Params, log_scale: Array, rho: Array, keep_rho: Array) -> Params:
    """One start of a design: ``start`` with κ, σ_X, σ_Y and the noise s.d.s multiplied by
    ``exp(log_scale)`` (4 entries) and ρ set to ``rho`` unless ``keep_rho``. Jittable."""
    dtype = jnp.asarray(start.kappa).dtype
    f = jnp.exp(jnp.asarray(log_scale, dtype))

    def scale(v, j):
        return None if v is None else jnp.asarray(v) * f[j]

    return start._replace(
        kappa=scale(start.kappa, 0),
        sigma_x=scale(start.sigma_x, 1),
        sigma_y=scale(start.sigma_y, 2),
        rho=jnp.where(keep_rho, start.rho, jnp.asarray(rho, dtype)),
        meas_sd=scale(start.meas_sd, 3),
        spot_sd=scale(start.spot_sd, 3),
    )


@jax.jit
def multi_start(start: Params, design: StartDesign) -> Params:
    """The design's starts around ``start`` as one batch (leading axis n). Jittable in
    ``start`` (the design is a constant), so a vmapped fit can derive them per window."""
    return jax.vmap(offset_start, in_axes=(None, 0, 0, 0))(
        start,
        jnp.asarray(design.log_scale),
        jnp.asarray(design.rho),
        jnp.asarray(design.keep_rho),
    )


def stack_params(ps: list[Params]) -> Params:
    """Params of the same structure stacked along a new leading axis."""
    return jax.tree.map(lambda *a: jnp.stack([jnp.asarray(x) for x in a]), *ps)
