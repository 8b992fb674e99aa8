r"""Walk-forward backtest of the mispricing strategy on actual contracts, with no look-ahead.

:func:`walk_forward` strings the blocks together over a tenor :class:`~ssjax.datasets.Panel`:

1. **Calibration** at dates ``start, start + recalibrate_every, …``: Θ is fitted by
   :func:`ssjax.fit.mle.fit_mle` on the data up to and including that date only (an expanding
   window), warm-started from the previous Θ. Every window is padded with fully masked dates
   (:func:`ssjax.core.market.pad_dates`) to the panel's full length, so one compiled program serves
   all windows.
2. **States**: between two calibrations Θ is fixed and the states are the *filtered* means
   (they use the data up to each date only; nothing is smoothed). The model forwards are
   ``forward_curve(Θ, x_t|t, ttm_t)``; the model's variances at t
   (:func:`ssjax.trading.engine.residual_variances`: the filtered residual's for
   ``z_method="filtered"``, the default, and the one-step innovation's for
   ``z_method="innovation"``) standardize the z-scores; the past residuals
   ln F_mkt − ln F_model (each computed with the model in force on its own date) feed
   ``z_method="residual"`` and ``sigma_method="residuals"``.
3. **Decisions**: :func:`ssjax.trading.engine.prepare_trading_inputs` and
   :meth:`ssjax.trading.engine.TradeEngine.decide` at every date from ``start`` on.
4. **Execution and P&L** (:func:`simulate_execution`): orders at t fill at t's settlement of
   the tenor's contract; from t to t+1 a weight w earns w·(P_c(t+1)/P_c(t) − 1) on the
   contract c actually held (never a spliced nearby series). When the tenor's contract
   changes (a roll), the old contract is closed and the target opened in the new one (two
   trades, both pay costs). A contract on its last trading day (ttm = 0), or expiring
   before the next date of the panel, is not held overnight (:func:`expiring_before_next`;
   the trading block sees it as not tradable). A trade of |Δw| costs
   |Δw|·(fee + half_spread + slippage)/price.

Conventions of the outputs: ``pnl.loc[t]`` is the P&L earned over (t−1, t] by the weights
held after trading at t−1, minus the costs of the trades at t; weights are held constant
between dates (rebalanced to the target, no drift), as in the trading module.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ssjax.analysis.diagnostics import joint_innovations
from ssjax.analysis.drift import wilson_hilferty
from ssjax.compile_cache import compile_log
from ssjax.core.filter import kalman_filter
from ssjax.core.market import MarketData, make_market_data, pad_dates
from ssjax.core.model import forward_curve
from ssjax.core.params import Params, flatten_params
from ssjax.data.panels import Panel
from ssjax.fit.inference import per_date_scores
from ssjax.fit.mle import default_start, fit_mle, status_message, stopped
from ssjax.progress import progress_bar
from ssjax.trading.engine import (
    Order,
    TradeEngine,
    TradingConfig,
    prepare_trading_inputs,
    residual_variances,
)
from ssjax.trading.settings import WalkForwardSettings

__all__ = [
    "CalibrationPath",
    "calibrate_walk_forward",
    "BacktestResult",
    "ExecutionResult",
    "PriceBook",
    "compute_metrics",
    "executable_target",
    "expiring_before_next",
    "simulate_execution",
    "step_pnl",
    "walk_forward",
]

_filter_jit = jax.jit(kalman_filter)


@jax.jit
def _nis_jit(p: Params, data: MarketData, filt) -> tuple[jax.Array, jax.Array]:
    """Joint normalized innovation squared per date and its degrees of freedom."""
    _, nis, nobs, _ = joint_innovations(p, data, filt)
    return nis, nobs


@jax.jit
def _se_jit(p: Params, data: MarketData) -> jax.Array:
    """Outer-product-of-gradients (BHHH) standard errors of the flat physical parameters.

    (Σ_t s_t s_tᵀ)⁻¹ with s_t the per-date scores (forward mode): statsmodels' default
    ``cov_type="opg"``; it compiles in a fraction of the exact Hessian's time, which matters
    for a drift check run at every recalibration.
    """
    J = per_date_scores(flatten_params(p), p, data)
    return jnp.sqrt(jnp.diag(jnp.linalg.inv(J.T @ J)))


_forwards_jit = jax.jit(jax.vmap(forward_curve, in_axes=(None, 0, 0)))


# ---- prices of actual contracts ---------------------------------------------------------------
def _valid_code(c: Any) -> bool:
    if c is None:
        return False
    if isinstance(c, float) and math.isnan(c):
        return False
    return str(c) != ""


class PriceBook:
    """Settlement price of a given contract on a given date of the panel.

    Looks the contract up in ``settlements`` (columns ``trade_date, contract,
    settlement_price`` and optionally ``commodity``) when given, otherwise (or when the table
    has no price there) among all tenors of the panel on that date: a contract may appear
    under another tenor than the one it was bought in. NaN when no price is known.
    """

    def __init__(self, panel: Panel, settlements: pd.DataFrame | None = None) -> None:
        F = np.asarray(panel.F_mkt, float)
        mask = np.isfinite(F) if panel.mask is None else np.asarray(panel.mask, bool)
        codes = np.asarray(panel.contracts, dtype=object)
        self._rows: list[dict[str, float]] = []
        for t in range(F.shape[0]):
            row: dict[str, float] = {}
            for i in range(F.shape[1]):
                c = codes[t, i]
                if mask[t, i] and np.isfinite(F[t, i]) and F[t, i] > 0 and _valid_code(c):
                    row[str(c)] = float(F[t, i])
            self._rows.append(row)
        self._settle: dict[str, np.ndarray] = {}
        if settlements is not None:
            need = {"trade_date", "contract", "settlement_price"}
            missing = need - set(settlements.columns)
            if missing:
                raise ValueError(f"settlements lacks the columns {sorted(missing)}")
            s = settlements
            if panel.commodity is not None and "commodity" in s.columns:
                s = s[s["commodity"] == panel.commodity]
            s = s[["trade_date", "contract", "settlement_price"]].dropna(
                subset=["contract", "settlement_price"]
            )
            wide = (
                s.assign(trade_date=pd.to_datetime(s["trade_date"]))
                .groupby(["trade_date", "contract"])["settlement_price"]
                .last()
                .unstack("contract")
                .reindex(pd.DatetimeIndex(panel.dates))
            )
            self._settle = {str(c): wide[c].to_numpy(float) for c in wide.columns}

    def price(self, contract: Any, t: int) -> float:
        """Price of ``contract`` at date index ``t`` (NaN if unknown)."""
        if not _valid_code(contract):
            return math.nan
        col = self._settle.get(str(contract))
        if col is not None:
            p = col[t]
            if np.isfinite(p) and p > 0:
                return float(p)
        return self._rows[t].get(str(contract), math.nan)


# ---- the P&L and execution steps -------------------------------------------------------------
def expiring_before_next(ttm: np.ndarray, dt: np.ndarray, last_step: float = 0.0) -> np.ndarray:
    """[T, M] bool: the cell's contract cannot be held to the next date of the panel.

    True on its last trading day (ttm <= 0) and when its last trading day falls strictly
    before the next date (ttm < dt[t], e.g. a weekly panel whose front contract expires on
    the Monday before the next Tuesday: it would have no price to be marked at). The schedule
    of dates is known in advance, so this uses no future prices. On the last date the step
    to the next date is ``last_step`` (default 0: only ttm <= 0 counts there).
    """
    ttm = np.asarray(ttm, float)
    nxt = np.concatenate([np.asarray(dt, float), [float(last_step)]])[:, None]
    with np.errstate(invalid="ignore"):
        return np.isfinite(ttm) & ((ttm <= 0) | (ttm < nxt - 1e-12))


def executable_target(
    target: ArrayLike,
    w_prev: ArrayLike,
    price_t: ArrayLike,
    codes_t: ArrayLike,
    expiring_t: ArrayLike,
) -> np.ndarray:
    """The weights that the execution layer actually holds after trading at t.

    ``target`` [M] is kept where the tenor can be filled at t (a contract code and a price
    > 0); where it cannot, the position ``w_prev`` is kept (no order); where the tenor's
    contract is on its last trading day or expires before the next date (``expiring_t``,
    from :func:`expiring_before_next`), it is closed whatever the target. The rule of
    :func:`simulate_execution`, and of the main job's ``orders_t``.
    """
    target = np.asarray(target, float)
    w_prev = np.asarray(w_prev, float)
    px = np.asarray(price_t, float)
    M = target.shape[0]
    for name, a in (("w_prev", w_prev), ("price_t", px)):
        if a.shape != (M,):
            raise ValueError(f"{name} must have shape [{M}] like target, got {a.shape}")
    codes = np.asarray(codes_t, dtype=object)
    exp = np.asarray(expiring_t, bool)
    if codes.shape != (M,) or exp.shape != (M,):
        raise ValueError(f"codes_t and expiring_t must have shape [{M}]")
    valid = np.array([_valid_code(c) for c in codes], bool)
    with np.errstate(invalid="ignore"):
        can = valid & np.isfinite(px) & (px > 0)
    out = np.where(can, target, w_prev)
    return np.where(can & exp, 0.0, out)


def step_pnl(
    w_prev: np.ndarray,
    held_prev: np.ndarray,
    marks_prev: np.ndarray,
    price_next: Callable[[Any], float],
) -> tuple[np.ndarray, np.ndarray]:
    """P&L per tenor over one step, on the contracts actually held.

    Args:
        w_prev: weights [M] held over the step.
        held_prev: contract held per tenor [M] (None or "" when flat).
        marks_prev: last mark price of each held contract [M].
        price_next: contract code -> price at the end of the step (NaN if none).

    Returns:
        ``(pnl [M], marks [M])``: pnl_i = w_i·(P_next/mark_i − 1) where the held contract has
        a price at the end of the step, and the marks moved there; a position whose contract
        has no price is carried at its last mark (pnl 0, mark unchanged), so the whole move is
        booked when a price reappears.
    """
    w_prev = np.asarray(w_prev, float)
    marks = np.array(marks_prev, float, copy=True)
    pnl = np.zeros_like(w_prev)
    for i in np.flatnonzero(w_prev != 0):
        if not _valid_code(held_prev[i]):
            continue
        p1 = price_next(held_prev[i])
        if np.isfinite(p1) and p1 > 0:
            pnl[i] = w_prev[i] * (p1 / marks[i] - 1.0)
            marks[i] = p1
    return pnl, marks


@dataclass
class ExecutionResult:
    """What :func:`simulate_execution` books (DataFrames indexed by date)."""

    positions: pd.DataFrame  # weights held after trading at t [dates x tenors]
    held: pd.DataFrame  # contract held per tenor after trading at t ("" when flat)
    trades: pd.DataFrame  # one row per fill
    pnl: pd.DataFrame  # gross, cost, net, equity, exposure, turnover
    orders: list[list[Order]]  # orders executed in the tenors' current contracts, per date
    pre_trade: pd.DataFrame | None = None  # weights going into t's decision (after rolls)


_TRADE_COLUMNS = [
    "date",
    "tenor_id",
    "tenor",
    "contract",
    "side",
    "size",
    "price",
    "cost",
    "kind",
    "stale_price",
]


def simulate_execution(
    panel: Panel,
    decide: Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]],
    *,
    settlements: pd.DataFrame | None = None,
    start: int = 0,
    min_trade: float = 1e-12,
) -> ExecutionResult:
    """Book fills, positions and P&L on actual contracts for target weights from ``decide``.

    At each date t from ``start`` on:

    1. the positions held since t−1 earn w·(P_c(t)/P_c(t−1) − 1) on their contract c
       (:func:`step_pnl`, prices from :class:`PriceBook`);
    2. **rolls**: a position whose contract is no longer the tenor's contract at t is closed
       in its old contract at its price at t (at its last mark, flagged ``stale_price``,
       when the old contract has no price at t);
    3. ``decide(t, w_prev)`` returns ``(target [M], cost_per_contract [M])``, with ``w_prev``
       the weights after the roll closes (0 in a rolled tenor; booked as ``pre_trade``);
    4. the target is filled at t's settlement ``panel.F_mkt[t, i]`` of the tenor's contract
       ``panel.contracts[t, i]``, except where the tenor has no price or contract at t (the
       position is kept) and where the contract is on its last trading day or expires
       before the next date of the panel (:func:`expiring_before_next`: the position is
       closed whatever the target, since it could not be marked at the next date;
       :func:`executable_target`);
    5. every fill of |Δw| costs |Δw|·cost_per_contract_i/price.

    Returns:
        :class:`ExecutionResult`. ``trades.kind`` is ``"roll_close"`` for the closes of step
        2 and ``"order"`` for step 4 (those are also the per-date ``orders``).
    """
    F = np.asarray(panel.F_mkt, float)
    T, M = F.shape
    mask = np.isfinite(F) if panel.mask is None else np.asarray(panel.mask, bool)
    ttm = np.asarray(panel.ttm, float)
    codes = np.asarray(panel.contracts, dtype=object)
    names = list(panel.tenor_names)
    dates = pd.DatetimeIndex(panel.dates)
    if not 0 <= start < T:
        raise ValueError(f"start must lie in [0, {T - 1}], got {start}")
    book = PriceBook(panel, settlements)
    expiring = expiring_before_next(ttm, np.asarray(panel.dt, float))

    w = np.zeros(M)
    held = np.full(M, None, dtype=object)
    marks = np.full(M, np.nan)
    pos_rows, pre_rows, held_rows, pnl_rows, orders_all, trades = [], [], [], [], [], []
    for t in range(start, T):
        date = dates[t]
        exposure = float(np.sum(np.abs(w)))
        pnl_i, marks = step_pnl(w, held, marks, lambda c, t=t: book.price(c, t))
        gross = float(np.sum(pnl_i))

        # rolls: close what is no longer the tenor's contract
        closes = []
        for i in np.flatnonzero(w != 0):
            if _valid_code(codes[t, i]) and held[i] != codes[t, i]:
                p = book.price(held[i], t)
                stale = not (np.isfinite(p) and p > 0)
                side = "SELL" if w[i] > 0 else "BUY"
                closes.append((i, held[i], side, abs(w[i]), marks[i] if stale else p, stale))
                w[i] = 0.0
                held[i] = None
                marks[i] = np.nan

        pre_rows.append(w.copy())
        target, cpc = decide(t, w.copy())
        target = np.array(target, float, copy=True)
        cpc = np.broadcast_to(np.asarray(cpc, float), (M,))
        if target.shape != (M,):
            raise ValueError(f"decide must return target weights [{M}], got {target.shape}")

        px = np.where(mask[t] & np.isfinite(F[t]) & (F[t] > 0), F[t], np.nan)
        target = executable_target(target, w, px, codes[t], expiring[t])
        dw = target - w
        fill = np.abs(dw) > min_trade

        cost = 0.0
        turnover = 0.0
        for i, c, side, size, price, stale in closes:
            fee = size * cpc[i] / price
            cost += fee
            turnover += size
            trades.append(
                (date, int(i), names[i], str(c), side, float(size), float(price), float(fee))
                + ("roll_close", bool(stale))
            )
        orders = []
        for i in np.flatnonzero(fill):
            size = float(abs(dw[i]))
            side = "BUY" if dw[i] > 0 else "SELL"
            fee = size * cpc[i] / px[i]
            cost += fee
            turnover += size
            orders.append(Order(int(i), side, size))
            trades.append(
                (date, int(i), names[i], str(codes[t, i]), side, size, float(px[i]), float(fee))
                + ("order", False)
            )
            w[i] = target[i]
            if w[i] != 0:
                held[i] = codes[t, i]
                marks[i] = px[i]
            else:
                held[i] = None
                marks[i] = np.nan

        pos_rows.append(w.copy())
        held_rows.append(["" if not _valid_code(c) else str(c) for c in held])
        pnl_rows.append((gross, cost, gross - cost, exposure, turnover))
        orders_all.append(orders)

    idx = pd.DatetimeIndex(dates[start:], name="date")
    pnl = pd.DataFrame(
        pnl_rows, index=idx, columns=["gross", "cost", "net", "exposure", "turnover"]
    )
    pnl.insert(3, "equity", pnl["net"].cumsum())
    trades_df = pd.DataFrame(trades, columns=_TRADE_COLUMNS)
    trades_df["date"] = pd.to_datetime(trades_df["date"])
    return ExecutionResult(
        positions=pd.DataFrame(np.array(pos_rows).reshape(-1, M), index=idx, columns=names),
        held=pd.DataFrame(
            np.array(held_rows, dtype=object).reshape(-1, M), index=idx, columns=names
        ),
        trades=trades_df,
        pnl=pnl,
        orders=orders_all,
        pre_trade=pd.DataFrame(np.array(pre_rows).reshape(-1, M), index=idx, columns=names),
    )


# ---- metrics -----------------------------------------------------------------------------------
def compute_metrics(pnl: pd.DataFrame, n_trades: int, periods_per_year: float) -> pd.Series:
    """Summary statistics of a P&L table from :func:`simulate_execution`.

    * ``annual_return`` = mean net P&L per period × periods per year; ``annual_volatility`` =
      s.d. × √(periods per year); ``sharpe`` their ratio (NaN when the s.d. is 0);
    * ``max_drawdown``: the largest fall of the cumulative net P&L from a running peak
      (additive, the path starts at 0);
    * ``turnover``: Σ|Δw| (roll closes included) per year;
    * ``hit_rate``: share of dates with nonzero positions held over the period whose net P&L
      is > 0;
    * ``cost_share``: total costs / |total gross P&L|;
    * ``n_trades``: fills (roll closes included).
    """
    net = pnl["net"].to_numpy(float)
    n = net.size
    ppy = float(periods_per_year)
    years = n / ppy if n else math.nan
    mean = float(np.mean(net)) if n else math.nan
    sd = float(np.std(net, ddof=1)) if n > 1 else math.nan
    ann_ret = mean * ppy
    ann_vol = sd * math.sqrt(ppy)
    sharpe = ann_ret / ann_vol if ann_vol > 0 else math.nan
    eq = np.concatenate([[0.0], np.cumsum(net)])
    max_dd = float(np.max(np.maximum.accumulate(eq) - eq))
    invested = pnl["exposure"].to_numpy(float) > 0
    hit = float(np.mean(net[invested] > 0)) if invested.any() else math.nan
    gross_total = float(pnl["gross"].sum())
    cost_total = float(pnl["cost"].sum())
    cost_share = cost_total / abs(gross_total) if gross_total != 0 else math.nan
    return pd.Series(
        {
            "annual_return": ann_ret,
            "annual_volatility": ann_vol,
            "sharpe": sharpe,
            "max_drawdown": max_dd,
            "turnover": float(pnl["turnover"].sum()) / years if n else math.nan,
            "hit_rate": hit,
            "cost_share": cost_share,
            "n_trades": float(n_trades),
            "total_gross": gross_total,
            "total_cost": cost_total,
            "total_net": gross_total - cost_total,
            "n_periods": float(n),
            "periods_per_year": ppy,
        },
        name="metrics",
    )


# ---- the result --------------------------------------------------------------------------------
@dataclass
class BacktestResult:
    """Output of :func:`walk_forward` (DataFrames indexed by the trading dates)."""

    positions: pd.DataFrame  # weights held after trading at t
    held: pd.DataFrame  # contract codes held ("" when flat)
    signals: pd.DataFrame  # {-1, 0, +1} from the engine
    z: pd.DataFrame
    F_model: pd.DataFrame
    F_mkt: pd.DataFrame
    ttm: pd.DataFrame
    trades: pd.DataFrame  # date, tenor_id, tenor, contract, side, size, price, cost, kind, ...
    pnl: pd.DataFrame  # gross, cost, net, equity, exposure, turnover
    params: pd.DataFrame  # Θ per calibration date, loglik, converged, ...
    orders: list[list[Order]]  # one list per trading date
    metrics: pd.Series
    status: pd.Series  # the engine's status per date ("ok" or the QP solver's)
    info: dict[str, Any] = field(default_factory=dict)
    pre_trade: pd.DataFrame | None = None  # weights going into t's decision (after rolls)

    def report(self, folder: str | Path) -> list[Path]:
        """Write CSVs (positions, trades, pnl, params), ``metrics.json`` and three PNGs.

        ``equity.png``: cumulative net (and gross) P&L; ``zscores.png``: z per tenor with the
        ±z_in / ±z_out bands; ``curves.png``: market vs model forwards on a few dates (the
        last one included). Returns the paths written.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        for name in ("positions", "trades", "pnl", "params"):
            p = out / f"{name}.csv"
            getattr(self, name).to_csv(p, index=name != "trades")
            paths.append(p)
        p = out / "metrics.json"
        clean = {k: (float(v) if np.isfinite(v) else None) for k, v in self.metrics.items()}
        p.write_text(json.dumps(clean, indent=2) + "\n")
        paths.append(p)

        # equity
        fig, ax = plt.subplots(figsize=(9, 4.5))
        ax.plot(self.pnl.index, self.pnl["equity"], label="net")
        ax.plot(self.pnl.index, self.pnl["gross"].cumsum(), lw=0.8, ls="--", label="gross")
        for d in self.params.index:
            ax.axvline(d, color="0.85", lw=0.6, zorder=0)
        ax.set_title("Cumulative P&L (per unit capital; grey: recalibrations)")
        ax.set_ylabel("P&L")
        ax.legend()
        fig.tight_layout()
        p = out / "equity.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

        # z-scores with the hysteresis bands
        cfg = self.info.get("trading", {})
        z_in, z_out = cfg.get("z_in", 2.0), cfg.get("z_out", 0.5)
        M = self.z.shape[1]
        fig, axes = plt.subplots(M, 1, figsize=(9, 1.6 * M + 1), sharex=True, squeeze=False)
        for i, name in enumerate(self.z.columns):
            ax = axes[i, 0]
            ax.plot(self.z.index, self.z[name], lw=0.8)
            held = self.positions[name].to_numpy() != 0
            ax.fill_between(
                self.z.index, 0, 1, where=held, transform=ax.get_xaxis_transform(),
                color="tab:green", alpha=0.12, lw=0,
            )  # fmt: skip
            for v, ls in ((z_in, "--"), (-z_in, "--"), (z_out, ":"), (-z_out, ":")):
                ax.axhline(v, color="tab:red", ls=ls, lw=0.7)
            ax.set_ylabel(f"z {name}")
        axes[0, 0].set_title("z-scores (dashed ±z_in, dotted ±z_out, shaded: position held)")
        fig.tight_layout()
        p = out / "zscores.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

        # curves on a few dates
        n = len(self.F_mkt)
        picks = sorted({0, n // 3, (2 * n) // 3, n - 1})
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for k, j in enumerate(picks):
            col = f"C{k}"
            x = self.ttm.iloc[j].to_numpy(float)
            order = np.argsort(x)
            label = f"{self.F_mkt.index[j]:%Y-%m-%d}"
            ax.plot(x[order], self.F_model.iloc[j].to_numpy(float)[order], "-", color=col,
                    label=f"model {label}")  # fmt: skip
            ax.plot(x[order], self.F_mkt.iloc[j].to_numpy(float)[order], "o", color=col,
                    mfc="none", label=f"market {label}")  # fmt: skip
        ax.set_xlabel("time to maturity (years)")
        ax.set_ylabel("futures price")
        ax.set_title("Market (circles) vs model (lines) forward curves")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        p = out / "curves.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
        return paths


# ---- the walk-forward driver -------------------------------------------------------------------
def _as_numpy_params(p: Params) -> Params:
    """Concrete float64 NumPy leaves: the same abstract signature for every call (one compile)."""
    return jax.tree.map(lambda a: np.asarray(a, np.float64), p)


def _finite(p: Params) -> bool:
    return all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(p))


def _params_row(p: Params, tenor_names: list[str]) -> dict[str, float]:
    row: dict[str, float] = {}
    for name, v in p._asdict().items():
        if v is None:
            continue
        a = np.asarray(v, float)
        if name == "meas_sd" and a.ndim == 1:
            for tn, x in zip(tenor_names, a, strict=True):
                row[f"meas_sd_{tn}"] = float(x)
        else:
            row[name] = float(a)
    return row


@dataclass(frozen=True)
class CalibrationPath:
    """The walk-forward calibrations of one panel, reusable across trading settings.

    Built by :func:`calibrate_walk_forward`; pass it to :func:`walk_forward`
    (``calibration=``) to run many trading configurations (thresholds, costs, sizing) on
    the same calibrations: they do not depend on the trading settings, so the backtest is
    bit-identical to one that calibrates as it goes.

    Attributes:
        params: one row per calibration (Θ, loglik, convergence, out-of-sample score, …).
        thetas: Θ of each calibration.
        cal_dates: date indices of the calibrations.
        F_model, innov, filt_var, resid: [T, M] model forwards, one-step innovation
            variances, filtered-residual variances and log residuals (ln F − ln F_model),
            each date's from the calibration in force at that date (NaN where unobserved).
        key: the settings and the data hash the path was built with.
        info: compile counts and wall time.
    """

    params: pd.DataFrame
    thetas: list
    cal_dates: list
    F_model: np.ndarray
    innov: np.ndarray
    filt_var: np.ndarray
    resid: np.ndarray
    key: dict
    info: dict


def _panel_arrays(panel: Panel):
    F_raw = np.asarray(panel.F_mkt, float)
    if F_raw.ndim != 2:
        raise ValueError(f"panel.F_mkt must have shape [T, M], got {F_raw.shape}")
    mask = np.isfinite(F_raw) if panel.mask is None else np.asarray(panel.mask, bool)
    F = np.where(mask, F_raw, np.nan)
    return F, mask, np.asarray(panel.ttm, float), np.asarray(panel.dt, float)


def _settings(settings: WalkForwardSettings | None, changes: dict) -> WalkForwardSettings:
    """``settings`` (default ``WalkForwardSettings()``) with the keyword ``changes``."""
    base = WalkForwardSettings() if settings is None else settings
    if not isinstance(base, WalkForwardSettings):
        raise TypeError(f"settings must be a WalkForwardSettings, got {type(base).__name__}")
    return base.replace(**changes) if changes else base


def _calibration_key(panel: Panel, arrays: tuple, **settings: Any) -> dict[str, Any]:
    """The settings and a hash of the panel's arrays (``_panel_arrays``) and dates."""
    from ssjax.analysis.runs import array_hash

    dates = np.asarray(pd.DatetimeIndex(panel.dates).asi8, float)
    return {**settings, "data": array_hash(*arrays, dates)}


def calibrate_walk_forward(
    panel: Panel,
    settings: WalkForwardSettings | None = None,
    *,
    progress: bool | None = None,
    **changes: Any,
) -> CalibrationPath:
    """The calibrations of :func:`walk_forward`, alone (same arguments, same results).

    Every ``recalibrate_every`` dates from ``start`` Θ is re-estimated by MLE on the data up
    to and including that date; the filter then runs with it up to the day before the next
    calibration (a filtered value at s uses data up to s only), giving the model forwards,
    residuals and variances the trading decisions use. See :func:`walk_forward` for the
    arguments and the ``params`` columns.
    """
    s = _settings(settings, changes)
    arrays = _panel_arrays(panel)
    F, mask, ttm, dt = arrays
    T, M = F.shape
    dates = pd.DatetimeIndex(panel.dates)
    names = list(panel.tenor_names)
    start = s.first
    if start > T - 1:
        raise ValueError(f"start={start} leaves no trading date in a panel of {T} dates")
    make_market_data(F, ttm, mask=mask, dt=dt)  # validate the whole panel once, up front
    key = _calibration_key(panel, arrays, **s.key())
    warm_start, risk_premium, shared_noise = s.warm_start, s.risk_premium, s.shared_noise

    def window(t: int) -> MarketData:
        """The data of dates 0..t, padded with masked dates to the full length T."""
        d = make_market_data(F[: t + 1], ttm[: t + 1], mask=mask[: t + 1], dt=dt[:t])
        return pad_dates(d, T)

    cal_dates = list(range(start, T, s.recalibrate_every))
    # what the loop compiles (a second calibration of the same padded shape compiles nothing)
    watch = contextlib.ExitStack()
    clog = watch.enter_context(compile_log())
    bar = watch.enter_context(progress_bar(len(cal_dates), "calibrations", progress, "fit"))
    F_model = np.full((T, M), np.nan)
    innov = np.full((T, M), np.nan)
    filt_var = np.full((T, M), np.nan)
    resid = np.full((T, M), np.nan)
    ttm0 = np.nan_to_num(ttm)
    param_rows = []
    theta: Params | None = None
    thetas: list[Params] = []
    pending: dict[str, Any] = {}  # the out-of-sample block of the last calibration
    t_begin = time.perf_counter()

    for k, tc in enumerate(cal_dates):
        tic = time.perf_counter()
        data_t = window(tc)
        r, theta, loglik, used = _calibrate_once(
            data_t, theta if warm_start else None, theta, risk_premium, shared_noise
        )
        thetas.append(theta)

        # filtered states with Θ_k up to the day before the next calibration (the filtered
        # value at s uses data <= s only); the first block also covers the warm-up dates,
        # whose residuals feed the rolling windows (information available at `start`)
        end = cal_dates[k + 1] - 1 if k + 1 < len(cal_dates) else T - 1
        lo = 0 if k == 0 else tc
        data_end = window(end)
        filt = _filter_jit(theta, data_end)
        # out of sample for Θ_k: the dates after tc up to the next calibration, one score
        nis, nobs = (np.asarray(a) for a in _nis_jit(theta, data_end, filt))
        # this row gets the score of the block before tc (known at tc, under the previous
        # Θ); this block's goes to the next calibration's row (none after the last one)
        oos_q, oos_n, oos_from = pending.get("q", np.nan), pending.get("n", 0), pending.get("f")
        oos_z = float(wilson_hilferty(oos_q, oos_n)) if oos_n > 0 else float("nan")
        pending.update(
            q=float(np.sum(nis[tc + 1 : end + 1])), n=int(np.sum(nobs[tc + 1 : end + 1])),
            f=dates[tc],
        )  # fmt: skip
        se_row = _se_row(theta, data_t) if s.standard_errors else {}
        fm = np.asarray(_forwards_jit(theta, filt.filtered_means, ttm0))
        iv, fv = residual_variances(theta, filt, ttm0, mask)
        blk = slice(lo, end + 1)
        F_model[blk] = np.where(mask[blk] & np.isfinite(ttm[blk]), fm[blk], np.nan)
        innov[blk] = np.where(mask[blk], iv[blk], np.nan)
        filt_var[blk] = np.where(mask[blk], fv[blk], np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            resid[blk] = np.log(F[blk]) - np.log(F_model[blk])

        secs = time.perf_counter() - tic
        param_rows.append(
            {
                "date": dates[tc],
                "t_index": tc,
                "n_dates": tc + 1,
                **_params_row(theta, names),
                "loglik": loglik,
                "converged": bool(r.converged),
                "optimum_reached": bool(stopped(r.status)),
                "status": status_message(int(r.status)),
                "num_steps": int(r.num_steps),
                "used": used,
                **se_row,
                "oos_q": oos_q,
                "oos_n": oos_n,
                "oos_z": oos_z,
                "oos_from": oos_from,
                "seconds": secs,
            }
        )
        bar.set_postfix_str(
            f"{dates[tc]:%Y-%m-%d}: loglik {loglik:.2f}, {int(r.num_steps)} steps, "
            + ("optimum" if stopped(r.status) else "NO optimum")
        )
        bar.update(1)
    watch.close()
    info = {
        "fit_mle_compiles": sum("fit_mle" in name for name, _ in clog.lowerings),
        "compile_seconds": clog.seconds,
        "seconds": time.perf_counter() - t_begin,
    }
    return CalibrationPath(
        params=pd.DataFrame(param_rows).set_index("date"),
        thetas=thetas,
        cal_dates=cal_dates,
        F_model=F_model,
        innov=innov,
        filt_var=filt_var,
        resid=resid,
        key=key,
        info=info,
    )


def _calibrate_once(data_t, warm, previous, risk_premium: bool, shared_noise: bool):
    """One calibration of the walk forward: ``fit_mle`` from ``warm`` (the previous Θ) or
    the data-derived start. Returns (result, Θ used, loglik, how): a fit that ends
    non-finite is replaced by the previous Θ (or the start) and says so in ``how``."""
    if warm is not None:
        init = warm
    else:
        init = default_start(data_t, risk_premium=risk_premium)
        if shared_noise:
            init = init._replace(meas_sd=jnp.median(init.meas_sd))
    init = _as_numpy_params(init)
    r = fit_mle(data_t, init)
    new = _as_numpy_params(r.params)
    loglik = float(r.loglik)
    used = "fit"
    if not (_finite(new) and np.isfinite(loglik)):
        new, used = (previous, "previous") if previous is not None else (init, "start")
    return r, new, loglik, used


def _se_row(theta: Params, data_t: MarketData) -> dict[str, float]:
    """OPG standard errors of the scalar parameters, as ``se_<name>`` entries."""
    se = np.asarray(_se_jit(theta, data_t))
    row: dict[str, float] = {}
    i = 0
    for n, v in theta._asdict().items():
        if v is None:
            continue
        size = int(np.size(v))
        if size == 1:
            row[f"se_{n}"] = float(se[i])
        i += size
    return row


def walk_forward(
    panel: Panel,
    settlements: pd.DataFrame | None = None,
    settings: WalkForwardSettings | None = None,
    *,
    trading: TradingConfig | None = None,
    engine: TradeEngine | None = None,
    progress: bool | None = None,
    calibration: CalibrationPath | None = None,
    **changes: Any,
) -> BacktestResult:
    """Walk-forward backtest: recalibrate, filter, decide, execute, with no look-ahead.

    Args:
        panel: the tenor panel (:class:`ssjax.datasets.Panel`); its spot series is not used.
        settlements: optional long settlement table (``trade_date, contract,
            settlement_price``) to price held contracts that left the panel's tenors; without
            it, a held contract is priced wherever it appears among the panel's tenors.
        trading: :class:`~ssjax.trading.engine.TradingConfig` (default ``TradingConfig()``).
        engine: :class:`~ssjax.trading.engine.TradeEngine` (default ``TradeEngine()``).
        settings: the calibration schedule, :class:`~ssjax.trading.settings.WalkForwardSettings`
            (``min_window``, ``recalibrate_every``, ``warm_start``, ``start``,
            ``risk_premium``, ``shared_noise``, ``standard_errors``); keyword arguments of
            those names build or replace it (``walk_forward(panel, recalibrate_every=4)``).
        progress: a progress bar of the calibrations (``None``: when stderr is a terminal or
            in a notebook; see :mod:`ssjax.progress`).
        calibration: the result of :func:`calibrate_walk_forward` on this panel with the same
            settings (checked: a mismatch raises ``ValueError``), to reuse its calibrations
            across trading settings; default: calibrate here.

    ``params`` also holds, per calibration from the second on, the out-of-sample score of
    the dates since the previous calibration under that calibration's Θ (known at this row's
    date, so a truncated run has the same rows): ``oos_q`` (their joint NIS summed),
    ``oos_n`` (degrees of freedom), ``oos_z`` (Wilson–Hilferty N(0, 1) score) and
    ``oos_from`` (the previous calibration's date).

    The z-score basis is ``trading.z_method``: both model variances at t (filtered residual
    and one-step innovation, :func:`ssjax.trading.engine.residual_variances`) come from the filter
    run of the calibration in force at t, and the rolling residuals from the model forwards
    of their own dates (see :func:`ssjax.trading.engine.prepare_trading_inputs` for which to use).

    Returns:
        :class:`BacktestResult`.
    """
    cfg = TradingConfig() if trading is None else trading
    eng = TradeEngine() if engine is None else engine
    s = _settings(settings, changes)
    t_begin = time.perf_counter()
    arrays = _panel_arrays(panel)
    if calibration is None:
        cal = calibrate_walk_forward(panel, s, progress=progress)
    else:
        cal = calibration
        want = _calibration_key(panel, arrays, **s.key())
        diff = sorted(k for k in want if cal.key.get(k) != want[k])
        if diff:
            detail = ", ".join(f"{k}: {cal.key.get(k)!r} vs {want[k]!r}" for k in diff)
            raise ValueError(
                f"calibration was built with other settings or data ({detail}): build it "
                "with calibrate_walk_forward on this panel with these settings"
            )
    F, mask, ttm, dt = arrays
    T, M = F.shape
    codes = np.asarray(panel.contracts, dtype=object)
    dates = pd.DatetimeIndex(panel.dates)
    names = list(panel.tenor_names)
    start = cal.cal_dates[0]
    expiring = expiring_before_next(ttm, dt)
    F_model, innov, filt_var, resid = cal.F_model, cal.innov, cal.filt_var, cal.resid
    W = cfg.sigma_window
    sig_rows, z_rows, status_rows, z_basis_rows = {}, {}, {}, {}

    def decide(t: int, w_prev: np.ndarray):
        lo = max(0, t - W)
        inp = prepare_trading_inputs(
            F[t],
            F_model[t],
            np.where(expiring[t], 0.0, ttm[t]),  # not tradable: cannot be held to t+1
            cfg=cfg,
            F_mkt_hist=F[lo : t + 1],
            contracts_hist=codes[lo : t + 1],
            resid_hist=resid[lo:t],
            filtered_resid_var_t=filt_var[t],
            innovation_var_t=innov[t],
            dt=dt[lo:t],
        )
        z_basis_rows[t] = inp.z_basis
        dec = eng.decide(inp, w_prev)
        sig_rows[t], z_rows[t], status_rows[t] = dec.signals, dec.z, dec.status
        return dec.target_w, inp.frictions.per_contract

    ex = simulate_execution(panel, decide, settlements=settlements, start=start)

    idx = ex.positions.index
    rows = range(start, T)

    def frame(a) -> pd.DataFrame:
        return pd.DataFrame(np.asarray(a, float).reshape(-1, M), index=idx, columns=names)

    params = cal.params
    steps = dt[start:] if T - 1 > start else dt
    ppy = 1.0 / float(np.mean(steps))
    metrics = compute_metrics(ex.pnl, len(ex.trades), ppy)
    info = {
        "calibration_dates": [dates[t] for t in cal.cal_dates],
        **(
            {k: cal.info[k] for k in cal.info if k.startswith("fit_mle")}
            if calibration is None
            else {"fit_mle_compiles": 0}
        ),
        "calibration_seconds": cal.info["seconds"] if calibration is None else 0.0,
        "periods_per_year": ppy,
        "start": start,
        "z_method": cfg.z_method,
        "z_basis": z_basis_rows[T - 1],
        "seconds": time.perf_counter() - t_begin,
        "trading": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "engine": {k: getattr(eng, k) for k in eng.__dataclass_fields__ if not k.startswith("_")},
        "thetas": cal.thetas,
    }
    return BacktestResult(
        positions=ex.positions,
        held=ex.held,
        signals=frame([sig_rows[t] for t in rows]),
        z=frame([z_rows[t] for t in rows]),
        F_model=frame(F_model[start:]),
        F_mkt=frame(F[start:]),
        ttm=frame(ttm[start:]),
        trades=ex.trades,
        pnl=ex.pnl,
        params=params,
        orders=ex.orders,
        metrics=metrics,
        status=pd.Series([status_rows[t] for t in rows], index=idx, name="status"),
        info=info,
        pre_trade=ex.pre_trade,
    )
