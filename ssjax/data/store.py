"""A Parquet store for settlement tables and tenor panels (pyarrow).

Layout under the store's root directory::

    settlements/commodity=CL/year=2024/data.parquet   one file per commodity × trade year
    panels/<name>/year=2024/data.parquet               one file per panel × year of its dates

Settlement files hold the :mod:`ssjax.data.settlements` schema (required columns plus ``volume``
and ``open_interest``; other columns are not stored), each file sorted canonically (commodity,
trade date, expiration, contract). Writes are idempotent appends keyed on (trade_date,
commodity, contract): a stored row with the key of a new row is replaced, other rows are kept.
Panel files hold one row per date × tenor; :meth:`ParquetStore.write_panel` replaces a panel,
:meth:`ParquetStore.append_panel` adds dates to it (a stored date it also has is replaced).
Reads of a date range (``start``/``end``) open only the year partitions that can hold it.

Every write is atomic: the new files are written to temporary files beside their targets and
renamed into place only when all of them have been written; the old files are kept as backups
until every rename has succeeded, so a write that fails with an exception leaves the store as it
was. A panel is written as a whole new directory that replaces the old one by renames. (A
process killed during the renames can leave a write half applied: every file is still a
complete old or new version, and the old versions remain as ``*.bak-<token>`` files or
directories; readers ignore temporary and backup files.) The store assumes one writer at a
time (there is no locking between processes).

Example::

    store = ParquetStore("data/store")
    store.write_settlements(read_cme_settlements("nymex.settle.20240102.s.csv"))
    cl = store.read_settlements("CL", start="2023-01-01", end="2023-12-31")
    store.write_panel("cl_nearby", nearby_panel(cl, 6))
    panel = store.read_panel("cl_nearby", start="2023-07-01")
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ssjax.core.market import year_fraction
from ssjax.data.panels import Panel
from ssjax.data.settlements import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    SettlementError,
    sort_settlements,
    validate_settlements,
)

__all__ = ["ParquetStore", "SETTLEMENT_COLUMNS"]

SETTLEMENT_COLUMNS = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
_DATE_COLUMNS = ("trade_date", "expiration_date")
_STR_COLUMNS = ("commodity", "contract")
_FLOAT_COLUMNS = ("settlement_price", *OPTIONAL_COLUMNS)
_SETTLEMENT_SCHEMA = pa.schema(
    [
        ("trade_date", pa.date32()),
        ("commodity", pa.string()),
        ("contract", pa.string()),
        ("expiration_date", pa.date32()),
        ("settlement_price", pa.float64()),
        ("volume", pa.float64()),
        ("open_interest", pa.float64()),
    ]
)
_FILE = "data.parquet"
_FORMAT_KEY = b"ssjax.data.store"
_PANEL_KEY = b"ssjax.panel"
_FORMAT_VERSION = 1
_PANEL_FORMAT_VERSION = 2  # version 1: one file per panel (not read)
_SCRATCH = re.compile(r"\.(?:tmp|bak)-[0-9a-f]{32}$")  # in-flight write directories


class ParquetStore:
    """Settlements and panels in Parquet files under one root directory.

    Args:
        root: the store's directory; created (with its parents) on the first write.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ParquetStore({str(self.root)!r})"

    # ---- settlements ------------------------------------------------------------------------
    @property
    def _settlements_dir(self) -> Path:
        return self.root / "settlements"

    def _partition_path(self, commodity: str, year: int) -> Path:
        return self._settlements_dir / f"commodity={commodity}" / f"year={year}" / _FILE

    def write_settlements(self, df: pd.DataFrame, *, on_bad_price: str = "mask") -> list[Path]:
        """Append a settlement table; rows with an already stored key replace the stored ones.

        The table is validated first (:func:`ssjax.data.settlements.validate_settlements` with
        ``sort=True``): invalid input raises and the store is not touched. Rows are then
        merged into the partitions ``settlements/commodity=<C>/year=<trade year>/`` they
        belong to: a stored row with the same (trade_date, commodity, contract) is replaced
        by the new one (so writing the same day twice changes nothing), other stored rows are
        kept, and each partition file is rewritten sorted by (commodity, trade date,
        expiration, contract). Columns other than the schema's are not stored; a missing
        ``volume``/``open_interest`` column is stored as NaN.

        The write is atomic: if anything fails, the store is left as it was.

        Args:
            df: a table in the :mod:`ssjax.data.settlements` schema.
            on_bad_price: ``"mask"`` (non-positive/non-finite prices become NaN with a
                warning) or ``"raise"``; passed to the validator.

        Returns:
            The partition files written, in (commodity, year) order.

        Raises:
            SettlementError: the table is invalid, or a contract's expiration date differs
                from the one already stored for it.
            ValueError: a commodity name cannot be used as a directory name.
        """
        new = validate_settlements(df, on_bad_price=on_bad_price, sort=True)
        new = _canonical(new).reset_index(drop=True)
        if new.empty:
            return []
        bad = [c for c in new["commodity"].unique() if not _safe_name(c)]
        if bad:
            raise ValueError(
                f"commodity names {bad} cannot be stored: a commodity must be a non-empty "
                "name without path separators, NUL characters or '=' and not '.' or '..'"
            )
        years = new["trade_date"].dt.year
        writes: list[tuple[Path, pa.Table]] = []
        for commodity, sub in new.groupby("commodity", sort=True):
            sub_years = years.loc[sub.index]
            self._check_expirations(str(commodity), sub, set(sub_years.unique().tolist()))
            for year, part in sub.groupby(sub_years, sort=True):
                path = self._partition_path(str(commodity), int(year))
                merged = self._merge(path, part)
                writes.append((path, _settlements_to_table(merged)))
        _atomic_write(writes)
        return [p for p, _ in writes]

    def _merge(self, path: Path, part: pd.DataFrame) -> pd.DataFrame:
        """The partition at ``path`` with ``part``'s rows replacing those with their keys."""
        if not path.exists():
            return part.reset_index(drop=True)
        old = _table_to_settlements(_read_table(path))
        key = ["trade_date", "contract"]  # one commodity per partition
        replaced = pd.MultiIndex.from_frame(old[key]).isin(pd.MultiIndex.from_frame(part[key]))
        merged = pd.concat([old[~replaced], part], ignore_index=True)
        rel = path.parent.relative_to(self.root)
        merged = validate_settlements(
            merged, on_bad_price="raise", sort=True, source=f"{rel} merged with the new rows"
        )
        return merged.reset_index(drop=True)

    def _check_expirations(self, commodity: str, new: pd.DataFrame, touched: set[int]) -> None:
        """Raise if a new contract's expiration differs from one stored for it elsewhere.

        The partitions being rewritten are checked when they are merged; here the other
        partitions of the commodity that could hold the new contracts (trade years up to the
        latest new expiration) are read (two columns only).
        """
        exp = new.groupby("contract")["expiration_date"].first()
        last_year = int(exp.max().year)
        conflicts: list[str] = []
        for year, path in self._partitions(commodity):
            if year in touched or year > last_year:
                continue
            old = _read_table(path, columns=["contract", "expiration_date"])
            old = _table_to_frame(old).drop_duplicates("contract").set_index("contract")
            both = exp.index.intersection(old.index)
            differ = both[old.loc[both, "expiration_date"].to_numpy() != exp[both].to_numpy()]
            conflicts += [
                f"{c}: expiration {exp[c].date()} but "
                f"{old.loc[c, 'expiration_date'].date()} is stored (year={year})"
                for c in differ
            ]
        if conflicts:
            raise SettlementError(
                [f"contracts with an expiration_date other than the stored one: {conflicts}"],
                f"the store's {commodity} partitions",
            )

    def _partitions(self, commodity: str) -> list[tuple[int, Path]]:
        """(year, file) of every stored partition of a commodity, by year (no file opened)."""
        if not _safe_name(commodity):
            return []
        return _year_files(self._settlements_dir / f"commodity={commodity}")

    def commodities(self) -> list[str]:
        """The commodities with stored settlements, sorted."""
        base = self._settlements_dir
        if not base.is_dir():
            return []
        names = [
            d.name[len("commodity=") :]
            for d in base.iterdir()
            if d.is_dir() and d.name.startswith("commodity=")
        ]
        return sorted(c for c in names if self._partitions(c))

    def date_range(self, commodity: str) -> tuple[pd.Timestamp, pd.Timestamp]:
        """The first and last stored trade date of a commodity.

        Reads only the trade-date column of the first and last year's partitions.

        Raises:
            ValueError: nothing is stored for ``commodity``.
        """
        parts = self._partitions(commodity)
        if not parts:
            raise ValueError(
                f"no settlements stored for commodity {commodity!r}; "
                f"stored commodities: {self.commodities()}"
            )
        first = _table_to_frame(_read_table(parts[0][1], columns=["trade_date"]))
        last = (
            first
            if len(parts) == 1
            else _table_to_frame(_read_table(parts[-1][1], columns=["trade_date"]))
        )
        return first["trade_date"].min(), last["trade_date"].max()

    def read_settlements(
        self,
        commodity: str | Iterable[str] | None = None,
        start: Any = None,
        end: Any = None,
        contracts: str | Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """Read stored settlements, opening only the partitions that can hold matching rows.

        Args:
            commodity: a commodity (or several); ``None`` = all.
            start, end: first and last trade date to return (inclusive; anything
                :class:`pandas.Timestamp` takes; times are dropped); ``None`` = open-ended.
            contracts: a contract code (or several) to keep; ``None`` = all.

        Returns:
            The schema's columns (``trade_date``/``expiration_date`` ``datetime64[ns]``,
            ``commodity``/``contract`` strings, prices, volume and open interest float),
            sorted by (commodity, trade date, expiration, contract), with a fresh
            RangeIndex. No match: an empty table with these columns.

        Raises:
            ValueError: an unparseable date, or ``start`` after ``end``.
        """
        lo = _as_date(start, "start")
        hi = _as_date(end, "end")
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"start {lo.date()} is after end {hi.date()}")
        if commodity is None:
            names = self.commodities()
        elif isinstance(commodity, str):
            names = [commodity]
        else:
            names = sorted(set(commodity))
        if contracts is not None:
            contracts = [contracts] if isinstance(contracts, str) else list(contracts)
        frames = []
        for name in names:
            for year, path in self._partitions(name):
                if (lo is not None and year < lo.year) or (hi is not None and year > hi.year):
                    continue
                df = _table_to_settlements(_read_table(path))
                keep = np.ones(len(df), bool)
                if lo is not None:
                    keep &= (df["trade_date"] >= lo).to_numpy()
                if hi is not None:
                    keep &= (df["trade_date"] <= hi).to_numpy()
                if contracts is not None:
                    keep &= df["contract"].isin(contracts).to_numpy()
                frames.append(df[keep])
        if not frames:
            return _empty_settlements()
        out = pd.concat(frames, ignore_index=True)
        return _canonical(sort_settlements(out)).reset_index(drop=True)

    # ---- panels -----------------------------------------------------------------------------
    @property
    def _panels_dir(self) -> Path:
        return self.root / "panels"

    def _panel_dir(self, name: str) -> Path:
        if not isinstance(name, str) or not _safe_name(name) or _SCRATCH.search(name):
            raise ValueError(
                f"invalid panel name {name!r}: a panel name must be a non-empty name without "
                "path separators, NUL characters or '=', not '.' or '..', and not ending in "
                "'.tmp-<hex>' or '.bak-<hex>'"
            )
        return self._panels_dir / name

    def panels(self) -> list[str]:
        """The names of the stored panels, sorted (no file opened)."""
        if not self._panels_dir.is_dir():
            return []
        return sorted(
            d.name
            for d in self._panels_dir.iterdir()
            if d.is_dir() and not _SCRATCH.search(d.name) and _year_files(d)
        )

    def write_panel(self, name: str, panel: Panel) -> list[Path]:
        """Store a panel as ``panels/<name>/year=<Y>/data.parquet`` (replacing one of that name).

        Each file holds one trade year's rows, one row per date × tenor (``date``, ``tenor``
        index, ``price``, ``ttm``, ``mask``, ``contract``, ``dt`` = years since the panel's
        previous date, NaN on its first date, and ``spot`` when the panel has ``S``) in
        date-major order; the tenor names, commodity, ``M``, the file's ``T`` and whether
        ``mask``/``S`` were ``None`` are kept as JSON in the Parquet schema metadata.

        The write is atomic and idempotent: the files are written into a temporary
        directory beside ``panels/<name>/``, which is renamed into place only when every
        file is complete (the old directory is kept until then and put back if the rename
        fails), so a failed write leaves the store as it was, and writing the same panel
        again gives the same files. (A process killed between the two renames leaves the
        old and new panel as ``<name>.bak-<token>`` and ``<name>.tmp-<token>`` directories,
        which readers ignore.)

        Returns:
            The files written, by year.

        Raises:
            ValueError: a bad name; arrays whose shapes do not agree; dates that are not
                strictly increasing; a panel without dates or tenors.
        """
        target = self._panel_dir(name)
        tables = _panel_tables(_panel_arrays(panel))
        files = [(Path(f"year={year}") / _FILE, table) for year, table in tables]
        _atomic_replace_dir(target, files)
        return [target / rel for rel, _ in files]

    def append_panel(self, name: str, panel: Panel) -> list[Path]:
        """Add a panel's dates to a stored panel; stored dates that it also has are replaced.

        Appending the same dates again changes nothing (no duplicate dates). The two panels
        must have the same tenor names and commodity, and both or neither a spot series
        ``S``. The merged panel's ``mask`` is ``None`` only when both masks are; its ``dt``
        between two dates that were consecutive in the same panel is that panel's ``dt``,
        elsewhere the ACT/365 day difference. The merged panel is written like
        :meth:`write_panel` (atomically); with nothing stored under ``name``, this is
        :meth:`write_panel`.

        Returns:
            The files written, by year.

        Raises:
            ValueError: as :meth:`write_panel`, or a panel that does not match the stored one.
        """
        target = self._panel_dir(name)
        new = _panel_arrays(panel)
        if not _year_files(target):
            return self.write_panel(name, panel)
        old = _panel_arrays(self.read_panel(name))
        merged = _merge_panel_arrays(old, new, name)
        files = [(Path(f"year={y}") / _FILE, t) for y, t in _panel_tables(merged)]
        _atomic_replace_dir(target, files)
        return [target / rel for rel, _ in files]

    def read_panel(self, name: str, start: Any = None, end: Any = None) -> Panel:
        """Read a panel stored with :meth:`write_panel`, or the dates from ``start`` to ``end``.

        Only the year partitions that can hold dates in ``[start, end]`` are opened. A
        range read is the stored panel's rows for those dates; its ``dt`` is the stored
        ``dt`` between them.

        Args:
            name: the panel's name.
            start, end: first and last date to return (inclusive; anything
                :class:`pandas.Timestamp` takes; times are dropped); ``None`` = open-ended.

        Raises:
            ValueError: a bad name or date, ``start`` after ``end``, no stored date in the
                range, or files that are not an ssjax panel.
            FileNotFoundError: no panel of that name.
        """
        lo = _as_date(start, "start")
        hi = _as_date(end, "end")
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"start {lo.date()} is after end {hi.date()}")
        parts = _year_files(self._panel_dir(name))
        if not parts:
            raise FileNotFoundError(
                f"no panel {name!r} in {self.root} (stored panels: {self.panels()})"
            )
        chosen = [
            (y, p)
            for y, p in parts
            if not ((lo is not None and y < lo.year) or (hi is not None and y > hi.year))
        ]
        pieces = [_table_to_panel_rows(_read_table(p), p, y) for y, p in chosen]
        panel = _join_panel_rows(pieces, name, lo, hi)
        if panel is None:
            years = f"{parts[0][0]}-{parts[-1][0]}"
            span = " to ".join("..." if x is None else str(x.date()) for x in (lo, hi))
            raise ValueError(f"panel {name!r} (years {years}) has no dates from {span}")
        return panel


