"""The execution layer of the backtest: prices of actual contracts, fills, rolls and P&L.

:func:`simulate_execution` books what a desk would: target weights decided after a date's
settlement are filled ``lag`` dates later at the settlement of the tenor's contract then, a
position whose contract leaves the tenor is rolled (closed in the old contract, re-opened in
the new one when the decision keeps it), a contract is never held past its last trading day,
and every fill pays its costs. :func:`executable_target` is the rule that turns a target into
the weights actually held, shared with the main job's live orders.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ssjax.checks import is_int, is_number
from ssjax.data.panels import Panel
from ssjax.trading.engine import Order

__all__ = [
    "PriceBook",
    "expiring_before_next",
    "executable_target",
    "filled_target",
    "step_pnl",
    "ExecutionModel",
    "ExecutionResult",
    "simulate_execution",
    "passive_returns",
]


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
        self._liq: dict[str, dict[str, np.ndarray]] = {}
        if settlements is not None:
            need = {"trade_date", "contract", "settlement_price"}
            missing = need - set(settlements.columns)
            if missing:
                raise ValueError(f"settlements lacks the columns {sorted(missing)}")
            s = settlements
            if panel.commodity is not None and "commodity" in s.columns:
                s = s[s["commodity"] == panel.commodity]
            dates = pd.DatetimeIndex(panel.dates)

            def by_contract(col: str) -> dict[str, np.ndarray]:
                """``col`` on the panel's dates, one array per contract (the last value of a
                date and contract that the table lists twice)."""
                t = s[["trade_date", "contract", col]].dropna(subset=["contract", col])
                wide = (
                    t.assign(trade_date=pd.to_datetime(t["trade_date"]))
                    .groupby(["trade_date", "contract"])[col]
                    .last()
                    .unstack("contract")
                    .reindex(dates)
                )
                return {str(c): wide[c].to_numpy(float) for c in wide.columns}

            self._settle = by_contract("settlement_price")
            self._liq = {c: by_contract(c) for c in ("volume", "open_interest") if c in s.columns}

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

    def liquidity(self, contract: Any, t: int) -> float:
        """The day's volume of ``contract`` at date index ``t`` in contracts, or its open
        interest where the settlements have no volume; NaN when neither is known (or > 0)."""
        if not _valid_code(contract):
            return math.nan
        for col in ("volume", "open_interest"):
            v = self._liq.get(col, {}).get(str(contract))
            if v is not None and np.isfinite(v[t]) and v[t] > 0:
                return float(v[t])
        return math.nan


# ---- the P&L and execution steps -------------------------------------------------------------
def expiring_before_next(
    ttm: np.ndarray, dt: np.ndarray, last_step: float | None = None
) -> np.ndarray:
    """[T, M] bool: the cell's contract cannot be held to the next date of the panel.

    True on its last trading day (ttm <= 0) and when its last trading day falls strictly
    before the next date (ttm < dt[t], e.g. a weekly panel whose front contract expires on
    the Monday before the next Tuesday: it would have no price to be marked at). The schedule
    of dates is known in advance, so this uses no future prices. On the last date the step
    to the next date is ``last_step`` (default: the median of ``dt``, the panel's usual step,
    as a live run at that date would assume; 0 for a panel of one date).
    """
    ttm = np.asarray(ttm, float)
    dt = np.asarray(dt, float)
    if last_step is None:
        last_step = float(np.median(dt)) if dt.size else 0.0
    nxt = np.concatenate([dt, [float(last_step)]])[:, None]
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


def filled_target(
    target: ArrayLike,
    w: ArrayLike,
    price_t: ArrayLike,
    codes_t: ArrayLike,
    expiring_t: ArrayLike,
    execution: ExecutionModel | None = None,
    liquidity: ArrayLike | None = None,
    min_trade: float = 1e-12,
) -> np.ndarray:
    """The weights held after a fill at t: :func:`executable_target`, then, with an
    ``execution`` model, each traded tenor's participation cap (against ``liquidity``, the
    day's volume per tenor; NaN or ``None``: no cap) and whole lots; a forced close of an
    expiring contract is whole. The rule of :func:`simulate_execution` and of the live
    orders (:meth:`ssjax.trading.backtest.BacktestResult.live_orders`)."""
    w = np.asarray(w, float)
    px = np.asarray(price_t, float)
    exp = np.asarray(expiring_t, bool)
    target = executable_target(target, w, px, codes_t, exp)
    if execution is not None:
        liq = np.full(w.shape, np.nan) if liquidity is None else np.asarray(liquidity, float)
        for i in np.flatnonzero(np.abs(target - w) > min_trade):
            if not exp[i] or target[i] != 0:
                target[i] = execution.fill(w[i], target[i], px[i], liq[i])
    return target


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


@dataclass(frozen=True)
class ExecutionModel:
    """How fills are sized and what they cost beyond the per-contract frictions of the
    decision (``TradingConfig.fee``, ``half_spread``, ``slippage``, in price units).

    Attributes:
        capital: the account's capital in currency; with it, target weights become whole
            contracts (a weight w_i is w_i·capital/(P_i·multiplier) contracts, rounded to
            the nearest lot at the fill price) and the impact term can be priced. ``None``
            (default): weights are filled exactly.
        multiplier: units of the underlying per contract (NYMEX CL: 1,000 bbl; COMEX HG:
            25,000 lb; prices in cents need 0.01 × that).
        lot: contracts per lot (default 1).
        fee_per_contract: commissions and exchange fees in currency per contract traded.
        spread: proportional half-spread paid per side, a fraction of the price.
        impact: square-root market impact, a fraction of the price paid at 100%
            participation: a fill of n contracts against the day's volume V (or, without
            volume, its open interest) costs impact·√(n/V) per unit traded. Needs
            ``capital`` and a settlement table with ``volume`` or ``open_interest``.
        max_participation: the most of the day's volume (or open interest) one fill may
            take, e.g. 0.1; the rest of the order is not filled (the next decision
            re-targets). ``None``: no cap.

    The costs of a fill of |Δw| at price P, as a fraction of capital:
    |Δw|·(cost_per_contract/P + fee_per_contract/(P·multiplier) + spread + impact·√(n/V)).
    """

    capital: float | None = None
    multiplier: float = 1.0
    lot: int = 1
    fee_per_contract: float = 0.0
    spread: float = 0.0
    impact: float = 0.0
    max_participation: float | None = None

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> ValueError:
            return ValueError(f"ExecutionModel.{name} must be {want}, got {getattr(self, name)!r}")

        if self.capital is not None and not (is_number(self.capital, True) and self.capital > 0):
            raise bad("capital", "None or a number > 0")
        if not (is_number(self.multiplier, True) and self.multiplier > 0):
            raise bad("multiplier", "a number > 0")
        if not is_int(self.lot) or self.lot < 1:
            raise bad("lot", "an integer >= 1")
        for name in ("fee_per_contract", "spread", "impact"):
            if not (is_number(getattr(self, name), True) and getattr(self, name) >= 0):
                raise bad(name, "a number >= 0")
        if self.max_participation is not None and not (
            is_number(self.max_participation, True) and 0 < self.max_participation <= 1
        ):
            raise bad("max_participation", "None or a number in (0, 1]")
        if (self.impact > 0 or self.max_participation is not None) and self.capital is None:
            raise ValueError("ExecutionModel: impact and max_participation need capital "
                             "(they are in contracts)")  # fmt: skip

    def lot_weight(self, price: float) -> float:
        """The weight of one lot at ``price`` (0 without capital: no rounding)."""
        if self.capital is None:
            return 0.0
        return self.lot * price * self.multiplier / self.capital

    def contracts(self, dw: float, price: float) -> float:
        """Contracts traded for a weight change ``dw`` at ``price`` (NaN without capital)."""
        if self.capital is None:
            return math.nan
        return abs(dw) * self.capital / (price * self.multiplier)

    def fill(self, w: float, target: float, price: float, liquidity: float) -> float:
        """The weight held after filling towards ``target`` from ``w``: the participation
        cap first (against ``liquidity``, contracts; NaN: no cap), then whole lots (the
        nearest lot to the target, or, when the cap cut the order, the last whole lot the
        capped order reaches)."""
        dw = target - w
        capped = False
        if self.max_participation is not None and np.isfinite(liquidity) and liquidity > 0:
            most = self.max_participation * liquidity * price * self.multiplier / self.capital
            capped = abs(dw) > most
            dw = float(np.clip(dw, -most, most))
        out = w + dw
        ell = self.lot_weight(price)
        if ell > 0:
            k = out / ell
            n = (math.floor(k) if dw > 0 else math.ceil(k)) if capped else round(k)
            if n == round(w / ell):  # the lots already held: nothing to trade
                return float(w)
            out = n * ell
        return float(out)

    def extra_cost(self, size: float, price: float, liquidity: float) -> float:
        """The model's costs of trading ``size`` (|Δw|) at ``price``, a fraction of capital."""
        c = size * (self.fee_per_contract / (price * self.multiplier) + self.spread)
        if self.impact > 0 and np.isfinite(liquidity) and liquidity > 0:
            c += size * self.impact * math.sqrt(self.contracts(size, price) / liquidity)
        return c


