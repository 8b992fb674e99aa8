"""After the fits: warm mode's seeds (``explore``) and the refinement from neighbouring windows'
optima (the likelihood of a window is often multi-modal).
"""

from __future__ import annotations

import jax
import numpy as np

from ssjax.core.params import Params, flatten_params
from ssjax.fit.optimum import bound_vector, start_design
from ssjax.rolling.batches import (
    REFINE_ACCEPT,
    _batched,
    _batched_post,
    _budget_program,
    _fit_program,
    _fits,
)
from ssjax.rolling.chunks import _cold_shapes
from ssjax.rolling.config import _Run
from ssjax.rolling.kernels import (
    _flat_fit,
    _offsets,
    _program,
    _unflat_params,
    _zero_offsets,
)

__all__ = ["REFINE_GATE"]
#: a neighbour's optimum is refitted from when it beats a window's own by more than this
REFINE_GATE = 1e-3


def _refine(run: _Run, flat: dict, post: dict, from_data: np.ndarray):
    """Rounds of refits from the neighbouring windows' optima (see ``recalibrate(refine=)``).

    Each round is a pure function of the results after the previous one, and its outcome (the
    lanes it changed, their fits and post-fit numbers) is written to ``refine-#####`` in
    ``out_dir``: a resumed run replays the finished rounds and goes on from there.
    """
    c, template, ends, valid = run.config, run.template, run.ends, run.valid
    C, W = valid.shape
    cap, dtype = run.cap, run.dtype
    fit = _fit_program(run)
    ll_prog = _program("loglik", run.mesh, window=c.window, width=run.width)
    store = run.store(-1)
    vec = np.array(jax.vmap(flatten_params)(flat["params"]), np.float64)
    fitd = {k: np.array(flat[k]) for k in ("loglik", "stopped", "num_steps", "status")}
    post = {k: np.array(v) for k, v in post.items()}
    refined = np.zeros(C * W, bool)
    lane_c = np.repeat(np.arange(C), W).astype(np.int32)
    lane_w = np.tile(np.arange(W), C)
    lane_e = ends[lane_w].astype(np.int32)
    ok = valid.reshape(-1) & np.isfinite(fitd["loglik"])
    offsets = (-1, 1) if c.refine == "neighbours" else (-1,)
    shapes = {"lane": ((), np.int64), **_cold_shapes(template, run.stack)}
    rounds = refits = changed_total = 0
    done = False
    tried: set[tuple[int, int]] = set()  # (window, noise s.d. pattern) refitted from
    moved = np.ones(C * W, bool)  # the windows the last round changed
    for r in range(c.max_refine_rounds):
        if store is not None and store.has("refine", r):
            diff = store.read("refine", r, shapes)
        else:
            if r == 0:
                # once again from their own end points with every boundary s.d. raised: the
                # fits from data-derived starts (L-BFGS from there can stop on the flat
                # boundary short of the optimum). A warm fit that keeps a tenor pinned at ~0
                # where the window's optimum prices another tenor exactly is left to the
                # seeds and the neighbours' rounds (restarting every pinned fit here moved no
                # window of bench_optimum's 364 by more than 1e-4, see docs/design.md)
                tgt = np.flatnonzero(ok & from_data)
                src = tgt
            else:  # gate: the window's log-likelihood at its neighbours' optima
                tgt_l, src_l = [], []
                pins = _pin_keys(vec, template)
                for off in offsets:
                    nb = lane_w + off
                    pair = ok & (nb >= 0) & (nb < W)
                    src_i = np.where(pair, lane_c * W + np.clip(nb, 0, W - 1), 0)
                    pair &= ok[src_i]
                    if r > 1:
                        # a pair neither of whose windows changed in the last round has been
                        # gated (and refitted where the gate opened) with the same numbers
                        pair &= moved | moved[src_i]
                    t, s_ = np.flatnonzero(pair), src_i[pair]
                    if t.size:
                        p_nb = _unflat_params(vec[s_].astype(dtype), template)
                        parts = _batched(run, ll_prog, cap, lane_c[t], lane_e[t], p_nb)
                        ll_nb = np.concatenate([np.atleast_1d(p) for p in parts])
                        gate = np.isfinite(ll_nb) & (ll_nb > fitd["loglik"][t] + REFINE_GATE)
                        # a neighbour that prices other tenors exactly (other noise s.d.s at
                        # zero) is a different mode: its optimum scored here can be lower
                        # although the mode is higher, so the window is refitted from it once
                        # per mode whatever the gate says
                        for i in np.flatnonzero(~gate & (pins[s_] != pins[t])):
                            key = (int(t[i]), int(pins[s_[i]]))
                            if key not in tried:
                                tried.add(key)
                                gate[i] = True
                        tgt_l.append(t[gate])
                        src_l.append(s_[gate])
                tgt = np.concatenate(tgt_l) if tgt_l else np.zeros(0, int)
                src = np.concatenate(src_l) if src_l else np.zeros(0, int)
            # the first round restarts each fit from its own end point with every boundary
            # s.d. raised (L-BFGS from a data-derived start can stop on the flat boundary
            # short of the optimum); later rounds start from a neighbour's optimum
            diff = _refit_diff(run, fit, tgt, vec[src], fitd["loglik"][tgt], lane_c, lane_e,
                               shapes, revert=r > 0)  # fmt: skip
            refits += tgt.size
            if store is not None:
                store.write("refine", r, diff)
        rounds += 1
        lanes = _apply_diff(diff, vec, fitd, post)
        moved = np.zeros(C * W, bool)
        moved[lanes] = True
        if lanes.size:
            refined[lanes] = True
            changed_total += lanes.size
        elif r > 0:  # a round of neighbours that changed nothing: done
            done = True
            break
    flat = dict(fitd, params=_unflat_params(vec, template))
    info = {"refine_rounds": rounds, "refine_refits": refits, "refine_changed": changed_total,
            "refine_complete": done}  # fmt: skip
    return flat, post, refined, info


