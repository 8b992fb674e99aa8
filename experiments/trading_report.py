"""Trading report: walk-forward backtests of the mispricing strategy over a grid of settings,
on four commodities, with the evidence needed to tell an edge from luck.

Runs :func:`ssjax.trading.backtest.walk_forward` (expanding-window MLE recalibrated every 13 dates
after a 104-date warm-up, filtered states only, fills on actual contracts, positions carried
across rolls, costs booked) for every sizing × entry threshold × cost × fill lag × book, on

* the bundled weekly WTI panel of Schwartz and Smith (2000) (F1, F5, F9, F13, F17, 268
  Tuesdays 1990-01-02 … 1995-02-14) with its settlement table;
* the bundled daily COMEX copper panel (``load_copper_schwartz97``), resampled to Tuesdays
  (``nearby_panel(..., 8, resample="W-TUE")``: 767 dates, 8 nearby contracts);
* the bundled NYMEX natural gas and ICE Brent panels (``load_natgas_rtl``,
  ``load_brent_rtl``: 414 Tuesdays 2007–2014, nearby ranks 1, 3, 6, 9, 12), each contract
  priced from all 36 ranks after it leaves its tenor.

The grid (defaults; every dimension is a command-line option):

* sizing: ``TradeEngine(sizing="vol_target")`` (10% ex-ante vol target) and
  ``TradeEngine(sizing="qp")`` (mean–variance QP, γ = 1 per year, α over a 0.25-year horizon);
* z_in ∈ {1.5, 2.0, 2.5}, z_out fixed at 0.5;
* costs: 0, 1, 2 exchange ticks per side, all in (WTI $0.01/bbl, copper 0.05 c/lb, natural
  gas $0.001/MMBtu, Brent $0.01/bbl), split 1/4 fee, 1/2 half-spread, 1/4 slippage; the costs
  also gate entries (an entry must expect to cover its round trip);
* fill lag: 0 (at the signal's own settlement, which no desk can do) and 1 date (the next
  settlement, the library's default); the default configuration is also run at lag 2;
* book: outright, or neutral to the model's long-term factor Y (Σw = 0).

The default configuration: z_in = 2, 1 tick per side, lag 1, outright. Evidence:

* every Sharpe ratio with its standard error (Lo 2002);
* a hold-out: the grid cell with the best Sharpe on the first half of the trading dates is
  judged on the second half, and its first-half Sharpe is deflated for the number of cells
  tried (Bailey & López de Prado 2014);
* the default configuration per calendar year, its net exposure and its correlation with a
  passive long in the front contract.

Conventions (those of :func:`ssjax.trading.metrics.compute_metrics`): P&L is per unit of capital
(weights are signed notional per unit capital; futures are unfunded, so P&L is an excess
return and no risk-free rate is subtracted), additive (no compounding). Sharpe = mean / s.d.
(ddof = 1) of the net P&L per period × √(periods per year), over every date from the first
trading date (flat dates included).

Written to a :class:`ssjax.analysis.runs.RunFolder`: ``sweep``, ``summary`` (with the verdict),
``holdout``, ``lags``, ``yearly``, ``caveats``, ``calibrations_<panel>`` (CSV and Markdown),
``equity_default.png``/``.csv``, ``sharpe_vs_zin.png`` and ``config.json``.

Usage::

    python experiments/trading_report.py [--quick] [--panels wti copper natgas brent]
        [--lags 0 1 2] [--books outright Y-neutral] [--out experiments/results/trading]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
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
from ssjax.trading.metrics import deflated_sharpe, expected_max_sharpe  # noqa: E402
from ssjax.trading.settings import WalkForwardSettings  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "trading"

#: how one tick per side of all-in cost is split among TradingConfig's frictions
FRICTION_SPLIT = {"fee": 0.25, "half_spread": 0.5, "slippage": 0.25}


@dataclass(frozen=True)
class Config:
    """The experiment's settings (every field is a command-line option)."""

    panels: tuple[str, ...] = ("wti", "copper", "natgas", "brent")
    sizing: tuple[str, ...] = ("vol_target", "qp")
    z_in: tuple[float, ...] = (1.5, 2.0, 2.5)
    z_out: float = 0.5  # fixed exit threshold (TradingConfig's default)
    cost_ticks: tuple[float, ...] = (0.0, 1.0, 2.0)  # all-in cost per side, in ticks
    lags: tuple[int, ...] = (0, 1)  # dates between a decision and its fill
    books: tuple[str, ...] = ("outright", "Y-neutral")
    default_z_in: float = TradingConfig().z_in  # the configuration whose equity is plotted
    default_cost_ticks: float = 1.0
    default_lag: int = TradingConfig().execution_lag
    default_book: str = "outright"
    min_window: int = 104
    recalibrate_every: int = 13
    vol_target: float = TradeEngine().vol_target
    gamma: float = TradeEngine().gamma


