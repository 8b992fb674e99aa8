"""Tests for ssjax.data.calendars: the CME trade-date (settlement) calendar."""

import numpy as np
import pandas as pd
import pytest
from repo_paths import FIXTURES

from ssjax.data.calendars import (
    SPECIAL_CLOSURES,
    add_trade_days,
    cme_holidays,
    cme_trade_dates,
    is_trade_date,
    next_trade_date,
    previous_trade_date,
    trade_days_between,
)

FIXTURE = FIXTURES / "cme_settlements_sample.csv"

HOLIDAYS_2024 = [
    "2024-01-01",  # New Year's Day
    "2024-01-15",  # Martin Luther King Jr. Day
    "2024-02-19",  # Presidents' Day
    "2024-03-29",  # Good Friday
    "2024-05-27",  # Memorial Day
    "2024-06-19",  # Juneteenth
    "2024-07-04",  # Independence Day
    "2024-09-02",  # Labor Day
    "2024-11-28",  # Thanksgiving
    "2024-12-25",  # Christmas
]


@pytest.fixture(scope="module")
def settlements() -> pd.DataFrame:
    return pd.read_csv(FIXTURE, dtype=str, keep_default_na=False)


# ----------------------------------------------------------------------------- holidays


def test_holidays_2024_exact():
    assert list(cme_holidays("2024-01-01", "2024-12-31").strftime("%Y-%m-%d")) == HOLIDAYS_2024


@pytest.mark.parametrize(
    "day",
    [
        "1990-12-25",
        "1991-01-01",
        *HOLIDAYS_2024,
        "2025-01-01",
        "2025-01-09",  # national day of mourning (President Carter)
        "2021-12-24",  # Christmas (Saturday) observed on Friday
        "2022-06-20",  # first Juneteenth, Sunday observed on Monday
        "2023-01-02",  # New Year's Day (Sunday) observed on Monday
        "1998-01-19",  # first MLK Day on the calendar
        "2012-10-29",  # Hurricane Sandy
        "2012-10-30",
        "2001-09-11",
        "2001-09-14",
        "1994-04-27",  # Nixon
        "2007-01-02",  # Ford
        "2018-12-05",  # G. H. W. Bush
    ],
)
def test_known_holidays_are_not_trade_dates(day):
    assert not is_trade_date(day)
    assert pd.Timestamp(day) in cme_holidays(day, day)


@pytest.mark.parametrize(
    "day",
    [
        "2024-10-14",  # Columbus Day: trade date
        "2024-11-11",  # Veterans Day: trade date
        "2024-11-29",  # day after Thanksgiving: early close, still a trade date
        "2024-12-24",  # Christmas Eve
        "2021-12-31",  # New Year's Day 2022 is a Saturday: no Friday holiday
        "1997-01-20",  # MLK Day before 1998 was a trade date
        "2021-06-18",  # Juneteenth not observed before 2022
        "2001-09-17",
    ],
)
def test_known_trade_dates(day):
    assert is_trade_date(day)
    assert cme_holidays(day, day).empty


def test_saturday_new_year_is_not_listed_and_weekends_are_not_trade_dates():
    assert cme_holidays("2021-12-20", "2022-01-10").strftime("%Y-%m-%d").tolist() == ["2021-12-24"]
    assert not is_trade_date("2022-01-01")
    assert not is_trade_date("2024-08-03")  # Saturday
    assert not is_trade_date("2024-08-04")  # Sunday


def test_all_special_closures_are_holidays():
    days = pd.DatetimeIndex(list(SPECIAL_CLOSURES))
    assert not is_trade_date(days).any()
    assert days.isin(cme_holidays("1971-01-01", "2199-12-31")).all()


def test_holidays_are_weekdays_and_about_ten_a_year():
    hol = cme_holidays("1990-01-01", "2030-12-31")
    assert (hol.day_of_week < 5).all()
    assert hol.is_monotonic_increasing and hol.is_unique
    per_year = pd.Series(1, index=hol).groupby(hol.year).sum()
    assert per_year.drop(2001).between(7, 11).all()  # 2001: four September 11 closures
    assert per_year[2024] == 10 and per_year[1995] == 8 and per_year[2001] == 13


# ----------------------------------------------------------------------------- trade dates


def test_trade_dates_2024_count():
    # 262 weekdays in 2024 minus 10 holidays
    assert len(cme_trade_dates("2024-01-01", "2024-12-31")) == 252
    assert trade_days_between("2023-12-31", "2024-12-31") == 252


