"""Trading report: walk-forward backtests of the mispricing strategy over a grid of settings.

Runs :func:`ssjax.trading.backtest.walk_forward` (expanding-window MLE recalibrated every 13 dates
after a 104-date warm-up, filtered states only, fills on actual contracts, rolls and costs
booked) for every sizing mode × entry threshold z_in × cost level, on

* the bundled weekly WTI panel of Schwartz and Smith (2000) (F1, F5, F9, F13, F17, 268
  Tuesdays 1990-01-02 … 1995-02-14), with its full settlement table so that a held contract
  is priced after it leaves its tenor (``ssjax.datasets.load_wti_ss2000_contracts``; the
  panel is identical to ``load_wti_ss2000``);
* the bundled daily COMEX copper panel (``load_copper_schwartz97``), resampled to Tuesdays
  (``nearby_panel(..., 8, resample="W-TUE")``: 767 dates, 8 nearby contracts).

The grid:

* sizing: ``TradeEngine(sizing="vol_target")`` (10% annualized ex-ante vol target) and
  ``TradeEngine(sizing="qp")`` (mean–variance QP, risk aversion γ = 1, no L1/turnover
  penalties): the engine's defaults;
* z_in ∈ {1.0, 1.5, 2.0, 2.5} with the exit threshold z_out held fixed at 0.5 (the
  ``TradingConfig`` default: exit once |z| < 0.5). Holding z_out fixed isolates the entry
  threshold; z's basis is the default ``z_method="filtered"`` (the model's s.d. of the
  filtered residual, so |z| = 2 is a 2-s.d. mispricing under the model);
* costs: ``TradingConfig``'s frictions default to zero, so the cost grid is in exchange
  ticks per side, all in: 0, 1, 2, 4 ticks (WTI tick $0.01/bbl, ≈ 5 bp at $20; copper tick
  0.05 US cents/lb, ≈ 5 bp at 108 c/lb), split 1/4 fee, 1/2 half-spread, 1/4 slippage. The
  frictions also gate entries (``TradeEngine.check_frictions``: an entry must expect to
  cover its round trip), so costs change the trades, not just their P&L.

The default configuration (the library's defaults z_in = 2, z_out = 0.5, at 1 tick per side)
is always in the grid; its equity curves are plotted.

Conventions (those of :func:`ssjax.trading.metrics.compute_metrics`): P&L is per unit of capital
(weights are signed notional per unit capital; futures are unfunded, so P&L is an excess
return and no risk-free rate is subtracted), additive (no compounding). Sharpe = mean / s.d.
(ddof = 1) of the net P&L per period × √(periods per year), periods per year = 1 / mean step
(≈ 52.14 for weekly data), over every date from the first trading date (flat dates
included). ``max_drawdown``: largest fall of the cumulative net P&L from its running peak (in
units of capital). ``turnover``: Σ|Δw| per year, roll closes included. ``n_trades``: fills,
roll closes included; ``entries``: times a tenor went from flat to a position.

Written to a :class:`ssjax.analysis.runs.RunFolder`:

* ``sweep.csv`` / ``.md``: one row per panel × sizing × z_in × cost;
* ``summary.csv`` / ``.md``: per panel × sizing: the default configuration and the spread of
  the grid (median / min / max Sharpe), with the multiple-testing caveat;
* ``caveats.md``: that caveat, with the Sharpe's standard error and the Sharpe the best of N
  zero-skill configurations would show by chance;
* ``equity_default.png`` (and ``equity_default.csv``): cumulative net and gross P&L of the
  default configuration for both sizing modes;
* ``sharpe_vs_zin.png``: Sharpe against z_in, one line per cost level, per panel and sizing;
* ``calibrations_<panel>.csv`` / ``.md``: the walk-forward Θ path (the same in every run);
* ``config.json``: the settings, versions, data hashes, wall time and headline metrics.

Usage::

    python experiments/trading_report.py [--quick] [--panels wti copper]
        [--out experiments/results/trading]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from model_comparison import copper_weekly  # noqa: E402

import ssjax  # noqa: E402
from ssjax.analysis.runs import RunFolder, panel_hash  # noqa: E402
from ssjax.datasets import Panel  # noqa: E402
from ssjax.trading.backtest import BacktestResult, calibrate_walk_forward, walk_forward  # noqa: E402
from ssjax.trading.engine import TradeEngine, TradingConfig  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "trading"

#: how one tick per side of all-in cost is split among TradingConfig's frictions
FRICTION_SPLIT = {"fee": 0.25, "half_spread": 0.5, "slippage": 0.25}


@dataclass(frozen=True)
class Config:
    """The experiment's settings (every field is a command-line option)."""

    panels: tuple[str, ...] = ("wti", "copper")
    sizing: tuple[str, ...] = ("vol_target", "qp")
    z_in: tuple[float, ...] = (1.0, 1.5, 2.0, 2.5)
    z_out: float = 0.5  # fixed exit threshold (TradingConfig's default)
    cost_ticks: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)  # all-in cost per side, in ticks
    default_z_in: float = TradingConfig().z_in  # the configuration whose equity is plotted
    default_cost_ticks: float = 1.0
    min_window: int = 104
    recalibrate_every: int = 13
    vol_target: float = TradeEngine().vol_target
    gamma: float = TradeEngine().gamma


