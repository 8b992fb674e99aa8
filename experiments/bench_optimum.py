"""Does each calibration path reach the optimum? Every 104-week window of real panels, fitted
by every documented path, against a many-start reference.

Series (all weekly, Tuesdays; ttm = days to expiry / 365):

* ``natgas``: NYMEX natural gas 2007-2014, nearby ranks 1, 3, 6, 9, 12, 24
  (``ssjax.datasets.load_natgas_rtl``);
* ``brent``: ICE Brent 2007-2014, the same ranks (``load_brent_rtl``);
* ``wti``: the Schwartz-Smith (2000) WTI panel, F1, F5, F9, F13, F17 (``load_wti_ss2000``);
* ``copper``: COMEX copper 1996-2010, the 8 nearest contracts (the research experiments'
  weekly panel).

Windows of 104 dates ending every ``--step`` (default 4) dates. Paths:

* ``engine``: ``KalmanEngine().fit`` on each window with its defaults (16 starts);
* ``engine, 1 start``: ``KalmanEngine(n_starts=1)`` (the single fit from the data start);
* ``cold`` (4 starts per window, the default), ``cold, 1 start``, ``warm`` (the defaults:
  seeds of 4 starts on every 16th window and the last, then the neighbours' refinement),
  ``warm, no seeds`` (``explore=0``), ``warm, explore`` (seeds on every window),
  ``warm, fits only`` (``refine="none", standard_errors=False``: no seeds, no refinement):
  ``recalibrate`` on the whole series (see ``PATHS``).

Reference: ``KalmanEngine(n_starts=N, seed=1)`` (``--ref-starts``, default 64) on each
window (a start design independent of the default's). The *best known* optimum of a window
is the highest log-likelihood that any path or the reference reached; a path *misses* a
window when it ends more than 1e-3 below it. Each row also counts the fits that a path
reports as converged while a free parameter is at a bound (must be 0) and its degenerate end
points (κ, σ_X, σ_Y → 0 or |ρ| → 1). Times are wall-clock seconds of the path on the series,
compilation included where the path first meets the shapes (the first series), in one
process.

Usage::

    python experiments/bench_optimum.py                 # all series, step 4
    python experiments/bench_optimum.py --quick         # natgas only, step 16, 16-start reference
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# times include compilations: no persistent compilation cache unless SSJAX_CACHE_DIR is set
os.environ.setdefault("SSJAX_CACHE_DIR", "off")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import ssjax  # noqa: E402
from ssjax.analysis.runs import markdown_table  # noqa: E402
from ssjax.fit.optimum import DEGENERATE_FIELDS, at_bounds  # noqa: E402
from ssjax.rolling import recalibrate  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_comparison import copper_weekly  # noqa: E402

WINDOW = 104
LL_TOL = 1e-3
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_optimum"
SERIES = ("natgas", "brent", "wti", "copper")
#: KalmanEngine settings fitted window by window
ENGINE_PATHS = {"engine": {}, "engine, 1 start": dict(n_starts=1)}
#: the ``RollingResult.info`` entries the results list per rolling run
INFO_KEYS = ("escaped", "explore_windows", "explore_better", "refine_rounds", "refine_changed")
#: recalibrate's documented configurations (keyword arguments beyond window/ends)
PATHS = {
    "cold": dict(warm_start=False),  # 4 starts per window (the default)
    "cold, 1 start": dict(warm_start=False, n_starts=1),
    "warm": dict(warm_start=True),  # seeds on every 16th window and the last
    "warm, no seeds": dict(warm_start=True, explore=0),
    "warm, explore": dict(warm_start=True, explore=True),  # seeds on every window
    "warm, fits only": dict(warm_start=True, refine="none", standard_errors=False),
}


def load(name: str) -> ssjax.datasets.Panel:
    if name == "natgas":
        return ssjax.datasets.load_natgas_rtl()
    if name == "brent":
        return ssjax.datasets.load_brent_rtl()
    if name == "wti":
        return ssjax.datasets.load_wti_ss2000()
    if name == "copper":
        return copper_weekly(ssjax.datasets.load_copper_schwartz97().settlements)
    raise ValueError(f"unknown series {name!r}")


def degenerate_flags(params_list: list) -> np.ndarray:
    """Per fit: a free κ, σ_X, σ_Y or ρ at its bound."""
    out = []
    for p in params_list:
        b = at_bounds(p)
        out.append(any(bool(np.asarray(getattr(b, f))) for f in DEGENERATE_FIELDS))
    return np.asarray(out, bool)


def engine_path(panel, ends, **kw) -> tuple[pd.DataFrame, float]:
    rows = []
    t0 = time.perf_counter()
    for e in ends:
        sl = slice(e - WINDOW + 1, e + 1)
        f = ssjax.KalmanEngine(**kw).fit(
            panel.F_mkt[sl], panel.ttm[sl], mask=panel.mask[sl], dates=panel.dates[sl]
        )
        rows.append(
            dict(
                end=int(e), loglik=f.loglik, converged=f.converged, optimum=f.optimum_reached,
                at_bound=", ".join(f.at_bound), starts_at_best=f.starts_at_best,
                degenerate=bool(degenerate_flags([f.params])[0]),
            )
        )  # fmt: skip
    return pd.DataFrame(rows), time.perf_counter() - t0


def rolling_path(panel, ends, **kw) -> tuple[pd.DataFrame, float, dict]:
    t0 = time.perf_counter()
    r = recalibrate(panel, window=WINDOW, ends=ends, progress=False, **kw)
    secs = time.perf_counter() - t0
    params = [jax.tree.map(lambda a, w=w: np.asarray(a)[0, w], r.params) for w in range(len(ends))]
    rows = [
        dict(
            end=int(e), loglik=float(r.loglik[0, w]), converged=bool(r.converged[0, w]),
            optimum=bool(r.optimum_reached[0, w]), at_bound=r.bound_text(0, w),
            starts_at_best=np.nan, degenerate=bool(degenerate_flags([params[w]])[0]),
        )
        for w, e in enumerate(ends)
    ]  # fmt: skip
    return pd.DataFrame(rows), secs, r.info


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", nargs="+", default=list(SERIES), choices=SERIES)
    ap.add_argument("--step", type=int, default=4, help="dates between window ends")
    ap.add_argument("--ref-starts", type=int, default=64, help="starts of the reference fit")
    ap.add_argument("--quick", action="store_true", help="natgas, step 16, 16-start reference")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    ap.add_argument(
        "--paths", nargs="+", help="paths to run (default: all); see ENGINE_PATHS and PATHS"
    )
    ap.add_argument(
        "--reuse", type=Path,
        help="a windows.csv of an earlier run: its series/paths in --reuse-paths (and their "
        "times) are read, not rerun",
    )  # fmt: skip
    ap.add_argument("--reuse-paths", nargs="+", default=["reference"])
    ap.add_argument("--note", default="", help="a provenance paragraph for the results")
    args = ap.parse_args(argv)
    if args.quick:
        args.series, args.step, args.ref_starts = ["natgas"], 16, 16
    cmd = "python experiments/bench_optimum.py" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    t_script = time.perf_counter()
    paths = args.paths or [*ENGINE_PATHS, *PATHS]
    old = pd.read_csv(args.reuse) if args.reuse else None
    per_window = []
    times: dict[tuple[str, str], float] = {}
    infos: dict[tuple[str, str], dict] = {}
    for name in args.series:
        panel = load(name)
        T = panel.F_mkt.shape[0]
        ends = np.arange(WINDOW - 1, T, args.step)
        print(f"{name}: {T} dates x {panel.F_mkt.shape[1]} tenors, {ends.size} windows", flush=True)
        frames = {}
        for p in ["reference", *paths]:
            prev = None
            if old is not None and p in args.reuse_paths:
                prev = old[(old.series == name) & (old.path == p)]
            if prev is not None and len(prev) == ends.size:
                cols = ["end", "loglik", "converged", "optimum", "at_bound", "starts_at_best",
                        "degenerate", "seconds"]  # fmt: skip
                df = prev[cols].reset_index(drop=True).fillna({"at_bound": ""})
                secs = float(df.pop("seconds").iloc[0])
            elif p == "reference":
                df, secs = engine_path(panel, ends, n_starts=args.ref_starts, seed=1)
            elif p in ENGINE_PATHS:
                df, secs = engine_path(panel, ends, **ENGINE_PATHS[p])
            else:
                df, secs, infos[(name, p)] = rolling_path(panel, ends, **PATHS[p])
            frames[p], times[(name, p)] = df, secs
            print(f"  {p}: {secs:.1f} s", flush=True)
        best = np.max(np.stack([f["loglik"].to_numpy() for f in frames.values()]), axis=0)
        for p, df in frames.items():
            df = df.assign(series=name, path=p, best=best, short=best - df["loglik"],
                           seconds=times[(name, p)])  # fmt: skip
            df["date"] = panel.dates[df["end"].to_numpy()].date
            per_window.append(df)
    allw = pd.concat(per_window, ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    allw.to_csv(args.out / "windows.csv", index=False)

    rows = []
    for (name, p), g in allw.groupby(["series", "path"], sort=False):
        miss = g["short"] > LL_TOL
        rows.append(
            {
                "series": name,
                "path": p,
                "windows": len(g),
                f"below best by > {LL_TOL:g}": int(miss.sum()),
                "largest shortfall": float(g["short"].max()),
                "summed shortfall": float(g["short"].sum()),
                "converged at a bound": int((g["converged"] & (g["at_bound"] != "")).sum()),
                "degenerate end points": int(g["degenerate"].sum()),
                "no optimum reached": int((~g["optimum"]).sum()),
                "seconds": times[(name, p)],
            }
        )
    summary = pd.DataFrame(rows)
    tot = (
        summary.groupby("path", sort=False)
        .agg(
            windows=("windows", "sum"),
            missed=(f"below best by > {LL_TOL:g}", "sum"),
            largest=("largest shortfall", "max"),
            summed=("summed shortfall", "sum"),
            conv_bound=("converged at a bound", "sum"),
            degenerate=("degenerate end points", "sum"),
            seconds=("seconds", "sum"),
        )
        .reset_index()
    )
    tot.columns = [
        "path", "windows", f"below best by > {LL_TOL:g}", "largest shortfall",
        "summed shortfall", "converged at a bound", "degenerate end points", "seconds",
    ]  # fmt: skip
    tot.insert(3, "share at best", 1.0 - tot[f"below best by > {LL_TOL:g}"] / tot["windows"])
    summary.to_csv(args.out / "summary.csv", index=False)
    tot.to_csv(args.out / "totals.csv", index=False)
    info_lines = [
        f"- {name} / {p}: " + ", ".join(f"{k} {v}" for k, v in info.items() if k in INFO_KEYS)
        for (name, p), info in infos.items()
    ]
    wall = time.perf_counter() - t_script
    text = "\n".join(
        [
            "# Does each calibration path reach the optimum?",
            "",
            f"Command: `{cmd}` ({wall / 60:.1f} min in one process, {jax.default_backend()}, "
            f"{len(jax.devices())} device(s)).",
            "",
            __doc__.split("\n\n", 1)[1].split("Usage::")[0].strip(),
            "",
            f"Reference: {args.ref_starts} starts (seed 1). Windows every {args.step} dates.",
            "",
            *([args.note, ""] if args.note else []),
            "## All series",
            "",
            markdown_table(tot, index=False),
            "",
            "## By series",
            "",
            markdown_table(summary, index=False),
            "",
            "Rolling runs (`info`):",
            "",
            *info_lines,
            "",
            "Per window: `windows.csv` (log-likelihood of every path, the best known, the "
            "shortfall, the parameters at a bound).",
            "",
        ]
    )
    (args.out / "README.md").write_text(text)
    print("\n" + markdown_table(tot, index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
