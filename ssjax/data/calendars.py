"""Trade-date (settlement) calendars by exchange and product group.

A *trade date* is a day with a settlement: the business day of the daily settlement files
(``BizDt``) and of the nearby-roll counts. It is **not** a trading-session calendar: CME
Globex trades (early close) on e.g. Martin Luther King Jr. Day, but there is no settlement
and it is not a trade date. Calendars (:data:`CALENDARS`, chosen by name):

``"CME"`` — CME financial products (the ``CME_TradeDate`` rules of ``pandas_market_calendars``):
    Monday to Friday except New Year's Day (January 1, a Sunday observed on Monday; none when it
    is a Saturday), Martin Luther King Jr. Day (3rd Monday of January, from 1998), Presidents'
    Day (3rd Monday of February), Good Friday, Memorial Day (last Monday of May), Juneteenth
    (June 19 on the nearest weekday, from 2022), Independence Day (July 4 on the nearest weekday),
    Labor Day (1st Monday of September), Thanksgiving (4th Thursday of November) and Christmas
    (December 25 on the nearest weekday), plus the one-off closures of
    :data:`SPECIAL_CLOSURES` (days of national mourning, 9/11, Hurricane Sandy).
``"NYMEX"`` — NYMEX energy (CL, NG): the CME rules, but energy settled on days the CME
    financial markets closed: 2001-09-14 (NYMEX reopened), 2007-01-02 (President Ford),
    2009-07-03 (Independence Day observed), 2012-10-29/30 (Hurricane Sandy: electronic
    trading), 2018-12-05 (President G. H. W. Bush) and 2025-01-09 (President Carter)
    (:data:`GROUP_OPENINGS`).
``"COMEX"`` — COMEX metals (HG): the CME rules, but metals settled on 2001-09-11 (the copper
    pit opened before the attacks), 2001-09-14, 2012-10-29/30, 2018-12-05 and 2025-01-09; closed
    on 2007-01-02 and 2009-07-03.
``"ICE_EUROPE"`` — ICE Futures Europe (Brent): Monday to Friday except New Year's Day and
    Christmas Day (a Sunday observed on Monday, a Saturday not moved) and Good Friday. US
    holidays are trade dates.

Each calendar also has *expiry business days*: the trade dates that count as business days in
the contract rules of :mod:`ssjax.data.contracts`. They differ from the trade dates only where an
exchange held a holiday session that settled but did not count for expiries
(:data:`EXPIRY_EXCLUSIONS`): NYMEX energy from 2006 to 2012 on the day after Thanksgiving and on
a Friday December 31 (January 1 on a Saturday); COMEX on 1996-11-29 and 2002-11-29.

Evidence (tests/data/test_calendars.py): every date of the bundled and shared settlement data is
a trade date of its calendar (natural gas 2007–2014: 2,018 dates, ``"NYMEX"``; Brent
2007–2014: 2,066 dates, ``"ICE_EUROPE"``, whose weekdays without a settlement are exactly its
holidays; copper 1996–2010: 3,681 dates, ``"COMEX"``, except one stale row), and the expiry
rules reproduce the data's expiries (natural gas 98 of 98, Brent 98 of 98, copper 185 of 185).
The group differences are measured, not published exchange tables: outside the data's years
they follow the CME rules.

The rules are those in force since the Uniform Monday Holiday Act took effect (1971); the
calendars cover 1971-01-01 to 2199-12-31 and raise ``ValueError`` outside that span.

All functions accept anything :func:`pandas.to_datetime` understands (strings, ``datetime``,
``numpy.datetime64``, ``pandas.Timestamp``; time of day and time zone are dropped, keeping the
local calendar date) and a ``calendar=`` name (default ``"CME"``). :func:`is_trade_date`,
:func:`add_trade_days`, :func:`previous_trade_date`, :func:`next_trade_date` and
:func:`trade_days_between` are vectorised: given arrays they return arrays (``numpy.ndarray``
or ``pandas.DatetimeIndex``), given scalars they return scalars. The work is done by
:mod:`numpy`'s ``busday`` functions with a cached holiday table per calendar.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

import numpy as np
import pandas as pd
from dateutil.relativedelta import MO, TH
from pandas.errors import PerformanceWarning
from pandas.tseries.holiday import (
    AbstractHolidayCalendar,
    GoodFriday,
    Holiday,
    nearest_workday,
    sunday_to_monday,
)

__all__ = [
    "CALENDARS",
    "EXPIRY_EXCLUSIONS",
    "FIRST_YEAR",
    "GROUP_OPENINGS",
    "LAST_YEAR",
    "SPECIAL_CLOSURES",
    "CMETradeDateHolidayCalendar",
    "TradeCalendar",
    "add_trade_days",
    "cme_holidays",
    "cme_trade_dates",
    "get_calendar",
    "holidays",
    "is_trade_date",
    "next_trade_date",
    "previous_trade_date",
    "trade_dates",
    "trade_days_between",
]

#: First and last year covered by the calendars.
FIRST_YEAR = 1971
LAST_YEAR = 2199

_MIN_DAY = np.datetime64(f"{FIRST_YEAR}-01-01", "D")
_MAX_DAY = np.datetime64(f"{LAST_YEAR}-12-31", "D")
_WEEKMASK = "1111100"  # Monday to Friday

#: One-off full-day closures of the CME financial markets (no settlement), with the reason.
SPECIAL_CLOSURES: dict[str, str] = {
    "1972-12-28": "National day of mourning (President Truman)",
    "1973-01-25": "National day of mourning (President Johnson)",
    "1994-04-27": "National day of mourning (President Nixon)",
    "2001-09-11": "September 11 attacks",
    "2001-09-12": "September 11 attacks",
    "2001-09-13": "September 11 attacks",
    "2001-09-14": "September 11 attacks",
    "2004-06-11": "National day of mourning (President Reagan)",
    "2007-01-02": "National day of mourning (President Ford)",
    "2012-10-29": "Hurricane Sandy",
    "2012-10-30": "Hurricane Sandy",
    "2018-12-05": "National day of mourning (President G. H. W. Bush)",
    "2025-01-09": "National day of mourning (President Carter)",
}

#: Calendar name -> weekdays a CME rule or closure would close on which that group settled.
GROUP_OPENINGS: dict[str, dict[str, str]] = {
    "NYMEX": {
        "2001-09-14": "NYMEX reopened after September 11",
        "2007-01-02": "energy settled on the day of mourning for President Ford",
        "2009-07-03": "energy settled on Independence Day observed (natural gas settlements)",
        "2012-10-29": "Hurricane Sandy: energy settled (electronic trading)",
        "2012-10-30": "Hurricane Sandy: energy settled (electronic trading)",
        "2018-12-05": "energy settled on the day of mourning for President G. H. W. Bush",
        "2025-01-09": "energy settled on the day of mourning for President Carter",
    },
    "COMEX": {
        "2001-09-11": "the copper pit opened before the attacks (copper settlements)",
        "2001-09-14": "COMEX reopened after September 11 (copper settlements)",
        "2012-10-29": "Hurricane Sandy: metals traded electronically (as energy)",
        "2012-10-30": "Hurricane Sandy: metals traded electronically (as energy)",
        "2018-12-05": "metals settled on the day of mourning for President G. H. W. Bush",
        "2025-01-09": "metals settled on the day of mourning for President Carter",
    },
}


_START = pd.Timestamp(f"{FIRST_YEAR}-01-01")

NewYearsDay = Holiday("New Year's Day", month=1, day=1, observance=sunday_to_monday)
MartinLutherKingJrDay = Holiday(
    "Martin Luther King Jr. Day",
    month=1,
    day=1,
    offset=pd.DateOffset(weekday=MO(3)),
    start_date=pd.Timestamp("1998-01-01"),
)
PresidentsDay = Holiday(
    "Presidents' Day", month=2, day=1, offset=pd.DateOffset(weekday=MO(3)), start_date=_START
)
MemorialDay = Holiday(
    "Memorial Day", month=5, day=31, offset=pd.DateOffset(weekday=MO(-1)), start_date=_START
)
Juneteenth = Holiday(
    "Juneteenth",
    month=6,
    day=19,
    observance=nearest_workday,
    start_date=pd.Timestamp("2022-06-19"),
)
IndependenceDay = Holiday("Independence Day", month=7, day=4, observance=nearest_workday)
LaborDay = Holiday("Labor Day", month=9, day=1, offset=pd.DateOffset(weekday=MO(1)))
ThanksgivingDay = Holiday("Thanksgiving Day", month=11, day=1, offset=pd.DateOffset(weekday=TH(4)))
ChristmasDay = Holiday("Christmas Day", month=12, day=25, observance=nearest_workday)
UKChristmasDay = Holiday("Christmas Day", month=12, day=25, observance=sunday_to_monday)


def _nymex_holiday_sessions() -> dict[str, str]:
    """NYMEX energy from 2006 (holiday sessions on Globex) to 2012: holiday sessions that
    settled but were not business days for contract expiries (evidence: NGZ08, NGZ09, NGZ10
    and NGF11 expired a day earlier than counting them; the WTI expiries of 1990, 1994 and 1995
    in the Schwartz–Smith file count the day after Thanksgiving)."""
    thanksgivings = ThanksgivingDay.dates(pd.Timestamp(2006, 1, 1), pd.Timestamp(2012, 12, 31))
    out = {str((d + pd.Timedelta(days=1)).date()): "day after Thanksgiving" for d in thanksgivings}
    for year in range(2006, 2013):
        dec31 = pd.Timestamp(year, 12, 31)
        if dec31.weekday() == 4:
            out[str(dec31.date())] = "New Year's Day (a Saturday) observed"
    return out


#: Calendar name -> trade dates that are not business days for contract expiries.
EXPIRY_EXCLUSIONS: dict[str, dict[str, str]] = {
    "NYMEX": _nymex_holiday_sessions(),
    "COMEX": {
        "1996-11-29": "day after Thanksgiving (HGX96 expired 1996-11-25)",
        "2002-11-29": "day after Thanksgiving (HGX02 expired 2002-11-25)",
    },
}


class CMETradeDateHolidayCalendar(AbstractHolidayCalendar):
    """The regular (rule-based) holidays of the CME trade-date calendar.

    The one-off closures in :data:`SPECIAL_CLOSURES` are not rules and are added by
    :func:`cme_holidays`.
    """

    rules = [
        NewYearsDay,
        MartinLutherKingJrDay,
        PresidentsDay,
        GoodFriday,
        MemorialDay,
        Juneteenth,
        IndependenceDay,
        LaborDay,
        ThanksgivingDay,
        ChristmasDay,
    ]


class ICEEuropeHolidayCalendar(AbstractHolidayCalendar):
    """The holidays of ICE Futures Europe's Brent settlements (2007–2014 data)."""

    rules = [NewYearsDay, GoodFriday, UKChristmasDay]


