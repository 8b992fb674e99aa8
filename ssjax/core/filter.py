r"""Masked Kalman filter for the two-factor model: one ``lax.scan`` over dates.

Why the step is 2×2 algebra whatever the number of tenors M
-----------------------------------------------------------
With a diagonal measurement covariance R, everything a date's M observations say about the
2-dimensional state is captured by a QR factorization of the whitened design
R^{-1/2}H = Q U (Q: [N,2] orthonormal, U: 2×2 upper triangular). With z = R^{-1/2}(y − d):

* ẑ = Qᵀz is a 2-dimensional observation of the state: ẑ = U x + e, e ~ N(0, I₂);
* the rest of z is pure noise: RSS = ‖(I − QQᵀ)z‖² does not depend on the state;
* log|S| = log|R| + log|I₂ + U P Uᵀ| and vᵀS⁻¹v = RSS + νᵀ(I₂ + U P Uᵀ)⁻¹ν with ν = ẑ − U m.

U, ẑ, RSS and log|R| depend on Θ and the data but not on the state, so they are computed for
all dates at once, vectorized over [T, M], before the scan; the scan body is a fixed handful
of scalar operations. I₂ + U P Uᵀ has eigenvalues ≥ 1, so nothing is inverted that is
ill-conditioned when a measurement s.d. is tiny (the collapsed quantities are formed by
Givens rotations of the whitened rows, not from HᵀR⁻¹H). Missing entries get
zero weight (their rows of R^{-1/2}H vanish); a date with one observation has U of rank one,
a date with none is a pure prediction step. No jitter is added anywhere.

Conventions: ``predicted_*[t]`` is the state distribution at date t before that date's
observations (``predicted_*[0]`` is the prior ``x0``, ``P0``); ``filtered_*[t]`` after them.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array, lax

from ssjax.core.market import MarketData
from ssjax.core.model import measurement, transition
from ssjax.core.params import Params

__all__ = [
    "FilterResult",
    "kalman_filter",
    "log_likelihood_batch",
    "log_likelihood_data",
    "log_likelihood_terms",
    "default_prior",
    "Prior",
]

LOG_2PI = math.log(2.0 * math.pi)


class Prior(NamedTuple):
    """Mean [2] and covariance [2, 2] of the state at the first date, before its data."""

    mean: Array
    cov: Array


class FilterResult(NamedTuple):
    """Output of :func:`kalman_filter` (shapes for T dates, M tenors)."""

    loglik: Array  # ()
    loglik_t: Array  # [T] per-date contributions
    filtered_means: Array  # [T, 2]
    filtered_covs: Array  # [T, 2, 2]
    predicted_means: Array  # [T, 2]
    predicted_covs: Array  # [T, 2, 2]
    innovations: Array  # [T, M] ln F − E[ln F | past], 0 where masked
    innovation_vars: Array  # [T, M] diagonal of the innovation covariance, 0 where masked
    spot_innovations: Array | None = None  # [T]
    spot_innovation_vars: Array | None = None  # [T]


@jax.jit
def default_prior(data: MarketData) -> Prior:
    """The default prior: x0 = [0, mean observed ln F at the first date], P0 = I₂.

    (The first date with any observation, if the first date has none.)

    Same as statsmodels' "known" initialization with those values. P0 = I is wide compared
    with log-price scales (a s.d. of 1 in ln F), so the first date's data dominate.
    """
    first = jnp.argmax(jnp.any(data.mask, axis=1))  # the first date with an observation
    m0 = data.mask[first]
    y0 = jnp.sum(jnp.where(m0, data.log_f[first], 0.0)) / jnp.maximum(jnp.sum(m0), 1)
    dtype = data.log_f.dtype
    return Prior(jnp.stack([jnp.zeros((), dtype), y0]), jnp.eye(2, dtype=dtype))


def _safe_sqrt(s: Array) -> Array:
    pos = s > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0)


class Collapsed(NamedTuple):
    """Per-date sufficient quantities of the masked observations (state-independent)."""

    u11: Array  # [T]
    u12: Array
    u22: Array
    z1: Array
    z2: Array
    rss: Array  # [T] whitened residual sum of squares outside span(U)
    logdet_r: Array  # [T] sum of log sd² over observed entries
    nobs: Array  # [T]


def _observation_rows(p: Params, data: MarketData):
    """Loadings b, residuals y − d and mask of every observable, tenor-major: [N, T] each,
    plus the s.d.s [N] (N = M tenors, plus the spot as a last row when present).

    Tenor-major layout: the data are transposed (cheap, they are not batched) before any
    parameter enters, so nothing batched over parameters needs a transpose later.
    """
    dtype = data.log_f.dtype
    mask = data.mask.T
    # values under the mask never matter, even in a hand-built MarketData
    b, A = measurement(p, jnp.where(mask, data.ttm.T, 0.0))
    resid = jnp.where(mask, data.log_f.T - A, 0.0)
    sd = jnp.broadcast_to(p.meas_sd, data.log_f.shape[-1:]).astype(dtype)
    if data.log_s is not None:
        if p.spot_sd is None:
            raise ValueError("the data have a spot series S but params.spot_sd is None")
        b = jnp.concatenate([b, jnp.ones((1, b.shape[1]), dtype)], axis=0)
        resid = jnp.concatenate([resid, jnp.where(data.mask_s, data.log_s, 0.0)[None]], 0)
        mask = jnp.concatenate([mask, data.mask_s[None]], axis=0)
        sd = jnp.concatenate([sd, jnp.reshape(p.spot_sd, (1,)).astype(dtype)])
    return b, resid, mask, sd


def _givens(r: Array, x: Array):
    """Rotation zeroing ``x`` against ``r``: returns (hypot, cos, sin); identity when both are 0."""
    h = _safe_sqrt(r * r + x * x)
    nz = h > 0
    h_safe = jnp.where(nz, h, 1.0)
    # true divides (not a reciprocal): a zero row then leaves the factor exactly unchanged
    return h, jnp.where(nz, r / h_safe, 1.0), jnp.where(nz, x / h_safe, 0.0)


def collapse_observations(p: Params, data: MarketData) -> Collapsed:
    """Square-root information form of every date's observations, by Givens rotations.

    Each observed entry i contributes the whitened row (b_i, 1 | y_i − d_i) / sd_i; the rows
    are folded one tenor at a time into the 2×2 triangle U and ẑ by orthogonal rotations
    (backward stable whatever the scale of 1/sd), the leftover goes to RSS. The loop over the
    N observables is a short ``lax.fori_loop`` of elementwise operations on [T] vectors.
    """
    b, resid, mask, sd = _observation_rows(p, data)
    inv = jnp.where(mask, 1.0 / sd[:, None], 0.0)  # [N, T] whitening weights, 0 where missing
    rows = (b * inv, inv, resid * inv)  # whitened (X loading, Y loading | y − d), [N, T] each

    def fold(i, acc):
        u11, u12, u22, z1, z2, rss = acc
        # index the rows (rather than scanning over them): under vmap a scan would move the
        # batch axis behind N, a transposed copy of every [B, N, T] input
        a, c, z = (lax.dynamic_index_in_dim(r, i, axis=0, keepdims=False) for r in rows)
        u11, cs, sn = _givens(u11, a)
        u12, c = cs * u12 + sn * c, cs * c - sn * u12
        z1, z = cs * z1 + sn * z, cs * z - sn * z1
        u22, cs, sn = _givens(u22, c)
        z2, z = cs * z2 + sn * z, cs * z - sn * z2
        return (u11, u12, u22, z1, z2, rss + z * z)

    zeros = jnp.zeros(b.shape[1:], b.dtype)
    u11, u12, u22, z1, z2, rss = lax.fori_loop(0, b.shape[0], fold, (zeros,) * 6)
    w = mask.astype(b.dtype)
    logdet_r = jnp.sum(w * (2.0 * jnp.log(sd))[:, None], axis=0)
    nobs = jnp.sum(w, axis=0)
    return Collapsed(u11, u12, u22, z1, z2, rss, logdet_r, nobs)


def _transition_arrays(p: Params, dt: Array):
    """phi [T], mu*dt [T], q11, q12, q22 [T]: the step from date t to t+1 (last row unused)."""
    dt_full = jnp.concatenate([dt, dt[-1:]])
    phi, c, Q = jax.vmap(lambda d: transition(p, d))(dt_full)
    return phi, c[:, 1], Q[:, 0, 0], Q[:, 0, 1], Q[:, 1, 1]


def _update(m1, m2, p11, p12, p22, u11, u12, u22, z1, z2):
    """Condition N(m, P) on ẑ = U x + e, e ~ N(0, I₂). Returns filtered moments, log|S|, ν'S⁻¹ν."""
    # B = U P
    b11 = u11 * p11 + u12 * p12
    b12 = u11 * p12 + u12 * p22
    b21 = u22 * p12
    b22 = u22 * p22
    # S = I + B Uᵀ (symmetric, eigenvalues >= 1)
    s11 = 1.0 + b11 * u11 + b12 * u12
    s12 = b12 * u22
    s22 = 1.0 + b22 * u22
    det = s11 * s22 - s12 * s12
    inv_det = 1.0 / det
    # ν = ẑ − U m
    v1 = z1 - u11 * m1 - u12 * m2
    v2 = z2 - u22 * m2
    # α = S⁻¹ν
    a1 = (s22 * v1 - s12 * v2) * inv_det
    a2 = (s11 * v2 - s12 * v1) * inv_det
    # m⁺ = m + Bᵀα ; P⁺ = P − Bᵀ S⁻¹ B
    f1 = m1 + b11 * a1 + b21 * a2
    f2 = m2 + b12 * a1 + b22 * a2
    g11 = (s22 * b11 - s12 * b21) * inv_det  # G = S⁻¹ B
    g12 = (s22 * b12 - s12 * b22) * inv_det
    g21 = (s11 * b21 - s12 * b11) * inv_det
    g22 = (s11 * b22 - s12 * b12) * inv_det
    k11 = p11 - (b11 * g11 + b21 * g21)
    k12 = p12 - (b11 * g12 + b21 * g22)
    k22 = p22 - (b12 * g12 + b22 * g22)
    return f1, f2, k11, k12, k22, jnp.log(det), v1 * a1 + v2 * a2


