"""Running sets of lanes through the compiled programs in padded groups: post-fit numbers, the
best start per window, and the escape from degenerate end points.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from ssjax.core.params import Params
from ssjax.fit.optimum import bound_vector
from ssjax.rolling.config import _Run
from ssjax.rolling.devices import _AXIS, _bucket, _host, _put
from ssjax.rolling.kernels import NO_LIMIT, _flat_fit, _program, _unflat_params, _with_limit

__all__ = ["REFINE_ACCEPT", "ESCAPE_RHOS", "ESCAPE_STRIDE"]
#: a refit replaces a window's result when it ends higher by more than this (nats)
REFINE_ACCEPT = 1e-4


def _post_program(run: _Run):
    c = run.config
    return _program(
        "post", run.mesh, window=c.window, width=run.width, standard_errors=c.standard_errors
    )


def _fit_program(run: _Run):
    """The window-fit program with the full step budget (``max_steps``): cold mode's lanes,
    the stragglers', escapes' and refinement's refits, the probes (as step limits)."""
    return _program("cold", run.mesh, max_steps=run.config.steps, **run.fit_kw(run.width))


def _budget_program(run: _Run, full):
    """The program of budgeted fits: ``full`` itself, the budget given as a per-lane step
    limit (one compiled program), except for EM fits, which ignore step limits and get a
    program compiled with ``max_steps = budget``."""
    if run.config.fit_method != "EM":
        return full
    return _program("cold", run.mesh, max_steps=run.config.budget, **run.fit_kw(run.width))


def _run_post(run: _Run, cs, es, params_flat) -> dict:
    """Post-fit numbers (standard errors, state, forwards, diagnostics) of lanes (cs, es)."""
    params = _unflat_params(params_flat.astype(run.dtype), run.template)
    out = _post_program(run)(run.stack_dev, *_put((cs, es, params), run.mesh, P(_AXIS)))
    return _host(out)


def _best_per_window(r: dict, K: int) -> np.ndarray:
    """Index (into the lanes of ``r``, K consecutive lanes per window) of each window's best
    fit: the highest log-likelihood among the lanes that stopped, else among the finite."""
    ll = np.asarray(r["loglik"], float).reshape(-1, K)
    ok = np.asarray(r["stopped"], bool).reshape(-1, K) & np.isfinite(ll)
    pool = np.where(ok.any(axis=1, keepdims=True), ok, np.isfinite(ll))
    score = np.where(pool, ll, -np.inf)
    return np.arange(ll.shape[0]) * K + np.argmax(score, axis=1)


def _degenerate_lanes(r: dict, template: Params) -> np.ndarray:
    """Host mask: fits that stopped at a degenerate point (κ, σ_X, σ_Y or ρ at a bound)."""
    p = _unflat_params(np.asarray(r["params"]), template)
    flags = np.asarray(jax.vmap(bound_vector)(p))[:, :4].any(axis=1)
    return flags & np.isfinite(np.asarray(r["loglik"], float))


#: ρ values a degenerate end point restarts from (its ρ at ±1 moved there, κ/σ moved inside)
ESCAPE_RHOS = (-0.5, 0.0, 0.5)


#: warm mode tries, along each commodity's run of consecutive windows ending at a degenerate
#: point, every ``ESCAPE_STRIDE``-th window and the run's last; the rest of a run only where one
#: of those escaped (each window of a run started from its predecessor's degenerate optimum)
ESCAPE_STRIDE = 8


def _escape(run: _Run, r: dict, full, cap: int, cs, es, chain=None, pos=None) -> tuple[int, int]:
    """Refit the degenerate fits in ``r`` (flat host arrays, changed in place) from their end
    points moved inside (:func:`_escape_lanes`). Returns (fits replaced, degenerate fits not
    tried).

    Without ``chain`` every degenerate fit is tried. With ``chain`` and ``pos`` (per lane:
    its commodity and window index; warm mode) the degenerate fits form runs of consecutive
    windows of a commodity, and only every :data:`ESCAPE_STRIDE`-th window of a run and its
    last are tried first; a run's other windows are tried where one of those escaped. A
    warm path on a likelihood whose supremum lies on the boundary (a ridge to |ρ| = 1) ends
    degenerate in window after window, and every escape from there walks back for its whole
    step budget (on the C = 16 batch of ``experiments/bench_scale.py``, the escapes of 110
    degenerate windows took 20 of the fits-only run's 35 seconds, and one escaped)."""
    deg = np.flatnonzero(_degenerate_lanes(r, run.template))
    if deg.size == 0:
        return 0, 0
    if chain is None:
        return int(_escape_lanes(run, r, full, cap, cs, es, deg).sum()), 0
    c, w = np.asarray(chain)[deg], np.asarray(pos)[deg]
    order = np.lexsort((w, c))
    deg, c, w = deg[order], c[order], w[order]
    new_run = np.ones(deg.size, bool)
    new_run[1:] = (c[1:] != c[:-1]) | (w[1:] != w[:-1] + 1)
    run_id = np.cumsum(new_run) - 1
    start = np.flatnonzero(new_run)
    k = np.arange(deg.size) - start[run_id]  # index within its run
    last = np.ones(deg.size, bool)
    last[:-1] = new_run[1:]
    first = (k % ESCAPE_STRIDE == 0) | last
    won = _escape_lanes(run, r, full, cap, cs, es, deg[first])
    later = ~first & np.isin(run_id, run_id[first][won])
    won2 = _escape_lanes(run, r, full, cap, cs, es, deg[later])
    n_skipped = int((~first & ~later).sum())
    return int(won.sum() + won2.sum()), n_skipped


