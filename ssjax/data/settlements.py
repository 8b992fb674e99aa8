"""Settlement data: one tidy long schema, one validator, readers for exchange layouts.

The schema (one row per trade date × contract)::

    trade_date        datetime64   the settlement (trade) date
    commodity         str          product root, e.g. "CL", "NG", "HG"
    contract          str          contract code, e.g. "CLZ24"
    expiration_date   datetime64   the contract's last trading day
    settlement_price  float        settlement price (NaN = not observed)
    volume            float        optional: the day's volume
    open_interest     float        optional: open interest at the end of the day

Readers (each returns a validated table in this schema, sorted by commodity, trade date and
expiration):

* :func:`read_cme_settlements` — the CME daily settlement CSV (``BizDt, Sym, MMY, SecTyp,
  LastTrdDt, SettlePrice, PrevDayVol, PrevDayOI, …``);
* :func:`read_continuous` — merged continuous-contract files (``CL1..CLn``, e.g. Quandl/Nasdaq
  CHRIS ``CHRIS/CME_CL1 - Settle``) or a single-dataset download; ranks are mapped to contracts
  by the exchange's expiry rule;
* :func:`read_long_csv` — a long per-contract CSV (``date, contract, last_trade_date, price, …``,
  like the bundled copper file), with column aliases;
* :func:`read_settlements` — sniff the layout from the header and dispatch.

Where an expiry date is absent it is derived from the contract code with
:func:`ssjax.data.contracts.last_trade_date` (CME trade-date calendar).
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "REQUIRED_COLUMNS",
    "OPTIONAL_COLUMNS",
    "SettlementError",
    "SettlementWarning",
    "JUMP_FACTOR",
    "validate_settlements",
    "sort_settlements",
    "read_cme_settlements",
    "read_continuous",
    "read_long_csv",
    "read_settlements",
]

REQUIRED_COLUMNS = (
    "trade_date",
    "commodity",
    "contract",
    "expiration_date",
    "settlement_price",
)
OPTIONAL_COLUMNS = ("volume", "open_interest")
_KEY = ["trade_date", "commodity", "contract"]
_ORDER = ["commodity", "trade_date", "expiration_date", "contract"]
_MAX_LISTED = 8  # rows named per problem in a message


class SettlementError(ValueError):
    """Invalid settlement data; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        where = f" in {source}" if source else ""
        super().__init__(
            f"{len(problems)} problem(s) with the settlement data{where}:\n- "
            + "\n- ".join(problems)
        )


def _rows(labels: Iterable[Any]) -> str:
    labels = list(labels)
    shown = ", ".join(str(x) for x in labels[:_MAX_LISTED])
    more = f" and {len(labels) - _MAX_LISTED} more" if len(labels) > _MAX_LISTED else ""
    return f"[{shown}{more}]"


def sort_settlements(df: pd.DataFrame) -> pd.DataFrame:
    """Sort into the canonical order: commodity, trade date, expiration, contract."""
    return df.sort_values(_ORDER, kind="stable")