@dataclass(frozen=True, eq=False)
class TradeCalendar:
    """A trade-date calendar: weekday holidays by rule, one-off closures and openings.

    Attributes:
        name: the calendar's name (a key of :data:`CALENDARS` for the bundled ones).
        rules: a :class:`pandas.tseries.holiday.AbstractHolidayCalendar` subclass.
        closures: one-off closures ``{"YYYY-MM-DD": reason}``.
        openings: weekdays the rules or closures would close that are trade dates.
        expiry_exclusions: trade dates that are not business days for contract expiries.
    """

    name: str
    rules: type[AbstractHolidayCalendar]
    closures: dict[str, str] = field(default_factory=dict)
    openings: dict[str, str] = field(default_factory=dict)
    expiry_exclusions: dict[str, str] = field(default_factory=dict)

    def for_expiry(self) -> TradeCalendar:
        """The calendar of business days for contract expiries (trade dates less
        :attr:`expiry_exclusions`)."""
        if not self.expiry_exclusions:
            return self
        return _expiry_calendar(self)


@cache
def _expiry_calendar(cal: TradeCalendar) -> TradeCalendar:
    return TradeCalendar(
        f"{cal.name} (expiry business days)",
        cal.rules,
        {**cal.closures, **cal.expiry_exclusions},
        {k: v for k, v in cal.openings.items() if k not in cal.expiry_exclusions},
    )