def _escape_lanes(run: _Run, r: dict, full, cap: int, cs, es, deg: np.ndarray) -> np.ndarray:
    """Refit the degenerate fits ``deg`` (indices into ``r``) from their end points moved
    inside, ρ at each of :data:`ESCAPE_RHOS`; the best refit replaces a fit when higher
    (``r`` changed in place). Returns, per fit of ``deg``, whether it was replaced.

    The refits get ``budget`` steps; one still running then goes on (``max_steps``) only if
    it is already above the degenerate fit: on a likelihood whose supremum lies on the
    boundary (a ridge to |ρ| = 1, σ → ∞) every refit walks back towards it for ``max_steps``
    slow steps, and a whole vmapped group with it."""
    won = np.zeros(deg.size, bool)
    if deg.size == 0:
        return won
    template, dtype = run.template, run.dtype
    nr = len(ESCAPE_RHOS)
    lanes = np.repeat(deg, nr)
    rho = np.tile(np.asarray(ESCAPE_RHOS), deg.size).astype(dtype)
    budget = run.step_budget
    inits = _unflat_params(np.asarray(r["params"])[lanes].astype(dtype), template)
    off = (np.zeros((lanes.size, 4), dtype), rho, np.zeros(lanes.size, bool),
           np.full(lanes.size, budget, np.int32), np.ones(lanes.size, bool))  # fmt: skip
    use = np.ones(lanes.size, bool)
    res = _fits(run, full, cap, cs[lanes], es[lanes], inits, (use, off))
    ll0 = np.asarray(r["loglik"], float)[lanes]
    go = np.flatnonzero(~res["stopped"] & (res["loglik"] > ll0 + REFINE_ACCEPT))
    if go.size:  # on from where the budget left them
        inits = _unflat_params(res["params"][go].astype(dtype), template)
        off2 = _with_limit(tuple(np.asarray(a)[go] for a in off), NO_LIMIT)
        res2 = _fits(run, full, cap, cs[lanes[go]], es[lanes[go]], inits, (use[go], off2))
        for k in res:
            res[k][go] = res2[k]
    pick = _best_per_window(res, nr)
    for i, lane in enumerate(deg):
        j = pick[i]
        if res["stopped"][j] and res["loglik"][j] > r["loglik"][lane] + REFINE_ACCEPT:
            for k in r:
                r[k][lane] = res[k][j]
            won[i] = True
    return won


def _fits(run: _Run, prog, cap: int, cs, es, inits, extra) -> dict:
    """A window-fit program over lanes (cs, es) as flat host arrays (see :func:`_batched`)."""
    parts = [_flat_fit(p) for p in _batched(run, prog, cap, cs, es, inits, extra, idle_pad=True)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _batched(
    run: _Run,
    prog,
    cap: int,
    cs,
    es,
    payload,
    extra=(),
    pow2: bool = True,
    idle_pad: bool = False,
) -> list:
    """``prog`` over lanes (cs, es, payload) in calls of power-of-two sizes (whole groups;
    ``pow2=False``: the fewest whole groups, one compiled shape more per size met).

    ``idle_pad``: ``prog`` is a window-fit program and ``extra`` its ``(use_init, offsets)``;
    the lanes that pad a call get a step limit of 0, so they stop after evaluating their
    start instead of repeating a real lane's fit (a vmapped group of padding lanes costs
    one evaluation; the real lanes' paths do not change)."""  # fmt: skip
    outs = []
    n, unit = cs.size, run.unit
    for a in range(0, n, cap):
        b = min(a + cap, n)
        nb = _bucket(b - a, cap, unit) if pow2 else -(-(b - a) // unit) * unit
        idx = np.concatenate([np.arange(a, b), np.full(nb - (b - a), a)])
        # groups dealt to the devices in turn (neighbouring lanes, alike in cost, share out)
        deal = _dealt(nb, run.width, run.n_dev)
        idx = idx[deal]
        args = (cs[idx], es[idx], jax.tree.map(lambda x, i=idx: np.asarray(x)[i], payload))
        args = args + tuple(jax.tree.map(lambda x, i=idx: np.asarray(x)[i], e) for e in extra)
        if idle_pad:
            args = args[:4] + (_idle(args[4], deal < b - a),)
        out = _host(prog(run.stack_dev, *_put(args, run.mesh, P(_AXIS))))
        back = np.argsort(deal)[: b - a]
        outs.append(jax.tree.map(lambda x, k=back: np.asarray(x)[k], out))
    return outs


def _idle(off: tuple, real) -> tuple:
    """Offsets whose padding lanes get a step limit of 0: those from ``real`` on (an int) or
    where ``real`` (a mask) is False."""
    limit = np.array(off[3], np.int32)
    if np.ndim(real) == 0:
        real = np.arange(limit.size) < real
    limit[~np.asarray(real, bool)] = 0
    return off[:3] + (limit,) + off[4:]


def _dealt(n: int, width: int, n_dev: int) -> np.ndarray:
    """A permutation of ``n`` lanes (whole groups of ``width`` on each of ``n_dev`` devices)
    that deals the groups to the devices in turn: the mesh gives each device a contiguous
    block of lanes, so without it one device could get all of a batch's slow lanes (say the
    escapes of one commodity's windows) while the other idles."""
    if n_dev == 1:
        return np.arange(n)
    groups = np.arange(n // width).reshape(-1, n_dev).T.reshape(-1)  # device-major order
    return (groups[:, None] * width + np.arange(width)[None, :]).reshape(-1)


def _batched_post(run: _Run, cs, es, params_flat) -> dict:
    """:func:`_run_post` over any number of lanes, in calls of at most ``run.cap``."""
    params = _unflat_params(params_flat.astype(run.dtype), run.template)
    parts = _batched(run, _post_program(run), run.cap, cs, es, params)
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