def validate_settlements(
    df: pd.DataFrame,
    *,
    on_bad_price: str = "mask",
    sort: bool = False,
    source: str | None = None,
) -> pd.DataFrame:
    """Check a settlement table against the schema; report every problem at once.

    Row numbers in messages are the table's index labels (the readers set them to the
    line numbers of the source file, so a message points at the line to fix). Every check
    whose columns are present runs, so one error lists all the problems: missing columns do
    not stop the checks on the other columns, and the order is checked on the rows whose
    dates parsed (with columns missing, on the leading part of the canonical order that is
    present) even when other problems were found.

    Args:
        df: a table with the schema's columns (extra columns are kept).
        on_bad_price: what to do with a non-positive or non-finite price that is present
            (WTI settled at −37.63 on 2020-04-20): ``"mask"`` (default) sets it to NaN (not
            observed) with a warning that names the rows; ``"raise"`` makes it an error.
            Empty prices are simply "not observed".
        sort: sort into the canonical order (commodity, trade date, expiration, contract)
            instead of reporting unsorted input as a problem.
        source: a name for messages (e.g. the file name).

    Returns:
        A copy with typed columns (dates as ``datetime64[ns]``, prices as float).

    Raises:
        SettlementError: missing columns (listing the expected ones), unparseable dates,
            duplicate (trade_date, commodity, contract) rows, contracts traded after their
            expiration date, unsorted input, bad prices when ``on_bad_price="raise"``.
    """
    if on_bad_price not in ("mask", "raise"):
        raise ValueError(f"on_bad_price must be 'mask' or 'raise', got {on_bad_price!r}")
    out = df.copy()
    problems: list[str] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in out.columns]
    if missing:
        problems.append(
            f"missing column(s) {missing}; expected columns {list(REQUIRED_COLUMNS)} "
            f"(optional {list(OPTIONAL_COLUMNS)}), got {list(df.columns)}"
        )
    has = set(out.columns)
    for col in ("trade_date", "expiration_date"):
        if col not in has:
            continue
        raw = out[col]
        parsed = pd.to_datetime(raw, errors="coerce", format="mixed")
        bad = parsed.isna() & ~_is_blank(raw)
        blank = _is_blank(raw)
        if bad.any():
            examples = ", ".join(repr(v) for v in raw[bad].head(3))
            rows = _rows(out.index[bad])
            problems.append(f"{col}: unparseable dates at rows {rows} ({examples})")
        if blank.any():
            problems.append(f"{col}: empty at rows {_rows(out.index[blank])}")
        out[col] = parsed.dt.normalize().astype("datetime64[ns]")
    for col in ("commodity", "contract"):
        if col not in has:
            continue
        blank = _is_blank(out[col])
        if blank.any():
            problems.append(f"{col}: empty at rows {_rows(out.index[blank])}")
        out[col] = out[col].astype(str).str.strip()
    if "settlement_price" in has:
        price = pd.to_numeric(out["settlement_price"], errors="coerce")
        unparseable = price.isna() & ~_is_blank(out["settlement_price"])
        if unparseable.any():
            problems.append(
                f"settlement_price: not a number at rows {_rows(out.index[unparseable])}"
            )
        bad_price = price.notna() & ~(np.isfinite(price) & (price > 0))
        if bad_price.any():
            msg = (
                "settlement_price: non-positive or non-finite at rows "
                f"{_rows(out.index[bad_price])} (values {_rows(price[bad_price].round(6))})"
            )
            if on_bad_price == "raise":
                problems.append(msg)
            else:
                warnings.warn(msg + "; masked (treated as not observed)", UserWarning, stacklevel=2)
                price = price.where(~bad_price)
        out["settlement_price"] = price.astype(float)
    for col in OPTIONAL_COLUMNS:
        if col in has:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)

    # rows whose dates (those of the columns present) parsed
    dated = pd.Series(True, index=out.index)
    for col in ("trade_date", "expiration_date"):
        if col in has:
            dated &= out[col].notna()
    if set(_KEY) <= has:
        dup = out.duplicated(_KEY, keep=False) & out["trade_date"].notna()
        if dup.any():
            problems.append(
                f"duplicate (trade_date, commodity, contract) at rows {_rows(out.index[dup])}"
            )
    if {"trade_date", "expiration_date", "contract"} <= has:
        expired = dated & (out["trade_date"] > out["expiration_date"])
        if expired.any():
            ex = out[expired].head(3)
            detail = ", ".join(
                f"{c} traded {t.date()} after expiry {e.date()}"
                for c, t, e in zip(
                    ex["contract"], ex["trade_date"], ex["expiration_date"], strict=True
                )
            )
            problems.append(f"contracts past expiry at rows {_rows(out.index[expired])} ({detail})")
    if {"commodity", "contract", "expiration_date"} <= has:  # one expiration per contract
        per = out[dated].groupby(["commodity", "contract"])["expiration_date"].nunique()
        if (per > 1).any():
            two = _rows(per.index[per > 1].tolist())
            problems.append(f"contracts with more than one expiration_date: {two}")
    if not sort:
        unsorted = _first_unsorted(out, dated, has)
        if unsorted is not None:
            problems.append(unsorted)
    if problems:
        raise SettlementError(problems, source)
    _warn_suspect_values(out, source)
    return sort_settlements(out) if sort else out