#: The bundled calendars by name (see the module docstring).
CALENDARS: dict[str, TradeCalendar] = {
    "CME": TradeCalendar("CME", CMETradeDateHolidayCalendar, SPECIAL_CLOSURES),
    "NYMEX": TradeCalendar(
        "NYMEX",
        CMETradeDateHolidayCalendar,
        SPECIAL_CLOSURES,
        GROUP_OPENINGS["NYMEX"],
        EXPIRY_EXCLUSIONS["NYMEX"],
    ),
    "COMEX": TradeCalendar(
        "COMEX",
        CMETradeDateHolidayCalendar,
        SPECIAL_CLOSURES,
        GROUP_OPENINGS["COMEX"],
        EXPIRY_EXCLUSIONS["COMEX"],
    ),
    "ICE_EUROPE": TradeCalendar("ICE_EUROPE", ICEEuropeHolidayCalendar),
}


def get_calendar(calendar: str | TradeCalendar) -> TradeCalendar:
    """The :class:`TradeCalendar` named ``calendar`` (case-insensitive), or ``calendar``."""
    if isinstance(calendar, TradeCalendar):
        return calendar
    key = str(calendar).strip().upper().replace("-", "_").replace(" ", "_")
    if key == "ICE":
        key = "ICE_EUROPE"
    if key not in CALENDARS:
        raise ValueError(
            f"unknown calendar {calendar!r}; calendars: {', '.join(sorted(CALENDARS))}"
        )
    return CALENDARS[key]


