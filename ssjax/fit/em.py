r"""Structured EM for the two-factor model: a smoother E-step and an ECM M-step.

Unlike the EM of pykalman or dynamax (free transition, loading and noise matrices), this EM
keeps the Schwartz–Smith structure: the transition, the loadings e^{−κΔ} and the intercepts
A(Δ) stay functions of Θ, so every iterate is a valid model and the fixed point is the MLE.

One iteration from Θ_k
----------------------
**E-step.** The filter and the RTS smoother at Θ_k give the smoothed means m_t, covariances
P_t and lag-one cross-covariances C_t = Cov(x_{t+1}, x_t | all data) (and, for free, the
observed-data log-likelihood ℓ(Θ_k)). The expected complete-data log-likelihood

.. math::
    Q(\Theta) = \sum_{t,i\ \mathrm{observed}} -\tfrac12\Big[\ln 2\pi s_i^2
        + \frac{(y_{ti} - A_i - b_i m_{t1} - m_{t2})^2 + h_i P_t h_i^\top}{s_i^2}\Big]
      + \sum_t w_t\Big(-\tfrac12\Big[\ln|2\pi Q_t| + \mathrm{tr}\,Q_t^{-1}
        \mathrm{E}[e_t e_t^\top]\Big]\Big),

with h_i = (b_i, 1), e_t = x_{t+1} − Φ_t x_t − c_t and
E[e_t e_tᵀ] = ēēᵀ + P_{t+1} − C_tΦ_tᵀ − Φ_tC_tᵀ + Φ_tP_tΦ_tᵀ (ē the mean of e_t), is then a
smooth, cheap function of Θ: [T, M] elementwise work, no filtering. w_t = 0 for steps into the
unobserved tail of a padded panel (they carry no information and would only slow EM down).
The prior of the first state is fixed, so it does not enter Q.

**M-step (ECM).** (1) The measurement variances in closed form: s_i² is the mean over the
observed dates of tenor i of the expected squared residual (pooled over tenors for a shared
s.d.; the spot has its own). (2) The structural parameters (κ, σ_X, σ_Y, ρ, μ, and λ_X, μ*
when present) by a few optax L-BFGS steps on −Q from Θ_k, in coordinates whitened by the
Cholesky factor of −∇²Q at Θ_k (so the first step is a Newton step). Each conditional step
cannot decrease Q; if the second ever returned a lower Q (a line search can fail), it is undone
and counted in ``rollbacks``. So ℓ(Θ_{k+1}) ≥ ℓ(Θ_k): EM's monotonicity, checked in the tests.

**ECME** (``ecme=True``, the default; Liu & Rubin 1994). When a measurement s.d. heads to
zero (the bundled WTI panel: one tenor's s.d. is ~1e-6 at the MLE) the smoothed states pin
that tenor's loading and intercept, so Q's structural maximizer hardly moves from Θ_k: the
fraction of missing information along the (κ, state) ridge tends to one and ECM crawls
(how far short it stays: ``docs/design.md``). The noise variances' own EM update is
sublinear near zero too. ECME keeps the closed-form noise step (1), then takes CM-step 2
(structural) and a CM-step 3 (noise s.d.s) on the observed ℓ instead of Q: a few L-BFGS
steps each, BHHH-scaled, undone if ℓ would fall. CM-step 3 moves each log s.d. by at most 1
per M-step: with the structure held, ℓ is flat as an s.d. goes to zero, and unbounded steps
could run an s.d. down that flat to ~1e-16 in one M-step, where (in log coordinates) it
cannot come back. ℓ still never decreases, and ECME reaches
the MLE where ECM crawls.

The whole fit is one jittable function (``lax.while_loop`` over iterations), so it vmaps over
panels like :func:`ssjax.fit.mle.fit_mle`.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array, lax

from ssjax.core.filter import Prior, default_prior
from ssjax.core.market import MarketData
from ssjax.core.params import (
    Params,
    flatten_params,
    from_unconstrained,
    to_unconstrained,
    unflatten_params,
)
from ssjax.core.score import log_likelihood_fisher
from ssjax.core.smoother import (
    EStats,
    expected_complete_loglik,
    expected_sq_resid,
    rts_smoother,
    transition_weights,
)
from ssjax.fit.linesearch import scale_by_zoom_linesearch
from ssjax.fit.mle import _bhhh_scale
from ssjax.fit.optimum import BOUNDARY, BOUNDARY_MESSAGE, FitStatus, bound_vector

__all__ = [
    "EMResult",
    "EStats",
    "e_step",
    "expected_complete_loglik",
    "m_step",
    "MStep",
    "fit_em",
    "EM_STATUS_MESSAGES",
]

LOG_2PI = math.log(2.0 * math.pi)
# the codes of ssjax.fit.optimum.FitStatus: EM converges by a relative log-likelihood change
RUNNING, CONVERGED = FitStatus.RUNNING, FitStatus.FTOL
MAX_ITERS, NONFINITE = FitStatus.MAX_STEPS, FitStatus.NONFINITE
EM_STATUS_MESSAGES = {
    RUNNING: "running",
    CONVERGED: "converged: relative log-likelihood change below tol",
    MAX_ITERS: "not converged: maximum number of EM iterations reached",
    NONFINITE: "not converged: log-likelihood became non-finite",
    BOUNDARY: BOUNDARY_MESSAGE,
}
_NOISE_FIELDS = ("meas_sd", "spot_sd")
#: ECME's noise CM-step moves each log s.d. by at most this much per M-step (a factor of
#: e^1.0 ≈ 2.7): see m_step
_NOISE_MAX_MOVE = 1.0


class EMResult(NamedTuple):
    """Outcome of :func:`fit_em` (a pytree: it vmaps)."""

    params: Params
    loglik: Array  # log-likelihood at ``params``
    loglik_path: Array  # [max_iters + 1]: ℓ(Θ_0), ℓ(Θ_1), ... (NaN after the last)
    num_iters: Array  # iterations taken
    num_em_steps: Array  # EM maps (E-step + M-step) evaluated: 3 per accelerated iteration
    status: Array
    converged: Array
    rollbacks: Array  # M-steps whose structural CM-step was undone (it lowered Q, or ℓ)
    ll_decreases: Array  # iterations where ℓ fell by more than 1e-9 relative (should be 0)


@jax.jit
def e_step(p: Params, data: MarketData, prior: Prior | None = None) -> EStats:
    """Filter and smooth at ``p``: the statistics Q needs, and ℓ(p)."""
    prior = default_prior(data) if prior is None else prior
    sm = rts_smoother(p, data, prior)
    return EStats(sm.smoothed_means, sm.smoothed_covs, sm.lag_one_covs, sm.filter.loglik)


def _noise_update(p: Params, data: MarketData, stats: EStats, free: Params) -> Params:
    """CM-step 1: the measurement variances in closed form (structural parameters held)."""
    v, mask, _ = expected_sq_resid(p, data, stats)
    M = data.log_f.shape[-1]
    n = jnp.sum(mask, axis=1).astype(v.dtype)
    ssr = jnp.sum(v, axis=1)
    tiny = jnp.finfo(v.dtype).tiny ** 0.5

    def sd_from(s, k, old):
        return jnp.where(k > 0, jnp.sqrt(jnp.maximum(s / jnp.maximum(k, 1.0), tiny)), old)

    if jnp.ndim(p.meas_sd) == 0:
        meas = sd_from(jnp.sum(ssr[:M]), jnp.sum(n[:M]), p.meas_sd)
    else:
        meas = sd_from(ssr[:M], n[:M], p.meas_sd)
    meas = jnp.where(free.meas_sd > 0, meas, p.meas_sd)
    spot = p.spot_sd
    if spot is not None:
        spot = jnp.where(free.spot_sd > 0, sd_from(ssr[M], n[M], spot), spot)
    return p._replace(meas_sd=meas, spot_sd=spot)


def _structural_mask(p: Params, free: Params) -> Array:
    """Flat mask: 1 on free structural coordinates, 0 on noise s.d.s and fixed ones."""
    parts = {
        k: (jnp.zeros_like(v) if k in _NOISE_FIELDS else v)
        for k, v in free._asdict().items()
        if v is not None
    }
    return flatten_params(Params(**{k: parts.get(k) for k in Params._fields}))


def _keep_fixed(p: Params, ref: Params, free: Params) -> Params:
    return jax.tree.map(lambda a, b, f: jnp.where(f > 0, a, b), p, ref, free)


class MStep(NamedTuple):
    """Outcome of one M-step (see :func:`m_step`)."""

    params: Params
    q_before: Array  # Q at the E-step parameters
    q_after: Array  # Q at ``params``
    rolled_back: Array  # bool: the structural CM-step was undone (it lowered Q, or ℓ for ECME)


def _lbfgs_steps(fun, n: int, num_steps: int, dtype) -> Array:
    """``num_steps`` optax L-BFGS steps (zoom line search) on ``fun`` from 0 ∈ R^n.

    The line search is ssjax's one-evaluation zoom (:mod:`ssjax.fit.linesearch`: optax's
    decisions, so the same steps), and the loop's first pass is a zero step that only
    evaluates the start (as in :func:`ssjax.fit.mle.fit_mle`): the objective's
    value-and-gradient is compiled once, inside the line search, where optax's zoom and
    ``value_and_grad_from_state`` compiled it three times (and under ``vmap`` ran their
    ``cond`` branches as selects: two or three evaluations per line-search iteration).
    """
    solver = optax.lbfgs(
        memory_size=num_steps,
        linesearch=scale_by_zoom_linesearch(20, initial_guess_strategy="one"),
    )
    w0 = jnp.zeros((n,), dtype)
    fresh = solver.init(w0)

    def body(i, carry):
        w, state = carry
        value = optax.tree.get(state, "value")
        grad = optax.tree.get(state, "grad")
        updates, new = solver.update(grad, state, w, value=value, grad=grad, value_fn=fun)
        # after the first pass (the start's evaluation) L-BFGS starts afresh from it
        started = optax.tree.set(
            fresh, value=optax.tree.get(new, "value"), grad=optax.tree.get(new, "grad")
        )
        new = jax.tree.map(lambda a, b: jnp.where(i == 0, a, b), started, new)
        return optax.apply_updates(w, updates), new

    return lax.fori_loop(0, num_steps + 1, body, (w0, fresh))[0]


def _noise_mask(p: Params, free: Params) -> Array:
    """Flat mask: 1 on free measurement (and spot) s.d.s, 0 elsewhere."""
    return flatten_params(free) * (1.0 - _structural_mask(p, jax.tree.map(jnp.ones_like, free)))


def _cm_step(
    objective,
    p: Params,
    block: Array,
    free: Params,
    scale_fn,
    num_steps: int,
    max_move: float | Array | None = None,
):
    """Move the coordinates of ``block`` by L-BFGS on ``objective`` (undone if it rises).

    ``scale_fn(v0, to_p)`` returns the [n, n] upper-triangular whitening factor Lᵀ; the
    search runs in w with v = v0 + block ⊙ L⁻ᵀw. ``max_move`` bounds the move in the
    unconstrained coordinates: a step whose largest coordinate change exceeds it is shrunk
    along its direction to that length. Returns (params, rolled_back).
    """
    template = to_unconstrained(p)
    v0 = flatten_params(template)

    def to_p(v):
        return from_unconstrained(unflatten_params(v, template))

    Lt = scale_fn(v0, to_p)

    def to_v(w):
        return v0 + block * jax.scipy.linalg.solve_triangular(Lt, w, lower=False)

    w = _lbfgs_steps(lambda w: objective(to_p(to_v(w))), v0.shape[0], num_steps, v0.dtype)
    v = to_v(w)
    if max_move is not None:  # a float or a traced scalar (inf: no bound)
        move = jnp.max(jnp.abs(v - v0))
        v = v0 + (v - v0) * jnp.where(move > max_move, max_move / move, 1.0)
    p2 = _keep_fixed(to_p(v), p, free)  # fixed entries exactly (no log/exp round trip)
    f1, f2 = objective(p), objective(p2)
    ok = jnp.isfinite(f2) & (f2 <= f1)
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), p2, p), ~ok


@functools.partial(jax.jit, static_argnames=("num_steps", "ecme"))
def m_step(
    p: Params,
    data: MarketData,
    stats: EStats,
    free: Params | None = None,
    *,
    num_steps: int = 5,
    weights: Array | None = None,
    ecme: bool = False,
    prior: Prior | None = None,
) -> MStep:
    """One M-step from ``p``: ECM, or ECME with ``ecme=True``.

    CM-step 1 sets the measurement variances in closed form (the exact maximizer of Q over
    them). CM-step 2 moves the structural parameters by ``num_steps`` L-BFGS steps on −Q,
    whitened by the Cholesky factor of −∇²Q (ECM). With ``ecme=True`` (ECME, Liu & Rubin
    1994: a CM-step may maximize the observed log-likelihood ℓ instead of Q) CM-step 2 runs
    on −ℓ, scaled by the BHHH diagonal, and a CM-step 3 then moves the noise s.d.s on −ℓ
    the same way, each log s.d. by at most ``_NOISE_MAX_MOVE`` (1.0). A CM-step 2 or 3
    that would worsen its objective is undone and reported in ``rolled_back``; every step
    keeps ℓ from decreasing.

    ``free`` has the structure of ``p`` with 1.0 on estimated and 0.0 on fixed entries;
    ``prior`` is used by ``ecme`` (default :func:`ssjax.core.filter.default_prior`).
    """
    w_t = transition_weights(data) if weights is None else weights
    free = jax.tree.map(jnp.ones_like, p) if free is None else free
    q_before = expected_complete_loglik(p, data, stats, w_t)
    p1 = _noise_update(p, data, stats, free)  # CM-step 1 (exact maximizer)
    s_mask = _structural_mask(p1, free)
    scale = jnp.maximum(data.nobs.astype(q_before.dtype), 1.0)

    if ecme:
        prior = default_prior(data) if prior is None else prior

        def neg_ll(q):
            # value of the filter, gradient by Fisher's identity (ssjax.core.score)
            return -log_likelihood_fisher(q, data, prior) / scale

        def bhhh(v0, to_p):
            template = to_unconstrained(to_p(v0))
            return jnp.diag(_bhhh_scale(v0, template, data, prior, scale))

        # CM-steps 2 (structural block, unbounded) and 3 (noise block, each log s.d. moved at
        # most _NOISE_MAX_MOVE) in one scan over the two blocks: the CM-step's program is
        # compiled once, not twice
        def cm(q, block_and_bound):
            block, bound = block_and_bound
            return _cm_step(neg_ll, q, block, free, bhhh, num_steps, bound)

        blocks = jnp.stack([s_mask, _noise_mask(p1, free)])
        bounds = jnp.asarray([jnp.inf, _NOISE_MAX_MOVE], blocks.dtype)
        p3, rbs = lax.scan(cm, p1, (blocks, bounds))
        rolled_back = jnp.any(rbs)
    else:

        def neg_q(q):
            return -expected_complete_loglik(q, data, stats, w_t) / scale

        def chol_hessian(v0, to_p):
            n = v0.shape[0]
            H = jax.hessian(lambda v: neg_q(to_p(v)))(v0)
            fm = (s_mask[:, None] * s_mask[None, :]) > 0
            H = jnp.where(fm, 0.5 * (H + H.T), jnp.eye(n, dtype=H.dtype))
            L = jnp.linalg.cholesky(H)
            diag = jnp.sqrt(jnp.maximum(jnp.abs(jnp.diagonal(H)), 1e-12))
            return jnp.where(jnp.all(jnp.isfinite(L)), L.T, jnp.diag(diag))  # not PD: diagonal

        p3, rolled_back = _cm_step(neg_q, p1, s_mask, free, chol_hessian, num_steps)
    q_after = expected_complete_loglik(p3, data, stats, w_t)
    return MStep(p3, q_before, q_after, rolled_back)


class _Carry(NamedTuple):
    x: Array  # flat unconstrained point whose E-step runs next
    phase: Array  # 0: x is a candidate base point; 1: x = θ₁; 2: x = extrapolated point
    trusted: Array  # bool: x is a plain EM iterate (accept it without a check)
    th0: Array  # current base point θ₀ and ℓ(θ₀)
    ll0: Array
    th1: Array
    th2: Array
    path: Array
    it: Array  # accepted iterations
    n_em: Array  # EM maps evaluated
    status: Array
    n_rb: Array
    ll_dec: Array
    alpha_max: Array  # SQUAREM step bound


@functools.partial(jax.jit, static_argnames=("max_iters", "m_steps", "accelerate", "ecme"))
def fit_em(
    data: MarketData,
    init: Params,
    prior: Prior | None = None,
    free: Array | None = None,
    *,
    max_iters: int = 500,
    tol: float = 1e-10,
    m_steps: int = 5,
    accelerate: bool = True,
    ecme: bool = True,
) -> EMResult:
    """Fit Θ by structured EM from ``init``.

    Args:
        data: the panel; ``init``: starting parameters (their structure is the model fitted).
        prior: state prior at the first date (default :func:`ssjax.core.filter.default_prior`).
        free: optional float mask over the flat parameter vector (1 = estimated).
        max_iters: maximum number of (accepted) iterations.
        tol: stop when the log-likelihood improves by less than ``tol`` relative (to
            max(|ℓ|, 1)) from one iteration to the next.
        m_steps: L-BFGS steps on the structural parameters per M-step.
        accelerate: SQUAREM (Varadhan & Roland 2008, scheme S3) on the EM map, in the
            unconstrained coordinates, with the monotone safeguard: from θ₀ take two EM
            steps θ₁, θ₂, extrapolate θ' = θ₀ − 2αr + α²v (r = θ₁ − θ₀,
            v = θ₂ − 2θ₁ + θ₀, α = −‖r‖/‖v‖ within [−α_max, −1]), take one EM step from θ'
            and keep the result only if its log-likelihood is at least ℓ(θ₀); otherwise
            continue from θ₂. So ℓ never decreases, as in plain EM (``False``).
        ecme: after the closed-form noise step, take the structural and then the noise
            CM-step on the observed log-likelihood instead of Q (ECME, the default; see
            :func:`m_step`); ``False`` is ECM, every CM-step on Q. ECME is needed where a
            measurement s.d. heads to zero: there the smoothed states pin the loadings
            e^{−κΔ} and intercepts A(Δ), so Q's structural maximizer barely moves from Θ_k
            and ECM crawls.

    Returns:
        :class:`EMResult`; ``loglik_path[k]`` is ℓ after iteration k (k = 0: the start).

    The loop runs one E-step (filter + smoother) and one M-step per ``while_loop`` turn,
    whatever the phase of the acceleration, so the EM map is compiled once.
    """
    prior = default_prior(data) if prior is None else prior
    free_flat = jnp.ones_like(flatten_params(init)) if free is None else jnp.asarray(free)
    free_tree = unflatten_params(free_flat.astype(init.kappa.dtype), init)
    w_t = transition_weights(data)
    dtype = init.kappa.dtype
    template = to_unconstrained(init)

    def to_p(v):
        return from_unconstrained(unflatten_params(v, template))

    v0 = flatten_params(template)
    zero = jnp.zeros((), jnp.int32)
    carry0 = _Carry(
        x=v0,
        phase=zero,
        trusted=jnp.asarray(True),
        th0=v0,
        ll0=jnp.asarray(-jnp.inf, dtype),
        th1=v0,
        th2=v0,
        path=jnp.full((max_iters + 1,), jnp.nan, dtype),
        it=jnp.asarray(-1, jnp.int32),  # the start is "accepted" as iteration 0
        n_em=zero,
        status=jnp.asarray(RUNNING, jnp.int32),
        n_rb=zero,
        ll_dec=zero,
        alpha_max=jnp.asarray(4.0, dtype),
    )

    def body(c: _Carry) -> _Carry:
        p = to_p(c.x)
        stats = e_step(p, data, prior)
        ll = stats.loglik
        ms = m_step(
            p, data, stats, free_tree, num_steps=m_steps, weights=w_t, ecme=ecme, prior=prior
        )
        x_next = flatten_params(to_unconstrained(ms.params))
        n_rb = c.n_rb + ms.rolled_back.astype(jnp.int32)
        n_em = c.n_em + 1
        finite = jnp.isfinite(ll)

        # phase 0: x is a candidate for the next base point
        accept = (c.phase == 0) & (c.trusted | (finite & (ll >= c.ll0)))
        it = c.it + accept.astype(jnp.int32)
        rel = (ll - c.ll0) / jnp.maximum(jnp.abs(ll), 1.0)
        ll_dec = c.ll_dec + (accept & (c.it >= 0) & (rel < -1e-9)).astype(jnp.int32)
        path = jnp.where(accept, c.path.at[jnp.maximum(it, 0)].set(ll), c.path)
        done = jnp.select(
            [accept & ~finite, accept & (c.it >= 0) & (jnp.abs(rel) <= tol), it >= max_iters],
            [NONFINITE, CONVERGED, MAX_ITERS],
            RUNNING,
        )
        if accelerate:
            # SQUAREM bookkeeping; on a rejected candidate, fall back to θ₂ (a plain EM iterate)
            ph0, ph1, ph2 = c.phase == 0, c.phase == 1, c.phase == 2
            # in phase 1, x = θ₁ and x_next = θ₂: extrapolate from (θ₀, θ₁, θ₂)
            r = c.x - c.th0
            dv = x_next - 2.0 * c.x + c.th0
            nr, nd = jnp.linalg.norm(r), jnp.linalg.norm(dv)
            ratio = jnp.where(nd > 0, nr / jnp.where(nd > 0, nd, 1.0), 1.0)
            alpha = -jnp.clip(ratio, 1.0, c.alpha_max)
            x_ext = c.th0 - 2.0 * alpha * r + alpha * alpha * dv
            rejected = ph0 & ~accept
            new_x = jnp.select(
                [ph0 & accept, rejected, ph1, ph2 & finite, ph2 & ~finite],
                [x_next, c.th2, x_ext, x_next, c.th2],
            )
            new_phase = jnp.select(
                [ph0 & accept, rejected, ph1, ph2],
                [1, 0, 2, 0],
            ).astype(jnp.int32)
            trusted = rejected | (ph2 & ~finite)
            th0 = jnp.where(ph0 & accept, c.x, c.th0)
            ll0 = jnp.where(ph0 & accept, ll, c.ll0)
            th1 = jnp.where(ph0 & accept, x_next, c.th1)
            th2 = jnp.where(ph1, x_next, c.th2)
            # the step bound (as in SQUAREM): widen it when the extrapolation used it, shrink
            # it after a rejected or non-finite extrapolation
            failed = rejected | (ph2 & ~finite)
            alpha_max = jnp.where(
                failed,
                jnp.maximum(1.0, c.alpha_max / 4.0),
                jnp.where(ph1 & (-alpha >= c.alpha_max), 4.0 * c.alpha_max, c.alpha_max),
            )
            status = jnp.where(ph0, done, RUNNING)
        else:
            new_x, new_phase, trusted = x_next, c.phase, jnp.asarray(True)
            th0, ll0, th1, th2, alpha_max = c.x, ll, c.th1, c.th2, c.alpha_max
            status = done
        status = jnp.where(n_em >= 4 * max_iters + 4, MAX_ITERS, status)
        return _Carry(
            new_x, new_phase, trusted, th0, ll0, th1, th2, path, it, n_em,
            status.astype(jnp.int32), n_rb, ll_dec, alpha_max,
        )  # fmt: skip

    c = lax.while_loop(lambda c: c.status == RUNNING, body, carry0)
    # the result is the last accepted base point θ₀ (its ℓ is ll0)
    params = _keep_fixed(to_p(c.th0), init, free_tree)
    edge = (c.status == CONVERGED) & jnp.any(bound_vector(params, free_flat))
    status = jnp.where(edge, BOUNDARY, c.status).astype(jnp.int32)
    return EMResult(
        params=params,
        loglik=c.ll0,
        loglik_path=c.path,
        num_iters=jnp.maximum(c.it, 0),
        num_em_steps=c.n_em,
        status=status,
        converged=status == CONVERGED,
        rollbacks=c.n_rb,
        ll_decreases=c.ll_dec,
    )