def _explore(run: _Run, sel: np.ndarray, flat: dict, post: dict):
    """Warm mode's seeds (``recalibrate(explore=)``): probe windows ``sel`` of every
    commodity from ``n_starts`` data-derived starts each, with ``probe_steps`` L-BFGS steps
    and nothing else (no second pass, no standard errors); where a window's best
    probe ends higher than its warm fit, refit the window from the probe's end point with the
    full budget and keep the refit if it stops at an optimum above the warm fit.

    A probe only has to show that a better mode exists, not to converge to it: the full
    refits run for the few windows that have one. Returns the updated ``flat`` and ``post``,
    the lanes replaced and the info entries. With ``out_dir`` the outcome is written (as
    ``explore-00000``) and a resumed run reads it back.
    """
    c, template, ends, valid = run.config, run.template, run.ends, run.valid
    C, W = valid.shape
    cap, dtype = run.cap, run.dtype
    K = c.n_starts
    shapes = {"lane": ((), np.int64), **_cold_shapes(template, run.stack)}
    store = run.store(-1)
    lane_c = np.repeat(np.arange(C), W).astype(np.int32)
    lane_e = np.tile(ends, C).astype(np.int32)
    seeds = (np.arange(C)[:, None] * W + sel[None, :]).reshape(-1)
    seeds = seeds[valid.reshape(-1)[seeds]]
    computed = 0
    n_probed = n_refit = 0
    if store is not None and store.has("explore", 0):
        diff = store.read("explore", 0, shapes)
    else:
        computed = 1
        fit = _fit_program(run)
        probe = _budget_program(run, fit)
        lanes = np.repeat(seeds, K)
        starts = np.tile(np.arange(K), seeds.size)
        n_probed = lanes.size
        tgt, src_vec = np.zeros(0, np.int64), None
        cur = np.nan_to_num(np.asarray(flat["loglik"], float)[seeds], nan=-np.inf)
        if lanes.size:
            dummy = jax.tree.map(
                lambda a: np.broadcast_to(np.asarray(a), (lanes.size,) + a.shape), template
            )
            off = _offsets(start_design(K, c.seed), starts, dtype, run.probe_budget)
            extra = (np.zeros(lanes.size, bool), off)
            # padded to whole groups only: the probes are one call per run whose size
            # depends on the run's layout (its padding lanes idle: step limit 0)
            parts = _batched(run, probe, cap * K, lane_c[lanes], lane_e[lanes], dummy,
                             extra=extra, pow2=False, idle_pad=True)  # fmt: skip
            parts = [_flat_fit(p) for p in parts]
            res = {k: np.concatenate([p[k] for p in parts]) for k in ("params", "loglik")}
            ll = np.where(np.isfinite(res["loglik"]), res["loglik"], -np.inf).reshape(-1, K)
            pick = np.arange(seeds.size) * K + np.argmax(ll, axis=1)
            gate = res["loglik"][pick] > cur + REFINE_GATE
            tgt, src_vec, cur = seeds[gate], res["params"][pick[gate]], cur[gate]
        n_refit = tgt.size
        diff = _refit_diff(run, fit, tgt, src_vec, cur, lane_c, lane_e, shapes)
        if store is not None:
            store.write("explore", 0, diff)
    vec = np.array(jax.vmap(flatten_params)(flat["params"]), np.float64)
    fitd = {k: np.array(flat[k]) for k in ("loglik", "stopped", "num_steps", "status")}
    post = {k: np.array(v) for k, v in post.items()}
    better = np.zeros(C * W, bool)
    better[_apply_diff(diff, vec, fitd, post)] = True
    flat = dict(fitd, params=_unflat_params(vec, template))
    info = {
        "explore_windows": int(seeds.size),
        "explore_probes": int(n_probed),
        "explore_refits": int(n_refit),
        "explore_better": int(better.sum()),
        "explore_computed": computed,
    }
    return flat, post, better, info


