"""Rolling recalibration and the filters on an accelerator (written for one GPU).

Runs on whatever backend JAX picks; on a CPU it measures the same things (slowly). Each
stage prints its row as soon as it is done and the stages after a time limit are skipped
(``--limit``), so a leased machine returns a partial table rather than nothing.

What is measured (float64):

* the filter alone, sequential ``lax.scan`` vs parallel-in-time (associative scan), value and
  value + gradient, on ``bench_parallel_filter.py``'s simulated daily panels of T dates;
* ``recalibrate`` on the batch of ``bench_rolling.py``'s 1,000-window case (7 noisy copies of
  the bundled weekly WTI panel x 143 window ends, window 104): cold and warm, fits only
  (``refine="none", standard_errors=False``) and with the defaults (refinement, standard
  errors), each as a first call (compiles included) and a second call of the same shapes.
  Cold mode vmaps ``--vector-width`` lanes together (a GPU wants them all in one group);
  warm mode can only vmap the 7 copies and walks the 143 ends in order.

Usage::

    python experiments/bench_gpu.py                 # prints and writes results/bench_gpu.md
    python experiments/bench_gpu.py --limit 420 --out /some/dir/bench_gpu.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

import ssjax
from ssjax.core.parallel_filter import choose_method
from ssjax.rolling import recalibrate

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_parallel_filter as bpf  # noqa: E402
import bench_rolling as brl  # noqa: E402
import bench_vs_statsmodels as bvs  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_gpu.md"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--limit", type=float, default=1e9, help="skip stages after this (s)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1000, 5000, 20000])
    ap.add_argument("--batch", type=int, default=1000, help="windows asked for")
    ap.add_argument("--vector-width", type=int, default=1024, help="cold lanes per group")
    ap.add_argument("--no-filter", action="store_true", help="skip the filter stage")
    ap.add_argument(
        "--filter-method", default="auto", choices=("auto", "sequential", "parallel"),
        help="the filter inside the rolling fits ('auto': parallel on a GPU)",
    )  # fmt: skip
    ap.add_argument("--no-rolling", action="store_true", help="skip the rolling stage")
    args = ap.parse_args(argv)
    cmd = "python experiments/bench_gpu.py" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    t0 = time.perf_counter()
    sections: dict[str, list[str]] = {}  # the report's sections, rewritten as they grow

    def left() -> bool:
        return time.perf_counter() - t0 < args.limit

    def write() -> None:
        info = bvs.machine_info()
        info["jax backend"] = jax.default_backend()
        info["jax devices"] = ", ".join(str(d) for d in jax.devices())
        out = [
            "# ssjax on an accelerator: rolling recalibration and the filters",
            "",
            f"Command: `{cmd}` (run time so far {time.perf_counter() - t0:.0f} s).",
            "",
            *[x for sec in sections.values() for x in sec],
            "## Machine",
            "",
            *[f"- {k}: {v}" for k, v in info.items()],
            "",
        ]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(out), encoding="utf-8")

    print(f"backend {jax.default_backend()}: {jax.devices()}", flush=True)

    # ---- the filter ------------------------------------------------------------------------
    p = ssjax.make_params(**bpf.THETA)
    methods = {k: bpf.METHODS[k] for k in ("sequential", "associative")}
    rows_f = []
    for T in [] if args.no_filter else args.lengths:
        if not left():
            break
        data = bpf.make_panel(p, T, bpf.SEED + T)
        cells = [f"{T:,}"]
        for task in ("value", "value + gradient"):
            fns: dict[str, Callable] = {
                k: fn if task == "value" else jax.value_and_grad(fn) for k, fn in methods.items()
            }
            res = bpf.measure(fns, p, data, 3, 0.1)
            (st, so), (pt, po) = res["sequential"], res["associative"]
            d = (
                bpf.rel_diff(po, so)
                if task == "value"
                else max(bpf.rel_diff(po[0], so[0]), bpf.grad_diff(po[1], so[1]))
            )
            cells += [
                f"{bvs.fmt_s(st.run_s)} / {bvs.fmt_s(pt.run_s)}",
                f"{st.run_s / pt.run_s:.1f}x",
                f"{d:.0e}",
            ]
            print(f"  filter T={T} {task}: " + " | ".join(cells[-3:]), flush=True)
        rows_f.append(cells)
    if rows_f:
        sections["filter"] = [
            "## Sequential vs parallel-in-time filter",
            "",
            "Simulated daily panels (5 rolling tenors, 10% missing), best of 3 blocks of calls "
            "after a compile; rel. diff = largest relative difference from the sequential "
            "filter (value, or value and every gradient entry).",
            "",
            brl.table(
                [
                    "T",
                    "value: seq. / parallel",
                    "speed-up",
                    "rel. diff",
                    "value + grad: seq. / parallel",
                    "speed-up",
                    "rel. diff",
                ],
                rows_f,
            ),  # fmt: skip
            "",
        ]
        write()

    # ---- rolling recalibration ---------------------------------------------------------------
    base = ssjax.datasets.load_wti_ss2000()
    T, _ = base.F_mkt.shape
    lay = brl.layout(args.batch, T, brl.WINDOW)
    panels = brl.make_panels(base, lay.K, brl.SEED)
    cold_kw = dict(warm_start=False, chunk_size=args.vector_width, vector_width=args.vector_width)
    warm_kw = dict(warm_start=True, chunk_size=lay.w, vector_width=16)
    fits_only = dict(refine="none", standard_errors=False)
    configs = [
        ("cold, fits only", {**cold_kw, **fits_only}),
        ("warm, fits only", {**warm_kw, **fits_only}),
        ("cold (defaults: refine, standard errors)", cold_kw),
        ("warm (defaults: refine, standard errors)", warm_kw),
    ]
    rows_r = []
    for name, kw in [] if args.no_rolling else configs:
        if not left():
            print(f"  skipped {name}: time limit", flush=True)
            continue

        def call(kw=kw):
            return recalibrate(
                panels, window=brl.WINDOW, ends=lay.ends, progress=False,
                filter_method=args.filter_method, **kw,
            )  # fmt: skip

        first, res = bvs.timed(call)
        second = float("nan")
        if left():
            second, res = bvs.timed(call)
        t_best = second if np.isfinite(second) else first
        rows_r.append(
            [
                name,
                f"{lay.n:,} ({lay.describe()})",
                bvs.fmt_s(first),
                bvs.fmt_s(second) if np.isfinite(second) else "not run",
                f"{lay.n / t_best:,.0f}",
                f"{np.median(res.num_steps):.0f} (max {res.num_steps.max()})",
                f"{res.converged.sum():,}",
                f"{int(res.refined.sum())}",
                f"{np.nansum(res.loglik):,.3f}",
            ]
        )
        print("  " + " | ".join(rows_r[-1]), flush=True)
        sections["rolling"] = [
            "## Rolling recalibration, 1,000-window batch",
            "",
            f"`bench_rolling.py`'s layout: {lay.K} copies of the bundled WTI panel (the data "
            f"and noisy copies) x the last {lay.w} window ends, window {brl.WINDOW}. Cold: "
            f"chunk_size = vector_width = {args.vector_width} (every window in one vmapped "
            "group). Warm: one chunk of all window ends, the copies vmapped. fits/s from the "
            f"second call (the first if no second call ran). Filter: `{args.filter_method}` "
            f"(`auto` picks `{choose_method(128)}` on this backend for these windows).",
            "",
            brl.table(
                [
                    "mode",
                    "windows",
                    "first call",
                    "second call",
                    "fits/s",
                    "median steps",
                    "converged",
                    "refined",
                    "Σ loglik",
                ],
                rows_r,
            ),  # fmt: skip
            "",
        ]
        write()
    write()
    print(f"written to {args.out} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
