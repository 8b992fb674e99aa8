"""walk_forward and its execution layer: hand-computed P&L, no look-ahead, one compile."""

import dataclasses
import json
import math
import re

import numpy as np
import pandas as pd
import pytest

import ssjax
from ssjax.datasets import Panel
from ssjax.fit.mle import fit_mle
from ssjax.trading.backtest import BacktestResult, calibrate_walk_forward, walk_forward
from ssjax.trading.engine import Order, TradeEngine, TradingConfig
from ssjax.trading.execution import (
    executable_target,
    expiring_before_next,
    passive_returns,
    simulate_execution,
    step_pnl,
)
from ssjax.trading.metrics import compute_metrics, deflated_sharpe, round_trips, yearly_metrics
from ssjax.trading.settings import WalkForwardSettings

# ---- a hand-built two-tenor panel with a roll on date 2 -----------------------------------------
DT = 7 / 365
DATES = pd.DatetimeIndex(["2020-01-07", "2020-01-14", "2020-01-21", "2020-01-28"])
# contract prices by date (A expires after date 2, C is listed from date 1)
PRICES = {
    "A": [50.0, 51.0, 52.0, np.nan],
    "B": [60.0, 59.0, 61.0, 62.0],
    "C": [np.nan, 71.0, 70.0, 69.0],
}
CODES = np.array([["A", "B"], ["A", "B"], ["B", "C"], ["B", "C"]], dtype=object)
# B becomes the front tenor on date 2 and expires on date 3 (ttm 0: its last trading day)
TTM = np.array([[0.20, 0.30], [0.20 - DT, 0.30 - DT], [DT, 0.40], [0.0, 0.40 - DT]])
TARGETS = np.array([[0.5, -0.25], [0.5, -0.5], [0.5, -0.5], [0.5, 0.0]])
COST = np.array([0.1, 0.2])  # per contract (fee + half spread + slippage), per tenor


def _hand_panel(mask_b_date1: bool = False) -> Panel:
    F = np.array([[PRICES[c][t] for c in CODES[t]] for t in range(4)])
    mask = np.isfinite(F)
    if mask_b_date1:
        F[1, 1] = np.nan
        mask[1, 1] = False
    return Panel(DATES, F, TTM, None, CODES, ["T1", "T2"], np.full(3, DT), mask, "XX")


def _hand_settlements() -> pd.DataFrame:
    rows = [
        (DATES[t], c, p, "XX")
        for c, ps in PRICES.items()
        for t, p in enumerate(ps)
        if np.isfinite(p)
    ]
    # another commodity with the same codes must be ignored
    rows.append((DATES[2], "A", 999.0, "YY"))
    return pd.DataFrame(rows, columns=["trade_date", "contract", "settlement_price", "commodity"])


def _run_hand(panel, settlements, **kw):
    seen = {}

    def decide(t, w_prev):
        seen[t] = w_prev
        return TARGETS[t], COST

    return simulate_execution(panel, decide, settlements=settlements, **kw), seen


def _trades_tuples(ex):
    cols = ["tenor_id", "contract", "side", "size", "price", "cost", "kind", "stale_price"]
    return [
        (DATES.get_loc(r.date),) + tuple(getattr(r, c) for c in cols)
        for r in ex.trades.itertuples()
    ]