@dataclass
class ExecutionResult:
    """What :func:`simulate_execution` books (DataFrames indexed by date)."""

    positions: pd.DataFrame  # weights held after trading at t [dates x tenors]
    held: pd.DataFrame  # contract held per tenor after trading at t ("" when flat)
    trades: pd.DataFrame  # one row per fill
    pnl: pd.DataFrame  # gross, cost, net, equity, exposure, net_exposure, turnover
    orders: list[list[Order]]  # orders filled in the tenors' current contracts, per date
    pre_trade: pd.DataFrame | None = None  # the book t's decision starts from (its w_prev)
    tenor_pnl: pd.DataFrame | None = None  # net P&L booked per tenor at t (step P&L − costs)
    targets: pd.DataFrame | None = None  # the target weights decided at t (before execution)
    lag: int = 0  # dates between a decision and its fill


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
    "decided",
    "contracts",
    "liquidity",
]


def simulate_execution(
    panel: Panel,
    decide: Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]],
    *,
    settlements: pd.DataFrame | None = None,
    start: int = 0,
    min_trade: float = 1e-12,
    lag: int = 0,
    carry_rolls: bool = True,
    execution: ExecutionModel | None = None,
) -> ExecutionResult:
    """Book fills, positions and P&L on actual contracts for target weights from ``decide``.

    At each date t from ``start`` on:

    1. the positions held since t−1 earn w·(P_c(t)/P_c(t−1) − 1) on their contract c
       (:func:`step_pnl`, prices from :class:`PriceBook`);
    2. **rolls**: a position whose contract is no longer the tenor's contract at t is closed
       in its old contract at its price at t (at its last mark, flagged ``stale_price``,
       when the old contract has no price at t);
    3. **fills**: the target decided at t − ``lag`` is filled at t's settlement
       ``panel.F_mkt[t, i]`` of the tenor's contract ``panel.contracts[t, i]``, except where
       the tenor has no price or contract at t (the position is kept) and where the contract
       is on its last trading day or expires before the next date of the panel
       (:func:`expiring_before_next`: the position is closed whatever the target, since it
       could not be marked at the next date; :func:`executable_target`). A position that a
       roll closed at t is re-opened in the new contract when the target keeps it (both
       legs pay costs);
    4. ``decide(t, w_prev)`` returns ``(target [M], cost_per_contract [M])`` after t's
       settlement. ``w_prev`` (booked as ``pre_trade``) is the book this decision trades
       from: the last target decided and not yet filled (``lag`` >= 2), else the book after
       t's fills; with ``carry_rolls`` a tenor that a roll closed at t (and that no fill
       re-opened) enters it with its pre-roll weight, so its hysteresis carries across the
       roll (the new contract's z need only pass z_out to keep the position);
    5. with ``lag = 0`` the decision is filled at once (step 3 at t); every fill of |Δw|
       costs |Δw|·cost_per_contract_i/price, at the cost the decision returned.

    ``execution`` (:class:`ExecutionModel`) adds whole lots for a given capital, a cap on
    each fill's share of the day's volume, and per-contract, proportional and impact costs;
    ``trades`` then also has ``contracts`` (lots × lot size traded) and ``liquidity``.

    ``lag = 1`` is a desk's timing: decide on t's settlement, fill at the next one; the
    decisions of the last ``lag`` dates are not filled in the sample (``targets`` holds them).

    Returns:
        :class:`ExecutionResult`. ``trades.kind`` is ``"roll_close"`` for the closes of step
        2 and ``"order"`` for step 3 (those are also the per-date ``orders``); ``decided``
        is the date of the decision a fill executes.
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
    if not is_int(lag) or lag < 0:
        raise ValueError(f"lag must be an integer >= 0, got {lag!r}")
    book = PriceBook(panel, settlements)
    expiring = expiring_before_next(ttm, np.asarray(panel.dt, float))

    w = np.zeros(M)
    held = np.full(M, None, dtype=object)
    marks = np.full(M, np.nan)
    pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # fill date -> (target, cost)
    rows: dict[str, list] = {
        k: [] for k in ("pos", "pre", "held", "pnl", "target", "orders", "tenor")
    }
    fees = np.zeros(M)
    trades: list[tuple] = []

    def trade(t: int, i: int, code: Any, side: str, size: float, price: float, cpc: float,
              kind: str, stale: bool, decided: Any) -> float:  # fmt: skip
        fee = size * cpc / price
        liq = book.liquidity(code, t)
        n = math.nan
        if execution is not None:
            fee += execution.extra_cost(size, price, liq)
            n = execution.contracts(size, price)
        fees[i] += fee
        trades.append(
            (dates[t], int(i), names[i], str(code), side, float(size), float(price), float(fee))
            + (kind, bool(stale), decided, n, liq)
        )
        return fee

    for t in range(start, T):
        exposure, net_exposure = float(np.sum(np.abs(w))), float(np.sum(w))
        fees[:] = 0.0
        pnl_i, marks = step_pnl(w, held, marks, lambda c, t=t: book.price(c, t))
        gross = float(np.sum(pnl_i))
        cost = turnover = 0.0

        # rolls: close what is no longer the tenor's contract
        closes = []
        w_roll = w.copy()
        for i in np.flatnonzero(w != 0):
            if _valid_code(codes[t, i]) and held[i] != codes[t, i]:
                p = book.price(held[i], t)
                stale = not (np.isfinite(p) and p > 0)
                side = "SELL" if w[i] > 0 else "BUY"
                closes.append((i, held[i], side, abs(w[i]), marks[i] if stale else p, stale))
                w[i], held[i], marks[i] = 0.0, None, np.nan

        px = np.where(mask[t] & np.isfinite(F[t]) & (F[t] > 0), F[t], np.nan)

        def fill(target: np.ndarray, cpc: np.ndarray, decided: Any) -> list[Order]:
            nonlocal cost, turnover
            liq = [book.liquidity(c, t) for c in codes[t]] if execution is not None else None
            target = filled_target(target, w, px, codes[t], expiring[t], execution, liq,
                                   min_trade)  # fmt: skip
            dw = target - w
            orders = []
            for i in np.flatnonzero(np.abs(dw) > min_trade):
                size = float(abs(dw[i]))
                side = "BUY" if dw[i] > 0 else "SELL"
                cost += trade(t, i, codes[t, i], side, size, px[i], cpc[i], "order", False,
                              decided)  # fmt: skip
                turnover += size
                orders.append(Order(int(i), side, size))
                w[i] = target[i]
                held[i], marks[i] = (codes[t, i], px[i]) if w[i] != 0 else (None, np.nan)
            return orders

        def book_closes(cpc: np.ndarray) -> None:
            nonlocal cost, turnover
            for i, c, side, size, price, stale in closes:
                cost += trade(t, i, c, side, size, price, cpc[i], "roll_close", stale, dates[t])
                turnover += size

        orders: list[Order] = []
        filled = np.zeros(M, bool)
        due = pending.pop(t, None)
        if due is not None:  # the roll closes pay the cost known at the fill's decision
            book_closes(due[1])
            orders = fill(due[0], due[1], dates[t - lag])
            filled[[o.tenor_id for o in orders]] = True

        # the decision after t's settlement, from the book it trades from
        if pending:
            view = pending[max(pending)][0].copy()
        else:
            view = w.copy()
            if carry_rolls:
                for i, *_ in closes:
                    if not filled[i]:
                        view[i] = w_roll[i]
        rows["pre"].append(view.copy())
        target, cpc = decide(t, view.copy())
        target = np.array(target, float, copy=True)
        cpc = np.array(np.broadcast_to(np.asarray(cpc, float), (M,)))
        if target.shape != (M,):
            raise ValueError(f"decide must return target weights [{M}], got {target.shape}")
        rows["target"].append(target.copy())
        if due is None:
            book_closes(cpc)
        if lag == 0:
            orders = fill(target, cpc, dates[t])
        else:
            pending[t + lag] = (target, cpc)

        rows["pos"].append(w.copy())
        rows["held"].append(["" if not _valid_code(c) else str(c) for c in held])
        rows["pnl"].append((gross, cost, gross - cost, exposure, net_exposure, turnover))
        rows["tenor"].append(pnl_i - fees)
        rows["orders"].append(orders)

    idx = pd.DatetimeIndex(dates[start:], name="date")
    pnl = pd.DataFrame(
        rows["pnl"],
        index=idx,
        columns=["gross", "cost", "net", "exposure", "net_exposure", "turnover"],
    )
    pnl.insert(3, "equity", pnl["net"].cumsum())
    trades_df = pd.DataFrame(trades, columns=_TRADE_COLUMNS)
    trades_df["date"] = pd.to_datetime(trades_df["date"])
    trades_df["decided"] = pd.to_datetime(trades_df["decided"])

    def frame(key: str) -> pd.DataFrame:
        return pd.DataFrame(np.array(rows[key]).reshape(-1, M), index=idx, columns=names)

    return ExecutionResult(
        positions=frame("pos"),
        held=pd.DataFrame(
            np.array(rows["held"], dtype=object).reshape(-1, M), index=idx, columns=names
        ),
        trades=trades_df,
        pnl=pnl,
        orders=rows["orders"],
        pre_trade=frame("pre"),
        tenor_pnl=frame("tenor"),
        targets=frame("target"),
        lag=int(lag),
    )


def passive_returns(
    panel: Panel, settlements: pd.DataFrame | None = None, *, tenor: int = 0, start: int = 0
) -> np.ndarray:
    """Per-period returns of a passive long position in one tenor, rolled like the strategy.

    Over (t−1, t] the position holds the tenor's contract at t−1, or, when that contract
    expires before t (:func:`expiring_before_next`), the next tenor's: the same contracts
    the strategy could hold. Returns ``[T − start]`` values aligned with the P&L table of
    :func:`simulate_execution` from ``start`` (NaN where a price is missing and at t = 0):
    the benchmark of :func:`ssjax.trading.metrics.compute_metrics` (beta, correlation).
    """
    F = np.asarray(panel.F_mkt, float)
    T, M = F.shape
    if not 0 <= tenor < M:
        raise ValueError(f"tenor must lie in [0, {M - 1}], got {tenor}")
    codes = np.asarray(panel.contracts, dtype=object)
    expiring = expiring_before_next(np.asarray(panel.ttm, float), np.asarray(panel.dt, float))
    book = PriceBook(panel, settlements)
    out = np.full(T, np.nan)
    for t in range(max(start, 1), T):
        i = tenor
        while i < M - 1 and expiring[t - 1, i]:
            i += 1
        c = codes[t - 1, i]
        p0, p1 = book.price(c, t - 1), book.price(c, t)
        if np.isfinite(p0) and np.isfinite(p1) and p0 > 0:
            out[t] = p1 / p0 - 1.0
    return out[start:]