#: a move of a contract's price by more than this factor between consecutive trade dates is
#: reported as suspect (a price quoted in other units: cents for dollars is ×100)
JUMP_FACTOR = 5.0


class SettlementWarning(UserWarning):
    """Values that parse but look wrong (weekend dates, holidays of the product's calendar,
    price jumps of ×5 or more)."""


def _warn_suspect_values(out: pd.DataFrame, source: str | None) -> None:
    """Warn (:class:`SettlementWarning`) about weekend trade dates and about prices that move
    by a factor of ``JUMP_FACTOR`` or more between a contract's consecutive trade dates."""
    where = f"{source}: " if source else ""
    if "trade_date" in out.columns:
        weekend = out["trade_date"].dt.day_of_week >= 5
        if weekend.any():
            days = sorted({str(d.date()) for d in out.loc[weekend, "trade_date"]})
            warnings.warn(
                f"{where}trade dates on a weekend at rows {_rows(out.index[weekend])} "
                f"({', '.join(days[:3])}{', …' if len(days) > 3 else ''}): no exchange settles "
                "then; check the date column",
                SettlementWarning,
                stacklevel=3,
            )
        _warn_holidays(out, where, weekend)
    if {"contract", "trade_date", "settlement_price"} <= set(out.columns):
        keys = ["commodity", "contract"] if "commodity" in out.columns else ["contract"]
        o = out[out["settlement_price"].notna()].sort_values([*keys, "trade_date"])
        ratio = o["settlement_price"] / o.groupby(keys)["settlement_price"].shift(1)
        jump = (ratio > JUMP_FACTOR) | (ratio < 1 / JUMP_FACTOR)
        if jump.any():
            ex = o[jump].head(3)
            detail = ", ".join(
                f"{c} on {d.date()} ×{r:.3g}"
                for c, d, r in zip(ex["contract"], ex["trade_date"], ratio[jump].head(3),
                                   strict=True)
            )  # fmt: skip
            warnings.warn(
                f"{where}prices that move by a factor of {JUMP_FACTOR:g} or more from the "
                f"contract's previous trade date at rows {_rows(o.index[jump])} ({detail}): "
                "a price in other units (cents for dollars is ×100)?",
                SettlementWarning,
                stacklevel=3,
            )


def _warn_holidays(out: pd.DataFrame, where: str, weekend: pd.Series) -> None:
    """Warn about weekday dates that are holidays of a known product's calendar."""
    from ssjax.data.calendars import is_trade_date
    from ssjax.data.contracts import ROOT_CALENDARS

    if "commodity" not in out.columns:
        return
    roots = out["commodity"].astype(str).str.strip().str.upper().to_numpy()
    dates = pd.DatetimeIndex(out["trade_date"])
    usable = ~np.asarray(weekend) & ~dates.isna()
    for root in pd.unique(roots[usable]):
        cal = ROOT_CALENDARS.get(root)
        if cal is None:
            continue
        pos = np.flatnonzero(usable & (roots == root))
        closed = ~is_trade_date(dates[pos], cal)
        if closed.any():
            days = sorted({str(d.date()) for d in dates[pos[closed]]})
            warnings.warn(
                f"{where}{root} trade dates that are {cal} holidays at rows "
                f"{_rows(out.index[pos[closed]])} ({', '.join(days[:3])}"
                f"{', …' if len(days) > 3 else ''}): the exchange had no settlement then "
                "(ssjax.data.calendars); check the date column",
                SettlementWarning,
                stacklevel=4,
            )


def _first_unsorted(out: pd.DataFrame, dated: pd.Series, has: set[str]) -> str | None:
    """The unsorted-input problem, checked on the rows whose dates parsed (or ``None``).

    With columns missing, the longest leading part of the canonical order whose columns are
    present is checked (a table sorted canonically is sorted on any leading part of it).
    """
    prefix: list[str] = []
    for col in _ORDER:
        if col not in has:
            break
        prefix.append(col)
    if not prefix:
        return None
    keys = out.loc[dated.to_numpy(), prefix].reset_index(drop=True)
    pos = keys.sort_values(prefix, kind="stable").index.to_numpy()
    wrong = pos != np.arange(len(pos))
    if not wrong.any():
        return None
    first = int(np.argmax(wrong))
    label = out.index[dated.to_numpy()][first]
    skipped = int((~dated).sum())
    note = f"; {skipped} row(s) with unparseable or empty dates not checked" if skipped else ""
    order = prefix if prefix == list(_ORDER) else f"{prefix} (of {_ORDER})"
    return (
        f"unsorted input: expected order {order}; first out of place at row {label}"
        f"{note} (pass sort=True or call sort_settlements)"
    )