def _check_trades(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g[:4] == w[:4] and g[7:] == w[7:], (g, w)
        np.testing.assert_allclose(g[4:7], w[4:7], rtol=1e-14, err_msg=str(w))


def test_hand_computed_pnl_with_settlements():
    ex, seen = _run_hand(_hand_panel(), _hand_settlements())
    c0, c1 = COST
    want = [
        (0, 0, "A", "BUY", 0.5, 50.0, 0.5 * c0 / 50, "order", False),
        (0, 1, "B", "SELL", 0.25, 60.0, 0.25 * c1 / 60, "order", False),
        (1, 1, "B", "SELL", 0.25, 59.0, 0.25 * c1 / 59, "order", False),
        # the roll: both old positions closed in their old contracts (A priced from the
        # settlement table, it left the panel), the targets opened in the new ones
        (2, 0, "A", "SELL", 0.5, 52.0, 0.5 * c0 / 52, "roll_close", False),
        (2, 1, "B", "BUY", 0.5, 61.0, 0.5 * c1 / 61, "roll_close", False),
        (2, 0, "B", "BUY", 0.5, 61.0, 0.5 * c0 / 61, "order", False),
        (2, 1, "C", "SELL", 0.5, 70.0, 0.5 * c1 / 70, "order", False),
        # B's last trading day: closed although the target says hold
        (3, 0, "B", "SELL", 0.5, 62.0, 0.5 * c0 / 62, "order", False),
        (3, 1, "C", "BUY", 0.5, 69.0, 0.5 * c1 / 69, "order", False),
    ]
    _check_trades(_trades_tuples(ex), want)

    gross = [
        0.0,
        0.5 * (51 / 50 - 1) - 0.25 * (59 / 60 - 1),
        0.5 * (52 / 51 - 1) - 0.5 * (61 / 59 - 1),  # A and B held, not the new tenors
        0.5 * (62 / 61 - 1) - 0.5 * (69 / 70 - 1),
    ]
    cost = [
        0.5 * c0 / 50 + 0.25 * c1 / 60,
        0.25 * c1 / 59,
        0.5 * c0 / 52 + 0.5 * c1 / 61 + 0.5 * c0 / 61 + 0.5 * c1 / 70,
        0.5 * c0 / 62 + 0.5 * c1 / 69,
    ]
    net = np.subtract(gross, cost)
    np.testing.assert_allclose(ex.pnl["gross"], gross, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(ex.pnl["cost"], cost, rtol=1e-13)
    np.testing.assert_allclose(ex.pnl["net"], net, rtol=1e-13)
    np.testing.assert_allclose(ex.pnl["equity"], np.cumsum(net), rtol=1e-13)
    np.testing.assert_allclose(ex.pnl["turnover"], [0.75, 0.25, 2.0, 1.0])
    np.testing.assert_allclose(ex.pnl["exposure"], [0.0, 0.75, 1.0, 1.0])
    np.testing.assert_allclose(
        ex.positions.to_numpy(), [[0.5, -0.25], [0.5, -0.5], [0.5, -0.5], [0.0, 0.0]]
    )
    assert ex.held.to_numpy().tolist() == [["A", "B"], ["A", "B"], ["B", "C"], ["", ""]]
    # the engine sees the rolled tenors with their pre-roll weights (hysteresis carries
    # across the roll); the fills start from the book after the roll closes
    np.testing.assert_array_equal(seen[1], [0.5, -0.25])
    np.testing.assert_array_equal(seen[2], [0.5, -0.5])
    np.testing.assert_allclose(ex.pnl["net_exposure"], [0.0, 0.25, 0.0, 0.0])
    # per-tenor net P&L adds up to the total
    np.testing.assert_allclose(ex.tenor_pnl.sum(axis=1), net, rtol=1e-13, atol=1e-16)
    # without the carry, the decision sees the rolled tenors flat (and the fills are the same
    # here, since these targets do not depend on what the decision sees)
    ex0, seen0 = _run_hand(_hand_panel(), _hand_settlements(), carry_rolls=False)
    np.testing.assert_array_equal(seen0[2], [0.0, 0.0])
    pd.testing.assert_frame_equal(ex0.trades, ex.trades)
    assert ex.orders[2] == [Order(0, "BUY", 0.5), Order(1, "SELL", 0.5)]
    assert ex.orders[3] == [Order(0, "SELL", 0.5), Order(1, "BUY", 0.5)]


def test_hand_computed_lag_one_fills_at_the_next_settlement():
    """execution_lag = 1: the target decided at t fills at t+1's settlement of the tenor's
    contract then; a roll at t+1 closes the old contract and the due fill re-opens the new
    one; the last decision is left unfilled (it is the live order)."""
    ex, seen = _run_hand(_hand_panel(), _hand_settlements(), lag=1)
    c0, c1 = COST
    d = DATES
    want = [
        # date 1: the targets of date 0 (0.5, -0.25)
        (1, 0, "A", "BUY", 0.5, 51.0, 0.5 * c0 / 51, "order", False),
        (1, 1, "B", "SELL", 0.25, 59.0, 0.25 * c1 / 59, "order", False),
        # date 2: the roll closes A and B, then date 1's targets (0.5, -0.5) open B and C
        (2, 0, "A", "SELL", 0.5, 52.0, 0.5 * c0 / 52, "roll_close", False),
        (2, 1, "B", "BUY", 0.25, 61.0, 0.25 * c1 / 61, "roll_close", False),
        (2, 0, "B", "BUY", 0.5, 61.0, 0.5 * c0 / 61, "order", False),
        (2, 1, "C", "SELL", 0.5, 70.0, 0.5 * c1 / 70, "order", False),
        # date 3: date 2's targets (0.5, -0.5) hold, but B is on its last trading day
        (3, 0, "B", "SELL", 0.5, 62.0, 0.5 * c0 / 62, "order", False),
    ]
    got = _trades_tuples(ex)
    order = [0, 1, 2, 3, 4, 5, 6]
    _check_trades([got[i] for i in order], want)
    assert list(ex.trades["decided"]) == [d[0], d[0], d[2], d[2], d[1], d[1], d[2]]
    gross = [
        0.0,
        0.0,  # nothing held over (0, 1]
        0.5 * (52 / 51 - 1) - 0.25 * (61 / 59 - 1),
        0.5 * (62 / 61 - 1) - 0.5 * (69 / 70 - 1),
    ]
    np.testing.assert_allclose(ex.pnl["gross"], gross, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(ex.positions.to_numpy(), [[0, 0], [0.5, -0.25], [0.5, -0.5],
                                                         [0.0, -0.5]])  # fmt: skip
    # each decision trades from the book after that date's fills
    np.testing.assert_array_equal(seen[1], [0.5, -0.25])
    np.testing.assert_array_equal(ex.targets.to_numpy(), TARGETS)
    with pytest.raises(ValueError, match="lag must be an integer >= 0"):
        _run_hand(_hand_panel(), None, lag=-1)


def test_hand_computed_pnl_panel_only_carry_and_stale_roll():
    """Without settlements: prices from any tenor of the panel; a held contract with no price
    is carried at its last mark and marked when a price reappears."""
    ex, _ = _run_hand(_hand_panel(mask_b_date1=True), None)
    c0, c1 = COST
    want = [
        (0, 0, "A", "BUY", 0.5, 50.0, 0.5 * c0 / 50, "order", False),
        (0, 1, "B", "SELL", 0.25, 60.0, 0.25 * c1 / 60, "order", False),
        # date 1: tenor 2 has no price, its order cannot be filled (position kept)
        # date 2: A is not in the panel any more: closed at its last mark (51)
        (2, 0, "A", "SELL", 0.5, 51.0, 0.5 * c0 / 51, "roll_close", True),
        # B is priced where it now appears, under tenor 1
        (2, 1, "B", "BUY", 0.25, 61.0, 0.25 * c1 / 61, "roll_close", False),
        (2, 0, "B", "BUY", 0.5, 61.0, 0.5 * c0 / 61, "order", False),
        (2, 1, "C", "SELL", 0.5, 70.0, 0.5 * c1 / 70, "order", False),
        (3, 0, "B", "SELL", 0.5, 62.0, 0.5 * c0 / 62, "order", False),
        (3, 1, "C", "BUY", 0.5, 69.0, 0.5 * c1 / 69, "order", False),
    ]
    _check_trades(_trades_tuples(ex), want)
    gross = [
        0.0,
        0.5 * (51 / 50 - 1),  # B unpriced: carried
        -0.25 * (61 / 60 - 1),  # A unpriced (no P&L); B's two-week move booked at once
        0.5 * (62 / 61 - 1) - 0.5 * (69 / 70 - 1),
    ]
    cost = [
        0.5 * c0 / 50 + 0.25 * c1 / 60,
        0.0,
        0.5 * c0 / 51 + 0.25 * c1 / 61 + 0.5 * c0 / 61 + 0.5 * c1 / 70,
        0.5 * c0 / 62 + 0.5 * c1 / 69,
    ]
    np.testing.assert_allclose(ex.pnl["gross"], gross, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(ex.pnl["cost"], cost, rtol=1e-13)
    np.testing.assert_allclose(ex.pnl["net"], np.subtract(gross, cost), rtol=1e-13)
    np.testing.assert_allclose(
        ex.positions.to_numpy(), [[0.5, -0.25], [0.5, -0.25], [0.5, -0.5], [0.0, 0.0]]
    )
    assert ex.orders[1] == []


def test_step_pnl_and_expiry_rule():
    prices = {"A": 55.0, "B": np.nan}
    pnl, marks = step_pnl(
        np.array([0.4, -0.2, 0.0]),
        np.array(["A", "B", None], dtype=object),
        np.array([50.0, 60.0, np.nan]),
        lambda c: prices.get(c, np.nan),
    )
    np.testing.assert_allclose(pnl, [0.4 * 0.1, 0.0, 0.0], rtol=1e-14)
    np.testing.assert_array_equal(marks[:2], [55.0, 60.0])  # B carried at its last mark
    ttm = np.array([[0.0, 0.5], [3 / 365, 7 / 365], [0.2, 0.0]])
    exp = expiring_before_next(ttm, np.array([7 / 365, 7 / 365]))
    assert exp.tolist() == [[True, False], [True, False], [False, True]]
    # the step after the last date: 0 by default, or given
    last = np.array([[0.2, 3 / 365, 0.0]])
    assert expiring_before_next(last, np.array([])).tolist() == [[False, False, True]]
    assert expiring_before_next(last, [], last_step=7 / 365).tolist() == [[False, True, True]]


def test_executable_target():
    w_prev = np.array([0.3, -0.2, 0.1, 0.0, 0.4])
    target = np.array([0.5, 0.0, 0.6, -0.7, 0.4])
    price = np.array([50.0, np.nan, 52.0, 53.0, 54.0])
    codes = np.array(["A", "B", "C", "", "E"], dtype=object)
    expiring = np.array([False, True, True, False, False])
    got = executable_target(target, w_prev, price, codes, expiring)
    # filled / no price: kept / expiring: closed / no contract: kept / unchanged
    np.testing.assert_array_equal(got, [0.5, -0.2, 0.0, 0.0, 0.4])
    with pytest.raises(ValueError, match="w_prev must have shape"):
        executable_target(target, w_prev[:2], price, codes, expiring)


# ---- the bundled WTI data ----------------------------------------------------------------------
N, START, EVERY, T0 = 150, 100, 20, 130  # calibrations at 100, 120, 140; T0 inside a block
CFG = TradingConfig(
    z_method="residual", sigma_method="residuals", fee=0.01, half_spread=0.005, slippage=0.005
)


def _head(panel: Panel, n: int) -> Panel:
    return panel._replace(
        dates=panel.dates[:n],
        F_mkt=panel.F_mkt[:n],
        ttm=panel.ttm[:n],
        contracts=panel.contracts[:n],
        dt=panel.dt[: n - 1],
        mask=panel.mask[:n],
    )


@pytest.fixture(scope="module")
def wti_short():
    b = ssjax.datasets.load_wti_ss2000_contracts()
    panel = _head(b.panel, N)
    settle = b.settlements[b.settlements["trade_date"] <= panel.dates[-1]].copy()
    cache0 = fit_mle._cache_size()
    res = walk_forward(
        panel, settle, trading=CFG, min_window=START, recalibrate_every=EVERY, progress=True
    )
    return panel, settle, res, cache0


def _run(panel, settle, **kw):
    kw = {"trading": CFG, "min_window": START, "recalibrate_every": EVERY, **kw}
    return walk_forward(panel, settle, **kw)


def test_walk_forward_books_actual_contracts(wti_short):
    panel, settle, res, _ = wti_short
    assert isinstance(res, BacktestResult)
    idx = panel.dates[START:]
    for name in ("positions", "held", "signals", "z", "F_model", "F_mkt", "pnl"):
        assert getattr(res, name).index.equals(pd.DatetimeIndex(idx, name="date")), name
    assert len(res.orders) == N - START
    assert list(res.params.index) == [panel.dates[t] for t in (100, 120, 140)]
    assert res.params["optimum_reached"].all() and np.isfinite(res.params["loglik"]).all()
    kinds = res.trades["kind"].value_counts()
    assert kinds.get("order", 0) >= 5 and kinds.get("roll_close", 0) >= 1
    assert not res.trades["stale_price"].any()

    # gross P&L recomputed independently from the settlement table and the held contracts
    px = settle.set_index(["trade_date", "contract"])["settlement_price"]
    w = res.positions.to_numpy()
    held = res.held.to_numpy()
    want = [0.0]
    for k in range(1, len(idx)):
        g = 0.0
        for i in np.flatnonzero(w[k - 1]):
            c = held[k - 1, i]
            g += w[k - 1, i] * (px[(idx[k], c)] / px[(idx[k - 1], c)] - 1.0)
        want.append(g)
    np.testing.assert_allclose(res.pnl["gross"], want, rtol=1e-12, atol=1e-15)
    # costs: (fee + half spread + slippage) / price per unit of weight, summed per date
    tr = res.trades
    np.testing.assert_allclose(tr["cost"], tr["size"] * 0.02 / tr["price"], rtol=1e-13)
    per_date = tr.groupby("date")["cost"].sum().reindex(res.pnl.index, fill_value=0.0)
    np.testing.assert_allclose(res.pnl["cost"], per_date, rtol=1e-12)
    # a position always sits in the tenor's current contract, never in one that cannot be
    # held to the next date
    codes = panel.contracts[START:]
    on = w != 0
    assert np.all(held[on] == codes[on])
    exp = expiring_before_next(panel.ttm, panel.dt)[START:]
    assert not np.any(on & exp)
    # orders are the fills of kind "order"
    n_orders = sum(len(o) for o in res.orders)
    assert n_orders == int((tr["kind"] == "order").sum())


def test_no_look_ahead(wti_short):
    panel, settle, base, _ = wti_short
    d0 = panel.dates[T0]
    F = panel.F_mkt.copy()
    F[T0 + 1 :] *= 1.1
    F[T0 + 20 :, 2] *= 0.95  # a curve-shape change, too
    bumped = panel._replace(F_mkt=F)
    s2 = settle.copy()
    later = s2["trade_date"] > d0
    s2.loc[later, "settlement_price"] *= 1.1
    pert = _run(bumped, s2)

    upto = slice(None, d0)
    for name in ("positions", "held", "signals", "z", "F_model", "F_mkt", "pnl"):
        pd.testing.assert_frame_equal(
            getattr(base, name).loc[upto], getattr(pert, name).loc[upto], check_exact=True
        )
    k0 = T0 - START + 1
    assert sum(map(len, base.orders[:k0])) >= 3  # there are orders to compare
    assert base.orders[:k0] == pert.orders[:k0]
    tb = base.trades[base.trades["date"] <= d0].reset_index(drop=True)
    tp = pert.trades[pert.trades["date"] <= d0].reset_index(drop=True)
    pd.testing.assert_frame_equal(tb, tp, check_exact=True)
    pb, pp = base.params.loc[upto], pert.params.loc[upto]
    pd.testing.assert_frame_equal(pb.drop(columns="seconds"), pp.drop(columns="seconds"))
    # ... and the perturbation does reach everything after t0
    assert not np.allclose(base.F_model.iloc[k0:], pert.F_model.iloc[k0:])
    assert base.params["kappa"].iloc[-1] != pert.params["kappa"].iloc[-1]


def _perturb_after(panel: Panel, settle: pd.DataFrame, t0: int) -> tuple[Panel, pd.DataFrame]:
    """Every input after date t0 changed: prices, maturities, contracts, mask, settlements."""
    T = len(panel.dates)
    later = slice(t0 + 1, None)
    F = panel.F_mkt.copy()
    F[later] *= 1.1
    F[t0 + 8 :, 2] *= 0.95  # a curve-shape change
    ttm = panel.ttm.copy()
    ttm[later] += 0.004
    ttm[t0 + 1, 0] = 0.0  # the front contract "expires" the day after t0
    codes = panel.contracts.copy()
    codes[later, 1] = np.array(["X" + str(c) for c in codes[later, 1]], dtype=object)  # rolls
    mask = panel.mask.copy()
    mask[t0 + 2 : t0 + 5, 2] = False  # a tenor goes missing
    F[~mask] = np.nan
    assert t0 + 5 < T
    pert = panel._replace(F_mkt=F, ttm=ttm, contracts=codes, mask=mask)
    s2 = settle.copy()
    after = s2["trade_date"] > panel.dates[t0]
    s2.loc[after, "settlement_price"] *= 1.07
    s2 = s2.drop(s2.index[after & (s2["contract"] == codes[t0, 3])])  # a contract's later prices
    extra = pd.DataFrame(
        {
            "trade_date": [panel.dates[t] for t in range(t0 + 1, T)],
            "contract": codes[t0 + 1 :, 1],
            "settlement_price": F[t0 + 1 :, 1],
        }
    )
    return pert, pd.concat([s2, extra], ignore_index=True)


def test_no_look_ahead_default_z_and_sigma_everything_perturbed(wti_short):
    """Default z (filtered-residual s.d.) and Sigma (rolling returns) settings; every input
    after t0 changed: nothing up to t0 moves, orders and positions included."""
    panel, settle, _, _ = wti_short
    cfg = TradingConfig(z_in=1.0, z_out=0.25, fee=0.002, half_spread=0.001, slippage=0.001)
    assert (cfg.z_method, cfg.sigma_method) == (TradingConfig().z_method, "returns")
    base = _run(panel, settle, trading=cfg)
    pert_panel, pert_settle = _perturb_after(panel, settle, T0)
    pert = _run(pert_panel, pert_settle, trading=cfg)
    assert base.info["z_basis"].startswith("model filtered-residual")

    d0 = panel.dates[T0]
    k0 = T0 - START + 1
    # something to compare: orders before t0 and a position held into t0
    assert sum(map(len, base.orders[:k0])) >= 5
    assert np.abs(base.positions.loc[d0].to_numpy()).sum() > 0
    upto = slice(None, d0)
    for name in ("positions", "pre_trade", "held", "signals", "z", "F_model", "F_mkt", "pnl"):
        pd.testing.assert_frame_equal(
            getattr(base, name).loc[upto], getattr(pert, name).loc[upto], check_exact=True
        )
    pd.testing.assert_series_equal(base.status.loc[upto], pert.status.loc[upto])
    assert base.orders[:k0] == pert.orders[:k0]
    tb = base.trades[base.trades["date"] <= d0].reset_index(drop=True)
    tp = pert.trades[pert.trades["date"] <= d0].reset_index(drop=True)
    assert len(tb) >= 5
    pd.testing.assert_frame_equal(tb, tp, check_exact=True)
    pb, pp = base.params.loc[upto], pert.params.loc[upto]
    pd.testing.assert_frame_equal(pb.drop(columns="seconds"), pp.drop(columns="seconds"))
    # ... and the perturbation reaches what comes after t0
    assert not np.allclose(base.F_model.iloc[k0:], pert.F_model.iloc[k0:], equal_nan=True)
    assert not base.pnl.iloc[k0:].equals(pert.pnl.iloc[k0:])
    assert base.params["kappa"].iloc[-1] != pert.params["kappa"].iloc[-1]
    assert pert.held.iloc[k0:, 1].str.startswith("X").any()


def test_one_compile_for_all_windows(wti_short):
    panel, settle, base, cache0 = wti_short
    # three windows of different lengths, at most one new program (none if an earlier test
    # already compiled this shape)
    assert base.info["fit_mle_compiles"] <= 1
    assert fit_mle._cache_size() - cache0 <= 1
    before = fit_mle._cache_size()
    other = _run(
        panel._replace(F_mkt=panel.F_mkt * 1.03),
        None,
        recalibrate_every=7,  # other window lengths
        warm_start=False,
    )
    assert len(other.params) == len(range(START, N, 7))
    assert fit_mle._cache_size() == before
    assert other.info["fit_mle_compiles"] == 0


def test_report_metrics_and_qp(wti_short, tmp_path, capsys):
    panel, settle, base, _ = wti_short
    paths = base.report(tmp_path / "rep")
    names = {p.name for p in paths}
    assert names >= {
        "positions.csv", "trades.csv", "pnl.csv", "params.csv", "metrics.json",
        "equity.png", "zscores.png", "curves.png",
    }  # fmt: skip
    for p in paths:
        assert p.exists() and p.stat().st_size > 0, p
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert m["n_trades"] == len(base.trades)
    pnl = pd.read_csv(tmp_path / "rep" / "pnl.csv", index_col=0, parse_dates=True)
    np.testing.assert_allclose(pnl["net"], base.pnl["net"])

    met = base.metrics
    for key in (
        "annual_return", "annual_volatility", "sharpe", "max_drawdown", "turnover",
        "hit_rate", "cost_share", "n_trades",
    ):  # fmt: skip
        assert math.isfinite(met[key]), key
    ppy = 1 / np.mean(panel.dt[START:])
    net = base.pnl["net"].to_numpy()
    assert met["annual_return"] == pytest.approx(net.mean() * ppy)
    assert met["annual_volatility"] == pytest.approx(net.std(ddof=1) * math.sqrt(ppy))
    eq = np.concatenate([[0], np.cumsum(net)])
    assert met["max_drawdown"] == pytest.approx(np.max(np.maximum.accumulate(eq) - eq))
    assert met["cost_share"] == pytest.approx(base.pnl["cost"].sum() / abs(base.pnl["gross"].sum()))
    assert 0 <= met["hit_rate"] <= 1 and met["max_drawdown"] >= 0

    qp = _run(
        panel,
        settle,
        engine=TradeEngine(sizing="qp", gamma=5.0),
        trading=TradingConfig(z_in=1.5, fee=0.002),
        progress=True,
    )
    assert qp.status.str.endswith("optimal").all()
    assert np.all(np.abs(qp.positions.to_numpy()) <= 1.0 + 1e-9)
    assert np.all(qp.positions.abs().sum(axis=1) <= 2.0 + 1e-9)
    assert len(qp.trades) > 0 and all(math.isfinite(v) for v in qp.metrics)
    err = capsys.readouterr().err
    # the progress bar of the calibrations, each one's date, log-likelihood and status
    assert "calibrations" in err and "3/3" in err and "loglik" in err and "optimum" in err


def test_reused_calibration_is_bit_identical(wti_short):
    """A CalibrationPath run once serves several trading settings with the same results."""
    panel, settle, base, _ = wti_short
    cal = calibrate_walk_forward(panel, min_window=START, recalibrate_every=EVERY)
    assert cal.cal_dates == [100, 120, 140]
    pd.testing.assert_frame_equal(
        cal.params.drop(columns="seconds"), base.params.drop(columns="seconds")
    )
    again = _run(panel, settle, calibration=cal)
    for name in ("positions", "z", "F_model", "pnl", "trades"):
        pd.testing.assert_frame_equal(getattr(again, name), getattr(base, name), check_exact=True)
    assert again.info["fit_mle_compiles"] == 0 and again.info["calibration_seconds"] == 0.0
    # another trading setting on the same calibrations = a run that calibrates itself
    cfg2 = TradingConfig(z_in=1.5, fee=0.002)
    a = _run(panel, settle, trading=cfg2, calibration=cal)
    b = _run(panel, settle, trading=cfg2)
    pd.testing.assert_frame_equal(a.pnl, b.pnl, check_exact=True)
    pd.testing.assert_frame_equal(a.trades, b.trades, check_exact=True)


def test_reused_calibration_must_match(wti_short):
    panel, settle, _, _ = wti_short
    cal = calibrate_walk_forward(panel, min_window=START, recalibrate_every=EVERY)
    with pytest.raises(ValueError, match="recalibrate_every: 20 vs 10"):
        _run(panel, settle, recalibrate_every=10, calibration=cal)
    with pytest.raises(ValueError, match="data:"):
        _run(panel._replace(F_mkt=panel.F_mkt * 1.01), settle, calibration=cal)
    with pytest.raises(ValueError, match="risk_premium"):
        _run(panel, settle, risk_premium=True, calibration=cal)


def test_walk_forward_rejects_bad_arguments(wti_short):
    panel, settle, _, _ = wti_short
    with pytest.raises(ValueError, match="start"):
        walk_forward(panel, min_window=100, start=90)
    with pytest.raises(ValueError, match="recalibrate_every"):
        walk_forward(panel, min_window=100, recalibrate_every=0)
    with pytest.raises(ValueError, match="z_method"):
        walk_forward(panel, min_window=100, trading=TradingConfig(z_method="smoothed"))
    with pytest.raises(ValueError, match="no trading date"):
        walk_forward(panel, min_window=100, start=N)


def test_walk_forward_settings_checked_when_made(wti_short):
    """The schedule is one frozen object, checked at construction with the field named;
    keywords build or replace it, a misspelt keyword is refused by name."""
    s = WalkForwardSettings(min_window=START, recalibrate_every=EVERY)
    assert s.first == START and s.replace(start=START + 5).first == START + 5
    assert s.key()["start"] == START
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.min_window = 3  # type: ignore[misc]
    bad = [
        (dict(min_window=0), "min_window must be an integer >= 1"),
        (dict(min_window=60.5), "min_window must be an integer >= 1"),
        (dict(recalibrate_every="13"), "recalibrate_every must be an integer >= 1"),
        (dict(warm_start="no"), "warm_start must be True or False"),
        (dict(standard_errors=1), "standard_errors must be True or False"),
        (dict(start=2.0), "start must be None or an integer"),
        (dict(min_window=10, start=5), "start=5 is before min_window=10"),
    ]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=re.escape(f"WalkForwardSettings.{msg}")):
            WalkForwardSettings(**kw)
    panel, settle, base, _ = wti_short
    with pytest.raises(TypeError, match=r"unknown walk-forward setting\(s\) \['min_windw'\]"):
        walk_forward(panel, min_windw=10)
    with pytest.raises(TypeError, match="settings must be a WalkForwardSettings"):
        walk_forward(panel, settle, {"min_window": 10})
    # the object and the keywords give the same backtest (the base run used keywords)
    again = walk_forward(panel, settle, s, trading=CFG)
    pd.testing.assert_frame_equal(again.pnl, base.pnl, check_exact=True)


def test_passive_benchmark_holds_the_front_contract_and_rolls_before_expiry():
    """Over (t−1, t] the passive long holds tenor 0's contract at t−1, or tenor 1's when
    tenor 0's expires before t."""
    panel = _hand_panel()
    r = passive_returns(panel, _hand_settlements())
    # date 1: A 50 -> 51; date 2: A (date 1's front) 51 -> 52; date 3: B 61 -> 62
    np.testing.assert_allclose(r, [np.nan, 51 / 50 - 1, 52 / 51 - 1, 62 / 61 - 1])
    np.testing.assert_allclose(passive_returns(panel, None, tenor=1, start=2),
                               [61 / 59 - 1, 69 / 70 - 1])  # fmt: skip
    with pytest.raises(ValueError, match="tenor must lie in"):
        passive_returns(panel, tenor=2)


def test_round_trips_and_years_by_hand():
    idx = pd.DatetimeIndex(["2020-12-29", "2021-01-05", "2021-01-12", "2021-01-19",
                            "2021-01-26", "2021-02-02"], name="date")  # fmt: skip
    pos = pd.DataFrame({"A": [0.5, 0.5, -0.5, 0.0, 0.0, 0.2], "B": [0, 0, 0, -1.0, -1.0, 0]},
                       index=idx, dtype=float)  # fmt: skip
    tp = pd.DataFrame({"A": [-0.01, 0.03, -0.02, 0.04, 0.0, -0.005],
                       "B": [0.0, 0.0, 0.0, -0.01, 0.02, 0.05]}, index=idx)  # fmt: skip
    trips = round_trips(pos, tp)
    rows = [tuple(r) for r in trips[["tenor", "side", "periods", "open"]].itertuples(index=False)]
    assert rows == [("A", "long", 2, False), ("A", "short", 1, False), ("A", "long", 0, True),
                    ("B", "short", 2, False)]  # fmt: skip
    # A long: opening cost -0.01, then +0.03, then the reversal date's -0.02 (its close);
    # A short: opened by the reversal (cost already counted), closed at date 3: +0.04
    np.testing.assert_allclose(trips["pnl"], [0.0, 0.04, -0.005, 0.06], atol=1e-15)
    pnl = pd.DataFrame({"gross": [0.01, 0.02, -0.01, 0.0, 0.03, 0.01],
                        "cost": [0.0, 0.0, 0.01, 0.0, 0.0, 0.0]}, index=idx)  # fmt: skip
    pnl["net"] = pnl["gross"] - pnl["cost"]
    y = yearly_metrics(pnl, 52)
    assert list(y.index) == [2020, 2021] and list(y["n_periods"]) == [1, 5]
    np.testing.assert_allclose(y["net"], [0.01, 0.04], atol=1e-15)
    np.testing.assert_allclose(y.loc[2021, "cost"], 0.01)
    assert y.loc[2021, "max_drawdown"] == pytest.approx(0.02)  # 0.02 -> 0.0
    assert math.isnan(y.loc[2020, "sharpe"])


def test_sharpe_uncertainty_and_deflation():
    """Lo (2002) standard error and the deflated Sharpe ratio against their formulas, and
    a simulation: the SE matches the spread of Sharpe ratios of IID samples."""
    rng = np.random.default_rng(3)
    n, ppy = 260, 52
    idx = pd.date_range("2015-01-06", periods=n, freq="W-TUE")
    net = rng.normal(0.001, 0.01, n)
    bench = 0.5 * net + rng.normal(0, 0.01, n)
    pnl = pd.DataFrame({"gross": net, "cost": 0.0, "net": net, "exposure": 1.0,
                        "net_exposure": -0.5, "turnover": 0.0}, index=idx)  # fmt: skip
    m = compute_metrics(pnl, 0, ppy, benchmark=bench)
    sr = net.mean() / net.std(ddof=1)
    assert m["sharpe"] == pytest.approx(sr * math.sqrt(ppy), rel=1e-12)
    assert m["sharpe_se"] == pytest.approx(math.sqrt((1 + sr**2 / 2) / n * ppy), rel=1e-12)
    assert m["sharpe_tstat"] == pytest.approx(sr * math.sqrt(n), rel=1e-12)
    down = math.sqrt(np.mean(np.minimum(net, 0) ** 2) * ppy)
    assert m["sortino"] == pytest.approx(net.mean() * ppy / down, rel=1e-12)
    assert m["calmar"] == pytest.approx(m["annual_return"] / m["max_drawdown"], rel=1e-12)
    c = np.cov(net, bench)
    assert m["beta"] == pytest.approx(c[0, 1] / c[1, 1], rel=1e-12)
    assert m["correlation"] == pytest.approx(np.corrcoef(net, bench)[0, 1], rel=1e-12)
    assert m["net_exposure"] == -0.5 and m["invested_share"] == 1.0
    with pytest.raises(ValueError, match="benchmark must have one return per period"):
        compute_metrics(pnl, 0, ppy, benchmark=bench[:-1])
    # the SE is the spread of Sharpe ratios over repeated samples (IID normal)
    sims = rng.normal(0.001, 0.01, (4000, n))
    srs = sims.mean(1) / sims.std(1, ddof=1) * math.sqrt(ppy)
    assert np.std(srs) == pytest.approx(m["sharpe_se"], rel=0.05)
    # deflated Sharpe: one trial is the probabilistic Sharpe ratio Φ(SR √(n−1) / √(1 + SR²/2))
    psr = deflated_sharpe(sr, 1, [sr], n)
    from statistics import NormalDist

    assert psr == pytest.approx(NormalDist().cdf(sr * math.sqrt(n - 1) / math.sqrt(1 + sr**2 / 2)))
    # the best of 50 settings with no skill is deflated towards 0.5 or below
    trial = rng.normal(0, 1 / math.sqrt(n), 50)
    best = float(trial.max())
    assert deflated_sharpe(best, 50, trial, n) < deflated_sharpe(best, 1, [best], n)
    assert deflated_sharpe(best, 50, trial, n) < 0.7


# ---- metrics against hand computations --------------------------------------------------------
def test_metrics_by_hand():
    """Six periods, 12 per year (half a year): every metric worked out by hand."""
    idx = pd.date_range("2020-01-31", periods=6, freq="ME", name="date")
    net = [-0.001, 0.03, -0.015, 0.0, -0.02, 0.02]
    cost = [0.001, 0.0, 0.001, 0.002, 0.0, 0.002]
    pnl = pd.DataFrame(
        {
            "gross": [0.0, 0.03, -0.014, 0.002, -0.02, 0.022],  # net + cost
            "cost": cost,
            "net": net,
            "exposure": [0.0, 0.5, 0.5, 0.0, 1.0, 1.0],
            "turnover": [0.5, 0.0, 0.5, 1.0, 0.0, 1.0],
        },
        index=idx,
    )
    m = compute_metrics(pnl, n_trades=7, periods_per_year=12)
    # mean 0.014/6 per month -> 0.028 per year
    assert m["annual_return"] == pytest.approx(0.028, rel=1e-12)
    # sample variance: (sum x^2 - n mean^2) / (n - 1) = (0.001926 - 0.014^2/6) / 5
    vol = math.sqrt((0.001926 - 0.014**2 / 6) / 5 * 12)
    assert m["annual_volatility"] == pytest.approx(vol, rel=1e-12)
    assert m["annual_volatility"] == pytest.approx(0.0674092, rel=1e-6)
    assert m["sharpe"] == pytest.approx(0.028 / vol, rel=1e-12)
    # equity 0, -0.001, 0.029, 0.014, 0.014, -0.006, 0.014: peak 0.029 to trough -0.006
    assert m["max_drawdown"] == pytest.approx(0.035, rel=1e-12)
    # sum |dw| = 3 over half a year
    assert m["turnover"] == pytest.approx(6.0, rel=1e-12)
    # invested periods 2, 3, 5, 6 with nets 0.03, -0.015, -0.02, 0.02: 2 of 4 positive
    assert m["hit_rate"] == 0.5
    # costs 0.006 over gross 0.02
    assert m["cost_share"] == pytest.approx(0.3, rel=1e-12)
    assert m["total_gross"] == pytest.approx(0.02) and m["total_cost"] == pytest.approx(0.006)
    assert m["total_net"] == pytest.approx(0.014) and m["n_trades"] == 7
    assert m["n_periods"] == 6 and m["periods_per_year"] == 12

    # degenerate cases: no variation, never invested, no gross P&L
    flat = pnl.assign(gross=0.0, cost=0.0, net=0.0, exposure=0.0, turnover=0.0)
    f = compute_metrics(flat, n_trades=0, periods_per_year=52)
    assert f["annual_return"] == 0 and f["annual_volatility"] == 0 and f["max_drawdown"] == 0
    assert math.isnan(f["sharpe"]) and math.isnan(f["hit_rate"]) and math.isnan(f["cost_share"])
    # a path that starts with a loss: the drawdown counts from the initial 0
    down = pnl.assign(net=[-0.01, -0.02, 0.005, 0.0, 0.0, 0.0])
    assert compute_metrics(down, 0, 12)["max_drawdown"] == pytest.approx(0.03, rel=1e-12)
