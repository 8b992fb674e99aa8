"""Out-of-sample walk forward: h-week forecasts of every tenor's log futures price.

For the bundled weekly WTI panel and the bundled copper panel (weekly, Tuesdays, 8
nearby contracts), every ``refit_every`` weeks each model is re-estimated on the data up to
that week (expanding window from ``min_window`` weeks), the filter runs with those
parameters, and every week until the next re-estimation forecasts each tenor's log price
h = 1 and 4 weeks ahead (``ssjax.analysis.forecast.walk_forward_forecasts``). Models: the no-change
random walk (ln F̂_{t+h,i} = ln F_{t,i}), GBM, the one-factor mean-reverting model and the
two-factor model (``ssjax.fit.nested``).

Writes to the run folder (default ``experiments/results/out_of_sample``):

* ``rmse_<data>.csv/.md``, ``mae_<data>.csv/.md`` — per horizon and tenor (and pooled);
* ``coverage_<data>.csv/.md`` — share of errors inside each model's 95% predictive interval;
* ``dm_<data>.csv/.md`` — Diebold–Mariano tests of the two-factor model against each other
  model (squared loss, HAC Bartlett variance with max(h − 1, Newey–West) lags, HLN
  correction); negative statistics favour the two-factor model;
* ``rmse_<data>.png`` — each model's RMSE relative to the random walk's, by tenor and horizon;
* ``forecasts_<data>.parquet`` — every forecast (not committed: regenerate it);
* ``config.json``.

Usage::

    python experiments/out_of_sample.py [--out DIR] [--window expanding|rolling]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from model_comparison import load_panels  # noqa: E402

from ssjax.analysis.forecast import (  # noqa: E402
    FORECAST_MODELS,
    forecast_accuracy,
    forecast_dm_tests,
    walk_forward_forecasts,
)
from ssjax.analysis.runs import RunFolder, panel_hash  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "out_of_sample"


def _pivot(acc: pd.DataFrame, col: str) -> pd.DataFrame:
    t = acc[col].unstack("model")[list(FORECAST_MODELS)]
    t.columns.name = None
    return t


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--window", choices=("expanding", "rolling"), default="expanding")
    ap.add_argument("--min-window", type=int, default=104, help="weeks in the first window")
    ap.add_argument("--refit-every", type=int, default=13, help="weeks between re-estimations")
    ap.add_argument("--horizons", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--data", nargs="+", default=["wti", "copper"], choices=["wti", "copper"])
    args = ap.parse_args(argv)

    panels = {k: v for k, v in load_panels().items() if k in args.data}
    cfg = {
        "models": list(FORECAST_MODELS),
        "horizons_weeks": args.horizons,
        "window": args.window,
        "min_window": args.min_window,
        "refit_every": args.refit_every,
        "target": "ln F of each tenor (nearby rank) h weeks after the origin",
        "dm": "two_factor vs each; squared loss; Bartlett HAC, lags max(h-1, NW rule); HLN",
        "data": {
            "wti": "load_wti_ss2000() weekly, 5 tenors, ACT/365",
            "copper": "load_copper_schwartz97() → nearby_panel(ranks=8, resample='W-TUE')",
        },
    }
    run = RunFolder(args.out, cfg, {k: panel_hash(p) for k, p in panels.items()})
    metrics = {}
    for key, panel in panels.items():
        fc = walk_forward_forecasts(
            panel,
            horizons=args.horizons,
            min_window=args.min_window,
            refit_every=args.refit_every,
            window=args.window,
            progress=True,
        )
        fc.to_parquet(run.path / f"forecasts_{key}.parquet")
        n_fail = int((~fc.optimum_reached).sum())
        acc = forecast_accuracy(fc)
        T = len(panel.dates)
        origins = fc.origin.nunique()
        span = f"{fc.origin.min().date()} – {fc.origin.max().date()}"
        where = f"{key.upper()}, {origins} forecast origins ({span}) of {T} weeks"
        scale = "×100 (≈ % of the price)"
        run.table(
            f"rmse_{key}",
            _pivot(acc, "rmse") * 100,
            fmt=".3f",
            title=f"{where}: RMSE of ln F {scale}",
            note="Models scored on the same (origin, tenor) cells; 'all' pools tenors.",
        )
        run.table(
            f"mae_{key}", _pivot(acc, "mae") * 100, fmt=".3f", title=f"{where}: MAE of ln F {scale}"
        )
        cov = _pivot(acc, "coverage95").drop(columns="random_walk")
        run.table(
            f"coverage_{key}",
            cov,
            fmt=".3f",
            title=f"{where}: share of errors inside the 95% predictive interval",
        )
        dm = forecast_dm_tests(fc, "two_factor")
        wide = dm[["dm_stat", "p_value"]].unstack("other")
        wide.columns = [f"{b} {a}" for a, b in wide.columns]
        others = [m for m in FORECAST_MODELS if m != "two_factor"]
        wide = wide[[f"{m} {c}" for m in others for c in ("dm_stat", "p_value")]]
        dm.to_csv(run.path / f"dm_{key}_long.csv")
        run.table(
            f"dm_{key}",
            wide,
            fmt=".2f",
            title=f"{where}: Diebold–Mariano, two-factor vs each model",
            note="Squared loss; statistic < 0: the two-factor model is more accurate; "
            "p-values two-sided (HLN-corrected, Student t). Fits that did not "
            f"converge: {n_fail} forecast rows.",
        )

        rm = _pivot(acc, "rmse")
        rel = rm.div(rm["random_walk"], axis=0).drop(columns="random_walk")
        fig, axes = plt.subplots(
            1, len(args.horizons), figsize=(5 * len(args.horizons), 3.4), sharey=True
        )
        for ax, h in zip(np.atleast_1d(axes), args.horizons, strict=True):
            rel.loc[h].plot(ax=ax, marker="o")
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
            ax.set_title(f"{key.upper()}: h = {h} week{'s' * (h > 1)}")
            ax.set_ylabel("RMSE / random walk's RMSE")
            ax.set_xlabel("tenor")
            ax.set_xticks(range(len(rel.loc[h])), list(rel.loc[h].index))
        np.atleast_1d(axes)[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
        fig.tight_layout()
        run.figure(f"rmse_{key}", fig)
        print(f"\n{key} RMSE ×100:\n" + (rm * 100).round(3).to_string())
        print(f"\n{key} DM:\n" + wide.round(3).to_string())
        for h in args.horizons:
            for m in FORECAST_MODELS:
                metrics[f"rmse_{key}_h{h}_{m}"] = float(acc.loc[(h, "all", m), "rmse"])
    secs = run.finish(metrics)
    print(f"\nwrote {run.path} in {secs} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
