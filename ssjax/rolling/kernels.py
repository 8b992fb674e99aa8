"""The one-window fit (pure, jittable) and its batched programs: vmapped lanes in groups of
``vector_width``, split over a device mesh with ``shard_map``; compiled once per shape.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from ssjax.core.filter import default_prior, kalman_filter, log_likelihood_data
from ssjax.core.market import MarketData, pad_dates, padded_length, window_data
from ssjax.core.model import forward_curve
from ssjax.core.params import Params, flatten_params, unflatten_params
from ssjax.fit.coordinates import on_ridge
from ssjax.fit.em import fit_em
from ssjax.fit.inference import parameter_uncertainty
from ssjax.fit.mle import MAX_STEPS, fit_mle, stopped
from ssjax.fit.mle import default_start as _default_start
from ssjax.fit.optimum import move_inside, offset_start, pull_back
from ssjax.rolling.devices import _AXIS, _host

__all__ = ["TRACE_COUNTS", "WindowFit", "escape_boundary"]
#: how many times each batched program was traced (a retrace is a recompilation)
TRACE_COUNTS: Counter = Counter()


# --------------------------------------------------------------------------------------
# The one-window case (pure, jittable) and its batched forms
# --------------------------------------------------------------------------------------
def _padded_window(stack: MarketData, c: Array, end: Array, window: int) -> MarketData:
    """The window padded with masked dates like :class:`ssjax.KalmanEngine` pads a fit.

    Padding does not change the likelihood, but it changes the floating-point path of the
    optimizer; on a flat or multi-modal likelihood the same padding keeps a batched fit on
    exactly the path of a standalone engine fit of that window.
    """
    return pad_dates(window_data(stack, c, end, window), padded_length(window))


class WindowFit(NamedTuple):
    """One window's fit, whatever the method (a pytree: it vmaps)."""

    params: Params
    loglik: Array
    stopped: Array  # the stopping rule fired: interior optimum or boundary (mle.stopped)
    num_steps: Array  # optimizer steps (MLE) or EM iterations
    status: Array  # the method's status code


def escape_boundary(
    p: Params,
    ref: Params,
    floor: float,
    data: MarketData,
    prior: Any = None,
    *,
    revert: bool | Array = True,
    cap_rho: bool | Array = True,
) -> Params:
    """A start for ``data`` from another optimum ``p``: :func:`pull_back` (``cap_rho`` is
    its), then each raised s.d. kept only where the log-likelihood of ``data`` grows with it
    there.

    A tenor whose s.d. the likelihood drives back to zero would cost L-BFGS many steps to
    walk back down the flat log-s.d. direction; it starts where it was. (One gradient
    evaluation; ``floor = 0`` returns ``p``; ``revert=False`` is :func:`pull_back` alone; a
    traced ``revert`` chooses per lane.)
    """
    pb = pull_back(p, ref, floor, cap_rho)
    if floor <= 0 or revert is False:
        return pb
    prior = default_prior(data) if prior is None else prior
    g = jax.grad(lambda q: log_likelihood_data(q, data, prior))(pb)

    def keep(a_pb, a, ga):
        return None if a is None else jnp.where(ga > 0, a_pb, a)

    out = pb._replace(
        sigma_x=keep(pb.sigma_x, p.sigma_x, g.sigma_x),
        meas_sd=keep(pb.meas_sd, p.meas_sd, g.meas_sd),
        spot_sd=keep(pb.spot_sd, p.spot_sd, g.spot_sd),
    )
    if revert is True:
        return out
    return jax.tree.map(lambda a, b: jnp.where(revert, a, b), out, pb)