def test_trade_dates_are_weekdays_minus_holidays():
    td = cme_trade_dates("1995-03-01", "2026-02-28")
    wd = pd.bdate_range("1995-03-01", "2026-02-28")
    assert td.equals(wd.difference(cme_holidays("1995-03-01", "2026-02-28")))
    assert is_trade_date(td).all()
    assert cme_trade_dates("2024-09-02", "2024-09-01").empty


def test_fixture_dates_equal_trade_date_calendar(settlements):
    window = cme_trade_dates("2024-08-01", "2024-10-24")
    assert len(window) == 60
    biz = pd.DatetimeIndex(pd.to_datetime(settlements["BizDt"].unique())).sort_values()
    assert biz.equals(window)
    assert pd.Timestamp("2024-09-02") not in biz
    assert not is_trade_date("2024-09-02")
    per = settlements.groupby("Sym")["BizDt"].agg(lambda s: set(pd.to_datetime(s)))
    assert set(per.index) == {"CL", "NG", "HG"}
    assert per["CL"] == set(window) and per["NG"] == set(window)
    assert set(window) - per["HG"] == {pd.Timestamp("2024-10-10")}  # the missing COMEX file


# ----------------------------------------------------------------------------- arithmetic


def test_add_trade_days():
    assert add_trade_days("2024-08-30", 1) == pd.Timestamp("2024-09-03")  # over Labor Day
    assert add_trade_days("2024-09-03", -1) == pd.Timestamp("2024-08-30")
    assert add_trade_days("2024-12-24", -3) == pd.Timestamp("2024-12-19")
    assert add_trade_days("2024-12-24", 1) == pd.Timestamp("2024-12-26")
    assert add_trade_days("2024-12-20", 0) == pd.Timestamp("2024-12-20")
    # from a non-trade date: n-th trade date strictly after / before
    assert add_trade_days("2024-12-25", 1) == pd.Timestamp("2024-12-26")
    assert add_trade_days("2024-12-25", -1) == pd.Timestamp("2024-12-24")
    assert add_trade_days("2024-08-31", 1) == pd.Timestamp("2024-09-03")
    assert add_trade_days("2024-08-31", -1) == pd.Timestamp("2024-08-30")
    assert add_trade_days("2024-01-02", 252) == pd.Timestamp("2025-01-02")
    assert isinstance(add_trade_days("2024-12-20", 1), pd.Timestamp)


def test_add_trade_days_zero_on_holiday_raises():
    with pytest.raises(ValueError, match="2024-12-25 is not a CME trade date"):
        add_trade_days("2024-12-25", 0)
    with pytest.raises(ValueError, match="2024-08-31"):
        add_trade_days(["2024-08-30", "2024-08-31"], 0)


def test_add_trade_days_vectorised():
    out = add_trade_days(["2024-08-30", "2024-09-02", "2024-12-24"], [1, -1, 1])
    assert isinstance(out, pd.DatetimeIndex)
    assert out.strftime("%Y-%m-%d").tolist() == ["2024-09-03", "2024-08-30", "2024-12-26"]
    out = add_trade_days("2024-08-29", np.arange(-2, 3))
    assert out.strftime("%Y-%m-%d").tolist() == [
        "2024-08-27",
        "2024-08-28",
        "2024-08-29",
        "2024-08-30",
        "2024-09-03",
    ]
    with pytest.raises(ValueError, match="integer"):
        add_trade_days("2024-08-29", 1.5)


def test_previous_and_next_trade_date():
    assert previous_trade_date("2024-12-25") == pd.Timestamp("2024-12-24")
    assert previous_trade_date("2024-12-24") == pd.Timestamp("2024-12-24")
    assert previous_trade_date("2024-12-24", inclusive=False) == pd.Timestamp("2024-12-23")
    assert previous_trade_date("2024-09-02", inclusive=False) == pd.Timestamp("2024-08-30")
    assert next_trade_date("2024-08-31") == pd.Timestamp("2024-09-03")
    assert next_trade_date("2024-09-03") == pd.Timestamp("2024-09-03")
    assert next_trade_date("2024-09-03", inclusive=False) == pd.Timestamp("2024-09-04")
    out = previous_trade_date(pd.DatetimeIndex(["2024-09-02", "2024-09-03"]))
    assert out.strftime("%Y-%m-%d").tolist() == ["2024-08-30", "2024-09-03"]