def _is_blank(s: pd.Series) -> pd.Series:
    return s.isna() | (s.astype(str).str.strip() == "")


def _source_name(path: Any) -> str | None:
    if isinstance(path, (str, os.PathLike)):
        return Path(path).name
    return None


def _previous_day_figures(out: pd.DataFrame, columns: dict[str, str]) -> None:
    """Move previous-trade-date figures (``columns``: source -> target) onto the row of the
    date they belong to: the figure on a row dated t is the contract's figure of the trade date
    before t (on the calendar of the contract's root). In place; NaN where the file has no
    row of that next trade date."""
    from ssjax.data.calendars import add_trade_days
    from ssjax.data.contracts import calendar_of_root

    belongs = np.full(len(out), np.datetime64("NaT"), dtype="datetime64[ns]")
    roots = out["commodity"].to_numpy()
    days = pd.DatetimeIndex(out["trade_date"])
    for root in pd.unique(roots):
        pos = np.flatnonzero(roots == root)
        dates = days[pos].unique()
        prev = pd.Series(
            pd.DatetimeIndex(add_trade_days(dates, -1, calendar_of_root(str(root)))), index=dates
        )
        belongs[pos] = prev.reindex(days[pos]).to_numpy()
    look = out.assign(belongs=belongs)
    look = look.set_index(["contract", "belongs"])[list(columns)]
    look = look[~look.index.duplicated()]
    key = pd.MultiIndex.from_arrays([out["contract"], out["trade_date"]])
    got = look.reindex(key)
    for src, dst in columns.items():
        out[dst] = got[src].to_numpy()


#: separators other than the comma that a header line is recognized by
_OTHER_SEPARATORS = (";", "\t", "|")


def _header_separator(columns: Iterable[Any]) -> str | None:
    """The separator of a header that a comma-separated read saw as one column (else None)."""
    cols = list(columns)
    if len(cols) != 1:
        return None
    name = str(cols[0])
    found = [sep for sep in _OTHER_SEPARATORS if sep in name]
    return found[0] if len(found) == 1 else None


def _sniff_separator(path: Any, encoding: str) -> str | None:
    """The file's separator when it is not a comma (``;``, tab or ``|``), from its header."""
    pos = path.tell() if hasattr(path, "seek") and path.seekable() else None
    try:
        header = pd.read_csv(path, nrows=0, encoding=encoding).columns
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        return None  # the read proper reports it
    finally:
        if pos is not None:
            path.seek(pos)
    return _header_separator(header)


def _read_csv(path: Any, source: str | None, **kwargs: Any) -> pd.DataFrame:
    """``pd.read_csv`` whose failures are :class:`SettlementError` naming the file (and the
    line, where pandas gives one): empty file, header only, cut or malformed lines, bytes
    that are not UTF-8. A file separated by ``;``, tabs or ``|`` is read with its separator
    (numbers still need a decimal point)."""
    encoding = kwargs.pop("encoding", "utf-8-sig")
    if "sep" not in kwargs and (sep := _sniff_separator(path, encoding)) is not None:
        kwargs["sep"] = sep
    try:
        df = pd.read_csv(path, encoding=encoding, **kwargs)
    except pd.errors.EmptyDataError:
        raise SettlementError(["the file is empty (no header line)"], source) from None
    except pd.errors.ParserError as e:
        raise SettlementError([f"malformed CSV: {str(e).strip()}"], source) from None
    except UnicodeDecodeError as e:
        raise SettlementError(
            [f"not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at offset {e.start}); "
             "save the file as UTF-8 or pass encoding= (e.g. 'latin-1')"],
            source,
        ) from None  # fmt: skip
    if df.empty:
        raise SettlementError([f"no data lines (a header only: {list(df.columns)})"], source)
    return df