#: --quick: the WTI panel, two thresholds, two cost levels (8 backtests)
QUICK = {"panels": ("wti",), "z_in": (1.5, 2.0), "cost_ticks": (0.0, 1.0)}


@dataclass(frozen=True)
class PanelSpec:
    label: str
    data_name: str
    tick: float  # price units
    unit: str
    load: Callable[[], tuple[Panel, pd.DataFrame]]


def _load_wti() -> tuple[Panel, pd.DataFrame]:
    b = ssjax.datasets.load_wti_ss2000_contracts()
    return b.panel, b.settlements


def _load_copper_weekly() -> tuple[Panel, pd.DataFrame]:
    b = ssjax.datasets.load_copper_schwartz97()
    return copper_weekly(b.settlements), b.settlements


PANELS = {
    "wti": PanelSpec(
        "WTI weekly (SS2000)", "load_wti_ss2000_contracts", 0.01, "USD/bbl", _load_wti
    ),
    "copper": PanelSpec(
        "Copper weekly (Tuesdays of schwartz97 daily)",
        "load_copper_schwartz97 -> nearby_panel(8, W-TUE)",
        0.05,
        "US cents/lb",
        _load_copper_weekly,
    ),
}


def frictions(ticks: float, tick: float) -> dict[str, float]:
    """TradingConfig's fee, half_spread and slippage for an all-in cost of ``ticks`` per side."""
    return {k: ticks * tick * share for k, share in FRICTION_SPLIT.items()}


def entries(positions: pd.DataFrame) -> int:
    """Times a tenor went from flat (after trading at t−1) to a position (after trading at t)."""
    on = positions.to_numpy(float) != 0
    prev = np.vstack([np.zeros((1, on.shape[1]), bool), on[:-1]])
    return int(np.sum(on & ~prev))


def expected_max_sharpe(n: int, se: float) -> float:
    """E[max of n independent N(0, se²)] (Bailey and López de Prado's approximation)."""
    if n < 2:
        return 0.0
    g = 0.5772156649015329
    nd = NormalDist()
    return se * ((1 - g) * nd.inv_cdf(1 - 1 / n) + g * nd.inv_cdf(1 - 1 / (n * math.e)))


