r"""Maximum likelihood: exact autodiff gradients, optax L-BFGS inside ``lax.while_loop``.

The optimizer works on the flat vector ``v`` of unconstrained parameters
(:func:`ssjax.core.params.to_unconstrained`), minimizing the negative log-likelihood per
observation. The whole loop is one jittable function, so fits can be ``vmap``-ped over
windows and commodities. Stopping rules (checked after every step):

* ``GTOL``: the gradient's max-norm (per observation, unconstrained) is below ``gtol``;
* ``FTOL``: the objective improved by less than ``ftol`` (relative) over the last
  ``patience`` steps (the usual stop when a measurement s.d. heads to zero: the likelihood
  is flat in log s.d. there);
* ``MAX_STEPS``: the step budget ran out (not converged);
* ``NONFINITE``: the objective or gradient became non-finite (not converged);
* ``BOUNDARY``: ``GTOL`` or ``FTOL`` fired but a free parameter ended at a bound of its
  domain (:func:`ssjax.fit.optimum.at_bounds`: a noise s.d. or a factor's scale → 0, |ρ| → 1);
  the point may be the maximum, but it is not an interior optimum, so not "converged".
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array, lax
from jax.typing import ArrayLike

from ssjax.core.filter import Prior, default_prior, log_likelihood_data
from ssjax.core.market import MarketData
from ssjax.core.parallel_filter import choose_method, log_likelihood_parallel
from ssjax.core.params import Params, flatten_params, unflatten_params
from ssjax.core.score import log_likelihood_fisher
from ssjax.fit.coordinates import unconstrained_maps
from ssjax.fit.inference import per_date_scores
from ssjax.fit.linesearch import scale_by_zoom_linesearch
from ssjax.fit.optimum import BOUNDARY, BOUNDARY_MESSAGE, FitStatus, bound_vector

__all__ = [
    "MLEResult",
    "fit_mle",
    "default_start",
    "status_message",
    "check_fit_options",
    "negative_loglik",
    "STATUS_MESSAGES",
    "GTOL",
    "FTOL",
    "MAX_STEPS",
    "NONFINITE",
    "BOUNDARY",
    "stopped",
]

RUNNING, GTOL, FTOL = FitStatus.RUNNING, FitStatus.GTOL, FitStatus.FTOL
MAX_STEPS, NONFINITE = FitStatus.MAX_STEPS, FitStatus.NONFINITE
STATUS_MESSAGES = {
    RUNNING: "running",
    GTOL: "converged: gradient norm below gtol",
    FTOL: "converged: relative objective change below ftol",
    MAX_STEPS: "not converged: maximum number of steps reached",
    NONFINITE: "not converged: objective or gradient became non-finite",
    BOUNDARY: BOUNDARY_MESSAGE,
}


class MLEResult(NamedTuple):
    """Outcome of :func:`fit_mle` (a pytree: it vmaps)."""

    params: Params  # physical parameters at the end point
    loglik: Array  # log-likelihood at the end point
    grad_norm: Array  # max-norm of the gradient of the per-observation objective
    num_steps: Array  # optimizer steps taken
    status: Array  # one of GTOL, FTOL, MAX_STEPS, NONFINITE, BOUNDARY
    converged: Array  # bool: an interior optimum (status GTOL or FTOL)


GRADIENTS = ("fisher", "autodiff")
FILTER_METHODS = ("sequential", "parallel", "auto")


def check_fit_options(gradient: str, filter_method: str) -> None:
    """Raise ``ValueError`` for an unknown or unsupported (gradient, filter) combination."""
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
    if filter_method not in FILTER_METHODS:
        raise ValueError(f"filter_method must be one of {FILTER_METHODS}, got {filter_method!r}")
    if gradient == "fisher" and filter_method == "parallel":
        raise ValueError(
            "gradient='fisher' runs the sequential filter and smoother; use it with "
            "filter_method='sequential' (or 'auto'), or gradient='autodiff' with 'parallel'"
        )


def negative_loglik(
    v: Array,
    template: Params,
    data: MarketData,
    prior: Prior,
    scale: Array,
    gradient: str = "autodiff",
    filter_method: str = "sequential",
    spot_slope: ArrayLike | None = None,
) -> Array:
    """−loglik / scale at the flat unconstrained vector ``v``.

    ``gradient`` picks how reverse mode differentiates it: ``"autodiff"`` through the
    filter, ``"fisher"`` by Fisher's identity (:mod:`ssjax.core.score`; same value, ~40% less
    time per value and gradient, fewer digits when a noise s.d. is tiny).
    ``filter_method``: ``"sequential"`` (the ``lax.scan`` filter), ``"parallel"`` (the
    parallel-in-time filter, :mod:`ssjax.core.parallel_filter`) or ``"auto"``
    (:func:`ssjax.core.parallel_filter.choose_method`, decided at trace time).
    ``spot_slope``: ``v`` is in the spot–slope coordinates (:mod:`ssjax.fit.coordinates`;
    a traced boolean is allowed).
    """
    check_fit_options(gradient, filter_method)
    p = unconstrained_maps(spot_slope)[1](unflatten_params(v, template))
    if filter_method == "auto":
        filter_method = choose_method(data.log_f.shape[-2])
    if filter_method == "parallel":
        return -log_likelihood_parallel(p, data, prior) / scale
    if gradient == "fisher":
        return -log_likelihood_fisher(p, data, prior) / scale
    return -log_likelihood_data(p, data, prior, unroll=1) / scale


def _bhhh_scale(
    v0: Array, template: Params, data: MarketData, prior: Prior, scale, from_u=None
) -> Array:
    """sqrt(diag(Σ_t s_t s_tᵀ) / n): the per-coordinate curvature scale at the start."""

    from_u = unconstrained_maps()[1] if from_u is None else from_u
    J = per_date_scores(v0, template, data, prior, transform=from_u)  # [T, n]
    d = jnp.sqrt(jnp.sum(J * J, axis=0) / scale)
    d = jnp.where(jnp.isfinite(d), d, 1.0)
    top = jnp.max(d)
    return jnp.where(top > 0, jnp.maximum(d, 1e-3 * top), 1.0)


class _Carry(NamedTuple):
    v: Array
    opt_state: optax.OptState
    value: Array
    grad: Array
    f_hist: Array  # last `patience` objective values
    step: Array
    status: Array
    boot: Array  # the first pass: it evaluates the start (no step)


@functools.partial(
    jax.jit,
    static_argnames=(
        "max_steps",
        "memory_size",
        "patience",
        "max_linesearch_steps",
        "precondition",
        "gradient",
        "filter_method",
    ),
)
def fit_mle(
    data: MarketData,
    init: Params,
    prior: Prior | None = None,
    free: Array | None = None,
    *,
    max_steps: int = 1000,
    gtol: float = 1e-6,
    ftol: float = 1e-11,
    patience: int = 5,
    memory_size: int = 10,
    max_linesearch_steps: int = 30,
    precondition: bool = True,
    gradient: str = "autodiff",
    filter_method: str = "sequential",
    step_limit: ArrayLike | None = None,
    spot_slope: ArrayLike | None = None,
) -> MLEResult:
    """Maximize the exact log-likelihood from ``init`` with optax L-BFGS (zoom line search).

    Args:
        data: the panel (:func:`ssjax.core.market.make_market_data`).
        init: starting parameters (physical); its structure (spot, risk premium, shared or
            per-tenor noise) is the model that is fitted.
        prior: state prior at the first date; default :func:`ssjax.core.filter.default_prior`.
        free: optional float mask over the flat parameter vector (1 = estimated, 0 = held at
            its ``init`` value).
        max_steps, gtol, ftol, patience: stopping rules (see the module docstring).
        memory_size, max_linesearch_steps: L-BFGS settings.
        precondition: rescale the unconstrained coordinates by the square root of the
            diagonal of the BHHH information (outer product of the per-date scores) at the
            start (what it saves: ``docs/design.md``).
        gradient: ``"autodiff"`` (default): reverse mode through the filter's scan.
            ``"fisher"``: L-BFGS first runs on the gradient by Fisher's identity (a filter
            plus an RTS smoother pass, :mod:`ssjax.core.score`; cheaper per evaluation)
            until a stopping rule fires, then continues on the autodiff gradient until one
            fires again, so the result meets the same tolerances. The Fisher gradient loses
            digits as a noise s.d. heads to zero, so the finishing phase matters there (when
            it pays and when not: ``docs/design.md``).
        filter_method: the filter inside the objective: ``"sequential"`` (default),
            ``"parallel"`` (parallel-in-time, for long histories on a GPU; gradient by
            autodiff) or ``"auto"`` (parallel on a GPU/TPU from
            ``ssjax.core.parallel_filter.PARALLEL_MIN_DATES`` dates on, sequential otherwise).
            The start's BHHH scaling always uses the sequential filter (one evaluation).
        step_limit: an optional per-fit cap on the steps below ``max_steps`` that may be a
            traced value (so a vmapped batch can give each lane its own budget, as warm
            rolling fits do); a fit stopped by it reports ``MAX_STEPS``.
        spot_slope: optimize in the spot–slope coordinates (:mod:`ssjax.fit.coordinates`:
            much faster where the likelihood rises along the κ → 0, ρ → −1 ridge) instead
            of the factors' own; may be a traced boolean (one choice per vmapped lane).

    Returns:
        :class:`MLEResult`. Pure and jittable: ``jax.vmap(fit_mle, in_axes=(0, 0))`` fits a
        batch of panels.
    """
    check_fit_options(gradient, filter_method)
    if filter_method == "auto":  # decided at trace time; the Fisher phase needs "sequential"
        filter_method = choose_method(data.log_f.shape[-2])
    prior = default_prior(data) if prior is None else prior
    to_u, from_u = unconstrained_maps(spot_slope)
    template = to_u(init)
    v0 = flatten_params(template)
    free = jnp.ones_like(v0) if free is None else jnp.asarray(free, v0.dtype)
    scale = jnp.maximum(data.nobs.astype(v0.dtype), 1.0)
    if precondition:
        d = _bhhh_scale(v0, template, data, prior, scale, from_u)
    else:
        d = jnp.ones_like(v0)

    def objective(how):
        def fun(w):
            # the optimizer sees w = d * (v - v0): unit curvature in every coordinate at the
            # start; fixed coordinates are pinned at their initial value (zero gradient)
            # (optax's line search may hand over a float64 trial point in a float32 fit)
            v = (v0 + free * w / d).astype(v0.dtype)
            return negative_loglik(v, template, data, prior, scale, how, filter_method, spot_slope)

        return fun

    solver = optax.lbfgs(
        memory_size=memory_size,
        # optax's zoom line search with one evaluation per iteration also under vmap
        linesearch=scale_by_zoom_linesearch(max_linesearch_steps, initial_guess_strategy="one"),
    )

    def run(fun, w0: Array, step0: Array, budget: int) -> _Carry:
        """L-BFGS on ``fun`` from ``w0`` until a stopping rule fires (steps counted on)."""
        # The loop's first pass only evaluates the value and gradient at w0: a zero step,
        # which the line search takes as its first trial and accepts (its state has no value
        # yet: see ssjax.fit.linesearch). So the objective's value-and-gradient is traced and
        # compiled once, inside the line search, rather than a second time before the loop:
        # the fit compiles in about a quarter less time. The line search stores the value and
        # gradient at each accepted point in the state, and every step reads them from there.
        # (optax's value_and_grad_from_state recomputes them under a lax.cond when the
        # stored value is not finite; under vmap that cond becomes a select and every step
        # paid a second value-and-gradient evaluation: vmapped fits took ~2x as long.)
        fresh = solver.init(w0)
        carry0 = _Carry(
            v=w0,
            opt_state=fresh,
            value=jnp.asarray(jnp.inf, v0.dtype),
            grad=jnp.zeros_like(w0),
            f_hist=jnp.full((patience,), jnp.inf, v0.dtype),
            step=step0,
            status=jnp.asarray(int(RUNNING)),
            boot=jnp.asarray(True),
        )

        def cond(c: _Carry):
            return c.status == RUNNING

        def body(c: _Carry) -> _Carry:
            # the value and gradient at c.v (the loop stops at a non-finite one); on the
            # first pass none yet, and a zero gradient gives a zero step
            value = optax.tree.get(c.opt_state, "value")
            grad = optax.tree.get(c.opt_state, "grad")
            updates, opt_state = solver.update(
                grad, c.opt_state, c.v, value=value, grad=grad, value_fn=fun
            )
            v = optax.apply_updates(c.v, updates)
            new_value = optax.tree.get(opt_state, "value")
            raw_grad = optax.tree.get(opt_state, "grad")
            new_grad = raw_grad * d  # gradient in v coordinates
            # after the first pass (a zero step: v is still w0) L-BFGS starts afresh from w0
            # with its value and gradient
            opt_state = jax.tree.map(
                lambda a, b: jnp.where(c.boot, a, b),
                optax.tree.set(fresh, value=new_value, grad=raw_grad),
                opt_state,
            )
            f_hist = jnp.concatenate([c.f_hist[1:], new_value[None]])
            step = jnp.where(c.boot, c.step, c.step + 1)
            gnorm = jnp.max(jnp.abs(new_grad))
            rel = (f_hist[0] - new_value) / jnp.maximum(jnp.abs(new_value), 1.0)
            finite = jnp.isfinite(new_value) & jnp.all(jnp.isfinite(new_grad))
            status = jnp.select(
                [
                    ~finite,
                    gnorm <= gtol,
                    ~c.boot & (step - step0 >= patience) & (rel <= ftol),
                    step >= budget,
                ],
                [NONFINITE, GTOL, FTOL, MAX_STEPS],
                RUNNING,
            )
            status = status.astype(c.status.dtype)
            boot = jnp.zeros_like(c.boot)
            return _Carry(v, opt_state, new_value, new_grad, f_hist, step, status, boot)

        return lax.while_loop(cond, body, carry0)

    w0 = jnp.zeros_like(v0)
    step0 = jnp.zeros((), jnp.int32)
    if step_limit is not None:
        max_steps = jnp.minimum(jnp.asarray(step_limit, jnp.int32), max_steps)
    if gradient == "fisher" and filter_method == "sequential":
        # the fast gradient takes the fit to the optimum's neighbourhood; plain autodiff
        # finishes it, so the stopping rules see the accurate gradient (the Fisher one loses
        # digits as a noise s.d. heads to zero: see ssjax.core.score)
        first = run(objective("fisher"), w0, step0, max_steps)
        c = run(objective("autodiff"), first.v, first.step, max_steps)
    else:
        c = run(objective("autodiff"), w0, step0, max_steps)
    params = from_u(unflatten_params(v0 + free * c.v / d, template))
    met = (c.status == GTOL) | (c.status == FTOL)
    status = jnp.where(met & jnp.any(bound_vector(params, free)), BOUNDARY, c.status)
    status = status.astype(c.status.dtype)
    return MLEResult(
        params=params,
        loglik=-c.value * scale,
        grad_norm=jnp.max(jnp.abs(c.grad)),
        num_steps=c.step,
        status=status,
        converged=(status == GTOL) | (status == FTOL),
    )


@jax.jit
def stopped(status: ArrayLike) -> Array:
    """True where a fit's stopping rule fired: an interior optimum (``converged``) or a
    ``BOUNDARY`` end point (MLE and EM status codes alike); False for a step budget run out
    or a non-finite objective."""
    s = jnp.asarray(status)
    return (s == GTOL) | (s == FTOL) | (s == BOUNDARY)


def status_message(status: int) -> str:
    """Human-readable text of a status code."""
    return STATUS_MESSAGES.get(int(status), f"unknown status {int(status)}")


def free_mask(init: Params, fixed: dict[str, bool] | None) -> np.ndarray | None:
    """Float mask over the flat parameter vector from a ``{name: True}`` dict of fixed fields."""
    if not fixed:
        return None
    unknown = set(fixed) - set(init._fields)
    if unknown:
        raise ValueError(f"fixed: unknown parameter names {sorted(unknown)}")
    parts = []
    for name, v in init._asdict().items():
        if v is None:
            if fixed.get(name):
                raise ValueError(f"fixed: parameter {name} is not part of this model")
            continue
        parts.append(np.full(np.size(v), 0.0 if fixed.get(name, False) else 1.0))
    return np.concatenate(parts)


@functools.partial(jax.jit, static_argnames=("risk_premium", "spot"))
def default_start(
    data: MarketData, *, risk_premium: bool = False, spot: bool | None = None
) -> Params:
    r"""Starting values derived from the data (jittable; no constants tuned to one market).

    * κ from the AR(1) coefficient of the short–long log spread (≈ X up to a loading):
      κ = −ln φ̂ / Δt, clipped to [0.05, 20] per year;
    * σ_X from the AR(1) residual variance of the spread, divided by the loading gap
      e^{−κΔ_short} − e^{−κΔ_long} and the exact one-step variance factor;
    * σ_Y from the variance of the long tenor's log changes per year, less its X part;
    * ρ from the correlation of spread shocks and long-tenor changes (clipped to ±0.9);
    * μ from the mean log change of the long tenor per year;
    * each measurement s.d. as a quarter of that tenor's s.d. of log changes, in [1e-3, 0.2].
    """
    dtype = data.log_f.dtype
    w = data.mask.astype(dtype)
    mean_ttm = jnp.sum(w * data.ttm, 0) / jnp.maximum(jnp.sum(w, 0), 1.0)
    s, l = jnp.argmin(mean_ttm), jnp.argmax(mean_ttm)
    ys, yl = data.log_f[:, s], data.log_f[:, l]
    both = data.mask[:, s] & data.mask[:, l]
    pair = (both[:-1] & both[1:]).astype(dtype)
    n_pair = jnp.maximum(jnp.sum(pair), 1.0)
    dt = data.dt
    mdt = jnp.sum(pair * dt) / n_pair

    def wmean(x):
        return jnp.sum(pair * x) / n_pair

    spread = ys - yl
    x0, x1 = spread[:-1], spread[1:]
    cx0, cx1 = x0 - wmean(x0), x1 - wmean(x1)
    var0 = wmean(cx0 * cx0)
    phi = jnp.where(var0 > 0, wmean(cx0 * cx1) / jnp.where(var0 > 0, var0, 1.0), 0.9)
    kappa = jnp.clip(-jnp.log(jnp.clip(phi, 1e-8, 1.0)) / mdt, 0.05, 20.0)
    eps_s = cx1 - phi * cx0
    var_eps = wmean(eps_s * eps_s)
    gap = jnp.abs(jnp.exp(-kappa * mean_ttm[s]) - jnp.exp(-kappa * mean_ttm[l]))
    gap = jnp.maximum(gap, 0.1)
    step_var = -jnp.expm1(-2.0 * kappa * mdt) / (2.0 * kappa)
    sigma_x = jnp.sqrt(var_eps / step_var) / gap
    dyl = yl[1:] - yl[:-1]
    mu = wmean(dyl / dt)
    var_l = wmean((dyl - wmean(dyl)) ** 2) / mdt
    bl = jnp.exp(-kappa * mean_ttm[l])
    sigma_y = jnp.sqrt(jnp.maximum(var_l - bl**2 * sigma_x**2, 0.25 * var_l))
    ceps = eps_s - wmean(eps_s)
    cdl = dyl - wmean(dyl)
    den = jnp.sqrt(wmean(ceps * ceps) * wmean(cdl * cdl))
    rho = jnp.clip(
        jnp.where(den > 0, wmean(ceps * cdl) / jnp.where(den > 0, den, 1.0), 0.0), -0.9, 0.9
    )
    # fall back to generic values where the data cannot say (one tenor, flat panel)
    ok = (s != l) & (var_eps > 0)
    sigma_x = jnp.where(ok & (sigma_x > 0), jnp.clip(sigma_x, 0.01, 5.0), 0.3)
    sigma_y = jnp.where(sigma_y > 0, jnp.clip(sigma_y, 0.01, 5.0), 0.2)
    kappa = jnp.where(ok, kappa, 1.0)
    rho = jnp.where(ok, rho, 0.0)

    dlog = data.log_f[1:] - data.log_f[:-1]
    pw = (data.mask[1:] & data.mask[:-1]).astype(dtype)
    npw = jnp.maximum(jnp.sum(pw, 0), 1.0)
    md = jnp.sum(pw * dlog, 0) / npw
    sd_d = jnp.sqrt(jnp.sum(pw * (dlog - md) ** 2, 0) / npw)
    meas_sd = jnp.clip(0.25 * sd_d, 1e-3, 0.2)
    meas_sd = jnp.where(jnp.sum(pw, 0) > 1, meas_sd, 0.01)

    use_spot = data.log_s is not None if spot is None else spot
    spot_sd = jnp.asarray(0.01, dtype) if use_spot else None
    lam = jnp.zeros((), dtype) if risk_premium else None
    mu_star = mu if risk_premium else None
    return Params(
        kappa=kappa.astype(dtype),
        sigma_x=sigma_x.astype(dtype),
        sigma_y=sigma_y.astype(dtype),
        rho=rho.astype(dtype),
        mu=mu.astype(dtype),
        meas_sd=meas_sd.astype(dtype),
        lambda_x=lam,
        mu_star=None if mu_star is None else mu_star.astype(dtype),
        spot_sd=spot_sd,
    )