def _line_index(df: pd.DataFrame, header_lines: int = 1) -> pd.DataFrame:
    """Label rows by their line number in the source file (header on line 1)."""
    df.index = pd.RangeIndex(header_lines + 1, header_lines + 1 + len(df), name="line")
    return df


# ---- CME daily settlement CSV ---------------------------------------------------------------
_CME_COLUMNS = ("BizDt", "Sym", "MMY", "SecTyp", "LastTrdDt", "SettlePrice")


def read_cme_settlements(
    path: str | os.PathLike | io.IOBase,
    *,
    products: Iterable[str] | None = None,
    on_bad_price: str = "mask",
    encoding: str = "utf-8-sig",
) -> pd.DataFrame:
    """Read a CME daily settlement CSV (futures rows) into the long schema.

    The layout of ``{nymex,comex,…}.settle.YYYYMMDD.s.csv`` / DataMine files: ``BizDt, Sym,
    ID, StrkPx, SecTyp, MMY, MatDt, PutCall, Exch, Desc, LastTrdDt, …, SettlePrice, …,
    PrevDayVol, PrevDayOI, …`` with every field quoted. Several days and exchanges may be
    concatenated in one file. Only ``SecTyp == "FUT"`` rows are read.

    ``PrevDayVol``/``PrevDayOI`` on a row dated t are the figures of the *previous CME trade
    date* (:func:`ssjax.data.calendars.add_trade_days` (t, −1)), so they are stored on that
    date's row of the contract when the file has it: ``volume``/``open_interest`` on date d
    come from the row of the trade date after d. They are NaN where the file does not have
    that next trade date (the file's last date, a one-day file, the date before a gap):
    the file does not say them.
    An empty ``LastTrdDt`` is derived from the contract with the exchange rule.
    """
    from ssjax.data.contracts import contract_code, last_trade_date, parse_mmy

    source = _source_name(path)
    raw = _read_csv(path, source, dtype=str, keep_default_na=False, encoding=encoding)
    # header names as the exchange spells them, whatever their case or quoting
    canon = {c.lower(): c for c in (*_CME_COLUMNS, "PrevDayVol", "PrevDayOI")}
    raw = raw.rename(columns=lambda c: canon.get(str(c).strip().strip('"').lower(), c))
    missing = [c for c in _CME_COLUMNS if c not in raw.columns]
    if missing:
        raise SettlementError(
            [f"not a CME settlement file: missing column(s) {missing}; expected {_CME_COLUMNS}, "
             f"got {list(raw.columns)}"],
            source,
        )  # fmt: skip
    raw = _line_index(raw)
    fut = raw[raw["SecTyp"].str.strip() == "FUT"]
    if products is not None:
        fut = fut[fut["Sym"].isin(list(products))]
    if fut.empty:
        what = f"of the products {sorted(products)} " if products is not None else ""
        raise SettlementError(
            [f"no futures rows {what}(SecTyp == 'FUT') in {len(raw)} data line(s); "
             f"SecTyp values present: {sorted(set(raw['SecTyp'].str.strip()))[:10]}"],
            source,
        )  # fmt: skip
    problems = []
    ym = []
    for line, v in zip(fut.index, fut["MMY"], strict=True):
        try:
            ym.append(parse_mmy(v))
        except ValueError as e:
            problems.append(f"MMY at line {line}: {e}")
            ym.append((0, 0))
    if problems:
        raise SettlementError(problems, source)
    sym = fut["Sym"].str.strip()
    contracts = [contract_code(s, y, m) for s, (y, m) in zip(sym, ym, strict=True)]
    ltd = fut["LastTrdDt"].str.strip()
    need = ltd == ""
    if need.any():
        derived = {
            c: last_trade_date(s, y, m) for c, s, (y, m) in zip(contracts, sym, ym, strict=True)
        }
        ltd = ltd.where(~need, pd.Series([str(derived[c].date()) for c in contracts], fut.index))
    out = pd.DataFrame(
        {
            "trade_date": fut["BizDt"].str.strip(),
            "commodity": sym,
            "contract": contracts,
            "expiration_date": ltd,
            "settlement_price": fut["SettlePrice"].str.strip(),
            "prev_volume": pd.to_numeric(fut["PrevDayVol"], errors="coerce")
            if "PrevDayVol" in fut
            else np.nan,
            "prev_oi": pd.to_numeric(fut["PrevDayOI"], errors="coerce")
            if "PrevDayOI" in fut
            else np.nan,
        },
        index=fut.index,
    )
    out = validate_settlements(out, on_bad_price=on_bad_price, sort=True, source=source)
    _previous_day_figures(out, {"prev_volume": "volume", "prev_oi": "open_interest"})
    return out.drop(columns=["prev_volume", "prev_oi"])