def _fit_window(
    stack,
    c,
    end,
    init,
    use_init,
    offset,
    *,
    window,
    method,
    max_steps,
    gradient,
    filter_method,
    floor,
    pad=True,
) -> WindowFit:
    """Fit one window from ``init`` moved inside and off the boundary (``use_init``) or from
    its data-derived start moved by ``offset`` (one start of a design, a step limit and a
    choice: ``(log_scale [4], rho, keep_rho, limit, revert)``, see
    :func:`ssjax.fit.optimum.offset_start`; with ``use_init`` its ``rho`` is what a ρ at ±1
    in ``init`` becomes). ``limit`` caps the L-BFGS steps below ``max_steps`` per lane (a
    traced value; EM ignores it), so one compiled program serves budgeted and full fits;
    ``revert`` is :func:`escape_boundary`'s, per lane (False: every boundary s.d. of
    ``init`` raised, the refinement's restart of a fit from its own end point).

    A window whose ``init`` lies on the κ → 0, ρ → −1 ridge (an earlier optimum there) is
    fitted in the spot–slope coordinates, from either start (:mod:`ssjax.fit.coordinates`:
    the factors' coordinates walk that ridge for hundreds of steps)."""
    log_scale, rho, keep_rho, limit, revert = offset
    # (an escape's lanes, which set ρ, move a ridge point inside and run in the factors'
    # coordinates: they look for an interior optimum)
    ridge = on_ridge(init) & keep_rho
    raw = window_data(stack, c, end, window)
    # padded like a standalone KalmanEngine fit (the same floating-point path) unless asked not
    # to: a warm fit starts elsewhere anyway, and the padded dates cost ~20% of its time
    data = _padded_window(stack, c, end, window) if pad else raw
    ds = _default_start(raw)
    # a degenerate optimum (a factor gone, |ρ| = 1) is no start: its degenerate coordinates
    # are moved back inside first (the others are kept), unless it lies on the ridge, where
    # the spot–slope coordinates keep it finite (moved inside, σ_X ≈ σ_Y ≈ 10³ with ρ = 0, it
    # is far from everything)
    init = jax.tree.map(lambda a, b: jnp.where(ridge, a, b), init, move_inside(init, ds, rho))
    # (nor is ρ capped there: 1 + ρ ~ 1e-7 is where the ridge point is; at ρ = −0.995 the
    # spot's volatility would be ~100)
    init = escape_boundary(init, ds, floor, data, default_prior(raw), revert=revert, cap_rho=~ridge)
    seed = offset_start(ds, log_scale, rho, keep_rho)
    start = jax.tree.map(lambda a, b: jnp.where(use_init, a, b), init, seed)
    prior = default_prior(raw)
    # the prior and the free mask as KalmanEngine passes them
    free = jnp.ones_like(flatten_params(start))
    if method == "MLE":
        r = fit_mle(
            data,
            start,
            prior,
            free,
            max_steps=max_steps,
            gradient=gradient,
            filter_method=filter_method,
            step_limit=limit,
            spot_slope=ridge,
        )
        return WindowFit(r.params, r.loglik, stopped(r.status), r.num_steps, r.status)
    r = fit_em(data, start, prior, free, max_iters=max_steps)
    return WindowFit(r.params, r.loglik, stopped(r.status), r.num_iters, r.status)


#: a lane's step limit when it has none of its own (the program's ``max_steps`` caps it)
NO_LIMIT = np.iinfo(np.int32).max


def _NO_OFFSET(dtype):
    """The zero offset (the data-derived start itself; ρ at ±1 in a start moves to 0; no
    step limit; raised s.d.s reverted where the likelihood wants them back)."""
    return (jnp.zeros(4, dtype), jnp.zeros((), dtype), jnp.ones((), bool), jnp.int32(NO_LIMIT),
            jnp.ones((), bool))  # fmt: skip


def _zero_offsets(n: int, dtype, revert: bool = True) -> tuple:
    """``n`` lanes of the zero offset (host arrays; see :func:`_NO_OFFSET`), with
    ``revert`` for all."""
    return (np.zeros((n, 4), dtype), np.zeros(n, dtype), np.ones(n, bool),
            np.full(n, NO_LIMIT, np.int32), np.full(n, revert, bool))  # fmt: skip