def _scan_inputs(p: Params, data: MarketData):
    col = collapse_observations(p, data)
    phi, cdt, q11, q12, q22 = _transition_arrays(p, data.dt)
    xs = (col.u11, col.u12, col.u22, col.z1, col.z2, phi, cdt, q11, q12, q22)
    const_t = col.nobs * LOG_2PI + col.logdet_r + col.rss
    return col, xs, const_t


def _run(p: Params, data: MarketData, prior: Prior, keep_path: bool, unroll: int):
    col, xs, const_t = _scan_inputs(p, data)
    m0, P0 = prior.mean, prior.cov
    carry0 = (m0[0], m0[1], P0[0, 0], P0[0, 1], P0[1, 1])

    def step(carry, x):
        m1, m2, p11, p12, p22 = carry
        u11, u12, u22, z1, z2, phi, cdt, q11, q12, q22 = x
        f1, f2, k11, k12, k22, logdet, quad = _update(m1, m2, p11, p12, p22, u11, u12, u22, z1, z2)
        # predict to the next date
        n1 = phi * f1
        n2 = f2 + cdt
        n11 = phi * phi * k11 + q11
        n12 = phi * k12 + q12
        n22 = k22 + q22
        out = (logdet + quad,)
        if keep_path:
            out = out + ((m1, m2, p11, p12, p22), (f1, f2, k11, k12, k22))
        return (n1, n2, n11, n12, n22), out

    _, out = lax.scan(step, carry0, xs, unroll=unroll)
    loglik_t = -0.5 * (const_t + out[0])
    return col, loglik_t, out


