"""The CME trade-date (settlement) calendar.

A *trade date* is a day with a CME settlement: the business day used for contract expiries
and for the ``BizDt`` of the daily settlement files. It follows the rules of the
``CME_TradeDate`` calendar of ``pandas_market_calendars`` and is **not** the CME Globex session
calendar: Globex trades (early close) on e.g. Martin Luther King Jr. Day, Presidents' Day,
Labor Day and Thanksgiving, but those days have no settlement and are not trade dates.

Trade dates are Monday to Friday except these holidays:

* New Year's Day, January 1 (a Sunday is observed on Monday; when January 1 is a Saturday there
  is no holiday, in particular none on the Friday before);
* Martin Luther King Jr. Day, the 3rd Monday of January, from 1998;
* Presidents' Day (Washington's Birthday), the 3rd Monday of February;
* Good Friday;
* Memorial Day, the last Monday of May;
* Juneteenth, June 19 observed on the nearest weekday, from 2022;
* Independence Day, July 4 observed on the nearest weekday;
* Labor Day, the 1st Monday of September;
* Thanksgiving, the 4th Thursday of November;
* Christmas, December 25 observed on the nearest weekday;

plus the one-off closures in :data:`SPECIAL_CLOSURES` (national days of mourning, 9/11,
Hurricane Sandy). Columbus Day, Veterans Day, the day after Thanksgiving and Christmas Eve are
trade dates.

The rules are those in force since the Uniform Monday Holiday Act took effect (1971); the
calendar covers 1971-01-01 to 2199-12-31 and raises ``ValueError`` outside that span.

All functions accept anything :func:`pandas.to_datetime` understands (strings, ``datetime``,
``numpy.datetime64``, ``pandas.Timestamp``; time of day and time zone are dropped, keeping the
local calendar date). :func:`is_trade_date`, :func:`add_trade_days`,
:func:`previous_trade_date`, :func:`next_trade_date` and :func:`trade_days_between` are
vectorised: given arrays they return arrays (``numpy.ndarray`` or ``pandas.DatetimeIndex``),
given scalars they return scalars. The work is done by :mod:`numpy`'s ``busday`` functions
with a cached holiday table.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
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
    "FIRST_YEAR",
    "LAST_YEAR",
    "SPECIAL_CLOSURES",
    "CMETradeDateHolidayCalendar",
    "add_trade_days",
    "cme_holidays",
    "cme_trade_dates",
    "is_trade_date",
    "next_trade_date",
    "previous_trade_date",
    "trade_days_between",
]

#: First and last year covered by the calendar.
FIRST_YEAR = 1971
LAST_YEAR = 2199

_MIN_DAY = np.datetime64(f"{FIRST_YEAR}-01-01", "D")
_MAX_DAY = np.datetime64(f"{LAST_YEAR}-12-31", "D")
_WEEKMASK = "1111100"  # Monday to Friday

#: One-off full-day closures (no settlement trade date), with the reason.
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


# ----------------------------------------------------------------------------- holiday table


@lru_cache(maxsize=32)
def _holiday_days(first_year: int, last_year: int) -> np.ndarray:
    """Sorted weekday holidays (``datetime64[D]``) of the years ``first_year..last_year``."""
    with warnings.catch_warnings():
        # older pandas warns that the weekday DateOffsets are not vectorised
        warnings.simplefilter("ignore", PerformanceWarning)
        rules = CMETradeDateHolidayCalendar().holidays(
            pd.Timestamp(first_year, 1, 1), pd.Timestamp(last_year, 12, 31)
        )
    special = pd.DatetimeIndex(list(SPECIAL_CLOSURES))
    special = special[(special.year >= first_year) & (special.year <= last_year)]
    days = np.union1d(
        np.asarray(rules.values, dtype="datetime64[D]"),
        np.asarray(special.values, dtype="datetime64[D]"),
    )
    # no holiday on a weekend (New Year's Day on a Saturday is not moved)
    return days[np.is_busday(days, weekmask=_WEEKMASK)]


def _table_last_year(last_year: int) -> int:
    """Round the table's end up (2099, 2149 or 2199) so that few tables are ever built."""
    return next(end for end in (2099, 2149, LAST_YEAR) if last_year <= end)


@lru_cache(maxsize=8)
def _busdaycal(last_year: int) -> np.busdaycalendar:
    """A numpy business-day calendar of CME trade dates from 1971 to ``last_year``."""
    return np.busdaycalendar(weekmask=_WEEKMASK, holidays=_holiday_days(FIRST_YEAR, last_year))


def _calendar(days: np.ndarray, slack_days: int = 0) -> np.busdaycalendar:
    """The calendar covering ``days`` plus ``slack_days`` calendar days after the last one."""
    _check_range(days)
    if days.size == 0:
        return _busdaycal(_table_last_year(FIRST_YEAR))
    last = min(days.max() + np.timedelta64(slack_days, "D"), _MAX_DAY)
    return _busdaycal(_table_last_year(int(str(last)[:4])))


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
            f"date {bad} is outside the CME trade-date calendar's range "
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