def _offsets(design, idx: np.ndarray, dtype, limit: int = NO_LIMIT) -> tuple:
    """Host arrays of the design's offsets for lanes taking start ``idx`` (step ``limit``)."""
    return (
        np.asarray(design.log_scale[idx], dtype),
        np.asarray(design.rho[idx], dtype),
        np.asarray(design.keep_rho[idx], bool),
        np.full(np.size(idx), limit, np.int32),
        np.ones(np.size(idx), bool),
    )


def _with_limit(off: tuple, limit: int) -> tuple:
    """Host offsets ``off`` with every lane's step limit set to ``limit``."""
    return off[:3] + (np.full(np.shape(off[3]), limit, np.int32),) + off[4:]


def _lanes(fn, xs, width: int):
    """``fn`` over the leading axis of ``xs`` in vmapped groups of exactly ``width`` lanes.

    A fixed group width makes every lane's floating-point path independent of how many
    lanes a device holds (so of the chunk size and the device count); it also bounds the
    vmapped ``while_loop``'s wait for its slowest lane to the group.
    """
    return lax.map(lambda a: fn(*a), xs, batch_size=width)


def _cold_body(stack, cs, ends, inits, use_init, offsets, *, width, **fit_kw):
    TRACE_COUNTS["cold"] += 1
    fn = functools.partial(_fit_window, **fit_kw)
    return _lanes(lambda *a: fn(stack, *a), (cs, ends, inits, use_init, offsets), width)


def _warm_body(stack, cs, ends, carry, have, *, width, budget=None, **fit_kw):
    """``lax.scan`` over the window ends of each commodity, vmapped over commodities.

    With a ``budget``, a window that starts from an earlier optimum gets at most that many
    L-BFGS steps (a commodity's first fit, from its data-derived start, gets ``max_steps``):
    a lane that does not stop in time no longer holds the vmapped group for ``max_steps``
    steps; its end point is the next window's start, and it is refitted afterwards in a
    compacted batch. Also returns, per window, whether it started from an earlier optimum."""
    TRACE_COUNTS["warm"] += 1
    fn = functools.partial(_fit_window, pad=False, **fit_kw)

    def per_commodity(c, p0, h0):
        def body(state, e):
            p, h = state
            off = _NO_OFFSET(p.kappa.dtype)
            if budget is not None:
                off = off[:3] + (jnp.where(h, budget, NO_LIMIT).astype(jnp.int32),) + off[4:]
            r = fn(stack, c, e, p, h, off)
            ok = r.stopped & jnp.isfinite(r.loglik)
            if budget is not None:  # a fit cut short hands its end point on (on its way)
                ok = ok | (h & (r.status == MAX_STEPS) & jnp.isfinite(r.loglik))
            nxt = jax.tree.map(lambda a, b: jnp.where(ok, a, b), r.params, p)
            return (nxt, h | ok), (r, h)

        (p_last, h_last), res = lax.scan(body, (p0, h0), ends)
        return res, p_last, h_last

    return _lanes(per_commodity, (cs, carry, have), width)


