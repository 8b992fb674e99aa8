r"""Parallel-in-time Kalman filter: ``lax.associative_scan`` over the dates.

The filter of Särkkä & García-Fernández (2021), "Temporal parallelization of Bayesian
smoothers", IEEE Trans. Automatic Control 66(1), §IV, for the two-factor model. It gives the
same filtered moments and log-likelihood (and gradient) as the sequential
:func:`ssjax.core.filter.kalman_filter` with O(log T) depth instead of O(T). Meant for GPU/TPU and
long panels; on a CPU it evaluates faster than the sequential scan from ~1,000 dates on, but
compiles several times longer (see :func:`log_likelihood_auto` and
``experiments/results/bench_parallel_filter.md``).

Elements
--------
Every date's observations are first collapsed exactly as in the sequential filter
(:func:`ssjax.core.filter.collapse_observations`): a 2-dimensional observation ẑ_t = U_t x_t + e_t,
e_t ~ N(0, I₂), plus state-independent constants (RSS, log|R|). With the transition
x_t = F x_{t-1} + u + w, F = diag(φ, 1), u = (0, μΔt), w ~ N(0, Q) (the step into date t),
date t ≥ 1 is the element a_t = (A, b, C, η, J) of the paper's Lemma 8 with H = U, R = I:

* S = I + U Q Uᵀ (eigenvalues ≥ 1), K = Q Uᵀ S⁻¹, ν = ẑ − U u;
* A = (I − K U) F, b = u + K ν, C = Q − K S Kᵀ   (p(x_t | x_{t-1}, ẑ_t) = N(A x_{t-1} + b, C));
* η = Fᵀ Uᵀ S⁻¹ ν, J = Fᵀ Uᵀ S⁻¹ U F   (p(ẑ_t | x_{t-1}) ∝ N_I(x_{t-1}; η, J)).

Date 0 conditions the prior N(m0, P0) on ẑ_0: A = 0, η = 0, J = 0 and (b, C) = the filtered
moments. A date with no observation has U = 0, hence (A, b, C, η, J) = (F, u, Q, 0, 0).
The associative operation (the paper's eq. 13, a_i earlier, a_j later) is

    A_ij = A_j D⁻¹ A_i,             b_ij = A_j D⁻¹ (b_i + C_i η_j) + b_j,
    C_ij = A_j D⁻¹ C_i A_jᵀ + C_j,   η_ij = A_iᵀ D⁻ᵀ (η_j − J_j b_i) + η_i,
    J_ij = A_iᵀ D⁻ᵀ J_j A_i + J_i,   D = I + C_i J_j,

and the prefix "sums" a_0 ⊗ … ⊗ a_t carry the filtered moments in (b, C).

Numerics: nothing is inverted but S (as in the sequential update) and D = I + C_i J_j. C_i and
J_j are positive semi-definite, so D's eigenvalues are ≥ 1 and its determinant is formed as
1 + tr(C_i J_j) + det C_i · det J_j, a sum of non-negative terms (no cancellation, never
below 1). J is bounded by Fᵀ Q⁻¹ F whatever U, so a measurement s.d. near zero (U huge) makes
no element large. D⁻¹C_i and D⁻ᵀJ_j are symmetric in exact arithmetic and are symmetrized.

Layout and compile time: the operation is written out on the scalar entries of the 2×2 blocks
(elementwise on [T] vectors; no batched 2×2 matmuls, which ran 2-4x slower on a CPU), and an
element travels through the scan packed as one [T, 14] array. ``lax.associative_scan``
traces the operation twice per level, so its program grows with log₂ T; XLA:CPU compiles the
value in ~5-8 s and the value and gradient in ~15-35 s for T = 250..5,000.
``scan="doubling"`` combines the same elements by recursive doubling inside a ``fori_loop``
(one traced operation; O(T log T) work): ~1 s / ~4 s to compile at any T.

After the scan, the one-step predictions and the per-date log-likelihood terms are
embarrassingly parallel: the predicted moments follow from the filtered ones of the previous
date, and each term uses the sequential filter's own update formula
(:func:`ssjax.core.filter._update`: log|I + U P Uᵀ| + νᵀ(I + U P Uᵀ)⁻¹ν) so the two filters agree to
rounding.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array, lax

from ssjax.core.filter import (
    FilterResult,
    Prior,
    _assemble,
    _scan_inputs,
    _update,
    default_prior,
    log_likelihood_data,
)
from ssjax.core.market import MarketData
from ssjax.core.params import Params

__all__ = [
    "log_likelihood_parallel",
    "log_likelihood_parallel_terms",
    "kalman_filter_parallel",
    "log_likelihood_auto",
    "choose_method",
    "PARALLEL_MIN_DATES",
]

# ``log_likelihood_auto`` picks the parallel filter on an accelerator from this many dates on
# (the GPU measurements behind it: docs/design.md, "Why the rolling defaults").
PARALLEL_MIN_DATES = 64
_ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")


class Element(NamedTuple):
    """One element of the parallel filter, as [T] component arrays (symmetric blocks: 3)."""

    a11: Array
    a12: Array
    a21: Array
    a22: Array
    b1: Array
    b2: Array
    c11: Array
    c12: Array
    c22: Array
    e1: Array  # η
    e2: Array
    j11: Array
    j12: Array
    j22: Array


N_COMPONENTS = len(Element._fields)


def _unpack(x: Array) -> Element:
    """[..., 14] → Element of [...] arrays (a split: its transpose is one concatenate)."""
    return Element(*(jnp.squeeze(c, -1) for c in jnp.split(x, N_COMPONENTS, axis=-1)))


def _combine_packed(xi: Array, xj: Array) -> Array:
    """:func:`_combine` on elements packed as [..., 14] arrays.

    Packing matters for compile time, not for the arithmetic: with 14 separate arrays every
    level of ``lax.associative_scan`` slices, pads and interleaves each of them, and XLA:CPU
    took ~10x longer to compile the result (53 s against 5 s for the WTI panel's value).
    """
    return jnp.stack(_combine(_unpack(xi), _unpack(xj)), axis=-1)


def _quad(a11, a12, a21, a22, s11, s12, s22):
    """A S Aᵀ for a general 2×2 A and a symmetric S: returns the (11, 12, 22) entries."""
    r11 = a11 * s11 + a12 * s12
    r12 = a11 * s12 + a12 * s22
    r21 = a21 * s11 + a22 * s12
    r22 = a21 * s12 + a22 * s22
    return r11 * a11 + r12 * a12, r11 * a21 + r12 * a22, r21 * a21 + r22 * a22


def _combine(ei: Element, ej: Element) -> Element:
    """a_i ⊗ a_j (a_i the earlier block of dates), the paper's eq. (13)."""
    ci11, ci12, ci22 = ei.c11, ei.c12, ei.c22
    jj11, jj12, jj22 = ej.j11, ej.j12, ej.j22
    # D = I + C_i J_j; det D = 1 + tr(C_i J_j) + det C_i det J_j (all terms >= 0)
    d11 = 1.0 + ci11 * jj11 + ci12 * jj12
    d12 = ci11 * jj12 + ci12 * jj22
    d21 = ci12 * jj11 + ci22 * jj12
    d22 = 1.0 + ci12 * jj12 + ci22 * jj22
    tr = ci11 * jj11 + 2.0 * ci12 * jj12 + ci22 * jj22
    det_c = jnp.maximum(ci11 * ci22 - ci12 * ci12, 0.0)
    det_j = jnp.maximum(jj11 * jj22 - jj12 * jj12, 0.0)
    inv = 1.0 / (1.0 + jnp.maximum(tr, 0.0) + det_c * det_j)
    # D⁻¹ = inv * [[d22, -d12], [-d21, d11]]
    n11, n12, n21, n22 = d22 * inv, -d12 * inv, -d21 * inv, d11 * inv
    # P = D⁻¹ A_i
    p11 = n11 * ei.a11 + n12 * ei.a21
    p12 = n11 * ei.a12 + n12 * ei.a22
    p21 = n21 * ei.a11 + n22 * ei.a21
    p22 = n21 * ei.a12 + n22 * ei.a22
    # A_ij = A_j P
    a11 = ej.a11 * p11 + ej.a12 * p21
    a12 = ej.a11 * p12 + ej.a12 * p22
    a21 = ej.a21 * p11 + ej.a22 * p21
    a22 = ej.a21 * p12 + ej.a22 * p22
    # b_ij = A_j D⁻¹ (b_i + C_i η_j) + b_j
    t1 = ei.b1 + ci11 * ej.e1 + ci12 * ej.e2
    t2 = ei.b2 + ci12 * ej.e1 + ci22 * ej.e2
    w1 = n11 * t1 + n12 * t2
    w2 = n21 * t1 + n22 * t2
    b1 = ej.a11 * w1 + ej.a12 * w2 + ej.b1
    b2 = ej.a21 * w1 + ej.a22 * w2 + ej.b2
    # C_ij = A_j (D⁻¹ C_i) A_jᵀ + C_j, D⁻¹C_i = (C_i⁻¹ + J_j)⁻¹ symmetric
    g11 = n11 * ci11 + n12 * ci12
    g12 = 0.5 * ((n11 * ci12 + n12 * ci22) + (n21 * ci11 + n22 * ci12))
    g22 = n21 * ci12 + n22 * ci22
    q11, q12, q22 = _quad(ej.a11, ej.a12, ej.a21, ej.a22, g11, g12, g22)
    c11, c12, c22 = q11 + ej.c11, q12 + ej.c12, q22 + ej.c22
    # η_ij = Pᵀ (η_j − J_j b_i) + η_i
    r1 = ej.e1 - (jj11 * ei.b1 + jj12 * ei.b2)
    r2 = ej.e2 - (jj12 * ei.b1 + jj22 * ei.b2)
    e1 = p11 * r1 + p21 * r2 + ei.e1
    e2 = p12 * r1 + p22 * r2 + ei.e2
    # J_ij = A_iᵀ (D⁻ᵀ J_j) A_i + J_i, D⁻ᵀJ_j = (J_j⁻¹ + C_i)⁻¹ symmetric (D⁻ᵀ = Nᵀ)
    h11 = n11 * jj11 + n21 * jj12
    h12 = 0.5 * ((n11 * jj12 + n21 * jj22) + (n12 * jj11 + n22 * jj12))
    h22 = n12 * jj12 + n22 * jj22
    k11, k12, k22 = _quad(ei.a11, ei.a21, ei.a12, ei.a22, h11, h12, h22)
    j11, j12, j22 = k11 + ei.j11, k12 + ei.j12, k22 + ei.j22
    return Element(a11, a12, a21, a22, b1, b2, c11, c12, c22, e1, e2, j11, j12, j22)


def _elements(m1, m2, p11, p12, p22, phi, u11, u12, u22, z1, z2) -> Element:
    """Elements conditioning N((m1, m2), P) on ẑ = U x + e, with x = diag(phi, 1) x_prev + …

    For a date t ≥ 1: m = u = (0, μΔt), P = Q, phi = e^{−κΔt} of the step into t. The
    (b, C) part is :func:`ssjax.core.filter._update` written out (same operations).
    """
    # B = U P
    b11 = u11 * p11 + u12 * p12
    b12 = u11 * p12 + u12 * p22
    b21 = u22 * p12
    b22 = u22 * p22
    # S = I + B Uᵀ
    s11 = 1.0 + b11 * u11 + b12 * u12
    s12 = b12 * u22
    s22 = 1.0 + b22 * u22
    inv_det = 1.0 / (s11 * s22 - s12 * s12)
    # ν = ẑ − U m, α = S⁻¹ν
    v1 = z1 - u11 * m1 - u12 * m2
    v2 = z2 - u22 * m2
    al1 = (s22 * v1 - s12 * v2) * inv_det
    al2 = (s11 * v2 - s12 * v1) * inv_det
    # b = m + Bᵀα ; C = P − Bᵀ G, G = S⁻¹B (Gᵀ is the gain K)
    f1 = m1 + b11 * al1 + b21 * al2
    f2 = m2 + b12 * al1 + b22 * al2
    g11 = (s22 * b11 - s12 * b21) * inv_det
    g12 = (s22 * b12 - s12 * b22) * inv_det
    g21 = (s11 * b21 - s12 * b11) * inv_det
    g22 = (s11 * b22 - s12 * b12) * inv_det
    c11 = p11 - (b11 * g11 + b21 * g21)
    c12 = p12 - (b11 * g12 + b21 * g22)
    c22 = p22 - (b12 * g12 + b22 * g22)
    # A = (I − Gᵀ U) F, F = diag(phi, 1)
    a11 = (1.0 - g11 * u11) * phi
    a12 = -(g11 * u12 + g21 * u22)
    a21 = -(g12 * u11) * phi
    a22 = 1.0 - (g12 * u12 + g22 * u22)
    # η = Fᵀ Uᵀ α
    e1 = phi * (u11 * al1)
    e2 = u12 * al1 + u22 * al2
    # J = Fᵀ (Uᵀ S⁻¹ U) F, with S⁻¹U = H
    h11 = s22 * u11 * inv_det
    h12 = (s22 * u12 - s12 * u22) * inv_det
    h21 = -s12 * u11 * inv_det
    h22 = (s11 * u22 - s12 * u12) * inv_det
    w11 = u11 * h11
    w12 = 0.5 * (u11 * h12 + (u12 * h11 + u22 * h21))
    w22 = u12 * h12 + u22 * h22
    j11, j12, j22 = phi * phi * w11, phi * w12, w22
    return Element(a11, a12, a21, a22, f1, f2, c11, c12, c22, e1, e2, j11, j12, j22)


def _doubling_scan(x: Array) -> Array:
    """Inclusive prefix of packed elements by recursive doubling (Hillis–Steele).

    Level k combines every element with the one 2^k dates earlier (the identity element,
    A = I and the rest 0, before the first date; combining with it is exact). ⌈log₂ T⌉
    levels in one ``lax.fori_loop``: the same O(log T) depth as ``lax.associative_scan`` but
    O(T log T) work, and the combination is compiled once instead of once per level.
    """
    n = x.shape[0]
    ident = jnp.zeros_like(x).at[:, 0].set(1.0).at[:, 3].set(1.0)  # a11 = a22 = 1

    def level(k, x):
        shifted = lax.dynamic_slice_in_dim(jnp.concatenate([ident, x], 0), n - 2**k, n, 0)
        return _combine_packed(shifted, x)

    return lax.fori_loop(0, max(1, (n - 1).bit_length()), level, x)


SCANS = ("associative", "doubling")


def _prefix(x: Array, scan: str) -> Array:
    """Inclusive prefix ⊗-products of the packed elements ``x [T, 14]`` along the dates."""
    if scan == "associative":
        return lax.associative_scan(_combine_packed, x)
    return _doubling_scan(x)


def _filtered_moments(p: Params, data: MarketData, prior: Prior, scan: str):
    """Filtered moments of every date by one parallel prefix scan, plus the scan's inputs."""
    if scan not in SCANS:
        raise ValueError(f"scan must be one of {SCANS}, got {scan!r}")
    _, xs, const_t = _scan_inputs(p, data)
    u11, u12, u22, z1, z2, phi, cdt, q11, q12, q22 = xs
    m0, P0 = prior.mean, prior.cov
    dtype = u11.dtype
    # date 0: condition the prior on its data; dates t >= 1: the step t-1 -> t, then date t
    el0 = _elements(
        m0[0], m0[1], P0[0, 0], P0[0, 1], P0[1, 1], jnp.ones((), dtype),
        u11[0], u12[0], u22[0], z1[0], z2[0],
    )  # fmt: skip
    zero = jnp.zeros((), dtype)
    el0 = el0._replace(
        a11=zero, a12=zero, a21=zero, a22=zero, e1=zero, e2=zero, j11=zero, j12=zero, j22=zero
    )
    rest = _elements(
        jnp.zeros_like(cdt[:-1]), cdt[:-1], q11[:-1], q12[:-1], q22[:-1], phi[:-1],
        u11[1:], u12[1:], u22[1:], z1[1:], z2[1:],
    )  # fmt: skip
    elems = jax.tree.map(
        lambda a, b: jnp.concatenate([jnp.reshape(a, (1,)).astype(b.dtype), b]), el0, rest
    )
    out = _unpack(_prefix(jnp.stack(elems, -1), scan))
    filt = (out.b1, out.b2, out.c11, out.c12, out.c22)
    return filt, xs, const_t


def _predict_and_terms(filt, xs, const_t, prior: Prior):
    """One-step predictions from the filtered moments and the per-date log-likelihood terms."""
    f1, f2, k11, k12, k22 = filt
    u11, u12, u22, z1, z2, phi, cdt, q11, q12, q22 = xs
    m0, P0 = prior.mean, prior.cov

    def shift(first, x):
        return jnp.concatenate([jnp.reshape(first, (1,)).astype(x.dtype), x[:-1]])

    # predicted[t] = step (t-1 -> t) applied to filtered[t-1]; predicted[0] = the prior
    pm1 = shift(m0[0], phi * f1)
    pm2 = shift(m0[1], f2 + cdt)
    pp11 = shift(P0[0, 0], phi * phi * k11 + q11)
    pp12 = shift(P0[0, 1], phi * k12 + q12)
    pp22 = shift(P0[1, 1], k22 + q22)
    *_, logdet, quad = _update(pm1, pm2, pp11, pp12, pp22, u11, u12, u22, z1, z2)
    loglik_t = -0.5 * (const_t + logdet + quad)
    return loglik_t, (pm1, pm2, pp11, pp12, pp22)


def log_likelihood_parallel_terms(
    p: Params, data: MarketData, prior: Prior | None = None, *, scan: str = "associative"
) -> Array:
    """Per-date log-likelihood contributions ``loglik_t [T]`` by the parallel filter."""
    prior = default_prior(data) if prior is None else prior
    filt, xs, const_t = _filtered_moments(p, data, prior, scan)
    return _predict_and_terms(filt, xs, const_t, prior)[0]


def log_likelihood_parallel(
    p: Params, data: MarketData, prior: Prior | None = None, *, scan: str = "associative"
) -> Array:
    """Exact Gaussian log-likelihood by the parallel-in-time filter.

    Same value as :func:`ssjax.log_likelihood_data` to rounding (and the same gradient);
    pure, jittable, differentiable (reverse and forward mode) and ``vmap``-able.

    ``scan`` (static): ``"associative"`` (default) is ``lax.associative_scan``: O(T) work,
    O(log T) depth, but its program grows with log T, and XLA:CPU takes ~5-8 s to compile
    the value and ~15-35 s the value and gradient for T = 250..5,000. ``"doubling"`` is
    recursive doubling in a ``fori_loop`` (:func:`_doubling_scan`): O(T log T) work, same
    depth, compiled in ~1 s (value) / ~4 s (value and gradient) whatever T.
    """
    return jnp.sum(log_likelihood_parallel_terms(p, data, prior, scan=scan))


def kalman_filter_parallel(
    p: Params, data: MarketData, prior: Prior | None = None, *, scan: str = "associative"
) -> FilterResult:
    """:func:`ssjax.kalman_filter` by the parallel-in-time filter (same fields, same values).

    ``scan``: as in :func:`log_likelihood_parallel`.
    """
    prior = default_prior(data) if prior is None else prior
    filt, xs, const_t = _filtered_moments(p, data, prior, scan)
    loglik_t, pred = _predict_and_terms(filt, xs, const_t, prior)
    return _assemble(p, data, loglik_t, pred, filt)


def choose_method(n_dates: int, backend: str | None = None) -> str:
    """The filter :func:`log_likelihood_auto` uses: ``"parallel"`` on a GPU/TPU backend with
    at least ``PARALLEL_MIN_DATES`` dates, ``"sequential"`` otherwise (``backend``: default
    ``jax.default_backend()``)."""
    backend = (jax.default_backend() if backend is None else backend).lower()
    return (
        "parallel" if backend in _ACCELERATORS and n_dates >= PARALLEL_MIN_DATES else "sequential"
    )


def log_likelihood_auto(
    p: Params, data: MarketData, prior: Prior | None = None, *, method: str = "auto"
) -> Array:
    """Log-likelihood by the sequential or the parallel filter (the same value to rounding).

    ``method`` (static): ``"sequential"`` (:func:`ssjax.log_likelihood_data`), ``"parallel"``
    (:func:`log_likelihood_parallel`) or ``"auto"``: :func:`choose_method`, decided at trace
    time from JAX's default backend and the number of dates. On a CPU the sequential filter is
    chosen at every length: the parallel one evaluates faster there from a few thousand dates
    on, but compiles several times longer, which a fit of a few hundred evaluations does not
    recoup (``experiments/results/bench_parallel_filter.md``).
    """
    if method == "auto":
        method = choose_method(data.log_f.shape[-2])
    if method == "sequential":
        return log_likelihood_data(p, data, prior)
    if method == "parallel":
        return log_likelihood_parallel(p, data, prior)
    raise ValueError(f"method must be 'auto', 'sequential' or 'parallel', got {method!r}")