def cme_holidays(start: Any, end: Any) -> pd.DatetimeIndex:
    """CME trade-date holidays between ``start`` and ``end`` (both inclusive).

    These are the weekdays without a CME settlement (see the module docstring for the rules);
    weekends are not listed. ``start`` and ``end`` must lie in 1971..2199.

    Example: ``cme_holidays("2024-01-01", "2024-12-31")`` lists 2024-01-01, 01-15, 02-19,
    03-29, 05-27, 06-19, 07-04, 09-02, 11-28 and 12-25.
    """
    (a, b), _ = _to_days([start, end])
    _check_range(np.array([a, b]))
    if b < a:
        return _to_index(np.array([], dtype="datetime64[D]"))
    days = _holiday_days(int(str(a)[:4]), int(str(b)[:4]))
    return _to_index(days[(days >= a) & (days <= b)])


def cme_trade_dates(start: Any, end: Any) -> pd.DatetimeIndex:
    """CME trade dates (Monday to Friday, no CME holiday) from ``start`` to ``end`` inclusive."""
    (a, b), _ = _to_days([start, end])
    _check_range(np.array([a, b]))
    if b < a:
        return _to_index(np.array([], dtype="datetime64[D]"))
    days = np.arange(a, b + np.timedelta64(1, "D"), dtype="datetime64[D]")
    cal = _calendar(np.array([b]))
    return _to_index(days[np.is_busday(days, busdaycal=cal)])


def is_trade_date(date: Any) -> bool | np.ndarray:
    """Whether ``date`` is a CME trade date (a boolean array for array input)."""
    days, scalar = _to_days(date)
    out = np.is_busday(days, busdaycal=_calendar(days))
    return bool(out.ravel()[0]) if scalar else out


def add_trade_days(date: Any, n: int | np.ndarray) -> pd.Timestamp | pd.DatetimeIndex:
    """Move ``date`` by ``n`` CME trade dates.

    ``n > 0`` gives the n-th trade date after ``date`` and ``n < 0`` the |n|-th trade date
    before it; ``date`` itself need not be a trade date (``add_trade_days(saturday, 1)`` is the
    next Monday that is a trade date). ``n == 0`` returns ``date`` itself, which must then be a
    trade date (``ValueError`` otherwise). ``date`` and ``n`` broadcast against each other.
    """
    days, scalar = _to_days(date)
    steps = np.asarray(n)
    if not np.issubdtype(steps.dtype, np.integer):
        if not np.all(np.mod(steps, 1) == 0):
            raise ValueError(f"n must be an integer number of trade days, got {n!r}")
        steps = steps.astype(np.int64)
    days_b, steps_b = np.broadcast_arrays(days if not scalar else days[0], steps)
    slack = int(np.abs(steps_b).max(initial=0)) * 2 + 14
    cal = _calendar(days_b.ravel(), slack)
    is_bd = np.is_busday(days_b, busdaycal=cal)
    bad = (steps_b == 0) & ~is_bd
    if bad.any():
        raise ValueError(
            f"{np.asarray(days_b)[bad].ravel()[0]} is not a CME trade date "
            "(add_trade_days with n=0 needs a trade date)"
        )
    # roll a non-trade date towards the direction of travel first: then the offset counts
    # trade dates strictly after (n > 0) or strictly before (n < 0) the date
    fwd = np.busday_offset(days_b, steps_b, roll="backward", busdaycal=cal)
    bwd = np.busday_offset(days_b, steps_b, roll="forward", busdaycal=cal)
    out = np.where(steps_b >= 0, fwd, bwd)
    _check_range(out)
    return _out_dates(out, scalar and steps.ndim == 0)


def previous_trade_date(date: Any, inclusive: bool = True) -> pd.Timestamp | pd.DatetimeIndex:
    """The last CME trade date on or before ``date`` (strictly before if not ``inclusive``)."""
    days, scalar = _to_days(date)
    cal = _calendar(days)
    if inclusive:
        out = np.busday_offset(days, 0, roll="backward", busdaycal=cal)
    else:
        out = np.busday_offset(days, -1, roll="forward", busdaycal=cal)
    _check_range(out)
    return _out_dates(out, scalar)


def next_trade_date(date: Any, inclusive: bool = True) -> pd.Timestamp | pd.DatetimeIndex:
    """The first CME trade date on or after ``date`` (strictly after if not ``inclusive``)."""
    days, scalar = _to_days(date)
    cal = _calendar(days, 14)
    if inclusive:
        out = np.busday_offset(days, 0, roll="forward", busdaycal=cal)
    else:
        out = np.busday_offset(days, 1, roll="backward", busdaycal=cal)
    _check_range(out)
    return _out_dates(out, scalar)


def trade_days_between(a: Any, b: Any) -> int | np.ndarray:
    """Number of CME trade dates t with ``a < t <= b`` (negative, -#{b < t <= a}, if b < a).

    For a trade date ``a``, ``trade_days_between(a, add_trade_days(a, n)) == n``.
    """
    da, sa = _to_days(a)
    db, sb = _to_days(b)
    one = np.timedelta64(1, "D")
    cal = _calendar(np.concatenate([da.ravel(), db.ravel()]), 1)
    lo, hi = np.minimum(da, db) + one, np.maximum(da, db) + one
    # count explicitly on [lo, hi): numpy's own count for end < begin uses other endpoints
    out = np.where(db >= da, 1, -1) * np.busday_count(lo, hi, busdaycal=cal)
    return int(out.ravel()[0]) if sa and sb else out.astype(np.int64)