# ---- settlement frames and tables ---------------------------------------------------------------
def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    """The schema's columns only, typed the store's way (dates ns, strings, floats)."""
    out = pd.DataFrame(index=df.index)
    for col in SETTLEMENT_COLUMNS:
        if col in _DATE_COLUMNS:
            out[col] = df[col].astype("datetime64[ns]")
        elif col in _STR_COLUMNS:
            out[col] = df[col].astype(str)
        else:
            out[col] = df[col].astype(float) if col in df.columns else np.nan
    return out


def _empty_settlements() -> pd.DataFrame:
    data = {}
    for c in SETTLEMENT_COLUMNS:
        dtype = "datetime64[ns]" if c in _DATE_COLUMNS else (str if c in _STR_COLUMNS else float)
        data[c] = pd.Series(dtype=dtype)
    return pd.DataFrame(data)


def _settlements_to_table(df: pd.DataFrame) -> pa.Table:
    arrays = []
    for field in _SETTLEMENT_SCHEMA:
        col = df[field.name]
        if field.name in _DATE_COLUMNS:
            values = col.to_numpy().astype("datetime64[D]")
        elif field.name in _STR_COLUMNS:
            values = col.to_numpy(dtype=object)
        else:
            values = col.to_numpy(dtype=float)
        arrays.append(pa.array(values, type=field.type))
    meta = {_FORMAT_KEY: json.dumps({"version": _FORMAT_VERSION, "kind": "settlements"})}
    return pa.Table.from_arrays(arrays, schema=_SETTLEMENT_SCHEMA.with_metadata(meta))


