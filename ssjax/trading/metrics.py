"""Performance statistics of a backtest, with the uncertainty a reader needs to judge them.

:func:`compute_metrics` summarizes a P&L table (returns, volatility, Sharpe with its standard
error, Sortino, Calmar, drawdowns, exposures, beta to a passive benchmark);
:func:`yearly_metrics` splits it by calendar year; :func:`round_trips` lists every position
from opening to close; :func:`deflated_sharpe` corrects the best Sharpe ratio of a sweep of
settings for the number of settings tried (Bailey & López de Prado 2014).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

__all__ = [
    "compute_metrics",
    "yearly_metrics",
    "round_trips",
    "expected_max_sharpe",
    "deflated_sharpe",
]


def _drawdown(net: np.ndarray) -> tuple[float, int]:
    """(largest fall of the cumulative sum from a running peak, longest spell below a peak
    in periods); the path starts at 0."""
    eq = np.concatenate([[0.0], np.cumsum(net)])
    peak = np.maximum.accumulate(eq)
    under = eq < peak - 1e-15
    longest = run = 0
    for u in under:
        run = run + 1 if u else 0
        longest = max(longest, run)
    return float(np.max(peak - eq)), int(longest)


def compute_metrics(
    pnl: pd.DataFrame,
    n_trades: int,
    periods_per_year: float,
    benchmark: ArrayLike | None = None,
) -> pd.Series:
    """Summary statistics of a P&L table from :func:`ssjax.trading.execution.simulate_execution`.

    Returns per unit of capital, additive (weights are notional exposures):

    * ``annual_return`` = mean net P&L per period × periods per year; ``annual_volatility`` =
      s.d. × √(periods per year); ``sharpe`` their ratio (NaN when the s.d. is 0);
    * ``sharpe_se``: its standard error under IID returns (Lo 2002:
      √((1 + SR²/2)/n) per period, × √(periods per year)), and ``sharpe_tstat`` = the
      per-period SR × √n (the t-statistic of the mean); a Sharpe ratio within two standard
      errors of 0 is not evidence of an edge;
    * ``sortino``: annual return over the annualized downside deviation √(mean min(r, 0)²);
    * ``max_drawdown``: the largest fall of the cumulative net P&L from a running peak (the
      path starts at 0); ``max_drawdown_periods``: the longest spell below a previous peak;
      ``calmar`` = annual return / max drawdown;
    * ``turnover``: Σ|Δw| (roll closes included) per year;
    * ``hit_rate``: share of dates with nonzero positions held over the period whose net P&L
      is > 0;
    * ``cost_share``: total costs / |total gross P&L|;
    * ``gross_exposure``, ``net_exposure``: means over the dates of Σ|w| and Σw held
      (``net_exposure`` needs the ``net_exposure`` column), ``invested_share``: share of
      dates with a position;
    * ``beta``, ``correlation``: of the net P&L to ``benchmark`` (per-period returns of a
      passive position, e.g. long the front month; NaN without one);
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
    sr_p = mean / sd if sd > 0 else math.nan
    sharpe = sr_p * math.sqrt(ppy)
    sharpe_se = math.sqrt((1.0 + 0.5 * sr_p**2) / n) * math.sqrt(ppy) if n > 1 else math.nan
    downside = math.sqrt(float(np.mean(np.minimum(net, 0.0) ** 2))) if n else math.nan
    sortino = ann_ret / (downside * math.sqrt(ppy)) if downside > 0 else math.nan
    max_dd, dd_len = _drawdown(net) if n else (math.nan, 0)
    invested = pnl["exposure"].to_numpy(float) > 0
    hit = float(np.mean(net[invested] > 0)) if invested.any() else math.nan
    gross_total = float(pnl["gross"].sum())
    cost_total = float(pnl["cost"].sum())
    cost_share = cost_total / abs(gross_total) if gross_total != 0 else math.nan
    net_exp = float(pnl["net_exposure"].mean()) if "net_exposure" in pnl.columns and n else math.nan
    beta = corr = math.nan
    if benchmark is not None:
        b = np.asarray(benchmark, float)
        if b.shape != (n,):
            raise ValueError(f"benchmark must have one return per period ({n}), got {b.shape}")
        ok = np.isfinite(b) & np.isfinite(net)
        if ok.sum() > 2 and np.std(b[ok]) > 0 and np.std(net[ok]) > 0:
            c = np.cov(net[ok], b[ok])
            beta = float(c[0, 1] / c[1, 1])
            corr = float(c[0, 1] / math.sqrt(c[0, 0] * c[1, 1]))
    return pd.Series(
        {
            "annual_return": ann_ret,
            "annual_volatility": ann_vol,
            "sharpe": sharpe,
            "sharpe_se": sharpe_se,
            "sharpe_tstat": sr_p * math.sqrt(n) if n else math.nan,
            "sortino": sortino,
            "max_drawdown": max_dd,
            "max_drawdown_periods": float(dd_len),
            "calmar": ann_ret / max_dd if max_dd > 0 else math.nan,
            "turnover": float(pnl["turnover"].sum()) / years if n else math.nan,
            "hit_rate": hit,
            "cost_share": cost_share,
            "gross_exposure": float(pnl["exposure"].mean()) if n else math.nan,
            "net_exposure": net_exp,
            "invested_share": float(np.mean(invested)) if n else math.nan,
            "beta": beta,
            "correlation": corr,
            "n_trades": float(n_trades),
            "total_gross": gross_total,
            "total_cost": cost_total,
            "total_net": gross_total - cost_total,
            "n_periods": float(n),
            "periods_per_year": ppy,
        },
        name="metrics",
    )