# ----------------------------------------------------------------------------- holiday table


def _days(dates: dict[str, str], first_year: int, last_year: int) -> np.ndarray:
    idx = pd.DatetimeIndex(list(dates))
    idx = idx[(idx.year >= first_year) & (idx.year <= last_year)]
    return np.asarray(idx.values, dtype="datetime64[D]")


@lru_cache(maxsize=64)
def _holiday_days(cal: TradeCalendar, first_year: int, last_year: int) -> np.ndarray:
    """Sorted weekday holidays (``datetime64[D]``) of the years ``first_year..last_year``."""
    with warnings.catch_warnings():
        # older pandas warns that the weekday DateOffsets are not vectorised
        warnings.simplefilter("ignore", PerformanceWarning)
        rules = cal.rules().holidays(
            pd.Timestamp(first_year, 1, 1), pd.Timestamp(last_year, 12, 31)
        )
    days = np.union1d(
        np.asarray(rules.values, dtype="datetime64[D]"),
        _days(cal.closures, first_year, last_year),
    )
    days = np.setdiff1d(days, _days(cal.openings, first_year, last_year))
    # no holiday on a weekend (New Year's Day on a Saturday is not moved)
    return days[np.is_busday(days, weekmask=_WEEKMASK)]


def _table_last_year(last_year: int) -> int:
    """Round the table's end up (2099, 2149 or 2199) so that few tables are ever built."""
    return next(end for end in (2099, 2149, LAST_YEAR) if last_year <= end)


@lru_cache(maxsize=32)
def _busdaycal(cal: TradeCalendar, last_year: int) -> np.busdaycalendar:
    """A numpy business-day calendar of ``cal``'s trade dates from 1971 to ``last_year``."""
    return np.busdaycalendar(weekmask=_WEEKMASK, holidays=_holiday_days(cal, FIRST_YEAR, last_year))


def _calendar(days: np.ndarray, cal: TradeCalendar, slack_days: int = 0) -> np.busdaycalendar:
    """The calendar covering ``days`` plus ``slack_days`` calendar days after the last one."""
    _check_range(days)
    if days.size == 0:
        return _busdaycal(cal, _table_last_year(FIRST_YEAR))
    last = min(days.max() + np.timedelta64(slack_days, "D"), _MAX_DAY)
    return _busdaycal(cal, _table_last_year(int(str(last)[:4])))


# ----------------------------------------------------------------------------- conversions