def test_trade_days_between_inverts_add_trade_days():
    for start in ["2024-12-20", "2024-08-30", "1992-12-21", "2001-09-10"]:
        n = np.arange(-40, 41)
        ends = add_trade_days(start, n)
        assert np.array_equal(trade_days_between(start, ends), n)
    assert trade_days_between("1992-12-18", "1992-12-21") == 1
    assert trade_days_between("1992-12-21", "1992-12-18") == -1
    assert trade_days_between("2024-08-31", "2024-09-01") == 0  # weekend to holiday eve
    assert trade_days_between("2024-08-30", "2024-09-03") == 1  # over Labor Day


def test_inputs_tz_and_datetime64():
    ts = pd.Timestamp("2024-09-02 23:30", tz="America/Chicago")  # local date is Labor Day
    assert not is_trade_date(ts)
    assert is_trade_date(np.datetime64("2024-09-03"))
    arr = is_trade_date(np.array(["2024-09-02", "2024-09-03"], dtype="datetime64[D]"))
    assert arr.tolist() == [False, True]


def test_out_of_range_and_bad_input():
    with pytest.raises(ValueError, match="outside"):
        is_trade_date("1970-12-31")
    with pytest.raises(ValueError, match="outside"):
        cme_trade_dates("1960-01-01", "1972-01-01")
    with pytest.raises(ValueError, match="outside"):
        add_trade_days("1971-01-04", -5)
    with pytest.raises(ValueError, match="not a date"):
        is_trade_date(pd.NaT)


# ----------------------------------------------------------------------------- groups
from importlib import resources  # noqa: E402

import ssjax  # noqa: E402
from ssjax.data.calendars import get_calendar, holidays, trade_dates  # noqa: E402
from ssjax.data.contracts import last_trade_date, parse_contract  # noqa: E402


def _rtl(name: str, kind: str) -> pd.DataFrame:
    path = resources.files("ssjax.datasets") / f"rtl_{name}_futures_daily_{kind}_2007_2014.csv.gz"
    with resources.as_file(path) as p:
        return pd.read_csv(p, parse_dates=["date"]).set_index("date")


@pytest.mark.parametrize(
    ("day", "cme", "nymex", "comex", "ice"),
    [
        ("2012-10-29", False, True, True, True),  # Hurricane Sandy: energy settled
        ("2007-01-02", False, True, False, True),  # President Ford: energy settled
        ("2009-07-03", False, True, False, True),  # Independence Day observed
        ("2018-12-05", False, True, True, True),  # President G. H. W. Bush
        ("2001-09-14", False, True, True, True),  # NYMEX and COMEX reopened
        ("2001-09-11", False, False, True, True),  # the copper pit opened
        ("2024-01-15", False, False, False, True),  # MLK Day: ICE Europe trades
        ("2024-11-28", False, False, False, True),  # Thanksgiving
        ("2024-03-29", False, False, False, False),  # Good Friday
        ("2011-12-26", False, False, False, False),  # Christmas (Sunday) observed
        ("2010-12-24", False, False, False, True),  # Christmas on Saturday: ICE does not move it
        ("2012-01-02", False, False, False, False),  # New Year's Day (Sunday) observed
    ],
)
def test_calendars_by_exchange_group(day, cme, nymex, comex, ice):
    got = [is_trade_date(day, c) for c in ("CME", "NYMEX", "COMEX", "ICE_EUROPE")]
    assert got == [cme, nymex, comex, ice]


def test_calendar_names_and_errors():
    assert get_calendar("ice").name == "ICE_EUROPE" and get_calendar("nymex").name == "NYMEX"
    with pytest.raises(ValueError, match=r"unknown calendar 'LME'; calendars: .*ICE_EUROPE"):
        is_trade_date("2024-01-02", "LME")
    assert list(holidays("2024-01-01", "2024-12-31", "ICE_EUROPE").strftime("%m-%d")) == [
        "01-01",
        "03-29",
        "12-25",
    ]
    # the issue's case: CLF19's roll counted on the NYMEX calendar (2018-12-05 settled)
    assert trade_days_between("2018-12-04", "2018-12-19", "NYMEX") == 11
    assert trade_days_between("2018-12-04", "2018-12-19") == 10


def test_natural_gas_settlement_days_are_exactly_the_nymex_trade_dates():
    """Every weekday of 2007-2014 with a NYMEX natural-gas settlement is a NYMEX trade date
    and every NYMEX trade date has one (2,018 dates)."""
    d = _rtl("natgas", "prices").index
    assert len(d) == 2018
    assert list(trade_dates(d[0], d[-1], "NYMEX")) == list(d)
    assert (~is_trade_date(d, "CME")).sum() == 4  # the CME financial calendar closes 4


