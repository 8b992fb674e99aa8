"""Tenor panels from settlement tables: nearby ranks, constant maturity, resampling, stacking."""

import numpy as np
import pandas as pd
import pytest
from repo_paths import FIXTURES, REPO

import ssjax
from ssjax.data.panels import (
    constant_maturity_panel,
    nearby_panel,
    panel_to_long,
    select_dates,
    stack_panels,
)
from ssjax.data.settlements import read_cme_settlements, read_continuous

FIX = FIXTURES
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def cme():
    return read_cme_settlements(FIX / "cme_settlements_sample.csv")


def test_round_trip_fixture_to_panel_and_back(cme):
    for root in ("CL", "NG", "HG"):
        p = nearby_panel(cme, 12, commodity=root)
        back = panel_to_long(p)
        ref = cme[cme["commodity"] == root]
        m = back.merge(ref, on=["trade_date", "contract"], suffixes=("_p", "_s"))
        assert len(m) == len(back) == ref["settlement_price"].notna().sum()
        np.testing.assert_array_equal(m["settlement_price_p"], m["settlement_price_s"])
        days = (m["expiration_date"] - m["trade_date"]).dt.days.to_numpy()
        np.testing.assert_allclose(m["ttm"].to_numpy(), days / 365.0, rtol=0, atol=0)


def test_missing_back_month_leaves_a_masked_cell(cme):
    p = nearby_panel(cme, 12, commodity="CL")
    t = p.dates.get_loc(pd.Timestamp("2024-09-12"))
    k = list(p.contracts[t]).index("CLN25")
    assert not p.mask[t, k] and np.isnan(p.F_mkt[t, k])
    assert p.mask[t, k + 1]  # the farther ranks keep their contracts
    q = nearby_panel(cme, 12, commodity="CL", among="observed")
    assert q.contracts[t, k] != "CLN25" and q.mask[t, : k + 1].all()
    # a date with no HG file at all: every HG cell masked, dates still aligned
    hg = nearby_panel(cme, 3, commodity="HG")
    assert pd.Timestamp("2024-10-10") not in hg.dates
    stacked = stack_panels({"CL": p, "HG": hg})
    d = stacked.dates.get_loc(pd.Timestamp("2024-10-10"))
    assert stacked.mask[0, d].any() and not stacked.mask[1, d].any()
    assert stacked.F_mkt.shape == (2, 60, 12)
    assert not stacked.mask[1, :, 3:].any()  # HG has 3 tenors, padded to 12


def test_roll_days_before_expiry(cme):
    p0 = nearby_panel(cme, 2, commodity="CL")
    p5 = nearby_panel(cme, 2, commodity="CL", roll_days=5)
    # CLU24 expires 2024-08-20; with roll_days=5 it is last used 5 trade dates before (08-13)
    t = p0.dates.get_loc(pd.Timestamp("2024-08-13"))
    assert p0.contracts[t, 0] == "CLU24" and p5.contracts[t, 0] == "CLU24"
    t = p0.dates.get_loc(pd.Timestamp("2024-08-14"))
    assert p0.contracts[t, 0] == "CLU24" and p5.contracts[t, 0] == "CLV24"
    assert (p0.ttm[p0.mask] >= 0).all()
    with pytest.raises(ValueError, match="roll_days"):
        nearby_panel(cme, 2, commodity="CL", roll_days=-1)


def test_continuous_file_round_trip_with_chris_roll():
    """CL1..CL6 settles -> long table -> nearby panel (roll_days=1: CHRIS rolls on the last
    trading day) -> the same numbers in the same places."""
    q = read_continuous(FIX / "quandl_continuous_sample.csv", roll_on_last_trade_day=True)
    p = nearby_panel(q, 6, roll_days=1)
    wide = pd.read_csv(FIX / "quandl_continuous_sample.csv", parse_dates=["Date"])
    want = wide[[f"CHRIS/CME_CL{k} - Settle" for k in range(1, 7)]].to_numpy()
    np.testing.assert_array_equal(p.F_mkt, want)
    assert list(p.dates) == list(wide["Date"])