@functools.partial(jax.jit, static_argnames=("unroll",))
def log_likelihood_data(
    p: Params, data: MarketData, prior: Prior | None = None, *, unroll: int = 4
) -> Array:
    """Exact Gaussian log-likelihood of the observed entries of ``data`` under ``p``.

    Pure, jittable, differentiable and ``vmap``-able (over parameters or panels).
    ``unroll`` is passed to the time ``lax.scan`` (4: faster runs at a longer compile; the
    figures are in ``docs/design.md``).
    """
    return jnp.sum(log_likelihood_terms(p, data, prior, unroll=unroll))


@functools.partial(jax.jit, static_argnames=("unroll",))
def log_likelihood_terms(
    p: Params, data: MarketData, prior: Prior | None = None, *, unroll: int = 1
) -> Array:
    """Per-date log-likelihood contributions ``loglik_t [T]`` (scores and BHHH use these)."""
    prior = default_prior(data) if prior is None else prior
    return _run(p, data, prior, keep_path=False, unroll=unroll)[1]


@functools.partial(jax.jit, static_argnames=("batch_size",))
def log_likelihood_batch(
    params: Params,
    data: MarketData,
    prior: Prior | None = None,
    *,
    batch_size: int | None = 200,
) -> Array:
    """Log-likelihoods of many parameter sets (and/or panels) in one call: ``[B]``.

    ``params`` carries a leading batch axis B on every array leaf (build it with
    ``jax.vmap`` or ``jax.tree.map(jnp.stack, ...)``); ``data`` is either one panel shared
    by all B parameter sets or a batch of B panels of the same shape (leading axis on
    ``log_f``); ``prior`` likewise shared or batched, and ``None`` for the default.

    The batch is evaluated ``batch_size`` lanes at a time (``lax.map`` over chunks of a
    ``vmap``): on a CPU a chunk of a few hundred lanes keeps each scan's working set in cache
    and runs 1,000 evaluations of the bundled panel about twice as fast as one
    ``vmap`` over all of them. ``batch_size=None`` is the plain ``vmap`` (often best on a GPU).
    Jit it (or call it inside a jitted function); it is differentiable like the rest.
    """
    leaves = [x for x in jax.tree.leaves(params) if hasattr(x, "ndim")]
    if not leaves or any(jnp.ndim(x) < 1 for x in leaves):
        raise ValueError(
            "params: every parameter needs a leading batch axis for log_likelihood_batch "
            "(use log_likelihood_data for a single parameter set)"
        )
    n = jnp.shape(leaves[0])[0]
    if any(jnp.shape(x)[0] != n for x in leaves):
        raise ValueError("params: the leading (batch) axis differs between parameters")
    data_batched = data.log_f.ndim == 3
    if data_batched and data.log_f.shape[0] != n:
        raise ValueError(f"data: {data.log_f.shape[0]} panels for a batch of {n} parameter sets")
    prior_batched = prior is not None and jnp.ndim(prior.mean) == 2

    # the batched pieces travel through map/vmap; shared ones are closed over
    xs = (params, data if data_batched else None, prior if prior_batched else None)

    def body(x):
        p, d, pr = x
        d = data if d is None else d
        pr = prior if pr is None else pr
        return jnp.sum(_run(p, d, default_prior(d) if pr is None else pr, False, 1)[1])

    if batch_size is None or batch_size >= n:
        return jax.vmap(body)(xs)
    return lax.map(body, xs, batch_size=batch_size)


