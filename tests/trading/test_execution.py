"""The execution model: whole lots for a capital, a participation cap, per-contract,
spread and impact costs, all worked out by hand on a two-tenor panel."""

import math

import numpy as np
import pandas as pd
import pytest

from ssjax.datasets import Panel
from ssjax.trading.execution import ExecutionModel, PriceBook, simulate_execution

DT = 7 / 365
DATES = pd.DatetimeIndex(["2020-01-07", "2020-01-14", "2020-01-21"])
PRICES = {"A": [50.0, 51.0, 52.0], "B": [60.0, 59.0, 61.0]}
CODES = np.array([["A", "B"]] * 3, dtype=object)
TTM = np.array([[0.5, 0.8], [0.5 - DT, 0.8 - DT], [0.5 - 2 * DT, 0.8 - 2 * DT]])
VOLUME = {"A": [10.0, 40.0, 40.0], "B": [np.nan, np.nan, np.nan]}
OI = {"A": [100.0, 100.0, 100.0], "B": [200.0, 200.0, 200.0]}


def _panel() -> Panel:
    F = np.array([[PRICES[c][t] for c in CODES[t]] for t in range(3)])
    return Panel(DATES, F, TTM, None, CODES, ["T1", "T2"], np.full(2, DT), np.isfinite(F), "XX")


def _settlements() -> pd.DataFrame:
    rows = [
        (DATES[t], c, PRICES[c][t], VOLUME[c][t], OI[c][t], "XX") for c in PRICES for t in range(3)
    ]
    return pd.DataFrame(rows, columns=["trade_date", "contract", "settlement_price", "volume",
                                       "open_interest", "commodity"])  # fmt: skip


def _run(model, targets, cpc=(0.0, 0.0)):
    def decide(t, w_prev):
        return np.asarray(targets[t], float), np.asarray(cpc, float)

    return simulate_execution(_panel(), decide, settlements=_settlements(), execution=model)


def test_whole_lots_for_a_capital_and_per_contract_costs():
    m = ExecutionModel(capital=1000.0, multiplier=1.0, fee_per_contract=1.0, spread=0.001)
    ex = _run(m, [[0.5, -0.25], [0.5, -0.25], [0.0, 0.0]], cpc=(0.1, 0.2))
    # date 0: A: 0.5 at 50 -> 10 contracts exactly; B: -0.25 at 60 -> -4.17 -> 4 contracts
    np.testing.assert_allclose(ex.positions.iloc[0], [0.5, -4 * 60 / 1000])
    t0 = ex.trades[ex.trades["date"] == DATES[0]]
    np.testing.assert_allclose(t0["contracts"], [10.0, 4.0])
    want = [0.5 * (0.1 / 50 + 1.0 / 50 + 0.001), 0.24 * (0.2 / 60 + 1.0 / 60 + 0.001)]
    np.testing.assert_allclose(t0["cost"], want, rtol=1e-13)
    # date 1: the same targets at new prices round to the lots already held: no trade
    np.testing.assert_allclose(ex.positions.iloc[1], [0.5, -0.24])
    assert not (ex.trades["date"] == DATES[1]).any()
    # date 2: flat, the whole position closed
    np.testing.assert_allclose(ex.positions.iloc[2], [0.0, 0.0])
    np.testing.assert_allclose(ex.trades["contracts"].iloc[2:], [0.5 * 1000 / 52, 0.24 * 1000 / 61])


def test_participation_cap_and_impact_against_the_days_volume():
    m = ExecutionModel(capital=1000.0, max_participation=0.5, impact=0.02)
    ex = _run(m, [[0.5, 0.0], [0.5, 0.0], [0.5, 0.0]])
    # date 0: A traded 10 contracts on the day: at most 5 -> 0.25; impact 0.02·√(5/10)
    t = ex.trades
    np.testing.assert_allclose(ex.positions["T1"], [0.25, 0.51, 0.51])
    np.testing.assert_allclose(t["contracts"].iloc[0], 5.0)
    np.testing.assert_allclose(t["cost"].iloc[0], 0.25 * 0.02 * math.sqrt(5 / 10), rtol=1e-13)
    # date 1: the rest, under the cap (0.5 of 40 contracts): the target's nearest lot,
    # 10 contracts at 51 = 0.51; impact on 0.26 of weight = 5.1 contracts of 40
    np.testing.assert_allclose(t["contracts"].iloc[1], 0.26 * 1000 / 51)
    np.testing.assert_allclose(t["cost"].iloc[1], 0.26 * 0.02 * math.sqrt(0.26 * 1000 / 51 / 40))
    assert t["liquidity"].iloc[0] == 10.0 and t["liquidity"].iloc[1] == 40.0
    # date 2: 0.51 at 52 is still 10 lots: no trade
    assert len(t) == 2
    # B has no volume: its open interest is the liquidity
    book = PriceBook(_panel(), _settlements())
    assert book.liquidity("B", 0) == 200.0 and math.isnan(book.liquidity("Z", 0))


def test_execution_model_settings_are_checked():
    for kw, msg in [
        (dict(capital=0.0), "capital must be None or a number > 0"),
        (dict(multiplier=-1.0), "multiplier must be a number > 0"),
        (dict(lot=0), "lot must be an integer >= 1"),
        (dict(spread=-0.001), "spread must be a number >= 0"),
        (dict(capital=1e6, max_participation=1.5), "max_participation must be None or"),
        (dict(impact=0.1), "impact and max_participation need capital"),
    ]:
        with pytest.raises(ValueError, match=msg):
            ExecutionModel(**kw)
