"""Where a window fit's time goes on a CPU, and whether a denser preconditioner cuts steps.

Two measurements behind the open target "the fastest configuration at the optimum is >= 100x a
statsmodels loop" (``experiments/results/bench_rolling.md``):

1. **Cost of one value and gradient per lane** of the vmapped filter (104 weekly dates, the
   bundled WTI panel, 5 tenors) for 1 to 1,024 lanes: the per-lane cost is lowest around 16
   lanes and grows again with more (memory traffic of the reverse pass), so a wider batch does
   not make each fit cheaper on this machine.
2. **L-BFGS steps with the diagonal BHHH scaling ``fit_mle`` uses against a full-matrix one**
   (the BHHH outer product at the start, as a correlation matrix with a ridge, Cholesky-
   whitened), one start per window, 104-week windows every 12 weeks of the WTI, natural-gas and
   Brent panels: steps and how many windows end below the best known optimum
   (``experiments/results/bench_optimum/windows.csv``).

Usage: ``python experiments/probe_fit_cost.py`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

import ssjax
from ssjax.analysis.runs import markdown_table
from ssjax.core.filter import default_prior, log_likelihood_data
from ssjax.core.params import flatten_params, from_unconstrained, to_unconstrained
from ssjax.fit.inference import per_date_scores
from ssjax.fit.linesearch import scale_by_zoom_linesearch
from ssjax.fit.mle import negative_loglik

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_optimum import load  # noqa: E402

HERE = Path(__file__).resolve().parent
RIDGES = ("diag", 1e-2, 1e-1, 1.0)


def lane_cost() -> pd.DataFrame:
    pan = ssjax.datasets.load_wti_ss2000()
    d = ssjax.make_market_data(pan.F_mkt[:104], pan.ttm[:104], dt=pan.dt[:103])
    v0, unravel = jax.flatten_util.ravel_pytree(ssjax.default_start(d))
    vg = jax.jit(jax.vmap(jax.value_and_grad(lambda v: log_likelihood_data(unravel(v), d))))
    rows = []
    for L in (1, 4, 16, 64, 256, 1024):
        V = v0[None] * (1 + 0.01 * jax.random.normal(jax.random.PRNGKey(0), (L, v0.size)))
        vg(V)[0].block_until_ready()
        n = max(3, 2000 // L)
        t = time.perf_counter()
        for _ in range(n):
            vg(V)[0].block_until_ready()
        s = (time.perf_counter() - t) / n
        rows.append({"lanes": L, "ms per call": s * 1e3, "us per lane": s / L * 1e6})
    return pd.DataFrame(rows)


def fit(data, init, ridge, max_steps=1000, gtol=1e-6, ftol=1e-11, patience=5):
    """``fit_mle``'s loop with either its diagonal scaling or a full-matrix whitening."""
    prior = default_prior(data)
    template = to_unconstrained(init)
    v0 = flatten_params(template)
    scale = jnp.maximum(data.nobs.astype(v0.dtype), 1.0)
    J = per_date_scores(v0, template, data, prior, transform=from_unconstrained)
    B = J.T @ J / scale
    d = jnp.sqrt(jnp.diag(B))
    d = jnp.where(jnp.isfinite(d), d, 1.0)
    d = jnp.maximum(d, 1e-3 * jnp.max(d))
    if ridge == "diag":
        A = jnp.diag(1.0 / d)  # v = v0 + A w
    else:
        C = B / (d[:, None] * d[None, :]) + ridge * jnp.eye(v0.size)
        A = jnp.linalg.solve(jnp.linalg.cholesky(C).T, jnp.eye(v0.size)) / d[:, None]

    def fun(w):
        return negative_loglik(v0 + A @ w, template, data, prior, scale)

    solver = optax.lbfgs(
        memory_size=10, linesearch=scale_by_zoom_linesearch(30, initial_guess_strategy="one")
    )
    w0 = jnp.zeros_like(v0)
    f0, g0 = jax.value_and_grad(fun)(w0)
    st0 = optax.tree.set(solver.init(w0), value=f0, grad=g0)
    hist0 = jnp.full((patience,), jnp.inf).at[-1].set(f0)

    def cond(c):
        return ~c[4]

    def body(c):
        w, st, hist, step, _ = c
        value, grad = optax.tree.get(st, "value"), optax.tree.get(st, "grad")
        upd, st = solver.update(grad, st, w, value=value, grad=grad, value_fn=fun)
        w = optax.apply_updates(w, upd)
        nv, ng = optax.tree.get(st, "value"), optax.tree.get(st, "grad")
        hist = jnp.concatenate([hist[1:], nv[None]])
        step = step + 1
        gv = jnp.linalg.solve(A.T, ng) / d  # the v-gradient, scaled as fit_mle's stop rule
        rel = (hist[0] - nv) / jnp.maximum(jnp.abs(nv), 1.0)
        done = (
            ~jnp.isfinite(nv)
            | (jnp.max(jnp.abs(gv)) <= gtol)
            | ((step >= patience) & (rel <= ftol))
            | (step >= max_steps)
        )
        return w, st, hist, step, done

    c = jax.lax.while_loop(cond, body, (w0, st0, hist0, jnp.zeros((), jnp.int32), False))
    return -optax.tree.get(c[1], "value") * scale, c[3]


def steps_table() -> pd.DataFrame:
    ref = pd.read_csv(HERE / "results" / "bench_optimum" / "windows.csv")
    rows = []
    for name in ("wti", "natgas", "brent"):
        pan = load(name)
        ends = list(range(103, len(pan.dates), 12))
        ws = [
            ssjax.make_market_data(
                pan.F_mkt[e - 103 : e + 1], pan.ttm[e - 103 : e + 1],
                mask=pan.mask[e - 103 : e + 1], dt=pan.dt[e - 103 : e],
            )
            for e in ends
        ]  # fmt: skip
        best = ref[(ref.series == name) & (ref.path == "reference")].set_index("end")["best"]
        data = jax.tree.map(lambda *a: jnp.stack(a), *ws)
        inits = jax.vmap(ssjax.default_start)(data)
        b = np.array([best.get(e, np.nan) for e in ends])
        for ridge in RIDGES:
            run = jax.jit(jax.vmap(lambda dd, ii, r=ridge: fit(dd, ii, r)))
            t = time.perf_counter()
            ll, steps = jax.block_until_ready(run(data, inits))
            short = b - np.asarray(ll)
            rows.append({
                "series": name, "scaling": f"full, ridge {ridge}" if ridge != "diag" else "diag",
                "windows": len(ends), "median steps": float(np.median(steps)),
                "mean steps": float(np.mean(steps)), "max steps": int(np.max(steps)),
                "below best (>1e-3)": int(np.sum(short > 1e-3)),
                "largest shortfall": float(np.nanmax(short)),
                "seconds (with compile)": time.perf_counter() - t,
            })  # fmt: skip
    return pd.DataFrame(rows)


def main() -> int:
    print("1. value and gradient of the filter, vmapped over lanes (104 dates x 5 tenors)")
    print(markdown_table(lane_cost(), ".3g", index=False))
    print("\n2. one start per window: diagonal vs full-matrix BHHH scaling")
    print(markdown_table(steps_table(), ".4g", index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