def _sym(a11, a12, a22):
    return jnp.stack([jnp.stack([a11, a12], -1), jnp.stack([a12, a22], -1)], -2)


@functools.partial(jax.jit, static_argnames=("unroll",))
def kalman_filter(
    p: Params, data: MarketData, prior: Prior | None = None, *, unroll: int = 1
) -> FilterResult:
    """Run the masked Kalman filter and return every intermediate the diagnostics need."""
    prior = default_prior(data) if prior is None else prior
    _, loglik_t, out = _run(p, data, prior, keep_path=True, unroll=unroll)
    return _assemble(p, data, loglik_t, out[1], out[2])


def _assemble(p: Params, data: MarketData, loglik_t: Array, pred, filt) -> FilterResult:
    """A :class:`FilterResult` from the per-date terms and the predicted and filtered moments
    (m1, m2, p11, p12, p22 each [T]); shared by the sequential and the parallel filter."""
    pm1, pm2, pp11, pp12, pp22 = pred
    fm1, fm2, fp11, fp12, fp22 = filt
    # innovations in the original coordinates, vectorized after the scan
    b, A = measurement(p, data.ttm)
    yhat = b * pm1[:, None] + pm2[:, None] + A
    hph = b * b * pp11[:, None] + 2.0 * b * pp12[:, None] + pp22[:, None]
    sd = jnp.broadcast_to(p.meas_sd, data.log_f.shape)
    innov = jnp.where(data.mask, data.log_f - yhat, 0.0)
    innov_var = jnp.where(data.mask, hph + sd * sd, 0.0)
    s_innov = s_var = None
    if data.log_s is not None:
        s_innov = jnp.where(data.mask_s, data.log_s - pm1 - pm2, 0.0)
        s_var = jnp.where(data.mask_s, pp11 + 2 * pp12 + pp22 + p.spot_sd**2, 0.0)
    return FilterResult(
        loglik=jnp.sum(loglik_t),
        loglik_t=loglik_t,
        filtered_means=jnp.stack([fm1, fm2], -1),
        filtered_covs=_sym(fp11, fp12, fp22),
        predicted_means=jnp.stack([pm1, pm2], -1),
        predicted_covs=_sym(pp11, pp12, pp22),
        innovations=innov,
        innovation_vars=innov_var,
        spot_innovations=s_innov,
        spot_innovation_vars=s_var,
    )
