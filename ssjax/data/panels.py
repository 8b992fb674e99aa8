"""From a long settlement table to the dense tenor panels the engines take.

Two ways to define tenors (both return a :class:`ssjax.datasets.Panel` with ``F_mkt [T,M]``,
``ttm [T,M]`` in years ACT/365 from trade date to last trading day, ``mask [T,M]``,
``dates [T]``, ``dt [T-1]`` and the contract behind every cell):

* :func:`nearby_panel` — tenor k is the k-th nearest unexpired contract on each date (the
  2000 paper's F1, F5, …). Each cell keeps its contract's actual ttm, so the filter needs no
  interpolation. Roll rule: at expiry (a contract is eligible through its last trading day)
  or ``roll_days`` exchange business days before it.
* :func:`constant_maturity_panel` — tenor j has a fixed ttm; ln F is interpolated linearly in
  ttm between the two contracts that bracket it, and the cell is masked where that would
  extrapolate.

:func:`select_dates` resamples (e.g. every Tuesday, like the 2000 paper);
:func:`stack_panels` puts several commodities on one date index as ``[C, T, M]`` arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import pandas as pd

from ssjax.core.market import MarketData, year_fraction

__all__ = [
    "validate_panel",
    "Panel",
    "as_stacked",
    "market_stack",
    "nearby_panel",
    "constant_maturity_panel",
    "select_dates",
    "stack_panels",
    "StackedPanels",
    "panel_to_long",
]


class Panel(NamedTuple):
    """A tenor panel as the engines take it, with its labels."""

    dates: pd.DatetimeIndex  # [T]
    F_mkt: np.ndarray  # [T, M] prices
    ttm: np.ndarray  # [T, M] years
    S: np.ndarray | None  # [T] spot (or None)
    contracts: np.ndarray  # [T, M] contract code behind each cell
    tenor_names: list[str]
    dt: np.ndarray  # [T-1] years between dates (ACT/365)
    mask: np.ndarray | None = None  # [T, M] True = observed (None: the finite prices)
    commodity: str | None = None


def _one_commodity(settle: pd.DataFrame, commodity: str | None) -> tuple[pd.DataFrame, str]:
    roots = sorted(settle["commodity"].unique())
    if commodity is None:
        if len(roots) != 1:
            raise ValueError(f"settle holds several commodities {roots}: pass commodity=")
        commodity = roots[0]
    elif commodity not in roots:
        raise ValueError(f"commodity {commodity!r} is not in the table (it has {roots})")
    return settle[settle["commodity"] == commodity], commodity


def select_dates(dates: pd.DatetimeIndex, rule: str | None) -> pd.DatetimeIndex:
    """Resample trade dates: ``None`` keeps all; ``"W-TUE"`` (or another weekly anchor such as
    ``"W-FRI"``) keeps one date per week, the given weekday or, when it is not a trade date,
    the last trade date before it in that week; a week whose weekday lies after the last date
    is dropped."""
    dates = pd.DatetimeIndex(dates).sort_values().unique()
    if rule is None:
        return dates
    if not rule.upper().startswith("W-"):
        raise ValueError(f"resample must be None or a weekly rule like 'W-TUE', got {rule!r}")
    periods = dates.to_period(rule.upper())
    s = pd.Series(dates, index=periods)
    last = s.groupby(level=0).max()
    ends = last.index.end_time.normalize()
    keep = ends <= dates[-1]
    return pd.DatetimeIndex(last[keep].to_numpy())


def _wide(settle: pd.DataFrame, dates: pd.DatetimeIndex):
    """Contracts sorted by expiry, their expiries, first dates, and a price matrix."""
    exp = settle.groupby("contract")["expiration_date"].first().sort_values(kind="stable")
    contracts = exp.index.to_numpy()
    first = settle.groupby("contract")["trade_date"].min().reindex(contracts).to_numpy()
    price = (
        settle.pivot(index="trade_date", columns="contract", values="settlement_price")
        .reindex(index=dates, columns=contracts)
        .to_numpy(float)
    )
    return contracts, exp.to_numpy(), first, price


def _result(dates, F, ttm, contracts, names, commodity) -> Panel:
    mask = np.isfinite(F)
    dt = year_fraction(dates.values[:-1], dates.values[1:])
    return Panel(
        dates=dates,
        F_mkt=F,
        ttm=ttm,
        S=None,
        contracts=contracts,
        tenor_names=names,
        dt=dt,
        mask=mask,
        commodity=commodity,
    )


def nearby_panel(
    settle: pd.DataFrame,
    ranks: int | Sequence[int] = 6,
    *,
    commodity: str | None = None,
    roll_days: int = 0,
    among: str = "listed",
    resample: str | None = None,
    start=None,
    end=None,
) -> Panel:
    """Tenor k = the k-th nearest unexpired contract on each date.

    Args:
        settle: a settlement table (:mod:`ssjax.data.settlements` schema).
        ranks: how many nearby ranks (``6`` → 1..6), or which ones (``[1, 5, 9, 13, 17]``).
        commodity: which commodity (required when the table has several).
        roll_days: 0 rolls at expiry (a contract is eligible through its last trading day,
            where its ttm is 0); N > 0 keeps a contract while at least N trade dates
            remain until its last trading day, so it is last used N trade dates before it
            (trade dates of the commodity's calendar: ``ssjax.data.contracts.ROOT_CALENDARS``).
            ``roll_days=1`` is the convention of continuous series that roll on the last
            trading day (Quandl/Nasdaq CHRIS).
        among: ``"listed"`` ranks every contract the table lists on that date (from its first
            row to its expiry), so a missing back-month price leaves a masked cell instead of
            shifting the farther ranks; ``"observed"`` ranks only contracts with a price that
            day (the "n-th available contract" stitching of NFCP).
        resample: e.g. ``"W-TUE"`` (see :func:`select_dates`).
        start, end: optional date bounds.

    Cells with no eligible contract or no price are masked (``F_mkt`` NaN, ``mask`` False);
    ``contracts`` names the contract even where its price is missing.
    """
    from ssjax.data.calendars import trade_days_between
    from ssjax.data.contracts import calendar_of_root

    if among not in ("listed", "observed"):
        raise ValueError(f"among must be 'listed' or 'observed', got {among!r}")
    if roll_days < 0:
        raise ValueError(f"roll_days must be >= 0, got {roll_days}")
    ranks_ = list(range(1, ranks + 1)) if isinstance(ranks, (int, np.integer)) else list(ranks)
    if not ranks_ or min(ranks_) < 1:
        raise ValueError(f"ranks must be positive integers, got {ranks}")
    df, commodity = _one_commodity(settle, commodity)
    dates = pd.DatetimeIndex(df["trade_date"].unique()).sort_values()
    if start is not None:
        dates = dates[dates >= pd.Timestamp(start)]
    if end is not None:
        dates = dates[dates <= pd.Timestamp(end)]
    dates = select_dates(dates, resample)
    if len(dates) == 0:
        raise ValueError("no trade dates left after start/end/resample")
    contracts, exp, first, price = _wide(df, dates)
    calendar = calendar_of_root(commodity)
    T, M = len(dates), len(ranks_)
    F = np.full((T, M), np.nan)
    ttm = np.full((T, M), np.nan)
    codes = np.full((T, M), "", dtype=object)
    r_idx = np.asarray(ranks_) - 1
    for t, d in enumerate(dates.values):
        ok = (exp >= d) & (first <= d)
        if among == "observed":
            ok &= np.isfinite(price[t])
        if roll_days:
            cand = np.flatnonzero(ok)
            left = np.array([trade_days_between(d, exp[j], calendar) for j in cand])
            ok[cand[left < roll_days]] = False
        idx = np.flatnonzero(ok)
        have = r_idx < idx.size
        j = idx[r_idx[have]]
        F[t, have] = price[t, j]
        ttm[t, have] = year_fraction(d, exp[j])
        codes[t, have] = contracts[j]
    names = [f"{commodity}{k}" for k in ranks_]
    return _result(dates, F, ttm, codes, names, commodity)


def constant_maturity_panel(
    settle: pd.DataFrame,
    maturities: Sequence[float],
    *,
    commodity: str | None = None,
    resample: str | None = None,
    start=None,
    end=None,
) -> Panel:
    """Tenors at fixed times to maturity (years): ln F interpolated linearly in ttm.

    On each date the observed contracts are ordered by ttm (ACT/365 to their last trading
    day); a target maturity between two of them gets ln F on the line between their
    (ttm, ln F) points, and ``contracts`` names both (``"CLX24|CLZ24"``; one name when the
    target falls on a contract). Targets shorter than the nearest or longer than the farthest
    observed contract are masked: no extrapolation.
    """
    mats = np.asarray(maturities, float)
    if mats.ndim != 1 or mats.size == 0 or np.any(~np.isfinite(mats)) or np.any(mats < 0):
        raise ValueError(f"maturities must be a non-empty list of years >= 0, got {maturities}")
    df, commodity = _one_commodity(settle, commodity)
    dates = pd.DatetimeIndex(df["trade_date"].unique()).sort_values()
    if start is not None:
        dates = dates[dates >= pd.Timestamp(start)]
    if end is not None:
        dates = dates[dates <= pd.Timestamp(end)]
    dates = select_dates(dates, resample)
    if len(dates) == 0:
        raise ValueError("no trade dates left after start/end/resample")
    contracts, exp, _, price = _wide(df, dates)
    T, M = len(dates), mats.size
    F = np.full((T, M), np.nan)
    codes = np.full((T, M), "", dtype=object)
    for t, d in enumerate(dates.values):
        obs = np.flatnonzero(np.isfinite(price[t]) & (exp >= d))
        if obs.size == 0:
            continue
        tau = year_fraction(d, exp[obs])
        order = np.argsort(tau, kind="stable")
        obs, tau = obs[order], tau[order]
        lf = np.log(price[t, obs])
        inside = (mats >= tau[0]) & (mats <= tau[-1])
        for m in np.flatnonzero(inside):
            hi = int(np.searchsorted(tau, mats[m], side="left"))
            if tau[hi] == mats[m]:
                F[t, m] = price[t, obs[hi]]
                codes[t, m] = contracts[obs[hi]]
                continue
            lo = hi - 1
            w = (mats[m] - tau[lo]) / (tau[hi] - tau[lo])
            F[t, m] = np.exp((1.0 - w) * lf[lo] + w * lf[hi])
            codes[t, m] = f"{contracts[obs[lo]]}|{contracts[obs[hi]]}"
    ttm = np.broadcast_to(mats, (T, M)).copy()
    ttm[~np.isfinite(F)] = np.nan
    names = [f"{commodity}_{m:g}y" for m in mats]
    return _result(dates, F, ttm, codes, names, commodity)


def validate_panel(panel: Panel, name: str = "panel") -> None:
    """The checks of :func:`ssjax.core.market.make_market_data` on a :class:`Panel`, plus its
    labels: every array's shape (naming the field), dates strictly increasing (a duplicated
    or out-of-order date is named), ``dt`` matching the dates' count, ``tenor_names`` one
    per tenor. Raises ``ValueError`` starting with ``name``; returns nothing when all is
    well. :func:`stack_panels` (so :func:`ssjax.rolling.recalibrate`) and
    :func:`ssjax.trading.backtest.walk_forward` run it on the panels they are given."""
    from ssjax.core.market import check_tenor_order, make_market_data

    def bad(msg: str) -> ValueError:
        return ValueError(f"{name}: {msg}")

    F = np.asarray(panel.F_mkt, float)
    if F.ndim != 2:
        raise bad(f"F_mkt must have shape [T, M], got {F.shape}")
    T, M = F.shape
    dates = pd.DatetimeIndex(panel.dates)
    if len(dates) != T:
        raise bad(f"dates has {len(dates)} entries for the {T} rows of F_mkt")
    if dates.has_duplicates:
        dup = dates[dates.duplicated()]
        raise bad(f"duplicated dates {[str(d.date()) for d in dup[:3]]}")
    if not dates.is_monotonic_increasing:
        i = int(np.argmax(np.diff(dates.asi8) < 0)) + 1
        raise bad(f"dates are not in increasing order: {dates[i].date()} after "
                  f"{dates[i - 1].date()}")  # fmt: skip
    for field, want in (("ttm", (T, M)), ("contracts", (T, M)), ("dt", (max(T - 1, 0),))):
        shape = np.shape(getattr(panel, field))
        if shape != want:
            raise bad(f"{field} must have shape {list(want)}, got {list(shape)}")
    if panel.mask is not None and np.shape(panel.mask) != (T, M):
        raise bad(f"mask must have shape [{T}, {M}], got {list(np.shape(panel.mask))}")
    if panel.S is not None and np.shape(panel.S) != (T,):
        raise bad(f"S must have shape [{T}], got {list(np.shape(panel.S))}")
    if len(panel.tenor_names) != M:
        raise bad(f"tenor_names has {len(panel.tenor_names)} names for {M} tenors")
    if T < 2:
        raise bad(f"needs at least 2 dates, got {T}")
    try:
        data = make_market_data(F, panel.ttm, mask=panel.mask, dt=panel.dt)
        check_tenor_order(np.asarray(panel.ttm, float), np.asarray(data.mask), increasing=True)
    except ValueError as e:
        raise bad(str(e)) from None


class StackedPanels(NamedTuple):
    """Several commodities on one date index (masked where a commodity has no data)."""

    commodities: list[str]
    dates: pd.DatetimeIndex  # [T]
    F_mkt: np.ndarray  # [C, T, M]
    ttm: np.ndarray  # [C, T, M] (0 where no contract is known)
    mask: np.ndarray  # [C, T, M]
    contracts: np.ndarray  # [C, T, M]
    tenor_names: list[list[str]]
    dt: np.ndarray  # [T-1]


def stack_panels(panels: Mapping[str, Panel]) -> StackedPanels:
    """Stack per-commodity panels into ``[C, T, M]`` arrays on the union of their dates.

    M is the largest tenor count; missing tenors, and dates a commodity lacks (a file that
    never arrived), are masked.
    """
    if not panels:
        raise ValueError("panels is empty")
    names = list(panels)
    for n in names:
        validate_panel(panels[n], f"panel {n!r}")
    dates = pd.DatetimeIndex(sorted(set().union(*(set(p.dates) for p in panels.values()))))
    C, T = len(names), len(dates)
    M = max(p.F_mkt.shape[1] for p in panels.values())
    F = np.full((C, T, M), np.nan)
    ttm = np.zeros((C, T, M))
    mask = np.zeros((C, T, M), bool)
    codes = np.full((C, T, M), "", dtype=object)
    for c, name in enumerate(names):
        p = panels[name]
        rows = dates.get_indexer(p.dates)
        m = p.F_mkt.shape[1]
        pm = ~np.isnan(p.F_mkt) if p.mask is None else np.asarray(p.mask, bool)
        F[c, rows, :m] = np.where(pm, p.F_mkt, np.nan)
        ttm[c, rows, :m] = np.nan_to_num(p.ttm)  # kept under the mask (forwards need it)
        mask[c, rows, :m] = pm
        codes[c, rows, :m] = p.contracts
    dt = year_fraction(dates.values[:-1], dates.values[1:])
    tenor_names = [panels[n].tenor_names for n in names]
    return StackedPanels(names, dates, F, ttm, mask, codes, tenor_names, dt)


def panel_to_long(panel: Panel) -> pd.DataFrame:
    """The observed cells of a panel as a long table (date, tenor, contract, price, ttm)."""
    mask = np.isfinite(panel.F_mkt) if panel.mask is None else np.asarray(panel.mask, bool)
    t, m = np.nonzero(mask)
    return pd.DataFrame(
        {
            "trade_date": panel.dates[t],
            "tenor": np.asarray(panel.tenor_names, dtype=object)[m],
            "contract": np.asarray(panel.contracts, dtype=object)[t, m],
            "settlement_price": panel.F_mkt[t, m],
            "ttm": panel.ttm[t, m],
        }
    )


def as_stacked(panels: Panel | StackedPanels | Mapping[str, Panel]) -> StackedPanels:
    """One :class:`Panel`, a dict of panels or a :class:`StackedPanels`, as stacked panels."""
    if isinstance(panels, StackedPanels):
        return panels
    if isinstance(panels, Panel):
        return stack_panels({panels.commodity or "C0": panels})
    if isinstance(panels, Mapping):
        return stack_panels(panels)
    raise ValueError("panels must be a Panel, a dict of Panels or a StackedPanels")


def market_stack(sp: StackedPanels, dtype) -> MarketData:
    """The stacked panels as one :class:`ssjax.core.market.MarketData` with a leading commodity
    axis (``log_f``, ``ttm``, ``mask`` [C, T, M], ``dt`` [C, T-1]); an observed price that is
    not positive and finite is an error naming the commodity, date and tenor."""
    C = len(sp.commodities)
    F = np.where(sp.mask, sp.F_mkt, 1.0)
    bad = sp.mask & ~(np.isfinite(sp.F_mkt) & (np.where(sp.mask, sp.F_mkt, 1.0) > 0))
    if bad.any():
        c, t, m = np.argwhere(bad)[0]
        raise ValueError(
            f"F_mkt: {int(bad.sum())} observed prices are non-positive or non-finite, e.g. "
            f"commodity {sp.commodities[c]!r}, date {sp.dates[t].date()}, tenor {m}"
        )
    dt = np.broadcast_to(sp.dt, (C, sp.dt.shape[0]))
    return MarketData(
        log_f=jnp.asarray(np.where(sp.mask, np.log(F), 0.0), dtype),
        ttm=jnp.asarray(np.nan_to_num(sp.ttm), dtype),  # unmasked too: forwards at the end
        mask=jnp.asarray(sp.mask),
        dt=jnp.asarray(dt, dtype),
    )