def yearly_metrics(pnl: pd.DataFrame, periods_per_year: float) -> pd.DataFrame:
    """One row per calendar year: net, gross and cost P&L, annualized volatility and Sharpe
    ratio, maximum drawdown within the year, and the number of periods."""
    rows = {}
    for year, g in pnl.groupby(pd.DatetimeIndex(pnl.index).year):
        net = g["net"].to_numpy(float)
        sd = float(np.std(net, ddof=1)) if net.size > 1 else math.nan
        rows[int(year)] = {
            "net": float(net.sum()),
            "gross": float(g["gross"].sum()),
            "cost": float(g["cost"].sum()),
            "volatility": sd * math.sqrt(periods_per_year),
            "sharpe": float(np.mean(net)) / sd * math.sqrt(periods_per_year)
            if sd > 0
            else math.nan,
            "max_drawdown": _drawdown(net)[0],
            "n_periods": int(net.size),
        }
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "year"
    return out


def round_trips(positions: pd.DataFrame, tenor_pnl: pd.DataFrame) -> pd.DataFrame:
    """Every position per tenor from its opening to its close, with its net P&L.

    A round trip opens when a tenor's weight leaves 0 and ends when it returns to 0 or
    changes sign (a reversal starts a new one); a position carried across a roll (closed in
    the old contract, re-opened in the new one on the same date) stays one round trip.
    ``tenor_pnl`` [dates x tenors] is each tenor's net P&L booked at each date (what
    :func:`ssjax.trading.backtest.walk_forward` returns): a round trip's P&L is its tenor's
    from the date after it opened (the opening cost included) to its closing date.

    Returns:
        columns ``tenor, side, opened, closed, periods, pnl, open`` (``open``: still held at
        the end of the sample; ``closed`` is then the last date).
    """
    W = positions.to_numpy(float)
    P = tenor_pnl.reindex(index=positions.index, columns=positions.columns).to_numpy(float)
    dates = positions.index
    out = []
    for i, name in enumerate(positions.columns):
        side, t0, acc = 0.0, 0, 0.0
        for t in range(len(dates)):
            acc += P[t, i] if side != 0 else 0.0
            s = float(np.sign(W[t, i]))
            closed = side != 0 and s != side
            if closed:
                out.append((name, side, dates[t0], dates[t], t - t0, acc, False))
                side = 0.0
            if side == 0 and s != 0:
                # a fresh opening's cost is booked at its date; a reversal's went to the close
                side, t0, acc = s, t, 0.0 if closed else P[t, i]
        if side != 0:
            n = len(dates) - 1
            out.append((name, side, dates[t0], dates[n], n - t0, acc, True))
    cols = ["tenor", "side", "opened", "closed", "periods", "pnl", "open"]
    trips = pd.DataFrame(out, columns=cols)
    trips["side"] = np.where(trips["side"] > 0, "long", "short")
    return trips


def expected_max_sharpe(n: int, sd: float) -> float:
    """E[max of ``n`` independent N(0, sd²)] Sharpe ratios (Bailey & López de Prado's
    approximation): what the best of ``n`` unskilled settings shows by chance; 0 for n < 2."""
    if n < 2:
        return 0.0
    g = 0.5772156649015329  # Euler–Mascheroni
    nd = NormalDist()
    return sd * ((1 - g) * nd.inv_cdf(1 - 1 / n) + g * nd.inv_cdf(1 - 1 / (n * math.e)))


def deflated_sharpe(
    sharpe: float,
    n_trials: int,
    trial_sharpes: ArrayLike,
    n_periods: int,
    skew: float = 0.0,
    kurtosis: float = 3.0,
) -> float:
    """Deflated Sharpe ratio (Bailey & López de Prado 2014): the probability that the true
    per-period Sharpe ratio exceeds what the best of ``n_trials`` unskilled trials would show.

    Args:
        sharpe: the selected setting's per-period (not annualized) Sharpe ratio.
        n_trials: settings tried.
        trial_sharpes: the per-period Sharpe ratios of all trials (their variance sets the
            expected maximum under no skill).
        n_periods: returns in the sample.
        skew, kurtosis: of the selected setting's returns (normal: 0 and 3).

    Returns:
        a probability in [0, 1]; above 0.95 the best Sharpe ratio is unlikely to be the luck
        of the sweep.
    """
    nd = NormalDist()
    if n_trials < 1 or n_periods < 2:
        raise ValueError("need n_trials >= 1 and n_periods >= 2")
    v = float(np.var(np.asarray(trial_sharpes, float), ddof=1)) if n_trials > 1 else 0.0
    sr0 = expected_max_sharpe(n_trials, math.sqrt(v))
    den = 1 - skew * sharpe + (kurtosis - 1) / 4 * sharpe**2
    if den <= 0:
        return math.nan
    return nd.cdf((sharpe - sr0) * math.sqrt(n_periods - 1) / math.sqrt(den))