def _table_to_frame(table: pa.Table) -> pd.DataFrame:
    df = table.to_pandas(date_as_object=False)
    for col in df.columns:
        if col in _DATE_COLUMNS:
            df[col] = df[col].astype("datetime64[ns]")
    return df


def _table_to_settlements(table: pa.Table) -> pd.DataFrame:
    missing = [c for c in SETTLEMENT_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"not an ssjax settlement partition: missing columns {missing}")
    return _canonical(_table_to_frame(table.select(list(SETTLEMENT_COLUMNS))))


def _as_date(value: Any, what: str) -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: cannot read {value!r} as a date ({e})") from None
    if ts is pd.NaT:
        raise ValueError(f"{what}: {value!r} is not a date")
    return ts.tz_localize(None).normalize() if ts.tzinfo is not None else ts.normalize()


def _safe_name(name: str) -> bool:
    """Usable as one path component (and a partition value): no separators, NUL or '='."""
    bad = {"/", "\\", "\0", "=", os.sep} | ({os.altsep} if os.altsep else set())
    return bool(name) and name not in (".", "..") and not any(c in name for c in bad)


# ---- panels <-> tables --------------------------------------------------------------------------
def _act365(dates: pd.DatetimeIndex) -> np.ndarray:
    return year_fraction(dates.values[:-1], dates.values[1:])