def _refit_diff(
    run: _Run, prog, tgt, inits_flat, cur, lane_c, lane_e, shapes, revert: bool = True
) -> dict:
    """Refit lanes ``tgt`` (a window may appear more than once) from the flat parameters
    ``inits_flat`` with ``prog`` (``revert``: see :func:`ssjax.rolling.kernels._fit_window`),
    and keep, per window, the best refit that stopped at an
    optimum above ``cur`` (the window's current log-likelihood, aligned with ``tgt``) by more
    than ``REFINE_ACCEPT``. Returns the change as ``{"lane", "fit/…", "post/…"}`` (no rows
    when nothing improved), the form in which ``out_dir`` stores it."""
    diff = {k: np.zeros((0,) + tuple(trail), dt) for k, (trail, dt) in shapes.items()}
    if len(tgt) == 0:
        return diff
    dtype = np.dtype(run.dtype)
    inits = _unflat_params(np.asarray(inits_flat).astype(dtype), run.template)
    use = (np.ones(len(tgt), bool), _zero_offsets(len(tgt), dtype, revert=revert))
    res = _fits(run, prog, run.cap, lane_c[tgt], lane_e[tgt], inits, use)
    best: dict[int, int] = {}
    for i in range(len(tgt)):
        t = int(tgt[i])
        if not (res["stopped"][i] and np.isfinite(res["loglik"][i])):
            continue
        bar = res["loglik"][best[t]] if t in best else cur[i] + REFINE_ACCEPT
        if res["loglik"][i] > bar:
            best[t] = i
    if not best:
        return diff
    lanes = np.array(sorted(best), np.int64)
    pick = np.array([best[t] for t in lanes])
    pp = _batched_post(run, lane_c[lanes], lane_e[lanes], res["params"][pick])
    diff = {"lane": lanes}
    diff.update({f"fit/{k}": res[k][pick] for k in res})
    diff.update({f"post/{k}": v for k, v in pp.items()})
    return diff


def _apply_diff(diff: dict, vec: np.ndarray, fitd: dict, post: dict) -> np.ndarray:
    """Write a refit diff (see :func:`_refit_diff`) into the flat parameters ``vec`` and the
    host arrays ``fitd`` and ``post`` (in place); returns the lanes it changed."""
    lanes = np.asarray(diff["lane"], np.int64)
    if lanes.size:
        vec[lanes] = diff["fit/params"]
        for k in fitd:
            fitd[k][lanes] = diff[f"fit/{k}"]
        for k in post:
            post[k][lanes] = diff[f"post/{k}"]
    return lanes


def _pin_keys(vec: np.ndarray, template: Params) -> np.ndarray:
    """Per fit (flat params [N, n]): its pattern of noise s.d.s at their bound, as a bit mask."""
    b = np.asarray(jax.vmap(bound_vector)(_unflat_params(vec, template)))[:, 5:]
    return (b.astype(np.int64) << np.arange(b.shape[1])).sum(axis=1)