#: --quick: the WTI panel, two thresholds, two cost levels (8 backtests)
QUICK = {"panels": ("wti",), "z_in": (1.5, 2.0), "cost_ticks": (0.0, 1.0), "lags": (1,),
         "books": ("outright",)}  # fmt: skip

#: the factors each book is neutral to (TradingConfig.neutral)
BOOKS = {"outright": (), "Y-neutral": ("Y",), "XY-neutral": ("X", "Y")}


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


def _load_rtl(name: str) -> tuple[Panel, pd.DataFrame]:
    """The bundled RTL panel (Tuesdays, ranks 1, 3, 6, 9, 12) and, to price a contract
    after it leaves those ranks (every tenor rolls monthly), the settlements of all 36 ranks
    on the same dates as a long table."""
    load = {"natgas": ssjax.datasets.load_natgas_rtl, "brent": ssjax.datasets.load_brent_rtl}
    panel = load[name](ranks=(1, 3, 6, 9, 12))
    full = load[name](ranks=tuple(range(1, 37)))
    ok = np.asarray(full.mask, bool)
    t, i = np.nonzero(ok)
    settle = pd.DataFrame({
        "trade_date": pd.DatetimeIndex(full.dates)[t],
        "contract": np.asarray(full.contracts, object)[t, i],
        "settlement_price": np.asarray(full.F_mkt, float)[t, i],
        "commodity": full.commodity,
    }).drop_duplicates(["trade_date", "contract"])  # fmt: skip
    return panel, settle


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
    "natgas": PanelSpec(
        "NYMEX natural gas weekly (RTL, ranks 1, 3, 6, 9, 12)",
        "load_natgas_rtl",
        0.001,
        "USD/MMBtu",
        lambda: _load_rtl("natgas"),
    ),
    "brent": PanelSpec(
        "ICE Brent weekly (RTL, ranks 1, 3, 6, 9, 12)",
        "load_brent_rtl",
        0.01,
        "USD/bbl",
        lambda: _load_rtl("brent"),
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


def half_sharpe(pnl: pd.DataFrame, split: pd.Timestamp, ppy: float) -> tuple[float, float, int]:
    """(annualized Sharpe before ``split``, after it, periods before it); a half with no
    P&L at all (never invested) scores 0."""
    net = pnl["net"]
    out = []
    for part in (net[net.index < split], net[net.index >= split]):
        sd = float(part.std(ddof=1)) if len(part) > 1 else math.nan
        if sd > 0:
            out.append(float(part.mean()) / sd * math.sqrt(ppy))
        else:
            out.append(0.0 if len(part) and not part.any() else math.nan)
    return out[0], out[1], int((net.index < split).sum())


def sweep_row(res: BacktestResult, split: pd.Timestamp, **keys: Any) -> dict[str, Any]:
    m = res.metrics
    qp_fail = int((~res.status.isin(["ok"]) & ~res.status.str.endswith("optimal")).sum())
    h1, h2, n1 = half_sharpe(res.pnl, split, float(m["periods_per_year"]))
    return {
        **keys,
        "sharpe": float(m["sharpe"]),
        "sharpe_se": float(m["sharpe_se"]),  # Lo (2002), IID
        "sharpe_h1": h1,
        "sharpe_h2": h2,
        "n_h1": n1,
        "annual_return": m["annual_return"],
        "annual_vol": m["annual_volatility"],
        "sortino": m["sortino"],
        "calmar": m["calmar"],
        "max_drawdown": m["max_drawdown"],
        "max_dd_periods": m["max_drawdown_periods"],
        "turnover": m["turnover"],
        "total_net": m["total_net"],
        "total_gross": m["total_gross"],
        "total_cost": m["total_cost"],
        "cost_share": m["cost_share"],
        "net_exposure": m["net_exposure"],
        "gross_exposure": m["gross_exposure"],
        "beta_front": m["beta"],
        "corr_front": m["correlation"],
        "n_trades": int(m["n_trades"]),
        "entries": entries(res.positions),
        "round_trips": len(res.round_trips),
        "pnl_per_trip": float(res.round_trips["pnl"].mean()) if len(res.round_trips) else 0.0,
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
) -> tuple[list[dict[str, Any]], dict[str, BacktestResult], pd.DataFrame, float, list]:
    """Every grid point on one panel, and the default configuration under lags 0, 1 and 2;
    returns the rows, the default runs, the Θ path, the calibration seconds (once: every
    grid point reuses them) and the lag rows."""
    spec = PANELS[name]
    median_px = float(np.nanmedian(panel.F_mkt))
    rows: list[dict[str, Any]] = []
    defaults: dict[str, BacktestResult] = {}
    # the calibrations do not depend on the trading settings: run them once per panel
    walk = WalkForwardSettings(min_window=cfg.min_window, recalibrate_every=cfg.recalibrate_every)
    cal = calibrate_walk_forward(panel, walk)
    log(f"{name:6s} {len(cal.cal_dates)} calibrations in {cal.info['seconds']:.1f} s")
    dates = pd.DatetimeIndex(panel.dates)
    # the hold-out split: the first half of the trading dates selects, the second judges
    split = dates[cal.cal_dates[0] + (len(dates) - cal.cal_dates[0]) // 2]

    def one(sizing: str, z_in: float, ticks: float, lag: int, book: str) -> dict[str, Any]:
        fr = frictions(ticks, spec.tick)
        trading = TradingConfig(z_in=z_in, z_out=cfg.z_out, execution_lag=lag,
                                neutral=BOOKS[book], **fr)  # fmt: skip
        res = walk_forward(panel, settle, walk, trading=trading, engine=engines[sizing],
                           calibration=cal)  # fmt: skip
        cost = ticks * spec.tick
        row = sweep_row(res, split, panel=name, sizing=sizing, z_in=z_in, z_out=cfg.z_out,
                        cost_ticks=ticks, cost_per_side=cost, cost_bp=1e4 * cost / median_px,
                        lag=lag, book=book)  # fmt: skip
        is_default = (z_in, ticks, lag, book) == (
            cfg.default_z_in,
            cfg.default_cost_ticks,
            cfg.default_lag,
            cfg.default_book,
        )
        if is_default:
            defaults[sizing] = res
        log(
            f"{name:6s} {sizing:10s} z_in={z_in:<4g} cost={ticks:g} lag={lag} {book:10s}: "
            f"Sharpe {row['sharpe']:+.2f} ± {row['sharpe_se']:.2f}  net exp "
            f"{row['net_exposure']:+.2f}  entries {row['entries']:3d}  ({row['seconds']:.1f} s)"
        )
        return row

    for sizing in cfg.sizing:
        for z_in in cfg.z_in:
            for ticks in cfg.cost_ticks:
                for lag in cfg.lags:
                    for book in cfg.books:
                        rows.append(one(sizing, z_in, ticks, lag, book))
    lag_rows = []
    for sizing in cfg.sizing:
        for lag in (0, 1, 2):
            hit = [r for r in rows if (r["sizing"], r["z_in"], r["cost_ticks"], r["lag"],
                   r["book"]) == (sizing, cfg.default_z_in, cfg.default_cost_ticks, lag,
                   cfg.default_book)]  # fmt: skip
            lag_rows.append(hit[0] if hit else one(sizing, cfg.default_z_in,
                                                    cfg.default_cost_ticks, lag,
                                                    cfg.default_book))  # fmt: skip
    return rows, defaults, cal.params, float(cal.info["seconds"]), lag_rows


def holdout(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per panel and sizing: the grid cell with the best Sharpe on the first half of the
    trading dates, its Sharpe on the second half, and the deflated Sharpe ratio of that
    first-half choice given how many cells were tried (Bailey & López de Prado 2014)."""
    out = []
    for (name, sizing), sub in sweep.groupby(["panel", "sizing"], sort=False):
        ok = sub.dropna(subset=["sharpe_h1"])
        if ok.empty:
            continue
        best = ok.loc[ok["sharpe_h1"].idxmax()]
        n1 = int(best.n_h1)
        ppy = float(best.periods_per_year)
        per_period = ok["sharpe_h1"].to_numpy(float) / math.sqrt(ppy)
        dsr = deflated_sharpe(float(best.sharpe_h1) / math.sqrt(ppy), len(ok), per_period, n1)
        n2 = float(best.n_periods) - n1
        se2 = math.sqrt((1 + 0.5 * (best.sharpe_h2 / math.sqrt(ppy)) ** 2) / n2 * ppy)
        out.append({
            "panel": name, "sizing": sizing, "cells": len(ok),
            "chosen": f"z_in={best.z_in:g}, {best.cost_ticks:g} tick, lag {int(best.lag)}, "
                      f"{best.book}",
            "sharpe_first_half": float(best.sharpe_h1),
            "deflated_sharpe_prob": dsr,
            "sharpe_second_half": float(best.sharpe_h2),
            "second_half_se": se2,
            "grid_median_second_half": float(ok["sharpe_h2"].median()),
        })  # fmt: skip
    return pd.DataFrame(out)


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
            sub = sweep[(sweep["panel"] == name) & (sweep["sizing"] == sizing)
                        & (sweep["lag"] == cfg.default_lag)
                        & (sweep["book"] == cfg.default_book)]  # fmt: skip
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
    ap.add_argument("--lags", nargs="+", type=int, default=None)
    ap.add_argument("--books", nargs="+", choices=sorted(BOOKS), default=None)
    ap.add_argument("--min-window", type=int, default=d.min_window)
    ap.add_argument("--recalibrate-every", type=int, default=d.recalibrate_every)
    ap.add_argument("--vol-target", type=float, default=d.vol_target)
    ap.add_argument("--gamma", type=float, default=d.gamma, help="QP risk aversion")
    a = ap.parse_args(argv)
    cfg = replace(d, **QUICK) if a.quick else d
    over = {
        "panels": a.panels, "sizing": a.sizing, "z_in": a.z_in, "cost_ticks": a.cost_ticks,
        "lags": a.lags, "books": a.books,
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
        lags=tuple(sorted({*cfg.lags, cfg.default_lag})),
        books=tuple(dict.fromkeys((cfg.default_book, *cfg.books))),
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
    lag_rows: list[dict[str, Any]] = []
    defaults: dict[str, dict[str, BacktestResult]] = {}
    calib: dict[str, pd.DataFrame] = {}
    calib_seconds: dict[str, float] = {}
    for name, (panel, settle) in data.items():
        r, defaults[name], calib[name], calib_seconds[name], lr = run_panel(
            name, panel, settle, cfg, engines, log
        )
        rows += r
        lag_rows += lr
    sweep = pd.DataFrame(rows)
    met = {n: next(iter(defaults[n].values())).metrics for n in defaults}
    sweep["n_years"] = [met[p]["n_periods"] / met[p]["periods_per_year"] for p in sweep.panel]
    sweep["n_periods"] = [met[p]["n_periods"] for p in sweep.panel]
    sweep["periods_per_year"] = [met[p]["periods_per_year"] for p in sweep.panel]
    caveat = caveat_text(sweep)

    cols = [
        "panel", "sizing", "z_in", "cost_ticks", "lag", "book", "sharpe", "sharpe_se",
        "sharpe_h1", "sharpe_h2", "annual_return", "annual_vol", "max_drawdown", "turnover",
        "cost_share", "net_exposure", "corr_front", "entries", "pnl_per_trip",
    ]  # fmt: skip
    sweep_out = sweep.drop(columns=["n_years"])
    run.table(
        "sweep",
        sweep_out[cols],
        fmt=".3g",
        index=False,
        title=f"Walk-forward backtests: sizing × z_in × cost × lag × book (z_out = {cfg.z_out:g})",
        note="Sharpe annualized (no risk-free rate; flat dates included) with its Lo (2002) "
        "standard error; sharpe_h1/h2 on the first and second half of the trading dates; "
        "max_drawdown and total P&L per unit capital; turnover = Σ|Δw| per year; lag = dates "
        "from the decision to the fill; book = outright or neutral to the long-term factor Y "
        "(Σw = 0); net_exposure = mean Σw; corr_front = correlation of the net P&L with a "
        "passive long in the front contract; pnl_per_trip = mean net P&L of a round trip. "
        "All columns (Sortino, Calmar, drawdown duration, beta, hit rate, QP failures, "
        "seconds) in sweep.csv.\n\n" + caveat,
    )
    sweep_out.to_csv(run.path / "sweep.csv", index=False)

    lags = pd.DataFrame(lag_rows)[["panel", "sizing", "lag", "sharpe", "sharpe_se",
                                   "annual_return", "max_drawdown", "cost_share",
                                   "n_trades"]]  # fmt: skip
    run.table("lags", lags, fmt=".3g", index=False,
              title=f"The default configuration (z_in = {cfg.default_z_in:g}, "
              f"{cfg.default_cost_ticks:g} tick, {cfg.default_book}) filled 0, 1 and 2 dates "
              "after the decision")  # fmt: skip

    summ = []
    for (name, sizing), sub in sweep.groupby(["panel", "sizing"], sort=False):
        keys = (sub.z_in == cfg.default_z_in) & (sub.cost_ticks == cfg.default_cost_ticks)
        d = sub[keys & (sub.lag == cfg.default_lag) & (sub.book == cfg.default_book)].iloc[0]
        costed = sub[(sub.cost_ticks > 0) & (sub.lag >= 1)]
        summ.append({
            "panel": name, "sizing": sizing,
            "default_sharpe": d.sharpe, "default_se": d.sharpe_se,
            "default_net_exposure": d.net_exposure, "default_corr_front": d.corr_front,
            "default_max_dd": d.max_drawdown, "default_entries": int(d.entries),
            "grid_n": len(sub),
            "grid_median_sharpe": float(sub["sharpe"].median()),
            "costed_lagged_n": len(costed),
            "costed_lagged_max_sharpe": float(costed["sharpe"].max()) if len(costed) else math.nan,
            "costed_lagged_over_2se": int((costed["sharpe"] > 2 * costed["sharpe_se"]).sum()),
        })  # fmt: skip
    summary = pd.DataFrame(summ)
    hold = holdout(sweep)
    verdict = verdict_text(summary, hold)
    run.table(
        "summary", summary, fmt=".3g", index=False,
        title=(f"Default configuration (z_in = {cfg.default_z_in:g}, z_out = {cfg.z_out:g}, "
               f"{cfg.default_cost_ticks:g} tick per side, lag {cfg.default_lag}, "
               f"{cfg.default_book}) and the costed, lagged part of the grid"),
        note="costed_lagged_*: grid cells with costs > 0 and a fill lag >= 1 (what a desk "
        "could trade); _over_2se counts those whose Sharpe exceeds twice its standard "
        "error.\n\n" + verdict + "\n\n" + caveat,
    )  # fmt: skip
    run.table(
        "holdout", hold, fmt=".3g", index=False,
        title="Selection on the first half of the trading dates, judged on the second",
        note="deflated_sharpe_prob: the probability that the chosen cell's first-half Sharpe "
        "beats the best of that many unskilled cells (Bailey & López de Prado 2014); above "
        "0.95 the choice would not be the luck of the sweep.",
    )  # fmt: skip
    run.text("caveats", caveat + "\n\n" + verdict)
    yearly = pd.concat(
        {(n, sz): r.yearly for n, d in defaults.items() for sz, r in d.items()},
        names=["panel", "sizing"],
    )
    run.table("yearly", yearly, fmt=".3g", title="The default configuration by calendar year")
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
        for k in ("sharpe", "se", "max_dd", "net_exposure")
    }
    headline["n_backtests"] = float(len(sweep))
    headline["backtest_seconds"] = float(sweep["seconds"].sum())
    headline["calibration_seconds"] = float(sum(calib_seconds.values()))
    seconds = run.finish(headline)
    log("\n" + summary.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    log("\n" + hold.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    log("\n" + verdict)
    log(
        f"\n{len(sweep)} backtests in {seconds:.1f} s (total {time.perf_counter() - t0:.1f} s), "
        f"of which {headline['calibration_seconds']:.1f} s in the calibrations (once per panel)"
    )
    log(f"wrote {run.path}")
    return 0


def verdict_text(summary: pd.DataFrame, hold: pd.DataFrame) -> str:
    """Whether any setting shows an edge after costs and a fill lag, in words."""
    lines = ["**Is there an edge?**"]
    any_edge = False
    for r in summary.itertuples():
        h = hold[(hold.panel == r.panel) & (hold.sizing == r.sizing)]
        h2 = float(h.sharpe_second_half.iloc[0]) if len(h) else math.nan
        se2 = float(h.second_half_se.iloc[0]) if len(h) else math.nan
        dsr = float(h.deflated_sharpe_prob.iloc[0]) if len(h) else math.nan
        edge = r.costed_lagged_over_2se > 0 and h2 > 2 * se2 and dsr > 0.95
        any_edge |= bool(edge)
        lines.append(
            f"* {r.panel}, {r.sizing}: default {r.default_sharpe:+.2f} ± {r.default_se:.2f}; "
            f"{r.costed_lagged_over_2se} of {r.costed_lagged_n} costed, lagged cells above 2 "
            f"s.e.; the first half's best cell scores {h2:+.2f} ± {se2:.2f} on the second "
            f"half (deflated-Sharpe probability {dsr:.2f}): "
            + ("an edge that survives selection." if edge else "no evidence of an edge.")
        )
    lines.append(
        "\nVerdict: "
        + (
            "at least one setting shows an edge after costs, lag and selection."
            if any_edge
            else "no setting shows an edge after costs, a fill lag and the selection over the grid."
        )  # fmt: skip
    )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