def _float_array(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        try:
            arr = arr.astype(float)
        except (TypeError, ValueError) as e:
            raise ValueError(f"panel.{what} must hold numbers ({e})") from None
    return arr


def _panel_arrays(panel: Panel) -> dict[str, Any]:
    """The panel's arrays, checked (shapes, types, increasing dates) and normalised."""
    dates = pd.DatetimeIndex(panel.dates)
    F = _float_array(panel.F_mkt, "F_mkt")
    if F.ndim != 2:
        raise ValueError(f"panel.F_mkt must be [T, M], got shape {F.shape}")
    T, M = F.shape
    if M == 0:
        raise ValueError("panel has no tenors (M = 0)")
    if T == 0:
        raise ValueError("panel has no dates (T = 0)")
    if len(dates) != T:
        raise ValueError(f"panel.dates has {len(dates)} dates but F_mkt has {T} rows")
    if dates.hasnans or dates.tz is not None:
        raise ValueError("panel.dates must be timezone-naive dates without NaT")
    if not (np.diff(dates.asi8) > 0).all():
        pos = int(np.argmax(np.diff(dates.asi8) <= 0))
        raise ValueError(
            f"panel.dates must be strictly increasing; date {pos + 1} ({dates[pos + 1]}) "
            f"is not after date {pos} ({dates[pos]})"
        )
    ttm = _float_array(panel.ttm, "ttm")
    contracts = np.asarray(panel.contracts, dtype=object)
    for what, arr in (("ttm", ttm), ("contracts", contracts)):
        if arr.shape != (T, M):
            raise ValueError(f"panel.{what} has shape {arr.shape}, expected {(T, M)}")
    if panel.mask is None:
        mask = np.isfinite(F)
    else:
        mask = np.asarray(panel.mask)
        if mask.shape != (T, M) or mask.dtype != bool:
            raise ValueError(
                f"panel.mask must be a bool array of shape {(T, M)}, got {mask.dtype} {mask.shape}"
            )
    odd = [
        (t, m) for (t, m), c in np.ndenumerate(contracts) if not (c is None or isinstance(c, str))
    ]
    if odd:
        t, m = odd[0]
        raise ValueError(
            f"panel.contracts must hold str (or None); cell {(t, m)} holds "
            f"{contracts[t, m]!r} ({len(odd)} such cell(s))"
        )
    names = list(panel.tenor_names)
    if len(names) != M or not all(isinstance(n, str) for n in names):
        raise ValueError(f"panel.tenor_names must be {M} strings, got {names!r}")
    S = None
    if panel.S is not None:
        S = np.asarray(panel.S, dtype=float)
        if S.shape != (T,):
            raise ValueError(f"panel.S has shape {S.shape}, expected {(T,)}")
    if panel.dt is None:
        dt = _act365(dates)
    else:
        dt = _float_array(panel.dt, "dt")
        if dt.shape != (T - 1,):
            raise ValueError(f"panel.dt has shape {dt.shape}, expected {(T - 1,)}")
    return {
        "dates": dates,
        "F": F,
        "ttm": ttm,
        "mask": mask,
        "mask_is_none": panel.mask is None,
        "contracts": contracts,
        "names": names,
        "S": S,
        "dt": dt,
        "commodity": panel.commodity,
    }


def _panel_tables(a: dict[str, Any]) -> list[tuple[int, pa.Table]]:
    """One table per trade year of the panel's dates, in year order."""
    dates: pd.DatetimeIndex = a["dates"]
    M = a["F"].shape[1]
    dt_before = np.concatenate([np.full(1, np.nan, a["dt"].dtype), a["dt"]])
    out = []
    years = dates.year.to_numpy()
    for year in np.unique(years):
        rows = np.flatnonzero(years == year)
        sl = slice(int(rows[0]), int(rows[-1]) + 1)  # dates increase: one block per year
        n = sl.stop - sl.start
        cols = {
            "date": pa.array(np.repeat(dates.values[sl], M)),
            "tenor": pa.array(np.tile(np.arange(M, dtype=np.int32), n)),
            "price": pa.array(a["F"][sl].ravel()),
            "ttm": pa.array(a["ttm"][sl].ravel()),
            "mask": pa.array(a["mask"][sl].ravel()),
            "contract": pa.array(list(a["contracts"][sl].ravel()), type=pa.string()),
            "dt": pa.array(np.repeat(dt_before[sl], M)),
        }
        if a["S"] is not None:
            cols["spot"] = pa.array(np.repeat(a["S"][sl], M))
        meta = {
            "version": _PANEL_FORMAT_VERSION,
            "year": int(year),
            "T": n,
            "M": M,
            "tenor_names": [str(x) for x in a["names"]],
            "commodity": a["commodity"],
            "has_S": a["S"] is not None,
            "mask_is_none": a["mask_is_none"],
            "dates_name": a["dates"].name if isinstance(a["dates"].name, str) else None,
        }
        table = pa.table(cols).replace_schema_metadata(
            {_PANEL_KEY: json.dumps(meta, allow_nan=False)}
        )
        out.append((int(year), table))
    return out


_PANEL_SHARED = ("M", "tenor_names", "commodity", "has_S", "mask_is_none", "dates_name")


def _table_to_panel_rows(table: pa.Table, path: Path, year: int) -> dict[str, Any]:
    """One partition file's rows as arrays, with its metadata, checked."""
    raw = (table.schema.metadata or {}).get(_PANEL_KEY)
    if raw is None:
        raise ValueError(f"{path} is not an ssjax panel file (no {_PANEL_KEY.decode()} metadata)")
    meta = json.loads(raw)
    if meta.get("version") != _PANEL_FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported panel format version {meta.get('version')!r}")
    T, M = int(meta["T"]), int(meta["M"])
    if table.num_rows != T * M:
        raise ValueError(f"{path}: {table.num_rows} rows, expected T × M = {T} × {M}")
    tenor = table.column("tenor").to_numpy()
    if not np.array_equal(tenor, np.tile(np.arange(M), T)):
        raise ValueError(f"{path}: rows are not in date-major (date, tenor) order")
    dates = pd.DatetimeIndex(table.column("date").to_pandas().iloc[::M])
    if int(meta["year"]) != year or not (dates.year == year).all():
        raise ValueError(f"{path}: holds dates outside the partition's year {year}")
    contracts = np.empty(T * M, dtype=object)
    contracts[:] = table.column("contract").to_pylist()
    return {
        "meta": meta,
        "path": path,
        "dates": dates,
        "F": table.column("price").to_numpy().reshape(T, M),
        "ttm": table.column("ttm").to_numpy().reshape(T, M),
        "mask": table.column("mask").to_numpy(zero_copy_only=False).astype(bool).reshape(T, M),
        "contracts": contracts.reshape(T, M),
        "dt_before": table.column("dt").to_numpy()[::M],
        "S": table.column("spot").to_numpy()[::M] if meta["has_S"] else None,
    }


def _join_panel_rows(
    pieces: list[dict[str, Any]], name: str, lo: pd.Timestamp | None, hi: pd.Timestamp | None
) -> Panel | None:
    """The partitions' rows (in year order) from ``lo`` to ``hi`` as a Panel (None: no rows)."""
    if not pieces:
        return None
    first = pieces[0]["meta"]
    for p in pieces[1:]:
        diff = [k for k in _PANEL_SHARED if p["meta"].get(k) != first.get(k)]
        if diff:
            raise ValueError(
                f"panel {name!r}: {p['path']} disagrees with {pieces[0]['path']} on {diff}"
            )
    dates = pd.DatetimeIndex(np.concatenate([p["dates"].values for p in pieces]))
    keep = np.ones(len(dates), bool)
    if lo is not None:
        keep &= dates >= lo
    if hi is not None:
        keep &= dates <= hi
    if not keep.any():
        return None

    def cat(key: str) -> np.ndarray:
        return np.concatenate([p[key] for p in pieces])[keep]

    S = cat("S") if first["has_S"] else None
    return Panel(
        dates=dates[keep].rename(first["dates_name"]),
        F_mkt=cat("F"),
        ttm=cat("ttm"),
        S=S,
        contracts=cat("contracts"),
        tenor_names=list(first["tenor_names"]),
        dt=cat("dt_before")[1:],
        mask=None if first["mask_is_none"] else cat("mask"),
        commodity=first["commodity"],
    )


def _merge_panel_arrays(old: dict[str, Any], new: dict[str, Any], name: str) -> dict[str, Any]:
    """``old`` with ``new``'s dates added (replacing the dates both have)."""
    problems = []
    if old["names"] != new["names"]:
        problems.append(f"tenor_names {new['names']} differ from the stored {old['names']}")
    if old["commodity"] != new["commodity"]:
        problems.append(
            f"commodity {new['commodity']!r} differs from the stored {old['commodity']!r}"
        )
    if (old["S"] is None) != (new["S"] is None):
        which = ("stored", "new") if old["S"] is not None else ("new", "stored")
        problems.append(f"S: the {which[0]} panel has a spot series, the {which[1]} one has none")
    if problems:
        raise ValueError(f"cannot append to panel {name!r}: " + "; ".join(problems))
    kept = np.flatnonzero(~old["dates"].isin(new["dates"]))
    src = np.concatenate([np.zeros(kept.size, int), np.ones(len(new["dates"]), int)])
    idx = np.concatenate([kept, np.arange(len(new["dates"]))])
    stamps = np.concatenate([old["dates"].values[kept], new["dates"].values])
    order = np.argsort(stamps, kind="stable")
    src, idx = src[order], idx[order]
    dates = pd.DatetimeIndex(stamps[order]).rename(old["dates"].name)

    def take(key: str) -> np.ndarray:
        a, b = old[key], new[key]
        dtype = np.result_type(a.dtype, b.dtype)
        both = np.concatenate([a[kept].astype(dtype), b.astype(dtype)])
        return both[order]

    dt = _act365(dates)
    same = (src[1:] == src[:-1]) & (idx[1:] == idx[:-1] + 1)
    for s, d in ((0, old["dt"]), (1, new["dt"])):
        run = same & (src[1:] == s)
        dt[run] = d[idx[1:][run] - 1]
    return {
        "dates": dates,
        "F": take("F"),
        "ttm": take("ttm"),
        "mask": take("mask"),
        "mask_is_none": old["mask_is_none"] and new["mask_is_none"],
        "contracts": take("contracts"),
        "names": old["names"],
        "S": None if old["S"] is None else take("S"),
        "dt": dt,
        "commodity": old["commodity"],
    }


# ---- files --------------------------------------------------------------------------------------
def _read_table(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Read one Parquet file (no partition columns inferred from its path)."""
    return pq.read_table(str(path), columns=list(columns) if columns else None, partitioning=None)


def _write_file(table: pa.Table, path: Path) -> None:
    pq.write_table(table, str(path))
    with open(path, "rb+") as fh:  # flush to disk before it can be renamed into place
        os.fsync(fh.fileno())


def _makedirs(d: Path, created: list[Path]) -> None:
    """Create ``d`` and its missing parents, appending each one made to ``created``."""
    missing = []
    p = d
    while not p.exists():
        missing.append(p)
        p = p.parent
    for m in reversed(missing):
        m.mkdir()
        created.append(m)


def _backup(path: Path, bak: Path) -> None:
    """Keep the current file at ``bak`` (hard link where possible, else a copy)."""
    try:
        os.link(path, bak)
    except OSError:
        shutil.copy2(path, bak)


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass


def _remove_dirs(created: list[Path]) -> None:
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            pass


def _atomic_write(files: Sequence[tuple[Path, pa.Table]]) -> None:
    """Write all files or none of them.

    Phase 1 writes every table to ``<file>.tmp-<token>`` beside its target; a failure there
    deletes the temporary files (and the directories this call created) and re-raises. Phase 2
    keeps each existing target as ``<file>.bak-<token>`` and renames the temporary file over
    it with :func:`os.replace`; a failure there moves the backups back, removes targets that
    did not exist before, and re-raises. The backups are deleted once every rename succeeded.
    """
    token = uuid.uuid4().hex
    created: list[Path] = []
    temps: list[Path] = []
    try:
        for path, table in files:
            _makedirs(path.parent, created)
            tmp = path.with_name(f"{path.name}.tmp-{token}")
            temps.append(tmp)
            _write_file(table, tmp)
    except BaseException:
        for tmp in temps:
            _unlink(tmp)
        _remove_dirs(created)
        raise

    backups: dict[Path, Path] = {}
    replaced: list[Path] = []
    try:
        for (path, _), tmp in zip(files, temps, strict=True):
            if path.exists():
                bak = path.with_name(f"{path.name}.bak-{token}")
                _backup(path, bak)
                backups[path] = bak
            os.replace(tmp, path)
            replaced.append(path)
    except BaseException as err:
        failed: list[str] = []
        for path in reversed(replaced):
            try:
                if path in backups:
                    os.replace(backups.pop(path), path)
                else:
                    path.unlink()
            except OSError as e:  # pragma: no cover - the disk failed under us
                failed.append(f"{path}: {e}")
        for bak in backups.values():  # targets never replaced: the backup is a spare copy
            _unlink(bak)
        for tmp in temps:
            _unlink(tmp)
        _remove_dirs(created)
        if failed:  # pragma: no cover
            raise RuntimeError(
                "write failed and the store could not be fully restored; "
                f"backups (*.bak-{token}) kept: {failed}"
            ) from err
        raise
    for bak in backups.values():
        _unlink(bak)


def _year_files(d: Path) -> list[tuple[int, Path]]:
    """(year, file) of every ``year=<Y>/data.parquet`` under ``d``, by year (no file opened)."""
    if not d.is_dir():
        return []
    out = []
    for ydir in d.iterdir():
        name = ydir.name
        if not name.startswith("year=") or not name[5:].lstrip("-").isdigit():
            continue
        f = ydir / _FILE
        if f.is_file():
            out.append((int(name[5:]), f))
    return sorted(out)


def _atomic_replace_dir(target: Path, files: Sequence[tuple[Path, pa.Table]]) -> None:
    """Make ``target`` a directory holding exactly ``files`` (relative paths), or change nothing.

    The files are written into ``<target>.tmp-<token>`` beside it; a failure there deletes
    that directory (and the parents this call created) and re-raises. Then an existing
    ``target`` is renamed to ``<target>.bak-<token>`` and the temporary directory renamed to
    ``target`` (:func:`os.replace`); if that fails, the old directory is renamed back. The old
    directory is deleted once the new one is in place.
    """
    token = uuid.uuid4().hex
    created: list[Path] = []
    tmp = target.with_name(f"{target.name}.tmp-{token}")
    bak = target.with_name(f"{target.name}.bak-{token}")
    try:
        _makedirs(target.parent, created)
        tmp.mkdir()
        for rel, table in files:
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_file(table, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_dirs(created)
        raise
    moved = False
    try:
        if target.exists():
            os.replace(target, bak)
            moved = True
        os.replace(tmp, target)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved:
            try:
                os.replace(bak, target)
            except OSError as e:  # pragma: no cover - the disk failed under us
                raise RuntimeError(
                    f"write failed and {target} could not be restored; the old version is "
                    f"kept at {bak}: {e}"
                ) from err
        _remove_dirs(created)
        raise
    if moved:
        shutil.rmtree(bak, ignore_errors=True)