def test_brent_settlement_days_are_exactly_the_ice_europe_trade_dates():
    d = _rtl("brent", "prices").index
    assert len(d) == 2066
    assert list(trade_dates(d[0], d[-1], "ICE_EUROPE")) == list(d)
    assert (~is_trade_date(d, "CME")).sum() == 52  # US holidays on which ICE Europe settles


def test_copper_settlement_days_are_comex_trade_dates():
    """Every copper date is a COMEX trade date except 2007-01-02, a stale copy of the previous
    day (COMEX was closed for President Ford's funeral)."""
    path = resources.files("ssjax.datasets") / "schwartz97_copper_daily.csv.gz"
    with resources.as_file(path) as p:
        raw = pd.read_csv(p, parse_dates=["date"])
    wide = raw.pivot_table(index="date", columns="nearby", values="price")
    closed = wide.index[~is_trade_date(wide.index, "COMEX")]
    assert list(closed.strftime("%Y-%m-%d")) == ["2007-01-02"]
    i = wide.index.get_loc(closed[0])
    np.testing.assert_array_equal(wide.iloc[i].to_numpy(), wide.iloc[i - 1].to_numpy())
    assert len(wide) == 3681


@pytest.mark.parametrize(("name", "root"), [("natgas", "NG"), ("brent", "BRN")])
def test_expiry_rules_reproduce_every_expiry_in_the_data(name, root):
    """The date + days-to-expiry of the front two ranks gives each contract's last trading
    day: the rule reproduces all 98 (NG: the month before the contract month; Brent, before
    2016: the month before too)."""
    ttm = _rtl(name, "ttm_days")
    expiries = set()
    for col in ttm.columns[:2]:
        expiries |= set((ttm.index + pd.to_timedelta(ttm[col], unit="D")).dropna())
    assert len(expiries) == 98
    for e in sorted(expiries):
        year, month = (e.year, e.month + 1) if e.month < 12 else (e.year + 1, 1)
        assert last_trade_date(root, year, month) == e, (root, year, month)


def test_copper_expiry_rule_reproduces_the_source():
    path = resources.files("ssjax.datasets") / "schwartz97_copper_daily.csv.gz"
    with resources.as_file(path) as p:
        raw = pd.read_csv(p, parse_dates=["date", "last_trade_date"]).dropna(subset=["contract"])
    first = raw.drop_duplicates("contract")
    assert len(first) == 184
    for code, ltd, ref in zip(
        first["contract"], first["last_trade_date"], first["date"], strict=True
    ):
        assert last_trade_date(*parse_contract(code, ref)) == ltd, code


def test_known_expiries_moved_by_the_group_calendars():
    # Hurricane Sandy did not close energy: NGX12 expired on 2012-10-29
    assert last_trade_date("NG", 2012, 11) == pd.Timestamp("2012-10-29")
    # holiday sessions (2006-2012) did not count: the day after Thanksgiving, 2010-12-31
    assert last_trade_date("NG", 2008, 12) == pd.Timestamp("2008-11-24")
    assert last_trade_date("NG", 2011, 1) == pd.Timestamp("2010-12-28")
    # from 2013 the day after Thanksgiving counts again
    assert last_trade_date("NG", 2013, 12) == pd.Timestamp("2013-11-26")
    # ICE Brent: the mid-month rule to February 2016, then the 2nd month's last business day
    assert last_trade_date("BRN", 2007, 2) == pd.Timestamp("2007-01-16")
    assert last_trade_date("LCO", 2016, 2) == pd.Timestamp("2016-01-14")
    assert last_trade_date("B", 2016, 3) == pd.Timestamp("2016-01-29")
    assert last_trade_date("BRN", 2017, 1) == pd.Timestamp("2016-11-30")
    assert ssjax.data.calendar_of_root("brn").name == "ICE_EUROPE"


def test_settlements_on_a_holiday_of_the_products_calendar_warn(tmp_path):
    f = tmp_path / "s.csv"
    f.write_text(
        "trade_date,commodity,contract,expiration_date,settlement_price\n"
        "2024-07-03,BRN,BRNU24,2024-07-31,85.0\n"
        "2024-07-04,BRN,BRNU24,2024-07-31,86.0\n"
        "2024-07-03,CL,CLQ24,2024-07-22,83.0\n"
        "2024-07-04,CL,CLQ24,2024-07-22,84.0\n"
    )
    with pytest.warns(ssjax.data.SettlementWarning, match=r"CL trade dates that are NYMEX"):
        out = ssjax.data.read_long_csv(f)
    assert len(out) == 4  # Brent settles on July 4: no warning for it