# ---- continuous (rank) files ----------------------------------------------------------------
_CHRIS = re.compile(
    r"^(?:CHRIS/)?(?:[A-Z]+_)?(?P<root>[A-Z]{1,3})(?P<rank>\d+)\s*-\s*(?P<field>.+)$"
)
_PLAIN = re.compile(r"^(?P<root>[A-Z]{1,3})(?P<rank>\d{1,2})$")
_SINGLE_FIELDS = {"Open", "High", "Low", "Last", "Change", "Settle", "Volume"}


def read_continuous(
    path: str | os.PathLike | io.IOBase,
    *,
    root: str | None = None,
    rank: int | None = None,
    roll_on_last_trade_day: bool | None = None,
    price_field: str = "Settle",
    on_bad_price: str = "mask",
    encoding: str = "utf-8-sig",
) -> pd.DataFrame:
    """Read continuous-contract prices (rank k = k-th nearest contract) into the long schema.

    Accepts the merged layout (``Date, CHRIS/CME_CL1 - Settle, …, CHRIS/CME_CL6 - …``, also
    plain ``CL1 - Settle``), a plain price table (``Date, CL1, CL2, …, CLn``: settlement
    prices by rank) and a single-dataset download (``Date, Open, …, Settle, Volume,
    Previous Day Open Interest``, newest first; give ``root`` and ``rank``). Each rank is
    mapped to a contract with the exchange's last-trade-date rule, and which contract is rank
    1 on its own last trading day differs between vendors, so the convention must be chosen
    (a wrong one assigns the wrong contract to every rank on those days, ~5% of the rows of
    a daily file): ``roll_on_last_trade_day=True`` (Quandl/Nasdaq CHRIS), rank k on date t is
    the k-th contract with last trading day > t; ``False`` (most exchange and Bloomberg
    generic series), ≥ t (the expiring contract is still rank 1 on its last day).
    ``volume`` is the row's volume; ``open_interest`` comes from the previous-day open
    interest column, stored on the previous CME trade date (NaN where the file lacks the next
    trade date).
    """
    from ssjax.data.contracts import listed_contracts

    source = _source_name(path)
    if roll_on_last_trade_day is None:
        raise SettlementError(
            ["continuous file: choose the rank convention, roll_on_last_trade_day=True (rank 1 "
             "is the next contract on the expiring one's last trading day: Quandl/Nasdaq "
             "CHRIS) or False (the expiring contract is still rank 1 that day: exchange and "
             "Bloomberg generic series)"],
            source,
        )  # fmt: skip
    raw = _read_csv(path, source, encoding=encoding)
    date_col = next((c for c in raw.columns if str(c).strip().lower() == "date"), None)
    if date_col is None:
        raise SettlementError(["continuous file: no 'Date' column"], source)
    raw = _line_index(raw)
    dates = pd.to_datetime(raw[date_col], errors="coerce")
    if dates.isna().any():
        raise SettlementError(
            [f"Date: unparseable at lines {_rows(raw.index[dates.isna()])}"], source
        )
    fields: dict[tuple[str, int], dict[str, str]] = {}
    for col in raw.columns:
        m = _CHRIS.match(str(col).strip())
        if m:
            key = (m["root"], int(m["rank"]))
            fields.setdefault(key, {})[m["field"].strip()] = col
        m = _PLAIN.match(str(col).strip())
        if m:  # Date, CL1, ..., CLn: the settlement price by rank
            fields.setdefault((m["root"], int(m["rank"])), {})[price_field] = col
    if not fields:
        present = {str(c).strip() for c in raw.columns} & _SINGLE_FIELDS
        if price_field not in present:
            raise SettlementError(
                [f"continuous file: no '<ROOT><k> - {price_field}' columns and no "
                 f"'{price_field}' column; columns are {list(raw.columns)}"],
                source,
            )  # fmt: skip
        if root is None or rank is None:
            raise SettlementError(
                ["single-dataset continuous file: give root= and rank= (e.g. 'CL', 1)"], source
            )
        fields[(root, rank)] = {str(c).strip(): c for c in raw.columns if c != date_col}
    if root is not None:
        fields = {k: v for k, v in fields.items() if k[0] == root}
    rows = []
    for (r, k), f in sorted(fields.items()):
        if price_field not in f:
            raise SettlementError([f"{r}{k}: no '{price_field}' column"], source)
        vol = f.get("Volume")
        oi = f.get("Previous Day Open Interest") or f.get("Prev. Day Open Interest")
        frame = pd.DataFrame(
            {
                "trade_date": dates,
                "commodity": r,
                "rank": k,
                "settlement_price": raw[f[price_field]],
                "volume": raw[vol] if vol else np.nan,
                "prev_oi": raw[oi] if oi else np.nan,
            },
            index=raw.index,
        )
        rows.append(frame)
    out = pd.concat(rows)
    # rank -> contract by the expiry rule, one lookup per (root, date)
    keys = out[["commodity", "trade_date"]].drop_duplicates()
    max_rank = out.groupby("commodity")["rank"].max()
    table = []
    for r, d in zip(keys["commodity"], keys["trade_date"], strict=True):
        codes, ltds = listed_contracts(r, d, int(max_rank[r]), after=roll_on_last_trade_day)
        pairs = zip(codes, ltds, strict=True)
        table.extend((r, d, k, c, e) for k, (c, e) in enumerate(pairs, start=1))
    lookup = pd.DataFrame(
        table, columns=["commodity", "trade_date", "rank", "contract", "expiration_date"]
    )
    lines = out.index
    out = out.merge(lookup, on=["commodity", "trade_date", "rank"], how="left")
    out.index = lines
    out = validate_settlements(out, on_bad_price=on_bad_price, sort=True, source=source)
    _previous_day_figures(out, {"prev_oi": "open_interest"})
    return sort_settlements(out.drop(columns=["prev_oi"]))