def _post_body(stack, cs, ends, params, *, window, width, standard_errors):
    """Per window: standard errors, filtered state and forwards at the end, diagnostics."""
    TRACE_COUNTS["post"] += 1

    def one(c, e, p):
        data = window_data(stack, c, e, window)
        prior = default_prior(data)
        if standard_errors:  # exact Hessian and sandwich (the costliest part of this pass)
            unc = parameter_uncertainty(p, data, prior)
            std_err = jnp.sqrt(jnp.diagonal(unc.cov))
            std_err_robust = jnp.sqrt(jnp.diagonal(unc.cov_robust))
        else:
            std_err = std_err_robust = jnp.full_like(flatten_params(p), jnp.nan)
        filt = kalman_filter(p, data, prior)
        state = filt.filtered_means[-1]
        f_t = forward_curve(p, state, data.ttm[-1])
        v = jnp.where(data.mask, filt.innovation_vars, 1.0)
        u = jnp.where(data.mask, filt.innovations / jnp.sqrt(v), 0.0)  # standardized
        n_i = jnp.sum(data.mask, axis=0)
        n = jnp.maximum(jnp.sum(n_i), 1)
        mean_u = jnp.sum(u, axis=0) / jnp.maximum(n_i, 1)
        var_u = jnp.sum(u * u, axis=0) / jnp.maximum(n_i, 1) - mean_u**2
        nan = jnp.asarray(jnp.nan, u.dtype)
        return {
            "std_err": std_err,
            "std_err_robust": std_err_robust,
            "state_t": state,
            "F_model_t": f_t,
            # mean squared standardized innovation (1 if the model is well specified)
            "mean_nis": jnp.sum(u * u) / n,
            "innov_mean": jnp.where(n_i > 0, mean_u, nan),
            "innov_sd": jnp.where(n_i > 1, jnp.sqrt(jnp.maximum(var_u, 0.0)), nan),
            "nobs": n_i,
        }

    return _lanes(one, (cs, ends, params), width)


def _loglik_body(stack, cs, ends, params, *, window, width):
    """Each lane's window log-likelihood at ``params`` (the refinement's cheap gate)."""
    TRACE_COUNTS["loglik"] += 1

    def one(c, e, p):
        data = window_data(stack, c, e, window)
        return log_likelihood_data(p, data, default_prior(data))

    return _lanes(one, (cs, ends, params), width)


_BODIES = {"cold": _cold_body, "warm": _warm_body, "post": _post_body, "loglik": _loglik_body}
_PROGRAMS: dict[tuple, Callable] = {}


def _program(kind: str, mesh: Mesh, **static) -> Callable:
    """The jitted, mesh-sharded program for ``kind`` (built once per mesh and settings).

    The stacked panel is replicated on every device; the batch arguments (lanes in cold
    mode and for the post-fit, commodities in warm mode) are split along the mesh axis.
    """
    key = (kind, mesh, tuple(sorted(static.items())))
    if key not in _PROGRAMS:
        body = functools.partial(_BODIES[kind], **static)
        if kind == "warm":  # (stack, cs, ends, carry, have): ends replicated
            in_specs = (P(), P(_AXIS), P(), P(_AXIS), P(_AXIS))
        elif kind == "cold":  # (stack, cs, ends, inits, use_init, offsets)
            in_specs = (P(), P(_AXIS), P(_AXIS), P(_AXIS), P(_AXIS), P(_AXIS))
        else:  # post and loglik: (stack, cs, ends, params)
            in_specs = (P(), P(_AXIS), P(_AXIS), P(_AXIS))
        sharded = jax.shard_map(
            body, mesh=mesh, in_specs=in_specs, out_specs=P(_AXIS), check_vma=False
        )
        _PROGRAMS[key] = jax.jit(sharded)
    return _PROGRAMS[key]


# --------------------------------------------------------------------------------------
# The shell
# --------------------------------------------------------------------------------------
def _params_template(stack: MarketData, window: int) -> Params:
    """A start of the right structure (the leaves' shapes are what matters)."""
    return _default_start(window_data(stack, jnp.asarray(0), jnp.asarray(window - 1), window))


def _fit_arrays(r: WindowFit) -> dict[str, Any]:
    """A WindowFit of global arrays as flat host arrays (params flattened to [B, n])."""
    return _flat_fit(_host(r))


def _flat_fit(r: WindowFit) -> dict[str, Any]:
    """A WindowFit already on the host as flat arrays (params flattened to [B, n])."""
    out = {
        "params": jax.vmap(flatten_params)(r.params),
        "loglik": r.loglik,
        "stopped": r.stopped,
        "num_steps": r.num_steps,
        "status": r.status,
    }
    return {k: np.array(v) for k, v in out.items()}  # writable copies


def _unflat_params(flat: np.ndarray, template: Params) -> Params:
    return jax.vmap(lambda v: unflatten_params(v, template))(jnp.asarray(flat))