def _to_days(dates: Any) -> tuple[np.ndarray, bool]:
    """``dates`` as a ``datetime64[D]`` array (local calendar date) and whether it was scalar."""
    if isinstance(dates, pd.Index | pd.Series):
        shape: tuple[int, ...] = (len(dates),)
        idx = pd.DatetimeIndex(pd.to_datetime(dates))
    elif np.ndim(dates) == 0:
        ts = pd.Timestamp(dates)
        if pd.isna(ts):
            raise ValueError(f"not a date: {dates!r}")
        if ts.tzinfo is not None:
            ts = ts.tz_localize(None)
        return np.array([np.datetime64(ts.date(), "D")]), True
    else:
        arr = np.asarray(dates)
        shape = arr.shape
        idx = pd.DatetimeIndex(pd.to_datetime(arr.ravel()))
    if idx.tz is not None:
        idx = idx.tz_localize(None)
    if idx.hasnans:
        raise ValueError("dates contain NaT / missing values")
    return np.asarray(idx.values).astype("datetime64[D]").reshape(shape), False


def _check_range(days: np.ndarray) -> None:
    if days.size and (days.min() < _MIN_DAY or days.max() > _MAX_DAY):
        bad = days[(days < _MIN_DAY) | (days > _MAX_DAY)].ravel()[0]
        raise ValueError(
            f"date {bad} is outside the trade-date calendars' range "
            f"{FIRST_YEAR}-01-01 .. {LAST_YEAR}-12-31"
        )


