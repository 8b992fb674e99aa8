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
4. **Execution and P&L** (:func:`ssjax.trading.execution.simulate_execution`): the target
   decided at t fills ``trading.execution_lag`` dates later (default 1: the next
   settlement) in the tenor's contract then; from t to t+1 a weight w earns
   w·(P_c(t+1)/P_c(t) − 1) on the contract c actually held (never a spliced nearby series).
   When the tenor's contract changes (a roll), the old contract is closed and, when the
   decision keeps the position (its hysteresis carries across the roll), it is re-opened in
   the new one (two trades, both pay costs). A contract on its last trading day (ttm = 0),
   or expiring before the next date of the panel, is not held overnight
   (:func:`expiring_before_next`; the trading block sees it as not tradable). A trade of |Δw| costs
   |Δw|·(fee + half_spread + slippage)/price.

Conventions of the outputs: ``pnl.loc[t]`` is the P&L earned over (t−1, t] by the weights
held after trading at t−1, minus the costs of the trades at t; weights are held constant
between dates (rebalanced to the target, no drift), as in the trading module.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ssjax.analysis.diagnostics import joint_innovations
from ssjax.analysis.drift import wilson_hilferty
from ssjax.compile_cache import compile_log
from ssjax.core.filter import kalman_filter
from ssjax.core.market import MarketData, make_market_data, pad_dates
from ssjax.core.model import forward_curve
from ssjax.core.params import Params, flatten_params
from ssjax.data.panels import Panel, validate_panel
from ssjax.fit.inference import per_date_scores
from ssjax.fit.mle import default_start, fit_mle, status_message, stopped
from ssjax.progress import progress_bar
from ssjax.trading.engine import (
    Order,
    TradeEngine,
    TradingConfig,
    TradingInputs,
    prepare_trading_inputs,
    residual_variances,
)
from ssjax.trading.execution import (
    ExecutionModel,
    expiring_before_next,
    filled_target,
    passive_returns,
    simulate_execution,
)
from ssjax.trading.metrics import compute_metrics, round_trips, yearly_metrics
from ssjax.trading.settings import WalkForwardSettings

__all__ = [
    "CalibrationPath",
    "calibrate_walk_forward",
    "BacktestResult",
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
    pnl: pd.DataFrame  # gross, cost, net, equity, exposure, net_exposure, turnover
    params: pd.DataFrame  # Θ per calibration date, loglik, converged, ...
    orders: list[list[Order]]  # one list per trading date
    metrics: pd.Series
    status: pd.Series  # the engine's status per date ("ok" or the QP solver's)
    info: dict[str, Any] = field(default_factory=dict)
    pre_trade: pd.DataFrame | None = None  # the book t's decision trades from (its w_prev)
    targets: pd.DataFrame | None = None  # the engine's target weights decided at t
    tenor_pnl: pd.DataFrame | None = None  # net P&L booked per tenor at t
    yearly: pd.DataFrame | None = None  # metrics per calendar year
    round_trips: pd.DataFrame | None = None  # every position from opening to close
    inputs_last: TradingInputs | None = None  # the trading inputs of the last decision

    def live_orders(
        self, panel: Panel, min_trade: float = 1e-8
    ) -> tuple[np.ndarray, list[Order], np.ndarray]:
        """The orders the rule decided at the last date, to send now: ``(target, orders,
        w_from)``.

        With ``execution_lag = 0`` they are the fills booked at that date (from the book
        after its roll closes); with a lag they are the decision's target (made executable
        against the last date's contracts and prices, :func:`executable_target`, and rounded
        to whole lots by the backtest's execution model, if any) minus the
        book they will trade from (the book after the last date's fills for a lag of 1, the
        previous decision's target for more), to be filled at the next settlement. ``panel``
        is the panel the backtest ran on.
        """
        lag = int(self.info.get("trading", {}).get("execution_lag", 0))
        codes = np.asarray(panel.contracts, dtype=object)[-1]
        F = np.asarray(panel.F_mkt, float)[-1]
        mask = np.isfinite(F) if panel.mask is None else np.asarray(panel.mask, bool)[-1]
        if lag == 0:
            target = self.positions.iloc[-1].to_numpy(float)
            w_from = target.copy()
            for o in self.orders[-1]:
                w_from[o.tenor_id] -= (1 if o.side == "BUY" else -1) * o.size
            return target, list(self.orders[-1]), w_from
        src = self.positions if lag == 1 else self.pre_trade
        w_from = src.iloc[-1].to_numpy(float)
        expiring = expiring_before_next(panel.ttm, panel.dt)[-1]
        px = np.where(mask & (F > 0), F, np.nan)
        ex = self.info.get("execution")
        # whole lots at the last price; the next day's volume is unknown (no cap)
        model = None if ex is None else ExecutionModel(**ex)
        target = filled_target(self.targets.iloc[-1].to_numpy(float), w_from, px, codes,
                               expiring, model, None, min_trade)  # fmt: skip
        dw = target - w_from
        orders = [
            Order(int(i), "BUY" if dw[i] > 0 else "SELL", float(abs(dw[i])))
            for i in np.flatnonzero(np.abs(dw) > min_trade)
        ]
        return target, orders, w_from

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
        for name in ("positions", "trades", "pnl", "params", "yearly", "round_trips"):
            if getattr(self, name) is None:
                continue
            p = out / f"{name}.csv"
            getattr(self, name).to_csv(p, index=name not in ("trades", "round_trips"))
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
    validate_panel(panel)  # the whole panel, once, up front
    F_raw = np.asarray(panel.F_mkt, float)
    mask = ~np.isnan(F_raw) if panel.mask is None else np.asarray(panel.mask, bool)
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
    execution: ExecutionModel | None = None,
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
        execution: an :class:`~ssjax.trading.execution.ExecutionModel` (capital and whole
            lots, participation cap, per-contract, spread and impact costs); default: weights
            filled exactly at the decision's frictions.
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
    last_inputs: list[TradingInputs | None] = [None]
    kappas = [float(np.asarray(th.kappa)) for th in cal.thetas]  # the loadings' κ in force

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
            kappa=kappas[max(0, bisect.bisect_right(cal.cal_dates, t) - 1)],
        )
        z_basis_rows[t] = inp.z_basis
        last_inputs[0] = inp
        dec = eng.decide(inp, w_prev)
        sig_rows[t], z_rows[t], status_rows[t] = dec.signals, dec.z, dec.status
        return dec.target_w, inp.frictions.per_contract

    ex = simulate_execution(
        panel, decide, settlements=settlements, start=start, lag=cfg.execution_lag,
        carry_rolls=cfg.carry_rolls, execution=execution,
    )  # fmt: skip

    idx = ex.positions.index
    rows = range(start, T)

    def frame(a) -> pd.DataFrame:
        return pd.DataFrame(np.asarray(a, float).reshape(-1, M), index=idx, columns=names)

    params = cal.params
    steps = dt[start:] if T - 1 > start else dt
    ppy = 1.0 / float(np.mean(steps))
    bench = passive_returns(panel, settlements, start=start)
    metrics = compute_metrics(ex.pnl, len(ex.trades), ppy, benchmark=bench)
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
        "execution": None if execution is None else dataclasses.asdict(execution),
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
        targets=ex.targets,
        tenor_pnl=ex.tenor_pnl,
        yearly=yearly_metrics(ex.pnl, ppy),
        round_trips=round_trips(ex.positions, ex.tenor_pnl),
        inputs_last=last_inputs[0],
    )
