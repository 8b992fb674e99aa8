"""The two ways through the windows: cold (every window from data-derived starts, a budgeted
pass, then the stragglers) and warm (each commodity's windows in order, from the last optimum).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from ssjax.core.params import flatten_params
from ssjax.fit.optimum import start_design
from ssjax.rolling.batches import (
    _batched_post,
    _best_per_window,
    _budget_program,
    _escape,
    _fit_program,
    _fits,
    _idle,
    _run_post,
)
from ssjax.rolling.chunks import _cold_shapes, _Progress
from ssjax.rolling.config import _Run
from ssjax.rolling.devices import _AXIS, _bucket, _host, _put
from ssjax.rolling.kernels import (
    _fit_arrays,
    _offsets,
    _program,
    _unflat_params,
    _with_limit,
    _zero_offsets,
)


def _run_cold(run: _Run) -> tuple[dict, dict, dict]:
    """Every window from ``n_starts`` data-derived starts, in chunks of ``run.cap`` windows:
    a pass with ``budget`` steps, the stragglers again from their start with the full budget,
    the best start per window, escapes from degenerate end points, post-fit numbers."""
    c, stack, template, ends, valid = run.config, run.stack, run.template, run.ends, run.valid
    C, W = valid.shape
    unit = run.unit
    K = c.n_starts
    design = start_design(K, c.seed)
    B = run.cap  # windows per chunk (B * K lanes)
    cs_all = np.repeat(np.arange(C), W).astype(np.int32)
    es_all = np.tile(ends, C).astype(np.int32)
    valid_all = valid.reshape(-1)
    N = C * W
    n_chunks = -(-N // B)
    store = run.store(n_chunks)
    full = _fit_program(run)
    first = _budget_program(run, full)  # (the first pass: budgeted)
    dtype = run.dtype
    dummy = jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (B * K,) + a.shape), template)
    label = f"recalibrate {c.fit_method} cold"
    bar = _Progress(n_chunks, int(valid_all.sum()), run.progress, label)
    parts_fit, parts_post = [], []
    computed = second_total = escaped = 0
    for k in range(n_chunks):
        wins = np.arange(k * B, min((k + 1) * B, N))
        n = wins.size
        if store is not None and store.has("chunk", k):
            part = store.read("chunk", k, _cold_shapes(template, stack))
            bar.update(int(valid_all[wins].sum()), computed=False)
        else:
            # a short chunk is padded (repeating its last lane) to a power of two of whole
            # groups, not to the full chunk (few compiled shapes; the padding lanes idle)
            L = _bucket(n * K, B * K, unit)
            lane_w = np.repeat(wins, K)  # K starts of each window, side by side
            lane_s = np.tile(np.arange(K), n)
            pad = np.full(L - n * K, n * K - 1)
            lane_w = np.concatenate([lane_w, lane_w[pad]])
            lane_s = np.concatenate([lane_s, lane_s[pad]])
            cs, es = cs_all[lane_w], es_all[lane_w]
            off = _offsets(design, lane_s, dtype)
            use = np.zeros(L, bool)
            d1 = jax.tree.map(lambda a: a[:L], dummy)
            # (the padding lanes stop after evaluating their start: step limit 0)
            off1 = _idle(_with_limit(off, run.step_budget), n * K)
            args = _put((cs, es, d1, use, off1), run.mesh, P(_AXIS))
            r = _fit_arrays(first(run.stack_dev, *args))
            r = {name: v[: n * K] for name, v in r.items()}
            real = valid_all[lane_w[: n * K]]
            todo = np.flatnonzero(~r["stopped"] & real)
            second_total += todo.size
            if todo.size:
                # the stragglers start over from their start with the full budget: the same
                # path as a standalone fit from there (continuing from the first pass's end
                # point would restart L-BFGS's memory and preconditioner and can stop
                # elsewhere on a flat likelihood)
                nb = _bucket(todo.size, B * K, unit)
                sub = np.concatenate([todo, np.full(nb - todo.size, todo[0])])
                d2 = jax.tree.map(lambda a: a[:nb], dummy)
                o2 = _idle(tuple(np.asarray(x)[sub] for x in off), todo.size)
                args = _put((cs[sub], es[sub], d2, np.zeros(nb, bool), o2), run.mesh, P(_AXIS))
                r2 = _fit_arrays(full(run.stack_dev, *args))
                for name in r:
                    r[name][todo] = r2[name][: todo.size]
            best = _best_per_window(r, K)
            r = {name: np.array(v[best]) for name, v in r.items()}
            cw, ew = cs_all[wins], es_all[wins]
            real_w = np.flatnonzero(valid_all[wins])
            sub_r = {name: v[real_w] for name, v in r.items()}
            escaped += _escape(run, sub_r, full, B, cw[real_w], ew[real_w])[0]
            for name in r:
                r[name][real_w] = sub_r[name]
            nw = _bucket(n, B, unit)
            pw = np.concatenate([np.arange(n), np.full(nw - n, n - 1)])
            post = _run_post(run, cw[pw], ew[pw], r["params"][pw])
            part = {f"fit/{k2}": v[:n] for k2, v in r.items()}
            part.update({f"post/{k2}": np.asarray(v)[:n] for k2, v in post.items()})
            if store is not None:
                store.write("chunk", k, part)
            computed += 1
            bar.update(int(valid_all[wins].sum()), computed=True)
        parts_fit.append({k2[4:]: v for k2, v in part.items() if k2.startswith("fit/")})
        parts_post.append({k2[5:]: v for k2, v in part.items() if k2.startswith("post/")})
    flat = {k2: np.concatenate([p[k2] for p in parts_fit]) for k2 in parts_fit[0]}
    flat["params"] = _unflat_params(flat["params"], template)
    post = {k2: np.concatenate([p[k2] for p in parts_post]) for k2 in parts_post[0]}
    info = {
        "chunks": n_chunks,
        "chunks_computed": computed,
        "second_pass_windows": second_total,
        "escaped": escaped,
    }
    return flat, post, info


def _run_warm(run: _Run) -> tuple[dict, dict, dict]:
    """Each commodity's windows in order (``lax.scan``), window w from window w−1's optimum
    moved off the boundary, in chunks of ``chunk_size`` window ends carrying the last optimum;
    escapes from degenerate end points, post-fit numbers."""
    c, stack, template, ends, valid = run.config, run.stack, run.template, run.ends, run.valid
    mesh, n_dev, width = run.mesh, run.n_dev, run.width
    C, W = valid.shape
    Bw = c.chunk_size
    width_c = min(width, C)  # commodities per vmapped group
    Cp = -(-C // (width_c * n_dev)) * (width_c * n_dev)  # whole groups on every device
    cs = np.concatenate([np.arange(C), np.zeros(Cp - C, int)]).astype(np.int32)
    n_chunks = -(-W // Bw)
    store = run.store(n_chunks)
    prog = _program("warm", mesh, max_steps=c.steps, budget=run.warm_budget,
                    **run.fit_kw(width_c))  # fmt: skip
    # the stragglers' refits and the escapes from degenerate end points
    full = _fit_program(run)
    unit = run.unit
    n = flatten_params(template).shape[0]
    carry = np.broadcast_to(np.asarray(flatten_params(template)), (Cp, n)).copy()
    have = np.zeros(Cp, bool)
    bar = _Progress(n_chunks, int(valid.sum()), run.progress, f"recalibrate {c.fit_method} warm")
    fit_parts, post_parts = [], []
    computed = escaped = escape_skipped = stragglers = 0
    shapes = _cold_shapes(template, stack)
    for k in range(n_chunks):
        w_idx = np.arange(k * Bw, min((k + 1) * Bw, W))
        nw = w_idx.size
        if store is not None and store.has("chunk", k) and store.has("carry", k):
            part = store.read("chunk", k, shapes)
            cr = store.read("carry", k, {"params": ((n,), np.float64), "have": ((), np.bool_)})
            carry, have = cr["params"], cr["have"]
            bar.update(int(valid[:, w_idx].sum()), computed=False)
        else:
            e_chunk = ends[np.concatenate([w_idx, np.full(Bw - nw, w_idx[-1])])]
            p0 = _unflat_params(carry.astype(stack.log_f.dtype), template)
            (res, warm), p_last, h_last = prog(
                run.stack_dev,
                _put(cs, mesh, P(_AXIS)),
                _put(e_chunk.astype(np.int32), mesh, P()),
                *_put((p0, have), mesh, P(_AXIS)),
            )
            # the padded ends repeat the chunk's last window: their fits equal it, so the
            # carry after them is the carry after the last real window
            res = jax.tree.map(lambda a: a[:C, :nw].reshape((C * nw,) + a.shape[2:]), res)
            warm = np.asarray(_host(warm))[:C, :nw].reshape(-1)
            r = _fit_arrays(res)
            carry = np.array(jax.vmap(flatten_params)(_host(p_last)), np.float64)
            have = np.array(_host(h_last))
            # lanes in commodity-major order within the chunk
            lane_c = np.repeat(np.arange(C), nw).astype(np.int32)
            lane_e = np.tile(ends[w_idx], C).astype(np.int32)
            lane_w = np.tile(w_idx, C)
            live = np.flatnonzero(valid[:, w_idx].reshape(-1))
            sub_r = {name: v[live] for name, v in r.items()}
            # a warm fit that did not stop within the budget is refitted, with the other
            # stragglers of the chunk, from its end point and its data-derived start
            n_str = _stragglers(run, sub_r, full, warm[live], lane_c[live], lane_e[live])
            # a degenerate end point (a factor gone, |ρ| = 1) is refitted from inside
            n_esc, n_skip = _escape(run, sub_r, full, -(-Bw // unit) * unit, lane_c[live],
                                    lane_e[live], chain=lane_c[live], pos=lane_w[live])  # fmt: skip
            if n_esc or n_str:
                # where a refit wins in a commodity's last window, the next chunk starts there
                for name in r:
                    r[name][live] = sub_r[name]
                last = np.arange(C) * nw + (nw - 1)
                won = r["stopped"][last] & np.isfinite(r["loglik"][last])
                carry[:C][won] = r["params"][last][won]
                have[:C] |= won
            escaped += n_esc
            escape_skipped += n_skip
            stragglers += n_str
            # (in calls of the refits' lane counts: the refinement's post-fits reuse them)
            post = _batched_post(run, lane_c, lane_e, r["params"])
            part = {f"fit/{k2}": v for k2, v in r.items()}
            part.update({f"post/{k2}": np.asarray(v)[: lane_c.size] for k2, v in post.items()})
            if store is not None:
                store.write("chunk", k, part)
                store.write("carry", k, {"params": carry, "have": have})
            computed += 1
            bar.update(int(valid[:, w_idx].sum()), computed=True)
        fit_parts.append((w_idx, {k2[4:]: v for k2, v in part.items() if k2.startswith("fit/")}))
        post_parts.append({k2[5:]: v for k2, v in part.items() if k2.startswith("post/")})

    # chunk parts are commodity-major within their window range: reassemble [C, W, ...]
    def assemble(parts_list):
        keys = parts_list[0][1].keys()
        out = {}
        for key in keys:
            blocks = [p[key].reshape((C, len(w)) + p[key].shape[1:]) for w, p in parts_list]
            out[key] = np.concatenate(blocks, axis=1).reshape((C * W,) + blocks[0].shape[2:])
        return out

    flat = assemble(fit_parts)
    post = assemble([(w, p) for (w, _), p in zip(fit_parts, post_parts, strict=True)])
    flat["params"] = _unflat_params(flat["params"], template)
    info = {"chunks": n_chunks, "chunks_computed": computed,
            "second_pass_windows": stragglers, "escaped": escaped,
            "escapes_not_tried": escape_skipped}  # fmt: skip
    return flat, post, info


def _stragglers(run: _Run, r: dict, full, warm: np.ndarray, cs, es) -> int:
    """Refit the warm fits that ran out of the warm budget (started from an earlier optimum,
    did not stop) with ``max_steps``, in one compacted batch, from their end points and from
    their windows' data-derived starts (the path of a standalone ``KalmanEngine(n_starts=1)``
    fit). The better refit (one that stopped first) replaces the warm end point when it
    stopped or ends higher. Changes ``r`` in place; returns the number of windows refitted."""
    if run.warm_budget is None:
        return 0
    todo = np.flatnonzero(warm & ~np.asarray(r["stopped"], bool))
    if todo.size == 0:
        return 0
    template, dtype = run.template, run.dtype
    # two lanes per straggler: on from its warm end point, and from the data-derived start
    lanes = np.repeat(todo, 2)
    use = np.tile([True, False], todo.size)
    inits = _unflat_params(np.asarray(r["params"])[lanes].astype(dtype), template)
    off = _zero_offsets(lanes.size, dtype)
    res = _fits(run, full, run.cap, cs[lanes], es[lanes], inits, (use, off))
    pick = _best_per_window(res, 2)
    ll_old = np.where(np.isfinite(r["loglik"][todo]), r["loglik"][todo], -np.inf)
    ll_new = np.asarray(res["loglik"], float)[pick]
    take = np.isfinite(ll_new) & (res["stopped"][pick] | (ll_new > ll_old))
    for k in r:
        r[k][todo[take]] = res[k][pick[take]]
    return int(todo.size)