def _to_index(days: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(np.asarray(days, dtype="datetime64[D]").ravel().astype("M8[ns]"))


def _as_timestamp(day: np.datetime64) -> pd.Timestamp:
    return pd.Timestamp(np.datetime64(day, "D").astype("M8[ns]"))


def _out_dates(days: np.ndarray, scalar: bool) -> pd.Timestamp | pd.DatetimeIndex | np.ndarray:
    if scalar:
        return _as_timestamp(days.ravel()[0])
    if days.ndim == 1:
        return _to_index(days)
    return days.astype("M8[ns]")


# ----------------------------------------------------------------------------- public API

CalendarLike = str | TradeCalendar


def holidays(start: Any, end: Any, calendar: CalendarLike = "CME") -> pd.DatetimeIndex:
    """Weekdays without a settlement in ``calendar`` between ``start`` and ``end`` (inclusive).

    Weekends are not listed. ``start`` and ``end`` must lie in 1971..2199.

    Example: ``holidays("2024-01-01", "2024-12-31")`` lists 2024-01-01, 01-15, 02-19, 03-29,
    05-27, 06-19, 07-04, 09-02, 11-28 and 12-25; with ``calendar="ICE_EUROPE"`` 2024-01-01,
    03-29 and 12-25.
    """
    cal = get_calendar(calendar)
    (a, b), _ = _to_days([start, end])
    _check_range(np.array([a, b]))
    if b < a:
        return _to_index(np.array([], dtype="datetime64[D]"))
    days = _holiday_days(cal, int(str(a)[:4]), int(str(b)[:4]))
    return _to_index(days[(days >= a) & (days <= b)])


def trade_dates(start: Any, end: Any, calendar: CalendarLike = "CME") -> pd.DatetimeIndex:
    """Trade dates of ``calendar`` (Monday to Friday, no holiday) from ``start`` to ``end``."""
    cal = get_calendar(calendar)
    (a, b), _ = _to_days([start, end])
    _check_range(np.array([a, b]))
    if b < a:
        return _to_index(np.array([], dtype="datetime64[D]"))
    days = np.arange(a, b + np.timedelta64(1, "D"), dtype="datetime64[D]")
    return _to_index(days[np.is_busday(days, busdaycal=_calendar(np.array([b]), cal))])


def cme_holidays(start: Any, end: Any) -> pd.DatetimeIndex:
    """CME trade-date holidays between ``start`` and ``end``: ``holidays(start, end, "CME")``."""
    return holidays(start, end, "CME")


def cme_trade_dates(start: Any, end: Any) -> pd.DatetimeIndex:
    """CME trade dates from ``start`` to ``end``: ``trade_dates(start, end, "CME")``."""
    return trade_dates(start, end, "CME")


def is_trade_date(date: Any, calendar: CalendarLike = "CME") -> bool | np.ndarray:
    """Whether ``date`` is a trade date of ``calendar`` (a boolean array for array input)."""
    cal = get_calendar(calendar)
    days, scalar = _to_days(date)
    out = np.is_busday(days, busdaycal=_calendar(days, cal))
    return bool(out.ravel()[0]) if scalar else out


def add_trade_days(
    date: Any, n: int | np.ndarray, calendar: CalendarLike = "CME"
) -> pd.Timestamp | pd.DatetimeIndex:
    """Move ``date`` by ``n`` trade dates of ``calendar``.

    ``n > 0`` gives the n-th trade date after ``date`` and ``n < 0`` the |n|-th trade date
    before it; ``date`` itself need not be a trade date (``add_trade_days(saturday, 1)`` is the
    next Monday that is a trade date). ``n == 0`` returns ``date`` itself, which must then be a
    trade date (``ValueError`` otherwise). ``date`` and ``n`` broadcast against each other.
    """
    cal_ = get_calendar(calendar)
    days, scalar = _to_days(date)
    steps = np.asarray(n)
    if not np.issubdtype(steps.dtype, np.integer):
        if not np.all(np.mod(steps, 1) == 0):
            raise ValueError(f"n must be an integer number of trade days, got {n!r}")
        steps = steps.astype(np.int64)
    days_b, steps_b = np.broadcast_arrays(days if not scalar else days[0], steps)
    slack = int(np.abs(steps_b).max(initial=0)) * 2 + 14
    cal = _calendar(days_b.ravel(), cal_, slack)
    is_bd = np.is_busday(days_b, busdaycal=cal)
    bad = (steps_b == 0) & ~is_bd
    if bad.any():
        raise ValueError(
            f"{np.asarray(days_b)[bad].ravel()[0]} is not a {cal_.name} trade date "
            "(add_trade_days with n=0 needs a trade date)"
        )
    # roll a non-trade date towards the direction of travel first: then the offset counts
    # trade dates strictly after (n > 0) or strictly before (n < 0) the date
    fwd = np.busday_offset(days_b, steps_b, roll="backward", busdaycal=cal)
    bwd = np.busday_offset(days_b, steps_b, roll="forward", busdaycal=cal)
    out = np.where(steps_b >= 0, fwd, bwd)
    _check_range(out)
    return _out_dates(out, scalar and steps.ndim == 0)


def previous_trade_date(
    date: Any, inclusive: bool = True, calendar: CalendarLike = "CME"
) -> pd.Timestamp | pd.DatetimeIndex:
    """The last trade date on or before ``date`` (strictly before if not ``inclusive``)."""
    days, scalar = _to_days(date)
    cal = _calendar(days, get_calendar(calendar))
    if inclusive:
        out = np.busday_offset(days, 0, roll="backward", busdaycal=cal)
    else:
        out = np.busday_offset(days, -1, roll="forward", busdaycal=cal)
    _check_range(out)
    return _out_dates(out, scalar)


def next_trade_date(
    date: Any, inclusive: bool = True, calendar: CalendarLike = "CME"
) -> pd.Timestamp | pd.DatetimeIndex:
    """The first trade date on or after ``date`` (strictly after if not ``inclusive``)."""
    days, scalar = _to_days(date)
    cal = _calendar(days, get_calendar(calendar), 14)
    if inclusive:
        out = np.busday_offset(days, 0, roll="forward", busdaycal=cal)
    else:
        out = np.busday_offset(days, 1, roll="backward", busdaycal=cal)
    _check_range(out)
    return _out_dates(out, scalar)


def trade_days_between(a: Any, b: Any, calendar: CalendarLike = "CME") -> int | np.ndarray:
    """Number of trade dates t of ``calendar`` with ``a < t <= b`` (negative,
    -#{b < t <= a}, if b < a).

    For a trade date ``a``, ``trade_days_between(a, add_trade_days(a, n)) == n``.
    """
    da, sa = _to_days(a)
    db, sb = _to_days(b)
    one = np.timedelta64(1, "D")
    cal = _calendar(np.concatenate([da.ravel(), db.ravel()]), get_calendar(calendar), 1)
    lo, hi = np.minimum(da, db) + one, np.maximum(da, db) + one
    # count explicitly on [lo, hi): numpy's own count for end < begin uses other endpoints
    out = np.where(db >= da, 1, -1) * np.busday_count(lo, hi, busdaycal=cal)
    return int(out.ravel()[0]) if sa and sb else out.astype(np.int64)
