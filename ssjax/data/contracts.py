"""Futures contract codes and last-trade-date rules.

A contract code is a root, a month letter and a year: ``CLZ24`` is NYMEX WTI crude (root
``CL``) for December 2024. Month letters (:data:`MONTH_CODES`)::

    F Jan  G Feb  H Mar  J Apr  K May  M Jun  N Jul  Q Aug  U Sep  V Oct  X Nov  Z Dec

The last trading day of a contract follows the exchange's rule on the expiry business days of
its exchange's calendar (:mod:`ssjax.data.calendars`: :data:`ROOT_CALENDARS` names it; "business
day" below means an expiry business day of that calendar). The rules are kept in
:data:`EXPIRY_RULES` (root -> function of year and month):

* ``CL`` (NYMEX WTI): 3 business days before the 25th calendar day of the month before the
  contract month; if the 25th is not a business day, 3 business days before the last business
  day before the 25th (CLF25: 25 Dec 2024 is a holiday, the anchor is 24 Dec, the last trading
  day is 2024-12-19).
* ``NG`` (NYMEX Henry Hub): the 3rd-last business day of the month before the contract month.
* ``HG`` (COMEX copper): the 3rd-last business day of the contract month.
* ``B``, ``BRN``, ``LCO`` (ICE Brent, on ICE Futures Europe business days): up to the February
  2016 contract, the business day before the 15th calendar day before the first day of the
  contract month when that day is a business day, else the business day before the last
  business day before it (BRNG07: 17 Jan 2007, last trade 2007-01-16); from the March 2016
  contract, the last business day of the second month before the contract month (BRNH16:
  2016-01-29).

Checked against the expiries in the shared data (tests/data/test_contracts.py): natural gas and
Brent 2007–2014 (every contract) and copper 1996–2010 (every contract).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ssjax.data.calendars import TradeCalendar, add_trade_days, get_calendar, previous_trade_date

__all__ = [
    "EXPIRY_RULES",
    "ROOT_CALENDARS",
    "MONTH_CODES",
    "MONTH_OF_CODE",
    "CODE_OF_MONTH",
    "ContractCode",
    "calendar_of_root",
    "contract_code",
    "last_trade_date",
    "last_trade_dates",
    "listed_contracts",
    "mmy",
    "parse_contract",
    "parse_mmy",
]

#: Month letters, January to December.
MONTH_CODES = "FGHJKMNQUVXZ"
#: Month letter -> month number (1..12).
MONTH_OF_CODE: dict[str, int] = {c: i + 1 for i, c in enumerate(MONTH_CODES)}
#: Month number (1..12) -> month letter.
CODE_OF_MONTH: dict[int, str] = {i + 1: c for i, c in enumerate(MONTH_CODES)}

_ROOT = re.compile(r"[A-Z]{1,3}")


class ContractCode(NamedTuple):
    """A parsed contract code: root (``"CL"``), year (``2024``) and month (``12``)."""

    root: str
    year: int
    month: int

    @property
    def code(self) -> str:
        """The code with a two-digit year, e.g. ``"CLZ24"``."""
        return contract_code(self.root, self.year, self.month)

    @property
    def mmy(self) -> str:
        """The contract month as ``"YYYYMM"``."""
        return mmy(self.year, self.month)


# ----------------------------------------------------------------------------- codes


def _check_month(year: int, month: int) -> None:
    if not 1 <= int(month) <= 12:
        raise ValueError(f"month must be 1..12, got {month!r}")
    if not 1000 <= int(year) <= 9999:
        raise ValueError(f"year must have four digits, got {year!r}")


def _ref_year(ref_date: Any) -> int:
    try:
        ts = pd.Timestamp(ref_date)
    except (TypeError, ValueError):
        ts = pd.NaT
    if pd.isna(ts):
        raise ValueError(f"ref_date is not a date: {ref_date!r}")
    return ts.year


def parse_contract(code: str, ref_date: Any = None) -> ContractCode:
    """Parse a contract code such as ``CLZ24`` into ``ContractCode(root, year, month)``.

    Accepted forms (case-insensitive, surrounding spaces ignored):

    * ``CLZ24``, ``HGF96``: root, month letter, two-digit year;
    * ``CLZ2024``: four-digit year;
    * ``CLZ4``: one-digit year, the decade taken from ``ref_date`` (the first year ending in
      that digit that is >= ``ref_date.year - 1``; ``ref_date`` is required);
    * Bloomberg-style ``C H97`` or ``CLZ4 Comdty``: a space between root and month letter, an
      optional ``Comdty`` suffix; ``HGJ8 08`` (an expired generic: one-digit year, then the
      two-digit year) is ``HGJ08``.

    The root is 1 to 3 letters. A two-digit year ``yy`` is placed in the century that puts it
    in ``[ref_date.year - 10, ref_date.year + 89]`` when ``ref_date`` is given (``CLG90`` with
    a 1990 reference is 1990), and otherwise ``19yy`` for ``yy >= 70`` and ``20yy`` below.

    Raises ``ValueError`` naming the code and the problem (no year, unknown month letter,
    empty or invalid root, ...).
    """
    if not isinstance(code, str):
        raise ValueError(f"contract code must be a string, got {code!r}")
    s = code.strip().upper()
    if s.endswith(" COMDTY"):
        s = s[: -len(" COMDTY")].rstrip()
    # Bloomberg's form for an expired generic: 'HGJ8 08' (one-digit year, then the
    # two-digit year after a space) -> 'HGJ08'
    bb = re.fullmatch(r"(?P<head>.*[A-Z])(?P<d>\d) (?P<yy>\d{2})", s)
    if bb:
        if bb["yy"][-1] != bb["d"]:
            raise ValueError(
                f"contract code {code!r}: year digit {bb['d']!r} disagrees with {bb['yy']!r}"
            )
        s = bb["head"] + bb["yy"]
    m = re.fullmatch(r"(?P<head>.*?)(?P<digits>\d*)", s)
    head, digits = (m["head"], m["digits"]) if m else (s, "")
    if not digits:
        raise ValueError(f"contract code {code!r}: no year (expected e.g. 'CLZ24')")
    if len(digits) not in (1, 2, 4):
        raise ValueError(f"contract code {code!r}: the year must have 1, 2 or 4 digits")
    head = head.rstrip()
    if not head:
        raise ValueError(f"contract code {code!r}: no month letter and empty root")
    letter = head[-1]
    if letter not in MONTH_OF_CODE:
        raise ValueError(
            f"contract code {code!r}: unknown month letter {letter!r} "
            f"(expected one of {MONTH_CODES})"
        )
    root = head[:-1].strip()
    if not root:
        raise ValueError(f"contract code {code!r}: empty root")
    if not _ROOT.fullmatch(root):
        raise ValueError(f"contract code {code!r}: root {root!r} is not 1 to 3 letters")
    yy = int(digits)
    if len(digits) == 4:
        year = yy
    elif len(digits) == 2:
        if ref_date is None:
            year = 1900 + yy if yy >= 70 else 2000 + yy
        else:
            lo = _ref_year(ref_date) - 10
            year = lo + (yy - lo) % 100
    else:
        if ref_date is None:
            raise ValueError(
                f"contract code {code!r}: a one-digit year needs ref_date to fix the decade"
            )
        lo = _ref_year(ref_date) - 1
        year = lo + (yy - lo) % 10
    return ContractCode(root, year, MONTH_OF_CODE[letter])


def contract_code(root: str, year: int, month: int) -> str:
    """The contract code with a two-digit year: ``contract_code("CL", 2024, 12) == "CLZ24"``."""
    _check_month(year, month)
    return f"{root}{CODE_OF_MONTH[int(month)]}{int(year) % 100:02d}"


def mmy(year: int, month: int) -> str:
    """The CME ``MMY`` field ``"YYYYMM"``: ``mmy(2024, 12) == "202412"``."""
    _check_month(year, month)
    return f"{int(year):04d}{int(month):02d}"


def parse_mmy(value: str | int) -> tuple[int, int]:
    """Parse a CME ``MMY`` value into ``(year, month)``.

    Accepts ``"202412"`` and ``"20241220"`` (weekly/daily contracts; the day is dropped), as a
    string or an integer. Raises ``ValueError`` for anything else.
    """
    s = str(value).strip()
    if not re.fullmatch(r"\d{6}|\d{8}", s):
        raise ValueError(f"MMY {value!r}: expected YYYYMM or YYYYMMDD")
    year, month = int(s[:4]), int(s[4:6])
    if not 1 <= month <= 12:
        raise ValueError(f"MMY {value!r}: month {month} is not 1..12")
    if len(s) == 8:
        try:
            pd.Timestamp(year, month, int(s[6:]))
        except ValueError as e:
            raise ValueError(f"MMY {value!r}: not a valid date ({e})") from None
    return year, month


# ----------------------------------------------------------------------------- expiry rules


def _prev_month(year: int, month: int) -> tuple[int, int]:
    return (year, month - 1) if month > 1 else (year - 1, 12)


#: Root -> the calendar (:data:`ssjax.data.calendars.CALENDARS`) of its trade dates.
ROOT_CALENDARS: dict[str, str] = {
    "CL": "NYMEX",
    "NG": "NYMEX",
    "HG": "COMEX",
    "B": "ICE_EUROPE",
    "BRN": "ICE_EUROPE",
    "LCO": "ICE_EUROPE",
}


def calendar_of_root(root: str) -> TradeCalendar:
    """The trade-date calendar of a contract root (``"CME"`` for a root not listed)."""
    return get_calendar(ROOT_CALENDARS.get(str(root).strip().upper(), "CME"))


def _expiry_days(root: str) -> TradeCalendar:
    return calendar_of_root(root).for_expiry()


def _nth_last_business_day(year: int, month: int, n: int, cal: TradeCalendar) -> pd.Timestamp:
    """The n-th last business day (n = 1: the last one) of a calendar month."""
    month_end = pd.Timestamp(year, month, 1) + pd.offsets.MonthEnd(0)
    return add_trade_days(previous_trade_date(month_end, calendar=cal), -(n - 1), cal)


def _ltd_cl(year: int, month: int) -> pd.Timestamp:
    """NYMEX WTI: 3 business days before the 25th (or the last business day before it) of the
    month before the contract month."""
    cal = _expiry_days("CL")
    y, m = _prev_month(year, month)
    anchor = previous_trade_date(pd.Timestamp(y, m, 25), calendar=cal)
    return add_trade_days(anchor, -3, cal)


def _ltd_ng(year: int, month: int) -> pd.Timestamp:
    """NYMEX Henry Hub: the 3rd-last business day of the month before the contract month."""
    return _nth_last_business_day(*_prev_month(year, month), 3, _expiry_days("NG"))


def _ltd_hg(year: int, month: int) -> pd.Timestamp:
    """COMEX copper: the 3rd-last business day of the contract month."""
    return _nth_last_business_day(year, month, 3, _expiry_days("HG"))


def _ltd_brent(year: int, month: int) -> pd.Timestamp:
    """ICE Brent: mid-month rule up to the February 2016 contract, then the last business day
    of the second month before the contract month."""
    cal = _expiry_days("BRN")
    if (year, month) >= (2016, 3):
        return _nth_last_business_day(*_prev_month(*_prev_month(year, month)), 1, cal)
    day15 = pd.Timestamp(year, month, 1) - pd.Timedelta(days=15)
    last_on_or_before = previous_trade_date(day15, calendar=cal)
    return previous_trade_date(last_on_or_before, inclusive=False, calendar=cal)


#: Root -> rule giving the last trading day of the (year, month) contract.
EXPIRY_RULES: dict[str, Callable[[int, int], pd.Timestamp]] = {
    "CL": _ltd_cl,
    "NG": _ltd_ng,
    "HG": _ltd_hg,
    "B": _ltd_brent,
    "BRN": _ltd_brent,
    "LCO": _ltd_brent,
}


@lru_cache(maxsize=4096)
def _last_trade_date(root: str, year: int, month: int) -> pd.Timestamp:
    rule = EXPIRY_RULES.get(root)
    if rule is None:
        raise ValueError(
            f"no last-trade-date rule for root {root!r}; supported roots: "
            f"{', '.join(sorted(EXPIRY_RULES))}"
        )
    return rule(year, month)


def last_trade_date(root: str, year: int, month: int) -> pd.Timestamp:
    """Last trading day of the ``root`` contract for ``month``/``year`` (a trade date of the
    root's calendar).

    ``last_trade_date("CL", 2025, 1) == Timestamp("2024-12-19")``. Raises ``ValueError`` for a
    root without a rule in :data:`EXPIRY_RULES` (the message lists the supported roots).
    """
    root = str(root).strip().upper()
    _check_month(year, month)
    return _last_trade_date(root, int(year), int(month))


def last_trade_dates(codes: Iterable[str], ref_dates: Any = None) -> pd.DatetimeIndex:
    """Last trading days of an array of contract codes (each unique code is parsed once).

    ``ref_dates`` (a date or an array of dates aligned with ``codes``) resolves one- and
    two-digit years as in :func:`parse_contract`.
    """
    arr = np.asarray(list(codes) if not isinstance(codes, np.ndarray) else codes, dtype=object)
    flat = arr.ravel()
    if ref_dates is None or np.ndim(ref_dates) == 0:
        refs = [ref_dates] * flat.size
    else:
        refs = list(pd.to_datetime(np.asarray(ref_dates).ravel()))
        if len(refs) != flat.size:
            raise ValueError(f"ref_dates has {len(refs)} entries for {flat.size} codes")
    cache: dict[tuple[str, Any], pd.Timestamp] = {}
    out = []
    for c, r in zip(flat, refs, strict=True):
        key = (c, r)
        if key not in cache:
            cache[key] = last_trade_date(*parse_contract(c, r))
        out.append(cache[key])
    return pd.DatetimeIndex(out, dtype="datetime64[ns]")


def listed_contracts(
    root: str, date: Any, n: int, after: bool = True
) -> tuple[list[str], pd.DatetimeIndex]:
    """The ``n`` nearest monthly contracts of ``root`` on ``date`` and their last trading days.

    With ``after=True`` these are the contracts whose last trading day is strictly after
    ``date`` (a contract has left the list on its last trading day); with ``after=False``,
    on or after ``date``. Every calendar month is assumed listed.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    d = pd.Timestamp(date).normalize()
    if d.tzinfo is not None:
        d = d.tz_localize(None)
    year, month = _prev_month(d.year, d.month)
    codes: list[str] = []
    ltds: list[pd.Timestamp] = []
    while len(codes) < n:
        ltd = last_trade_date(root, year, month)
        if ltd > d or (not after and ltd == d):
            codes.append(contract_code(root, year, month))
            ltds.append(ltd)
        year, month = (year, month + 1) if month < 12 else (year + 1, 1)
    return codes, pd.DatetimeIndex(ltds, dtype="datetime64[ns]")