def sweep_row(res: BacktestResult, **keys: Any) -> dict[str, Any]:
    m = res.metrics
    years = m["n_periods"] / m["periods_per_year"]
    sr = float(m["sharpe"])
    qp_fail = int((~res.status.isin(["ok"]) & ~res.status.str.endswith("optimal")).sum())
    return {
        **keys,
        "sharpe": sr,
        # Lo (2002), i.i.d. returns: s.e. of the annualized Sharpe over `years`
        "sharpe_se": math.sqrt((1 + 0.5 * sr**2) / years) if np.isfinite(sr) else math.nan,
        "annual_return": m["annual_return"],
        "annual_vol": m["annual_volatility"],
        "max_drawdown": m["max_drawdown"],
        "turnover": m["turnover"],
        "total_net": m["total_net"],
        "total_gross": m["total_gross"],
        "total_cost": m["total_cost"],
        "n_trades": int(m["n_trades"]),
        "entries": entries(res.positions),
        "time_in_market": float((res.positions.abs().sum(axis=1) > 0).mean()),
        "hit_rate": m["hit_rate"],
        "qp_failures": qp_fail,
        "seconds": float(res.info["seconds"]),
    }


def run_panel(
    name: str,
    panel: Panel,
    settle: pd.DataFrame,
    cfg: Config,
    engines: dict[str, TradeEngine],
    log: Callable[[str], None],
) -> tuple[list[dict[str, Any]], dict[str, BacktestResult], pd.DataFrame, float]:
    """Every grid point on one panel; returns the rows, the default runs, the Θ path and the
    seconds the calibrations took (once: every grid point reuses them)."""
    spec = PANELS[name]
    median_px = float(np.nanmedian(panel.F_mkt))
    rows: list[dict[str, Any]] = []
    defaults: dict[str, BacktestResult] = {}
    # the calibrations do not depend on the trading settings: run them once per panel
    cal = calibrate_walk_forward(
        panel, min_window=cfg.min_window, recalibrate_every=cfg.recalibrate_every
    )
    log(f"{name:6s} {len(cal.cal_dates)} calibrations in {cal.info['seconds']:.1f} s")
    for sizing in cfg.sizing:
        for z_in in cfg.z_in:
            for ticks in cfg.cost_ticks:
                fr = frictions(ticks, spec.tick)
                trading = TradingConfig(z_in=z_in, z_out=cfg.z_out, **fr)
                res = walk_forward(
                    panel,
                    settle,
                    trading=trading,
                    engine=engines[sizing],
                    min_window=cfg.min_window,
                    recalibrate_every=cfg.recalibrate_every,
                    calibration=cal,
                )
                cost = ticks * spec.tick
                row = sweep_row(
                    res,
                    panel=name,
                    sizing=sizing,
                    z_in=z_in,
                    z_out=cfg.z_out,
                    cost_ticks=ticks,
                    cost_per_side=cost,
                    cost_bp=1e4 * cost / median_px,
                )
                rows.append(row)
                if z_in == cfg.default_z_in and ticks == cfg.default_cost_ticks:
                    defaults[sizing] = res
                log(
                    f"{name:6s} {sizing:10s} z_in={z_in:<4g} cost={ticks:g} tick: "
                    f"Sharpe {row['sharpe']:+.2f}  maxDD {row['max_drawdown']:.3f}  "
                    f"turnover {row['turnover']:.1f}/y  entries {row['entries']:3d}  "
                    f"({row['seconds']:.1f} s)"
                )
    return rows, defaults, cal.params, float(cal.info["seconds"])


