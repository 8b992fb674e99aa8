"""A Parquet store for settlement tables and tenor panels (pyarrow).

Layout under the store's root directory::

    manifest.json                                         the live file of every partition
    .lock                                                 the writers' lock
    settlements/commodity=CL/year=2024/data-v7-<id>.parquet   commodity × trade year
    panels/<name>/year=2024/data-v7-<id>.parquet              panel × year of its dates

Settlement files hold the :mod:`ssjax.data.settlements` schema (required columns plus ``volume``
and ``open_interest``; other columns are not stored), each file sorted canonically (commodity,
trade date, expiration, contract). Writes are idempotent appends keyed on (trade_date,
commodity, contract): a stored row with the key of a new row is replaced, other rows are kept.
Panel files hold one row per date × tenor; :meth:`ParquetStore.write_panel` replaces a panel,
:meth:`ParquetStore.append_panel` adds dates to it (a stored date it also has is replaced).
Reads of a date range (``start``/``end``) open only the year partitions that can hold it.

What the store guarantees:

* **One writer at a time.** Every write holds an exclusive lock on ``<root>/.lock``
  (``fcntl.flock``; where there is no ``fcntl``, the exclusive creation of
  ``<root>/.lock.excl``) for its whole read-merge-write, so writers in several threads or
  processes queue and none loses another's rows. A writer that waits longer than the store's
  ``timeout`` raises :class:`TimeoutError` naming the lock file. The kernel drops a ``flock``
  when its process dies; the fallback's file stays behind a killed writer and must be deleted.
* **Atomic, crash-consistent writes.** A write never changes a live file: it writes the
  partitions it changes to new files (new names, flushed to disk), then commits by replacing
  ``manifest.json`` (:func:`os.replace`, one atomic rename) with a manifest that lists the
  live file (and SHA-256) of every partition under a version number one higher. A write that
  fails or is killed before that rename leaves the previous version in force; after it, the
  new one. A partition whose bytes would not change keeps its file, and a write that changes
  nothing commits nothing (idempotent writes leave the store byte for byte as it was).
* **Readers never see a partial write.** A read takes the manifest once and opens only the
  files it lists, so it sees one version whole; it needs no lock. (If a writer deletes a file
  the read was about to open, the read starts again from the newer manifest.)
* **Leftovers are removed.** Files under ``settlements/`` and ``panels/`` that the manifest
  does not list (superseded files, files of a write killed before its commit, temporary
  manifests) are deleted by every write after its commit, under the lock.
  :meth:`ParquetStore.verify` reports them with the listed files that are missing,
  unreadable, changed since they were written (checksum), of the wrong schema or not in the
  canonical order; ``verify(repair=True)`` deletes the leftovers.

Stores written before the manifest (each partition a ``year=<Y>/data.parquet``) are read by
listing their directories, as they were; the first write migrates such a store under the lock
(its files are listed in the first manifest as they are, and its ``*.tmp-*``/``*.bak-*``
leftovers are deleted).

Example::

    store = ParquetStore("data/store")
    store.write_settlements(read_cme_settlements("nymex.settle.20240102.s.csv"))
    cl = store.read_settlements("CL", start="2023-01-01", end="2023-12-31")
    store.write_panel("cl_nearby", nearby_panel(cl, 6))
    panel = store.read_panel("cl_nearby", start="2023-07-01")
    assert store.verify().ok
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["ParquetStore", "SETTLEMENT_COLUMNS", "SETTLEMENT_SCHEMA", "StoreReport"]

SETTLEMENT_COLUMNS = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
_DATE_COLUMNS = ("trade_date", "expiration_date")
_STR_COLUMNS = ("commodity", "contract")
_FLOAT_COLUMNS = ("settlement_price", *OPTIONAL_COLUMNS)
_ORDER = ["commodity", "trade_date", "expiration_date", "contract"]
#: The Arrow schema of a settlement partition.
SETTLEMENT_SCHEMA = pa.schema(
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
_LEGACY_FILE = "data.parquet"  # the one file of a partition before the manifest
_FORMAT_KEY = b"ssjax.data.store"
_PANEL_KEY = b"ssjax.panel"
_FORMAT_VERSION = 1
_PANEL_FORMAT_VERSION = 2  # version 1: one file per panel (not read)
_SCRATCH = re.compile(r"\.(?:tmp|bak)-[0-9a-f]{32}$")  # pre-manifest in-flight write directories
_MANIFEST = "manifest.json"
_MANIFEST_FORMAT = {"format": "ssjax.data.store", "format_version": 1}
_LOCK = ".lock"
_LOCK_EXCL = ".lock.excl"  # where there is no fcntl
_SECTIONS = ("settlements", "panels")
_READ_TRIES = 20
#: tests only: the environment variable naming the phase of a write at which the writing
#: process kills itself ("file": the first new file written; "manifest": every new file and
#: the new manifest written, before the commit; "commit": just after it; "cleanup": one
#: superseded file deleted)
_CRASH_ENV = "SSJAX_STORE_CRASH_AT"
_T = TypeVar("_T")


@dataclass(frozen=True)
class StoreReport:
    """What :meth:`ParquetStore.verify` found (paths relative to the store's root).

    Attributes:
        version: the manifest's version (0: the store has no manifest yet).
        partitions: the number of partition files the manifest lists (all were checked).
        missing: listed files that do not exist.
        unreadable: ``"<file>: <reason>"`` for listed files that cannot be read as Parquet or
            whose bytes differ from the checksum in the manifest.
        bad_schema: ``"<file>: <reason>"`` for listed files with the wrong columns, types or
            metadata, or rows of another commodity or year than their partition's.
        unordered: ``"<file>: <reason>"`` for listed files whose rows are not in the
            canonical order (or repeat a key).
        stray: files under ``settlements/`` and ``panels/`` (and temporary manifests) that the
            manifest does not list: what superseded or killed writes left.
        removed: the stray files deleted (``repair=True``).
    """

    version: int
    partitions: int = 0
    missing: tuple[str, ...] = ()
    unreadable: tuple[str, ...] = ()
    bad_schema: tuple[str, ...] = ()
    unordered: tuple[str, ...] = ()
    stray: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """No problem found, or only stray files that were removed."""
        bad = self.missing or self.unreadable or self.bad_schema or self.unordered
        return not bad and set(self.stray) <= set(self.removed)


class _OrderError(ValueError):
    """A partition's rows are not in the canonical order."""


class ParquetStore:
    """Settlements and panels in Parquet files under one root directory.

    Args:
        root: the store's directory; created (with its parents) on the first write.
        timeout: seconds a write waits for another process's write to finish before it
            raises :class:`TimeoutError`.
    """

    def __init__(self, root: str | os.PathLike[str], *, timeout: float = 60.0) -> None:
        self.root = Path(root)
        self.timeout = float(timeout)

    def __repr__(self) -> str:
        return f"ParquetStore({str(self.root)!r})"

    # ---- settlements ------------------------------------------------------------------------
    def write_settlements(self, df: pd.DataFrame, *, on_bad_price: str = "mask") -> list[Path]:
        """Append a settlement table; rows with an already stored key replace the stored ones.

        The table is validated first (:func:`ssjax.data.settlements.validate_settlements` with
        ``sort=True``): invalid input raises and the store is not touched. Then, holding the
        store's lock, rows are merged into the partitions ``settlements/commodity=<C>/year=<trade
        year>/`` they belong to: a stored row with the same (trade_date, commodity, contract) is
        replaced by the new one (so writing the same day twice changes nothing), other stored
        rows are kept, and each partition is rewritten sorted by (commodity, trade date,
        expiration, contract). Columns other than the schema's are not stored; a missing
        ``volume``/``open_interest`` column is stored as NaN.

        The write is atomic (all partitions change together, at the manifest's commit): if
        anything fails, or the process dies, before the commit, the store is left as it was.

        Args:
            df: a table in the :mod:`ssjax.data.settlements` schema.
            on_bad_price: ``"mask"`` (non-positive/non-finite prices become NaN with a
                warning) or ``"raise"``; passed to the validator.

        Returns:
            The live file of every partition the table touched, in (commodity, year) order.

        Raises:
            SettlementError: the table is invalid, or a contract's expiration date differs
                from the one already stored for it.
            ValueError: a commodity name cannot be used as a directory name.
            TimeoutError: another writer held the lock for longer than ``timeout``.
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
        with self._locked():
            manifest = self._manifest()
            tables: dict[str, dict[int, pa.Table]] = {}
            for commodity, sub in new.groupby("commodity", sort=True):
                name = str(commodity)
                sub_years = years.loc[sub.index]
                parts = dict(self._parts(manifest, "settlements", name))
                self._check_expirations(name, sub, parts, set(sub_years.unique().tolist()))
                for year, part in sub.groupby(sub_years, sort=True):
                    merged = self._merge(parts.get(int(year)), part, name, int(year))
                    tables.setdefault(name, {})[int(year)] = _settlements_to_table(merged)
            return self._commit(manifest, "settlements", tables, replace=False)

    def _merge(
        self, path: Path | None, part: pd.DataFrame, commodity: str, year: int
    ) -> pd.DataFrame:
        """The partition file ``path`` with ``part``'s rows replacing those with their keys."""
        if path is None:
            return part.reset_index(drop=True)
        old = _table_to_settlements(_read_table(path))
        key = ["trade_date", "contract"]  # one commodity per partition
        replaced = pd.MultiIndex.from_frame(old[key]).isin(pd.MultiIndex.from_frame(part[key]))
        merged = pd.concat([old[~replaced], part], ignore_index=True)
        merged = validate_settlements(
            merged,
            on_bad_price="raise",
            sort=True,
            source=f"settlements/commodity={commodity}/year={year} merged with the new rows",
        )
        return merged.reset_index(drop=True)

    def _check_expirations(
        self, commodity: str, new: pd.DataFrame, parts: dict[int, Path], touched: set[int]
    ) -> None:
        """Raise if a new contract's expiration differs from one stored for it elsewhere.

        The partitions being rewritten are checked when they are merged; here the other
        partitions of the commodity that could hold the new contracts (trade years up to the
        latest new expiration) are read (two columns only).
        """
        exp = new.groupby("contract")["expiration_date"].first()
        last_year = int(exp.max().year)
        conflicts: list[str] = []
        for year, path in parts.items():
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

    def commodities(self) -> list[str]:
        """The commodities with stored settlements, sorted (no data file opened)."""
        return sorted(c for c, parts in self._manifest()["settlements"].items() if parts)

    def date_range(self, commodity: str) -> tuple[pd.Timestamp, pd.Timestamp]:
        """The first and last stored trade date of a commodity.

        Reads only the trade-date column of the first and last year's partitions.

        Raises:
            ValueError: nothing is stored for ``commodity``.
        """

        def read(manifest: dict[str, Any]) -> tuple[pd.Timestamp, pd.Timestamp]:
            parts = self._parts(manifest, "settlements", commodity)
            if not parts:
                stored = sorted(c for c, p in manifest["settlements"].items() if p)
                raise ValueError(
                    f"no settlements stored for commodity {commodity!r}; "
                    f"stored commodities: {stored}"
                )
            first = _table_to_frame(_read_table(parts[0][1], columns=["trade_date"]))
            last = (
                first
                if len(parts) == 1
                else _table_to_frame(_read_table(parts[-1][1], columns=["trade_date"]))
            )
            return first["trade_date"].min(), last["trade_date"].max()

        return self._read(read)

    def read_settlements(
        self,
        commodity: str | Iterable[str] | None = None,
        start: Any = None,
        end: Any = None,
        contracts: str | Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """Read stored settlements, opening only the partitions that can hold matching rows.

        The read sees one committed version of the store (never part of a write).

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
        if contracts is not None:
            contracts = [contracts] if isinstance(contracts, str) else list(contracts)

        def read(manifest: dict[str, Any]) -> list[pd.DataFrame]:
            if commodity is None:
                names = sorted(manifest["settlements"])
            elif isinstance(commodity, str):
                names = [commodity]
            else:
                names = sorted(set(commodity))
            frames = []
            for name in names:
                for year, path in self._parts(manifest, "settlements", name):
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
            return frames

        frames = self._read(read)
        if not frames:
            return _empty_settlements()
        out = pd.concat(frames, ignore_index=True)
        return _canonical(sort_settlements(out)).reset_index(drop=True)

    # ---- panels -----------------------------------------------------------------------------
    @staticmethod
    def _check_panel_name(name: str) -> None:
        if not isinstance(name, str) or not _safe_name(name) or _SCRATCH.search(name):
            raise ValueError(
                f"invalid panel name {name!r}: a panel name must be a non-empty name without "
                "path separators, NUL characters or '=', not '.' or '..', and not ending in "
                "'.tmp-<hex>' or '.bak-<hex>'"
            )

    def panels(self) -> list[str]:
        """The names of the stored panels, sorted (no data file opened)."""
        return sorted(n for n, parts in self._manifest()["panels"].items() if parts)

    def write_panel(self, name: str, panel: Panel) -> list[Path]:
        """Store a panel under ``panels/<name>/year=<Y>/`` (replacing one of that name).

        Each file holds one trade year's rows, one row per date × tenor (``date``, ``tenor``
        index, ``price``, ``ttm``, ``mask``, ``contract``, ``dt`` = years since the panel's
        previous date, NaN on its first date, and ``spot`` when the panel has ``S``) in
        date-major order; the tenor names, commodity, ``M``, the file's ``T`` and whether
        ``mask``/``S`` were ``None`` are kept as JSON in the Parquet schema metadata.

        The write is atomic and idempotent: every year of the old panel is replaced by the
        new one's at the manifest's commit (years the new panel lacks go), so a failed or
        killed write leaves the store as it was, and writing the same panel again changes no
        file.

        Returns:
            The panel's live files, by year.

        Raises:
            ValueError: a bad name; arrays whose shapes do not agree; dates that are not
                strictly increasing; a panel without dates or tenors.
            TimeoutError: another writer held the lock for longer than ``timeout``.
        """
        self._check_panel_name(name)
        tables = dict(_panel_tables(_panel_arrays(panel)))
        with self._locked():
            return self._commit(self._manifest(), "panels", {name: tables}, replace=True)

    def append_panel(self, name: str, panel: Panel) -> list[Path]:
        """Add a panel's dates to a stored panel; stored dates that it also has are replaced.

        Appending the same dates again changes nothing (no duplicate dates). The two panels
        must have the same tenor names and commodity, and both or neither a spot series
        ``S``. The merged panel's ``mask`` is ``None`` only when both masks are; its ``dt``
        between two dates that were consecutive in the same panel is that panel's ``dt``,
        elsewhere the ACT/365 day difference. The stored panel is read and the merged one
        written under the store's lock, atomically (as :meth:`write_panel`); with nothing
        stored under ``name``, this is :meth:`write_panel`.

        Returns:
            The panel's live files, by year.

        Raises:
            ValueError: as :meth:`write_panel`, or a panel that does not match the stored one.
            TimeoutError: another writer held the lock for longer than ``timeout``.
        """
        self._check_panel_name(name)
        new = _panel_arrays(panel)
        with self._locked():
            manifest = self._manifest()
            if self._parts(manifest, "panels", name):
                old = _panel_arrays(self._read_panel(manifest, name, None, None))
                new = _merge_panel_arrays(old, new, name)
            tables = dict(_panel_tables(new))
            return self._commit(manifest, "panels", {name: tables}, replace=True)

    def read_panel(self, name: str, start: Any = None, end: Any = None) -> Panel:
        """Read a panel stored with :meth:`write_panel`, or the dates from ``start`` to ``end``.

        Only the year partitions that can hold dates in ``[start, end]`` are opened, all of
        one committed version. A range read is the stored panel's rows for those dates; its
        ``dt`` is the stored ``dt`` between them.

        Args:
            name: the panel's name.
            start, end: first and last date to return (inclusive; anything
                :class:`pandas.Timestamp` takes; times are dropped); ``None`` = open-ended.

        Raises:
            ValueError: a bad name or date, ``start`` after ``end``, no stored date in the
                range, or files that are not an ssjax panel.
            FileNotFoundError: no panel of that name.
        """
        self._check_panel_name(name)
        lo = _as_date(start, "start")
        hi = _as_date(end, "end")
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"start {lo.date()} is after end {hi.date()}")
        return self._read(lambda manifest: self._read_panel(manifest, name, lo, hi))

    def _read_panel(
        self, manifest: dict[str, Any], name: str, lo: pd.Timestamp | None, hi: pd.Timestamp | None
    ) -> Panel:
        parts = self._parts(manifest, "panels", name)
        if not parts:
            stored = sorted(n for n, p in manifest["panels"].items() if p)
            raise FileNotFoundError(f"no panel {name!r} in {self.root} (stored panels: {stored})")
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

    # ---- checks -----------------------------------------------------------------------------
    def verify(self, repair: bool = False) -> StoreReport:
        """Check every file the manifest lists, and find the files it does not list.

        Holding the lock (so that no write is half done while it looks), every listed
        partition file is read whole: it must exist, have the SHA-256 the manifest recorded
        (files migrated from a store without a manifest have none), read as Parquet, have the
        settlement or panel schema with rows of its partition's commodity and year, and be
        in the canonical order (settlements: commodity, trade date, expiration, contract,
        without repeated keys; panels: increasing dates, tenors in order). Files under
        ``settlements/`` and ``panels/`` that the manifest does not list, and temporary
        manifests, are stray.

        Args:
            repair: delete the stray files (and directories left empty). Other problems are
                only reported: they need the data written again.

        Returns:
            The report; ``report.ok`` is true when nothing (but removed stray files) was found.

        Raises:
            TimeoutError: a writer held the lock for longer than ``timeout``.
        """
        if not self.root.is_dir():
            return StoreReport(version=0)
        with self._locked():
            manifest = self._manifest()
            found: dict[str, list[str]] = {"missing": [], "unreadable": [], "bad_schema": []}
            found["unordered"] = []
            count = 0
            for section in _SECTIONS:
                for key, parts in sorted(manifest[section].items()):
                    for year, entry in parts.items():
                        count += 1
                        problem = _check_partition(self.root, section, key, int(year), entry)
                        if problem is not None:
                            found[problem[0]].append(problem[1])
            stray = self._unreferenced(manifest)
            removed = self._remove(stray) if repair else []
        rel = tuple(p.relative_to(self.root).as_posix() for p in stray)
        gone = tuple(p.relative_to(self.root).as_posix() for p in removed)
        return StoreReport(
            version=int(manifest["version"]),
            partitions=count,
            **{k: tuple(v) for k, v in found.items()},
            stray=rel,
            removed=gone,
        )

    # ---- manifest, lock and commit ----------------------------------------------------------
    def _parts(self, manifest: dict[str, Any], section: str, key: str) -> list[tuple[int, Path]]:
        """(year, live file) of every partition of a commodity or panel, by year."""
        parts = manifest[section].get(key, {}) if isinstance(key, str) else {}
        return sorted((int(y), self.root / e["file"]) for y, e in parts.items())

    def _manifest(self) -> dict[str, Any]:
        """The committed manifest; a store without one is listed from its directories."""
        path = self.root / _MANIFEST
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return self._legacy_manifest()
        try:
            manifest = json.loads(raw)
        except ValueError as e:
            raise ValueError(f"{path} is not a store manifest: {e}") from None
        if not isinstance(manifest, dict) or any(
            manifest.get(k) != v for k, v in _MANIFEST_FORMAT.items()
        ):
            raise ValueError(f"{path} is not a store manifest of format {_MANIFEST_FORMAT}")
        return manifest

    def _legacy_manifest(self) -> dict[str, Any]:
        """Version 0: the ``year=<Y>/data.parquet`` files of a store written without one."""
        manifest: dict[str, Any] = {**_MANIFEST_FORMAT, "version": 0, "settlements": {}}
        manifest["panels"] = {}
        for s in _SECTIONS:  # a first write killed before its commit leaves version-1 files
            for p in self.root.glob(f"{s}/**/data-v*.parquet"):
                if not p.name.startswith("data-v1-"):
                    raise ValueError(
                        f"{self.root / _MANIFEST} is missing but the store holds files that "
                        f"a manifest listed (e.g. {p}); restore it (nothing was changed)"
                    )
        dirs = {
            "settlements": [
                (d.name[len("commodity=") :], d)
                for d in _subdirs(self.root / "settlements")
                if d.name.startswith("commodity=")
            ],
            "panels": [
                (d.name, d) for d in _subdirs(self.root / "panels") if not _SCRATCH.search(d.name)
            ],
        }
        for section, keyed in dirs.items():
            for key, d in keyed:
                parts = {
                    str(y): {"file": f.relative_to(self.root).as_posix(), "sha256": None}
                    for y, f in _legacy_year_files(d)
                }
                if parts and _safe_name(key):
                    manifest[section][key] = parts
        return manifest

    def _read(self, read: Callable[[dict[str, Any]], _T]) -> _T:
        """``read(manifest)``, again from a newer manifest if a writer deleted its files."""
        manifest = self._manifest()
        for _ in range(_READ_TRIES):
            try:
                return read(manifest)
            except FileNotFoundError:
                newer = self._manifest()
                if newer["version"] == manifest["version"]:
                    raise
                manifest = newer
        return read(manifest)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the store's write lock (waiting up to ``timeout`` seconds for it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # not POSIX
            path = self.root / _LOCK_EXCL

            def take() -> bool:
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    return False
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                return True

            hint = "; if no writer is running, a killed one left it behind: delete it"
            self._wait(take, path, hint)
            try:
                yield
            finally:
                _unlink(path)
            return
        path = self.root / _LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:

            def take() -> bool:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                return True

            self._wait(take, path, "")
            yield
        finally:
            os.close(fd)  # releases the lock

    def _wait(self, take: Callable[[], bool], path: Path, hint: str) -> None:
        deadline = time.monotonic() + self.timeout
        delay = 0.001
        while not take():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{self!r}: gave up after {self.timeout:g} s waiting for the write lock "
                    f"{path} (another writer holds it{hint})"
                )
            time.sleep(min(delay, left))
            delay = min(2 * delay, 0.05)

    def _commit(
        self,
        manifest: dict[str, Any],
        section: str,
        tables: dict[str, dict[int, pa.Table]],
        *,
        replace: bool,
    ) -> list[Path]:
        """Write the changed partitions to new files, then commit the new manifest.

        ``tables`` holds, per commodity or panel, the new table of each year written; with
        ``replace`` the years it lacks are dropped, else kept. A table whose Parquet bytes
        are those of the live file keeps that file. Called with the lock held; a failure
        before the commit deletes what this call wrote. Files the committed manifest does
        not list are deleted afterwards. Returns the live files of the ``tables``.
        """
        new = copy.deepcopy(manifest)
        version = int(manifest["version"]) + 1
        new["version"] = version
        written: list[Path] = []
        created: list[Path] = []
        live: list[Path] = []
        tmp = self.root / f"{_MANIFEST}.tmp-{uuid.uuid4().hex}"
        try:
            for key, by_year in tables.items():
                before = manifest[section].get(key, {})
                parts = {} if replace else dict(before)
                for year, table in sorted(by_year.items()):
                    data = _parquet_bytes(table)
                    digest = hashlib.sha256(data).hexdigest()
                    entry = before.get(str(year))
                    if entry is None or entry.get("sha256") != digest:
                        d = f"commodity={key}" if section == "settlements" else key
                        rel = f"{section}/{d}/year={year}/data-v{version}-{uuid.uuid4().hex[:8]}"
                        entry = {"file": f"{rel}.parquet", "sha256": digest}
                        path = self.root / entry["file"]
                        _makedirs(path.parent, created)
                        written.append(path)
                        _write_new(path, data)
                        _crash_point("file")
                    parts[str(year)] = entry
                    live.append(self.root / entry["file"])
                new[section][key] = dict(sorted(parts.items(), key=lambda kv: int(kv[0])))
            changed = any(new[s] != manifest[s] for s in _SECTIONS)
            if changed:
                for d in {p.parent for p in written}:
                    _fsync_dir(d)
                _write_new(tmp, json.dumps(new, indent=1).encode())
                _crash_point("manifest")
                os.replace(tmp, self.root / _MANIFEST)  # the commit
        except BaseException:
            for p in [*written, tmp]:
                _unlink(p)
            _remove_dirs(created)
            raise
        if changed:
            _fsync_dir(self.root)
            _crash_point("commit")
        self._remove(self._unreferenced(new if changed else manifest))
        return live

    def _unreferenced(self, manifest: dict[str, Any]) -> list[Path]:
        """Files under the sections that ``manifest`` does not list, and temporary manifests."""
        listed = {
            self.root / e["file"]
            for s in _SECTIONS
            for p in manifest[s].values()
            for e in p.values()
        }
        out = [p for p in self.root.glob(f"{_MANIFEST}.tmp-*") if p.is_file()]
        for section in _SECTIONS:
            base = self.root / section
            if base.is_dir():
                out += [p for p in base.rglob("*") if not p.is_dir() and p not in listed]
        return sorted(out)

    def _remove(self, paths: list[Path]) -> list[Path]:
        """Delete files (and the directories under the sections left empty); the deleted."""
        removed = []
        for p in paths:
            try:
                p.unlink()
            except FileNotFoundError:
                continue
            except OSError:  # pragma: no cover - e.g. open elsewhere on Windows: next time
                continue
            removed.append(p)
            _crash_point("cleanup")
        bases = {self.root, *(self.root / s for s in _SECTIONS)}
        for d in sorted({p.parent for p in removed}, key=lambda d: -len(d.parts)):
            while d not in bases:  # deepest first: a year's directory, then its panel's
                try:
                    d.rmdir()
                except OSError:  # not empty
                    break
                d = d.parent
        return removed


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
    for field in SETTLEMENT_SCHEMA:
        col = df[field.name]
        if field.name in _DATE_COLUMNS:
            values = col.to_numpy().astype("datetime64[D]")
        elif field.name in _STR_COLUMNS:
            values = col.to_numpy(dtype=object)
        else:
            values = col.to_numpy(dtype=float)
        arrays.append(pa.array(values, type=field.type))
    meta = {_FORMAT_KEY: json.dumps({"version": _FORMAT_VERSION, "kind": "settlements"})}
    return pa.Table.from_arrays(arrays, schema=SETTLEMENT_SCHEMA.with_metadata(meta))


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
        raise _OrderError(f"{path}: rows are not in date-major (date, tenor) order")
    dates = pd.DatetimeIndex(table.column("date").to_pandas().iloc[::M])
    if not (np.diff(dates.asi8) > 0).all():
        raise _OrderError(f"{path}: dates are not strictly increasing")
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


def _parquet_bytes(table: pa.Table) -> bytes:
    """The Parquet file of ``table`` (the same table gives the same bytes)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (never over an existing file) holding ``data``, flushed to disk."""
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(d: Path) -> None:
    """Make the directory's entries (new files, a rename) durable, where the OS allows."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _crash_point(phase: str) -> None:
    """Tests only: die here, like a killed process, if ``$SSJAX_STORE_CRASH_AT`` names ``phase``."""
    if os.environ.get(_CRASH_ENV) == phase:
        if hasattr(signal, "SIGKILL"):
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(137)  # pragma: no cover


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


def _subdirs(d: Path) -> list[Path]:
    return [p for p in d.iterdir() if p.is_dir()] if d.is_dir() else []


def _legacy_year_files(d: Path) -> list[tuple[int, Path]]:
    """(year, file) of every ``year=<Y>/data.parquet`` under ``d``, by year (no file opened)."""
    out = []
    for ydir in _subdirs(d):
        name = ydir.name
        if not name.startswith("year=") or not name[5:].lstrip("-").isdigit():
            continue
        f = ydir / _LEGACY_FILE
        if f.is_file():
            out.append((int(name[5:]), f))
    return sorted(out)


def _check_partition(
    root: Path, section: str, key: str, year: int, entry: dict[str, Any]
) -> tuple[str, str] | None:
    """``(kind, message)`` of a listed partition file's problem, or None (see ``verify``)."""
    rel = entry["file"]
    path = root / rel
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "missing", rel
    except OSError as e:
        return "unreadable", f"{rel}: {e}"
    if entry.get("sha256") not in (None, hashlib.sha256(data).hexdigest()):
        return "unreadable", f"{rel}: its bytes differ from the manifest's checksum"
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as e:
        return "unreadable", f"{rel}: {e}"
    try:
        if section == "settlements":
            _check_settlement_table(table, key, year)
        else:
            _table_to_panel_rows(table, path, year)
    except _OrderError as e:
        return "unordered", f"{rel}: {e}"
    except (pa.ArrowException, KeyError, ValueError) as e:
        return "bad_schema", f"{rel}: {e}"
    return None


def _check_settlement_table(table: pa.Table, commodity: str, year: int) -> None:
    """Raise if a settlement partition file has the wrong schema, rows or order."""
    if not table.schema.remove_metadata().equals(SETTLEMENT_SCHEMA):
        raise ValueError(f"schema {table.schema.remove_metadata()} is not the settlement schema")
    df = _table_to_settlements(table)
    if not ((df["commodity"] == commodity) & (df["trade_date"].dt.year == year)).all():
        raise ValueError(f"holds rows of another commodity than {commodity} or year than {year}")
    if df.duplicated(["trade_date", "contract"]).any():
        raise _OrderError("repeats a (trade_date, contract) key")
    if not df.sort_values(_ORDER, kind="stable").index.equals(df.index):
        raise _OrderError("rows are not sorted by (commodity, trade date, expiration, contract)")