# ---- long per-contract CSV ------------------------------------------------------------------
_ALIASES = {
    "trade_date": ("trade_date", "date", "bizdt", "tradedate", "trade date", "timestamp"),
    "commodity": ("commodity", "root", "product", "sym", "symbol"),
    "contract": ("contract", "ticker", "contract_code", "code"),
    "expiration_date": (
        "expiration_date", "last_trade_date", "lasttrddt", "expiry", "expiration",
        "maturity_date",
    ),
    "settlement_price": ("settlement_price", "settle", "settlement", "price", "close"),
    "volume": ("volume", "vol"),
    "open_interest": ("open_interest", "oi", "openinterest"),
}  # fmt: skip


def read_long_csv(
    path: str | os.PathLike | io.IOBase,
    *,
    commodity: str | None = None,
    columns: dict[str, str] | None = None,
    on_bad_price: str = "mask",
    encoding: str = "utf-8-sig",
) -> pd.DataFrame:
    """Read a long per-contract CSV (one row per date × contract) into the schema.

    Column names are matched case-insensitively against common aliases (``date``,
    ``last_trade_date``, ``price``, …); ``columns`` maps schema names to the file's names
    explicitly. ``commodity`` defaults to the contract code's root (``HGF96`` → ``HG``).
    A missing expiration is derived from the contract code with the exchange rule.
    """
    from ssjax.data.contracts import last_trade_date, parse_contract

    source = _source_name(path)
    raw = _read_csv(path, _source_name(path), dtype=str, keep_default_na=False,
                    encoding=encoding)  # fmt: skip
    raw = _line_index(raw)
    lower = {str(c).strip().lower(): c for c in raw.columns}
    mapping: dict[str, str] = {}
    for name, aliases in _ALIASES.items():
        if columns and name in columns:
            if columns[name] not in raw.columns:
                raise SettlementError(
                    [f"columns[{name!r}] = {columns[name]!r} is not a column of the file"],
                    source,
                )
            mapping[name] = columns[name]
            continue
        hit = next((lower[a] for a in aliases if a in lower), None)
        if hit is not None:
            mapping[name] = hit
    need = [c for c in ("trade_date", "contract", "settlement_price") if c not in mapping]
    if need:
        raise SettlementError(
            [f"missing column(s) for {need}; expected columns {list(REQUIRED_COLUMNS)} "
             f"(or aliases such as date, last_trade_date, price), got {list(raw.columns)}"],
            source,
        )  # fmt: skip
    out = pd.DataFrame({k: raw[v] for k, v in mapping.items()}, index=raw.index)
    empty = _is_blank(out["contract"]) & _is_blank(out["settlement_price"])
    if empty.any():
        warnings.warn(
            f"{source or 'input'}: dropped {int(empty.sum())} row(s) with neither a contract nor "
            f"a price at lines {_rows(out.index[empty])}",
            UserWarning,
            stacklevel=2,
        )
        out = out[~empty]
    codes = out["contract"].str.replace(" Comdty", "", regex=False).str.strip()
    out["contract"] = codes
    ref = pd.to_datetime(out["trade_date"], errors="coerce")
    parsed = {}
    bad = []
    for line, c, d in zip(out.index, codes, ref, strict=True):
        if c in parsed:
            continue
        try:
            parsed[c] = parse_contract(c, d if pd.notna(d) else None)
        except ValueError as e:
            bad.append(f"line {line}: {e}")
    if commodity is not None:
        out["commodity"] = commodity
    elif "commodity" not in out:
        if bad:
            raise SettlementError(bad[:_MAX_LISTED], source)
        out["commodity"] = [parsed[c].root for c in codes]
    if "expiration_date" not in out:
        if bad:
            raise SettlementError(bad[:_MAX_LISTED], source)
        exp = {c: str(last_trade_date(*parsed[c]).date()) for c in parsed}
        out["expiration_date"] = [exp[c] for c in codes]
    return validate_settlements(out, on_bad_price=on_bad_price, sort=True, source=source)