def plot_equity(defaults: dict[str, dict[str, BacktestResult]], cfg: Config) -> plt.Figure:
    names = list(defaults)
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 3.6 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        for k, (sizing, res) in enumerate(defaults[name].items()):
            col = f"C{k}"
            sr = res.metrics["sharpe"]
            ax.plot(res.pnl.index, res.pnl["equity"], color=col,
                    label=f"{sizing} net (Sharpe {sr:.2f})")  # fmt: skip
            ax.plot(res.pnl.index, res.pnl["gross"].cumsum(), color=col, ls="--", lw=0.8,
                    label=f"{sizing} gross")  # fmt: skip
        for d in next(iter(defaults[name].values())).params.index:
            ax.axvline(d, color="0.88", lw=0.6, zorder=0)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_title(
            f"{PANELS[name].label}: z_in = {cfg.default_z_in:g}, z_out = {cfg.z_out:g}, "
            f"{cfg.default_cost_ticks:g} tick/side (grey: recalibrations)"
        )
        ax.set_ylabel("cumulative P&L (per unit capital)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_sharpe(sweep: pd.DataFrame, cfg: Config) -> plt.Figure:
    names = list(dict.fromkeys(sweep["panel"]))
    fig, axes = plt.subplots(
        len(names), len(cfg.sizing), figsize=(4.8 * len(cfg.sizing), 3.4 * len(names)),
        squeeze=False, sharey="row",
    )  # fmt: skip
    for r, name in enumerate(names):
        for c, sizing in enumerate(cfg.sizing):
            ax = axes[r, c]
            sub = sweep[(sweep["panel"] == name) & (sweep["sizing"] == sizing)]
            for k, ticks in enumerate(cfg.cost_ticks):
                s = sub[sub["cost_ticks"] == ticks].sort_values("z_in")
                ax.plot(s["z_in"], s["sharpe"], "o-", color=f"C{k}", label=f"{ticks:g} tick")
            se = float(np.nanmedian(sub["sharpe_se"]))
            ax.axhspan(-se, se, color="0.9", zorder=0, label="±1 s.e. of a Sharpe")
            ax.axhline(0, color="k", lw=0.6)
            ax.set_title(f"{name}, {sizing}")
            ax.set_xlabel(f"z_in (z_out fixed at {cfg.z_out:g})")
            if c == 0:
                ax.set_ylabel("annualized Sharpe (net)")
            ax.legend(fontsize=7, title="cost per side", title_fontsize=7)
    fig.tight_layout()
    return fig


def caveat_text(sweep: pd.DataFrame) -> str:
    lines = [
        "**Caveat: in-sample selection over a grid.** The calibrations are walk-forward (no "
        "look-ahead), but the grid is a search over settings scored on that same short "
        "history, one panel per market: the grid's best cell is chosen on the data it is "
        "scored on, so its Sharpe is biased upwards (multiple testing). Read the pre-set "
        "default configuration, or the whole grid, not the grid's maximum, and judge a "
        "setting only on data it was not chosen on. The strategy is flat most of the time: "
        "the `entries` column counts how few independent bets each Sharpe rests on.",
        "",
    ]
    for name, sub in sweep.groupby("panel", sort=False):
        n = len(sub)
        years = float(np.median(sub["n_years"]))
        se0 = 1.0 / math.sqrt(years)
        bar = expected_max_sharpe(n, se0)
        lines.append(
            f"* {name}: {years:.1f} years of walk-forward trading dates; the s.e. of an "
            f"annualized Sharpe is ≈ 1/√years = {se0:.2f}, so a Sharpe within ±2 s.e. "
            f"(±{2 * se0:.2f}) of 0 is not distinguishable from no skill. The best of {n} "
            f"independent zero-skill configurations would show a Sharpe of ≈ {bar:.2f} on "
            "average by chance alone (the grid's cells are correlated, so fewer are "
            "effectively independent and the bar is somewhat lower)."
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> tuple[Config, argparse.Namespace]:
    d = Config()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--quick", action="store_true", help="small grid on WTI (a smoke test)")
    ap.add_argument("--panels", nargs="+", choices=sorted(PANELS), default=None)
    ap.add_argument("--sizing", nargs="+", choices=["vol_target", "qp"], default=None)
    ap.add_argument("--z-in", nargs="+", type=float, default=None)
    ap.add_argument("--z-out", type=float, default=d.z_out)
    ap.add_argument("--cost-ticks", nargs="+", type=float, default=None)
    ap.add_argument("--min-window", type=int, default=d.min_window)
    ap.add_argument("--recalibrate-every", type=int, default=d.recalibrate_every)
    ap.add_argument("--vol-target", type=float, default=d.vol_target)
    ap.add_argument("--gamma", type=float, default=d.gamma, help="QP risk aversion")
    a = ap.parse_args(argv)
    cfg = replace(d, **QUICK) if a.quick else d
    over = {
        "panels": a.panels, "sizing": a.sizing, "z_in": a.z_in, "cost_ticks": a.cost_ticks,
    }  # fmt: skip
    cfg = replace(cfg, **{k: tuple(v) for k, v in over.items() if v is not None})
    cfg = replace(
        cfg, z_out=a.z_out, min_window=a.min_window, recalibrate_every=a.recalibrate_every,
        vol_target=a.vol_target, gamma=a.gamma,
    )  # fmt: skip
    # the default configuration is always part of the grid
    cfg = replace(
        cfg,
        z_in=tuple(sorted({*cfg.z_in, cfg.default_z_in})),
        cost_ticks=tuple(sorted({*cfg.cost_ticks, cfg.default_cost_ticks})),
    )
    if min(cfg.z_in) <= cfg.z_out:
        ap.error(f"every z_in must exceed z_out = {cfg.z_out}")
    return cfg, a


def main(argv: Sequence[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    t0 = time.perf_counter()
    log = print

    # one engine per sizing mode, reused by every run (the QP is built once per shape)
    engines = {
        s: TradeEngine(sizing=s, vol_target=cfg.vol_target, gamma=cfg.gamma) for s in cfg.sizing
    }
    data = {name: PANELS[name].load() for name in cfg.panels}
    hashes = {PANELS[n].data_name: panel_hash(panel) for n, (panel, _) in data.items()}
    config = {
        **asdict(cfg),
        "friction_split": FRICTION_SPLIT,
        "ticks": {n: f"{PANELS[n].tick} {PANELS[n].unit}" for n in cfg.panels},
        "data": {n: PANELS[n].data_name for n in cfg.panels},
        "z_method": TradingConfig().z_method,
        "sigma_method": TradingConfig().sigma_method,
        "sharpe": "mean/sd(ddof=1) of net P&L per period x sqrt(periods per year), all dates "
        "from the first trading date, no risk-free rate (futures P&L per unit capital)",
        "quick": bool(args.quick),
    }
    run = RunFolder(args.out, config, data=hashes)  # its clock starts here

    rows: list[dict[str, Any]] = []
    defaults: dict[str, dict[str, BacktestResult]] = {}
    calib: dict[str, pd.DataFrame] = {}
    calib_seconds: dict[str, float] = {}
    for name, (panel, settle) in data.items():
        r, defaults[name], calib[name], calib_seconds[name] = run_panel(
            name, panel, settle, cfg, engines, log
        )
        rows += r
    sweep = pd.DataFrame(rows)
    met = {n: next(iter(defaults[n].values())).metrics for n in defaults}
    sweep["n_years"] = [met[p]["n_periods"] / met[p]["periods_per_year"] for p in sweep.panel]
    caveat = caveat_text(sweep)

    cols = [
        "panel", "sizing", "z_in", "cost_ticks", "cost_bp", "sharpe", "sharpe_se",
        "annual_return", "annual_vol", "max_drawdown", "turnover", "total_net", "total_cost",
        "n_trades", "entries", "time_in_market",
    ]  # fmt: skip
    sweep_out = sweep.drop(columns="n_years")
    run.table(
        "sweep",
        sweep_out[cols],
        fmt=".3g",
        index=False,
        title=f"Walk-forward backtests: sizing × z_in × cost (z_out = {cfg.z_out:g})",
        note="Sharpe annualized (no risk-free rate; flat dates included); max_drawdown and "
        "total P&L per unit capital; turnover = Σ|Δw| per year; cost_bp = cost per side at "
        "the panel's median price; n_trades counts fills incl. roll closes; entries counts "
        "flat → position. All columns (gross P&L, hit rate, QP failures, seconds, of "
        "which calibration seconds) in sweep.csv.\n\n" + caveat,
    )
    # run.table rewrote sweep.csv with the shown columns: keep the full table instead
    sweep_out.to_csv(run.path / "sweep.csv", index=False)

    # per panel x sizing: the default configuration and the spread over the grid
    summ = []
    for (name, sizing), sub in sweep.groupby(["panel", "sizing"], sort=False):
        dflt = sub[(sub.z_in == cfg.default_z_in) & (sub.cost_ticks == cfg.default_cost_ticks)]
        d = dflt.iloc[0]
        best = sub.loc[sub["sharpe"].idxmax()]
        summ.append(
            {
                "panel": name,
                "sizing": sizing,
                "default_sharpe": d.sharpe,
                "default_max_dd": d.max_drawdown,
                "default_turnover": d.turnover,
                "default_total_net": d.total_net,
                "default_entries": int(d.entries),
                "grid_n": len(sub),
                "grid_median_sharpe": float(sub["sharpe"].median()),
                "grid_min_sharpe": float(sub["sharpe"].min()),
                "grid_max_sharpe": float(best.sharpe),
                "grid_max_at": f"z_in={best.z_in:g}, {best.cost_ticks:g} tick",
                "share_sharpe_gt_0": float((sub["sharpe"] > 0).mean()),
                "sharpe_se": float(d.sharpe_se),
            }
        )
    summary = pd.DataFrame(summ)
    run.table(
        "summary",
        summary,
        fmt=".3g",
        index=False,
        title=(
            f"Default configuration (z_in = {cfg.default_z_in:g}, z_out = {cfg.z_out:g}, "
            f"{cfg.default_cost_ticks:g} tick per side) and the spread of the grid"
        ),
        note="grid_max_* is the in-sample maximum over the grid, shown to size the selection "
        "effect, not as a result.\n\n" + caveat,
    )
    run.text("caveats", caveat)
    for name, params in calib.items():
        keep = [c for c in params.columns if not c.startswith(("oos_from",))]
        run.table(
            f"calibrations_{name}",
            params[keep].set_axis(params.index.strftime("%Y-%m-%d"), axis=0),
            fmt=".4g",
            title=f"{PANELS[name].label}: walk-forward calibrations (computed once in "
            f"{calib_seconds[name]:.1f} s, shared by every run of the grid)",
        )

    run.figure("equity_default", plot_equity(defaults, cfg))
    run.figure("sharpe_vs_zin", plot_sharpe(sweep, cfg))
    eq = pd.concat(
        {f"{n}_{s}_{k}": r.pnl[k] for n, d in defaults.items() for s, r in d.items()
         for k in ("equity", "gross")},
        axis=1,
    )  # fmt: skip
    eq.to_csv(run.path / "equity_default.csv")

    headline = {
        f"{row.panel}_{row.sizing}_default_{k}": float(getattr(row, f"default_{k}"))
        for row in summary.itertuples()
        for k in ("sharpe", "max_dd", "turnover", "total_net")
    }
    headline["n_backtests"] = float(len(sweep))
    headline["backtest_seconds"] = float(sweep["seconds"].sum())
    headline["calibration_seconds"] = float(sum(calib_seconds.values()))
    seconds = run.finish(headline)
    log("\n" + summary.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    log("\n" + caveat)
    log(
        f"\n{len(sweep)} backtests in {seconds:.1f} s (total {time.perf_counter() - t0:.1f} s), "
        f"of which {headline['calibration_seconds']:.1f} s in the calibrations (once per panel)"
    )
    log(f"wrote {run.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