def test_constant_maturity_interpolates_log_prices_and_masks_extrapolation(cme):
    cl = cme[cme["commodity"] == "CL"]
    p = constant_maturity_panel(cme, [0.0, 0.25, 0.5, 5.0], commodity="CL")
    d = pd.Timestamp("2024-08-01")
    day = cl[cl["trade_date"] == d]
    tau = ((day["expiration_date"] - d).dt.days / 365.0).to_numpy()
    lf = np.log(day["settlement_price"].to_numpy())
    order = np.argsort(tau)
    want = np.exp(np.interp(0.25, tau[order], lf[order]))
    t = p.dates.get_loc(d)
    assert p.F_mkt[t, 1] == pytest.approx(want, rel=1e-14)
    assert "|" in p.contracts[t, 1]
    assert not p.mask[t, 0] and not p.mask[t, 3]  # shorter than the front, beyond the back
    assert p.mask[:, 1].all() and np.all(p.ttm[:, 1] == 0.25)


def test_constant_maturity_with_weekly_resampling(cme):
    daily = constant_maturity_panel(cme, [0.1, 0.5], commodity="CL")
    weekly = constant_maturity_panel(cme, [0.1, 0.5], commodity="CL", resample="W-TUE")
    want = select_dates(daily.dates, "W-TUE")
    assert list(weekly.dates) == list(want) and len(weekly.dates) == 12
    # 2024-09-03 follows the Labor Day Monday; every week of the sample has its Tuesday
    assert (weekly.dates.day_of_week == 1).all()
    rows = daily.dates.get_indexer(weekly.dates)
    np.testing.assert_array_equal(weekly.F_mkt, daily.F_mkt[rows])
    np.testing.assert_array_equal(weekly.mask, daily.mask[rows])
    np.testing.assert_array_equal(weekly.ttm, daily.ttm[rows])
    assert weekly.contracts.tolist() == daily.contracts[rows].tolist()
    np.testing.assert_array_equal(weekly.dt, np.full(11, 7 / 365))
    assert weekly.mask.all() and weekly.tenor_names == ["CL_0.1y", "CL_0.5y"]


def test_weekly_resampling_picks_tuesdays_or_the_day_before():
    dates = pd.DatetimeIndex(pd.bdate_range("2024-08-26", "2024-09-20")).drop(
        pd.Timestamp("2024-09-10")
    )
    got = select_dates(dates, "W-TUE")
    assert list(got.strftime("%Y-%m-%d")) == [
        "2024-08-27",
        "2024-09-03",
        "2024-09-09",  # Tuesday 09-10 missing: the Monday
        "2024-09-17",
    ]
    with pytest.raises(ValueError, match="weekly rule"):
        select_dates(dates, "M")


def test_bundled_wti_contracts_reproduce_the_paper_panel():
    """The panel rebuilt from the contract file equals the default one; both differ from the
    published rows only on the two dates where the source prices a contract after its last
    trading day by the rule (there they have rolled, as an independent copy of the data has)."""
    b = ssjax.datasets.load_wti_ss2000_contracts()
    ref = ssjax.datasets.load_wti_ss2000()
    np.testing.assert_array_equal(b.panel.F_mkt, ref.F_mkt)
    np.testing.assert_array_equal(b.panel.contracts, ref.contracts)
    np.testing.assert_allclose(b.panel.ttm, ref.ttm, rtol=0, atol=1e-15)
    assert ref.mask.all() and (ref.ttm >= 0).all()
    published = ssjax.datasets.load_wti_ss2000("bus262")
    rolled = np.isin(ref.dates, pd.to_datetime(["1994-08-23", "1995-01-24"]))
    assert (published.contracts != ref.contracts).any(axis=1).tolist() == rolled.tolist()
    assert list(ref.contracts[rolled, 0]) == ["CLV94", "CLH95"]
    assert list(published.contracts[rolled, 0]) == ["CLU94", "CLG95"]
    assert b.panel.tenor_names == ["CL1", "CL5", "CL9", "CL13", "CL17"]


@pytest.mark.skipif(not SHARED.exists(), reason="shared data folder not present")
def test_shared_wti_long_file_reproduces_f1_to_f17():
    with pytest.warns(ssjax.data.SettlementWarning, match="1990-12-25, 1991-01-01"):
        settle = ssjax.data.settlements.read_long_csv(
            SHARED / "ss2000_wti_weekly_contracts_long.csv"
        )
    p = nearby_panel(settle, [1, 5, 9, 13, 17])
    ref = pd.read_csv(SHARED / "ss2000_wti_weekly.csv")
    np.testing.assert_array_equal(p.F_mkt, ref[["F1", "F5", "F9", "F13", "F17"]].to_numpy())