def read_settlements(
    path: str | os.PathLike, *, roll_on_last_trade_day: bool | None = None, **kwargs: Any
) -> pd.DataFrame:
    """Read any supported layout, detected from the header line (plain or compressed:
    ``.gz``, ``.bz2``, ``.xz``, ``.zip``, ``.zst``, by the file's extension).

    CME settlement files are recognized whatever the case of their header names; a header
    with the CME layout's ``BizDt``, ``Sym`` and ``MMY`` but no ``SettlePrice`` is refused
    as such (not read as another layout). Continuous files (``CL1 - Settle`` or plain
    ``CL1..CLn`` columns) need ``roll_on_last_trade_day`` (see :func:`read_continuous`; it
    is not passed to the other layouts).
    ``encoding=`` is passed to the reader (default UTF-8).
    """
    source = os.fspath(path)
    try:
        header = pd.read_csv(path, nrows=0, encoding=kwargs.get("encoding", "utf-8-sig")).columns
    except pd.errors.EmptyDataError:
        raise SettlementError(["the file is empty (no header line)"], source) from None
    except UnicodeDecodeError as e:
        raise SettlementError(
            [f"not UTF-8 text in the header (offset {e.start}); pass encoding= "
             "(e.g. 'latin-1')"], source,
        ) from None  # fmt: skip
    if (sep := _header_separator(header)) is not None:
        header = pd.read_csv(path, nrows=0, sep=sep, encoding=kwargs.get("encoding", "utf-8-sig"))
        header = header.columns
    cols = [str(c).strip().strip('"') for c in header]
    low = {c.lower() for c in cols}
    if {"bizdt", "sym", "mmy"} <= low:
        if "settleprice" not in low:
            raise SettlementError(
                [f"a CME settlement header (BizDt, Sym, MMY) without a SettlePrice column; "
                 f"columns are {cols}"], source,
            )  # fmt: skip
        return read_cme_settlements(path, **kwargs)
    if (
        any(_CHRIS.match(c) for c in cols)
        or {"Date", "Settle"} <= set(cols)
        or ("date" in low and any(_PLAIN.match(c) for c in cols))
    ):
        return read_continuous(path, roll_on_last_trade_day=roll_on_last_trade_day, **kwargs)
    return read_long_csv(path, **kwargs)