def test_bundled_copper_panel_ttm_matches_source():
    b = ssjax.datasets.load_copper_schwartz97()
    raw = pd.read_csv(
        ssjax.datasets.__path__[0] + "/schwartz97_copper_daily.csv.gz", parse_dates=["date"]
    )
    assert b.panel.F_mkt.shape == (3681, 8)
    ttm = raw.pivot(index="date", columns="nearby", values="ttm_days").to_numpy() / 365.0
    price = raw.pivot(index="date", columns="nearby", values="price").to_numpy()
    have = np.isfinite(ttm)
    np.testing.assert_array_equal(b.panel.ttm[have], ttm[have])
    np.testing.assert_array_equal(np.isfinite(b.panel.F_mkt), np.isfinite(price))
    np.testing.assert_array_equal(b.panel.F_mkt[np.isfinite(price)], price[np.isfinite(price)])
    assert b.settlements["commodity"].unique().tolist() == ["HG"]
    # the 13 source rows without a contract are all the missing prices; they are dropped
    empty = raw["contract"].isna()
    assert len(raw) == 29448 and empty.sum() == 13 and raw["price"].isna().equals(empty)
    assert len(b.settlements) == 29448 - 13 and b.settlements["settlement_price"].notna().all()
    t, k = np.nonzero(~b.panel.mask)
    got = sorted(zip(b.panel.dates[t].strftime("%Y-%m-%d"), k + 1, strict=True))
    gone = raw[empty]
    want = sorted(zip(gone["date"].dt.strftime("%Y-%m-%d"), gone["nearby"], strict=True))
    assert got == want  # exactly those 13 cells are masked, each still naming its contract
    assert all(b.panel.contracts[~b.panel.mask]) and np.isfinite(b.panel.ttm).all()


def test_panel_errors(cme):
    with pytest.raises(ValueError, match="several commodities"):
        nearby_panel(cme, 2)
    with pytest.raises(ValueError, match="not in the table"):
        nearby_panel(cme, 2, commodity="ZZ")
    with pytest.raises(ValueError, match="ranks"):
        nearby_panel(cme, [0, 1], commodity="CL")
    with pytest.raises(ValueError, match="maturities"):
        constant_maturity_panel(cme, [-1.0], commodity="CL")
    with pytest.raises(ValueError, match="no trade dates"):
        nearby_panel(cme, 2, commodity="CL", start="2030-01-01")


@pytest.mark.parametrize(
    ("load", "prefix", "n_days", "n_missing"),
    [
        (ssjax.datasets.load_natgas_rtl, "NG", 2018, 30),
        (ssjax.datasets.load_brent_rtl, "BRN", 2066, 5),
    ],
)
def test_bundled_rtl_panels(load, prefix, n_days, n_missing):
    p = load()
    assert p.F_mkt.shape == (414, 6) and p.tenor_names == [f"{prefix}{r:02d}" for r in RANKS]
    assert (p.dates.day_of_week == 1).all() and p.dates[0] == pd.Timestamp("2007-01-02")
    assert p.commodity == prefix and p.mask.all() and np.all(p.F_mkt > 0)
    np.testing.assert_allclose(
        p.dt, np.diff(p.dates.values).astype("timedelta64[D]").astype(float) / 365
    )
    # ttm is days to expiry / 365, increasing along the ranks; each cell names its expiry day
    assert np.all(np.diff(p.ttm, axis=1) > 0) and np.all(p.ttm >= 0)
    exp = pd.to_datetime([c.split("@")[1] for c in p.contracts[:, 0]])
    np.testing.assert_allclose((exp - p.dates).days / 365, p.ttm[:, 0])
    daily = load(ranks=tuple(range(1, 37)), weekday=None)
    assert daily.F_mkt.shape == (n_days, 36) and int((~daily.mask).sum()) == n_missing
    with pytest.raises(ValueError, match="ranks must be distinct"):
        load(ranks=(1, 1))
    with pytest.raises(ValueError, match="weekday must be one of"):
        load(weekday="SUN")


RANKS = ssjax.datasets.RTL_TENORS
