"""ParquetStore against Delta Lake, DuckDB and plain ``pyarrow.dataset``: speed, size, guarantees.

What is compared (issue 23, item 1, last part): could an existing table format give the
settlement store's guarantees (idempotent upsert keyed on (trade_date, commodity, contract),
schema validation, a version, ``verify``, one writer at a time, crash consistency) with less
code than :class:`ssjax.data.store.ParquetStore`? Backends, each a small adapter below with
the same four operations (``write`` a table into an empty store, ``upsert`` rows, ``read``
everything / one commodity back to pandas in the canonical order, ``verify``):

* ``parquetstore``: ``ssjax.data.store.ParquetStore`` (the adapter only forwards).
* ``delta``: Delta Lake via ``deltalake`` (``write_deltalake``, ``partition_by`` commodity
  and year); an upsert reads the touched commodity-year partitions, replaces the rows with the
  new rows' keys (pandas) and writes them back with ``mode="overwrite"`` and a ``predicate``
  naming those partitions (Delta's replaceWhere): the store's own read-merge-write.
* ``delta-merge``: the same table, upserts with Delta's row-level ``MERGE``
  (``when_matched_update_all().when_not_matched_insert_all()``).
* ``duckdb``: one ``.duckdb`` file, a table with a primary key on the settlement key; an
  upsert is ``DELETE`` of the new keys + ``INSERT`` in one transaction.
* ``pyarrow``: plain ``pyarrow.dataset.write_dataset`` (hive ``commodity=/year=`` directories,
  ``existing_data_behavior="delete_matching"``), read-merge-write, no transaction, no lock.

Every adapter validates with :func:`ssjax.data.settlements.validate_settlements` first (shared
code, not counted) and stores the same seven typed columns.

Measured, on the bundled copper settlements (``load_copper_schwartz97().settlements``, one
commodity, ~29k rows) and a synthetic table (20 commodities × the copper trade dates, 1996 to
2010, × the 12 nearest monthly contracts, ~880k rows, prices from copper's nearby price moved
by a per-commodity level, beta and noise):

* **speed and size**: write of the full table into an empty store; upsert of one
  commodity-year partition (every row's price changed, 5 new rows); full read; read of one
  commodity (best of ``--repeats``); files and bytes on disk after the upsert.
* **concurrent writers** (real processes): two writers start together and each upserts 10
  new rows, one write each, into the same commodity-year partition of the copper store. A write
  that raises is retried (up to 200 times, after 5-50 ms); the table shows the writes that
  raised at least once (conflicts), the writes that never succeeded, and the lost writes:
  rows whose write returned but that are not in the table afterwards.
* **killed writers** (real processes, SIGKILL): a writer process upserts a large table (every
  row of ``--kill-commodities`` synthetic commodities with a new price; the first, unkilled
  run times it) and is killed after a random delay in [0, that time]; then the store is read
  and compared with the state before and the state the write would have made. Outcomes:
  ``old``, ``new``, ``mixed`` (readable, neither), ``unreadable`` (the read raised); also
  whether ``verify`` was clean and whether a further upsert worked.

Lines of code: the non-blank, non-comment lines (docstrings excluded) of each adapter class
here, and of ``ssjax/data/store.py`` (settlements and panels) for the store itself.

Usage::

    python experiments/store_alternatives.py            # the full run (a few minutes)
    python experiments/store_alternatives.py --quick    # smoke: copper only, few trials
    python experiments/store_alternatives.py --backends parquetstore pyarrow --out /tmp/x
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.metadata
import inspect
import io
import json
import multiprocessing
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import textwrap
import time
import tokenize
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ssjax.data.store import SETTLEMENT_COLUMNS, SETTLEMENT_SCHEMA

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "store"

COLUMNS = list(SETTLEMENT_COLUMNS)
SCHEMA = SETTLEMENT_SCHEMA
ORDER = ["commodity", "trade_date", "expiration_date", "contract"]
KEY = ["trade_date", "commodity", "contract"]
MODULES = {  # backend: the module it needs (beyond pandas/pyarrow)
    "parquetstore": "ssjax.data.store",
    "delta": "deltalake",
    "delta-merge": "deltalake",
    "duckdb": "duckdb",
    "pyarrow": "pyarrow.dataset",
}
DISTRIBUTIONS = {"delta": "deltalake", "delta-merge": "deltalake", "duckdb": "duckdb"}


# ---- shared helpers (used by every alternative; not counted) -------------------------------
@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Without the validator's data warnings (the copper file has trades on 2007-01-02, a
    COMEX holiday): they say nothing about storage."""
    from ssjax.data.settlements import SettlementWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SettlementWarning)
        yield


def prepare(df: pd.DataFrame) -> pa.Table:
    """Validated, typed, canonically sorted Arrow table of the schema's columns."""
    from ssjax.data.settlements import validate_settlements

    with quiet():
        df = validate_settlements(df, sort=True)
    for col in ("volume", "open_interest"):
        if col not in df:
            df[col] = np.nan
    return pa.Table.from_pandas(df[COLUMNS], preserve_index=False).cast(SCHEMA)


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Canonical pandas frame: schema columns and types, sorted, fresh index."""
    table = table.select(COLUMNS).cast(SCHEMA).sort_by([(c, "ascending") for c in ORDER])
    df = table.to_pandas(date_as_object=False)
    for col in ("trade_date", "expiration_date"):
        df[col] = df[col].astype("datetime64[ns]")
    return df


def with_year(table: pa.Table) -> pa.Table:
    return table.append_column("year", pc.year(table["trade_date"]).cast(pa.int32()))


def merge_rows(old: pa.Table, new: pa.Table) -> pa.Table:
    """``old`` without the rows whose key ``new`` has, plus ``new``; sorted."""
    o = old.select(COLUMNS).cast(SCHEMA).to_pandas()
    n = new.select(COLUMNS).to_pandas()
    hit = pd.MultiIndex.from_frame(o[KEY]).isin(pd.MultiIndex.from_frame(n[KEY]))
    both = pa.concat_tables([pa.Table.from_pandas(o[~hit], preserve_index=False).cast(SCHEMA), new])
    return both.sort_by([(c, "ascending") for c in ORDER])


def touched(table: pa.Table) -> dict[str, list[int]]:
    """Commodity -> the trade years of its rows in ``table``."""
    years = pc.year(table["trade_date"]).to_numpy()
    comm = table["commodity"].to_numpy(zero_copy_only=False)
    out: dict[str, list[int]] = {}
    for c, y in sorted(set(zip(comm.tolist(), years.tolist(), strict=True))):
        out.setdefault(str(c), []).append(int(y))
    return out


def disk_usage(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def frames_equal(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    if len(a) != len(b):
        return False
    a = a[COLUMNS].reset_index(drop=True)
    b = b[COLUMNS].reset_index(drop=True)
    for col in COLUMNS:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if col in ("commodity", "contract"):
            if not (x.astype(str) == y.astype(str)).all():
                return False
        elif col in ("trade_date", "expiration_date"):
            if not (x.astype("datetime64[ns]") == y.astype("datetime64[ns]")).all():
                return False
        elif not np.array_equal(x.astype(float), y.astype(float), equal_nan=True):
            return False
    return True


# ---- the backends --------------------------------------------------------------------------
class ParquetStoreBackend:
    name = "parquetstore"

    def __init__(self, root: Path) -> None:
        from ssjax.data.store import ParquetStore

        self.root = Path(root)
        self.store = ParquetStore(root, timeout=120)

    def write(self, df: pd.DataFrame) -> None:
        with quiet():
            self.store.write_settlements(df)

    def upsert(self, df: pd.DataFrame) -> None:
        with quiet():
            self.store.write_settlements(df)

    def read(self, commodity: str | None = None) -> pd.DataFrame:
        return self.store.read_settlements(commodity)

    def verify(self) -> tuple[bool, int | None]:
        r = self.store.verify()
        return not (r.missing or r.unreadable or r.bad_schema or r.unordered), len(r.stray)


class DeltaBackend:
    """Delta Lake: partition overwrite (``predicate``) of read-merged partitions."""

    name = "delta"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def write(self, df: pd.DataFrame) -> None:
        from deltalake import write_deltalake

        write_deltalake(
            self.root, with_year(prepare(df)), partition_by=["commodity", "year"], mode="error"
        )

    def upsert(self, df: pd.DataFrame) -> None:
        from deltalake import DeltaTable, write_deltalake

        new = prepare(df)
        parts = touched(new)
        pred = " OR ".join(
            f"(commodity = '{c}' AND year IN ({', '.join(map(str, ys))}))"
            for c, ys in parts.items()
        )
        dt = DeltaTable(self.root)
        where = None
        for c, ys in parts.items():
            e = (ds.field("commodity") == c) & ds.field("year").isin(ys)
            where = e if where is None else where | e
        old = dt.to_pyarrow_dataset().to_table(filter=where)
        merged = with_year(merge_rows(old, new))
        write_deltalake(dt, merged, partition_by=["commodity", "year"], mode="overwrite",
                        predicate=pred)  # fmt: skip

    def read(self, commodity: str | None = None) -> pd.DataFrame:
        from deltalake import DeltaTable

        data = DeltaTable(self.root).to_pyarrow_dataset()
        where = None if commodity is None else ds.field("commodity") == commodity
        return to_frame(data.to_table(filter=where))

    def verify(self) -> tuple[bool, int | None]:
        """Every live file is readable Parquet; the files on disk that are not live."""
        from deltalake import DeltaTable

        live = {
            os.path.realpath(u.removeprefix("file://")) for u in DeltaTable(self.root).file_uris()
        }
        for f in live:
            pq.read_metadata(f)
        disk = {
            os.path.realpath(f) for f in self.root.rglob("*.parquet") if "_delta_log" not in f.parts
        }
        return True, len(disk - live)

    def vacuum_finds(self) -> int:
        """Files a default (not ``full``) VACUUM would delete now (retention 0)."""
        from deltalake import DeltaTable

        dt = DeltaTable(self.root)
        return len(dt.vacuum(retention_hours=0, dry_run=True, enforce_retention_duration=False))


class DeltaMergeBackend(DeltaBackend):
    """Delta Lake: row-level MERGE on the key."""

    name = "delta-merge"

    def upsert(self, df: pd.DataFrame) -> None:
        from deltalake import DeltaTable

        on = " AND ".join(f"t.{k} = s.{k}" for k in ("commodity", "year", "trade_date", "contract"))
        DeltaTable(self.root).merge(with_year(prepare(df)), on, "s", "t")\
            .when_matched_update_all().when_not_matched_insert_all().execute()  # fmt: skip


class DuckDBBackend:
    """DuckDB: one file, primary key, delete + insert in one transaction."""

    name = "duckdb"
    DDL = (
        "CREATE TABLE s (trade_date DATE NOT NULL, commodity VARCHAR NOT NULL, contract VARCHAR"
        " NOT NULL, expiration_date DATE NOT NULL, settlement_price DOUBLE, volume DOUBLE,"
        " open_interest DOUBLE, PRIMARY KEY (trade_date, commodity, contract))"
    )

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / "store.duckdb"

    def _connect(self, read_only: bool = False) -> Any:
        import duckdb

        self.root.mkdir(parents=True, exist_ok=True)
        return duckdb.connect(str(self.path), read_only=read_only)

    def write(self, df: pd.DataFrame) -> None:
        with self._connect() as con:
            con.register("new", prepare(df))
            con.execute(self.DDL)
            con.execute("INSERT INTO s SELECT * FROM new")

    def upsert(self, df: pd.DataFrame) -> None:
        with self._connect() as con:
            con.register("new", prepare(df))
            con.execute("BEGIN TRANSACTION")
            con.execute(
                "DELETE FROM s USING new WHERE s.trade_date = new.trade_date"
                " AND s.commodity = new.commodity AND s.contract = new.contract"
            )
            con.execute("INSERT INTO s SELECT * FROM new")
            con.execute("COMMIT")

    def read(self, commodity: str | None = None) -> pd.DataFrame:
        order = " ORDER BY commodity, trade_date, expiration_date, contract"
        where, params = (
            ("", None) if commodity is None else (" WHERE commodity = $c", {"c": commodity})
        )
        with self._connect(read_only=True) as con:
            t = con.sql("SELECT * FROM s" + where + order, params=params).to_arrow_table()
        return to_frame(t)

    def verify(self) -> tuple[bool, int | None]:
        with self._connect(read_only=True) as con:  # a full scan (DuckDB checksums blocks)
            con.execute("SELECT count(*), sum(settlement_price) FROM s").fetchall()
        return True, None


class PyArrowBackend:
    """Plain ``pyarrow.dataset``: hive directories, read-merge-write, no transaction."""

    name = "pyarrow"
    PART = ds.partitioning(pa.schema([("commodity", pa.string()), ("year", pa.int32())]),
                           flavor="hive")  # fmt: skip

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _dataset(self) -> ds.Dataset:
        return ds.dataset(self.root, format="parquet", partitioning=self.PART)

    def _put(self, table: pa.Table) -> None:
        ds.write_dataset(with_year(table), self.root, format="parquet", partitioning=self.PART,
                         basename_template=f"part-{uuid.uuid4().hex}-{{i}}.parquet",
                         existing_data_behavior="delete_matching")  # fmt: skip

    def write(self, df: pd.DataFrame) -> None:
        self._put(prepare(df))

    def upsert(self, df: pd.DataFrame) -> None:
        new = prepare(df)
        where = None
        for c, ys in touched(new).items():
            e = (ds.field("commodity") == c) & ds.field("year").isin(ys)
            where = e if where is None else where | e
        self._put(merge_rows(self._dataset().to_table(filter=where), new))

    def read(self, commodity: str | None = None) -> pd.DataFrame:
        where = None if commodity is None else ds.field("commodity") == commodity
        return to_frame(self._dataset().to_table(filter=where))

    def verify(self) -> tuple[bool, int | None]:
        for f in self._dataset().files:
            pq.read_metadata(f)
        return True, None


BACKENDS: dict[str, type] = {
    b.name: b
    for b in (ParquetStoreBackend, DeltaBackend, DeltaMergeBackend, DuckDBBackend, PyArrowBackend)
}


def available(name: str) -> bool:
    try:
        importlib.import_module(MODULES[name])
    except ImportError:
        return False
    return True


# ---- data ----------------------------------------------------------------------------------
def copper() -> pd.DataFrame:
    from ssjax.datasets import load_copper_schwartz97

    df = load_copper_schwartz97().settlements
    return to_frame(prepare(df))


def synthetic(base: pd.DataFrame, n_commodities: int = 20, n_contracts: int = 12, seed: int = 0):
    """``n_commodities`` × copper's trade dates × the ``n_contracts`` nearest monthly contracts.

    Log prices: copper's nearby log price (per date) times a beta, plus a level, a random walk
    and a per-tenor slope, each drawn per commodity; contract codes ``<C><month letter><yy>``
    expiring on the 20th of their month.
    """
    rng = np.random.default_rng(seed)
    nearby = base.sort_values(["trade_date", "expiration_date"]).groupby("trade_date").first()
    dates = nearby.index.to_numpy().astype("datetime64[D]")
    logp = np.log(nearby["settlement_price"].to_numpy())
    logp -= logp.mean()
    ym = dates.astype("datetime64[M]")
    exp_this = ym.astype("datetime64[D]") + 19
    first = ym + (dates >= exp_this).astype(int)
    months = first[:, None] + np.arange(n_contracts)[None, :]  # (dates, contracts)
    exp = months.astype("datetime64[D]") + 19
    ttm = (exp - dates[:, None]).astype(float) / 365.0
    month_i = months.astype(int)  # months since 1970-01
    letters = np.array(list("FGHJKMNQUVXZ"))[month_i % 12]
    yy = np.char.zfill(((month_i // 12 + 1970) % 100).astype(str), 2)
    frames = []
    for k in range(n_commodities):
        c = f"C{k:02d}"
        level, beta, slope = rng.normal(4, 1), rng.uniform(0.5, 1.5), rng.normal(0, 0.1)
        walk = np.cumsum(rng.normal(0, 0.004, len(dates)))
        lp = level + beta * logp + walk
        price = np.exp(lp[:, None] + slope * ttm + rng.normal(0, 0.002, ttm.shape))
        frames.append(
            pd.DataFrame(
                {
                    "trade_date": np.repeat(dates, n_contracts).astype("datetime64[ns]"),
                    "commodity": c,
                    "contract": np.char.add(np.char.add(c, letters), yy).ravel(),
                    "expiration_date": exp.ravel().astype("datetime64[ns]"),
                    "settlement_price": np.round(price.ravel(), 4),
                    "volume": rng.integers(0, 5000, price.size).astype(float),
                    "open_interest": rng.integers(0, 50000, price.size).astype(float),
                }
            )
        )
    return to_frame(prepare(pd.concat(frames, ignore_index=True)))


def upsert_rows(data: pd.DataFrame, commodity: str, year: int) -> pd.DataFrame:
    """One commodity-year partition with every price changed, plus 5 new contracts' rows."""
    part = data[(data["commodity"] == commodity) & (data["trade_date"].dt.year == year)].copy()
    part["settlement_price"] = (part["settlement_price"] * 1.01).round(4)
    last = part["trade_date"].max()
    extra = pd.DataFrame(
        {
            "trade_date": last,
            "commodity": commodity,
            "contract": [f"{commodity}NEW{i}" for i in range(5)],
            "expiration_date": last + pd.Timedelta(days=400),
            "settlement_price": 100.0,
            "volume": 1.0,
            "open_interest": 1.0,
        }
    )
    return pd.concat([part, extra], ignore_index=True)


# ---- speed and size ------------------------------------------------------------------------
def best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def plain_rows(root: Path) -> int:
    """Rows that plain pyarrow finds in the store's ``*.parquet`` files (no table format)."""
    files = [str(f) for f in sorted(root.rglob("*.parquet")) if "_delta_log" not in f.parts]
    return ds.dataset(files, format="parquet").count_rows() if files else 0


@contextlib.contextmanager
def no_fsync() -> Iterator[None]:
    """``os.fsync`` a no-op (this process only): what ParquetStore's flushes to disk cost."""
    fsync = os.fsync
    os.fsync = lambda fd: None
    try:
        yield
    finally:
        os.fsync = fsync


def speed(
    name: str, data: pd.DataFrame, up: pd.DataFrame, expected: pd.DataFrame, tmp: Path
) -> dict[str, Any]:
    """Write ``data``, upsert ``up`` (one commodity-year), read all and one commodity back."""
    root = tmp / f"speed-{name}-{uuid.uuid4().hex[:6]}"
    b = BACKENDS[name](root)
    t_write, _ = best(lambda: b.write(data), 1)
    commodity = str(up["commodity"].iloc[0])
    t_upsert, _ = best(lambda: b.upsert(up), 1)
    t_read, full = best(b.read, 1)
    t_one, one = best(lambda: b.read(commodity), 1)
    n_files, n_bytes = disk_usage(root)
    ok = frames_equal(full, expected) and frames_equal(
        one, expected[expected["commodity"] == commodity].reset_index(drop=True)
    )
    plain = None if name == "duckdb" else plain_rows(root)
    shutil.rmtree(root, ignore_errors=True)
    out = {
        "write_s": t_write,
        "upsert_s": t_upsert,
        "read_s": t_read,
        "read_one_s": t_one,
        "files": n_files,
        "bytes": n_bytes,
        "rows": len(full),
        "correct": bool(ok),
        "plain_pyarrow_rows": plain,
    }
    if name == "parquetstore":
        root = tmp / f"speed-nofsync-{uuid.uuid4().hex[:6]}"
        with no_fsync():
            out["write_nofsync_s"], _ = best(lambda: BACKENDS[name](root).write(data), 1)
        shutil.rmtree(root, ignore_errors=True)
    return out


def fastest(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs of one backend: each time's minimum, correct only if every run was."""
    out = dict(runs[0])
    for key in out:
        if key.endswith("_s"):
            out[key] = min(r[key] for r in runs)
    out["correct"] = all(r["correct"] for r in runs)
    return out


# ---- processes -----------------------------------------------------------------------------
def _concurrent_writer(name: str, root: str, tag: str, n: int, go: Any, out: str) -> None:
    b = BACKENDS[name](Path(root))
    if not go.wait(60):
        raise TimeoutError("never told to go")
    rng = random.Random(tag)
    log = {"returned": [], "conflicted": 0, "failed": 0, "errors": {}}
    for i in range(n):
        contract = f"{tag}{i:02d}"
        row = pd.DataFrame(
            {
                "trade_date": [pd.Timestamp("2005-06-01")],
                "commodity": ["HG"],
                "contract": [contract],
                "expiration_date": [pd.Timestamp("2005-12-20")],
                "settlement_price": [100.0 + i],
                "volume": [1.0],
                "open_interest": [1.0],
            }
        )
        for attempt in range(200):
            try:
                b.upsert(row)
            except Exception as e:  # noqa: BLE001 - counted
                key = (
                    f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"
                    if str(e)
                    else type(e).__name__
                )
                log["errors"][key] = log["errors"].get(key, 0) + 1
                if attempt == 0:
                    log["conflicted"] += 1
                time.sleep(rng.uniform(0.005, 0.05))
                continue
            log["returned"].append(contract)
            break
        else:
            log["failed"] += 1
    Path(out).write_text(json.dumps(log))


def _kill_writer(name: str, root: str, new_path: str, ready: Any, out: str) -> None:
    b = BACKENDS[name](Path(root))
    new = pd.read_parquet(new_path)
    ready.set()
    t0 = time.perf_counter()
    b.upsert(new)
    Path(out).write_text(json.dumps({"seconds": time.perf_counter() - t0}))


def context(names: list[str]) -> multiprocessing.context.BaseContext:
    """Forkserver with the backends' modules preloaded: a writer starts in milliseconds."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["pandas", "pyarrow.dataset", *sorted({MODULES[n] for n in names})])
    return ctx


def concurrency(name: str, base: pd.DataFrame, tmp: Path, ctx: Any, n: int) -> dict[str, Any]:
    root = tmp / f"conc-{name}"
    BACKENDS[name](root).write(base)
    go = ctx.Event()
    outs = [tmp / f"conc-{name}-{t}.json" for t in "AB"]
    procs = [
        ctx.Process(target=_concurrent_writer, args=(name, str(root), t, n, go, str(o)))
        for t, o in zip("AB", outs, strict=True)
    ]
    for p in procs:
        p.start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    go.set()
    for p in procs:
        p.join(300)
    elapsed = time.perf_counter() - t0
    logs = [json.loads(o.read_text()) if o.exists() else None for o in outs]
    res: dict[str, Any] = {"writes": 2 * n, "seconds": elapsed}
    if any(lg is None for lg in logs):
        res["crashed"] = [p.exitcode for p in procs]
        return res
    b = BACKENDS[name](root)
    try:
        stored = set(b.read("HG")["contract"].astype(str))
        returned = [c for lg in logs for c in lg["returned"]]
        res["lost"] = sum(c not in stored for c in returned)
        res["readable"] = True
    except Exception as e:  # noqa: BLE001 - reported
        res["lost"], res["readable"] = None, f"{type(e).__name__}: {e}"
    res["conflicted"] = sum(lg["conflicted"] for lg in logs)
    res["failed"] = sum(lg["failed"] for lg in logs)
    res["retries"] = sum(sum(lg["errors"].values()) for lg in logs)
    errors: dict[str, int] = {}
    for lg in logs:
        for k, v in lg["errors"].items():
            errors[k] = errors.get(k, 0) + v
    res["errors"] = errors
    res["verify"] = _safe(b.verify)
    shutil.rmtree(root, ignore_errors=True)
    return res


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - reported
        return f"{type(e).__name__}: {str(e)[:120]}"


def snapshot(root: Path) -> set[tuple[str, int, int]]:
    """(path, mtime, size) of every file under ``root``."""
    out, todo = set(), [str(root)]
    while todo:
        with os.scandir(todo.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    todo.append(e.path)
                else:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    out.add((e.path, st.st_mtime_ns, st.st_size))
    return out


def first_change(root: Path, p: Any, t0: float) -> float | None:
    """Seconds from ``t0`` until a file under ``root`` changes (None: ``p`` ended first)."""
    before = snapshot(root)
    while p.is_alive():
        if snapshot(root) != before:
            return time.perf_counter() - t0
        time.sleep(0.002)
    return None


def kills(
    name: str, old: pd.DataFrame, tmp: Path, ctx: Any, trials: int, seed: int
) -> dict[str, Any]:
    """``trials`` writers killed at random while a large upsert changes files; what each left.

    The first writer is not killed: it times the upsert (and when its first file change on
    disk comes). Each later one is watched until a file under the store changes, then killed
    after a delay drawn uniformly from [0, the rest of the first writer's upsert].
    """
    rng = random.Random(seed)
    template = tmp / f"kill-{name}-template"
    BACKENDS[name](template).write(old)
    new = old.copy()
    new["settlement_price"] = (new["settlement_price"] * 1.01).round(4)
    new["volume"] += 1
    new_path = tmp / "kill-new.parquet"
    if not new_path.exists():
        new.to_parquet(new_path)
    outcomes: dict[str, int] = {"old": 0, "new": 0, "mixed": 0, "unreadable": 0}
    res: dict[str, Any] = {"trials": trials, "killed": 0, "verify_whole": 0, "writable": 0}
    res.update(not_live=None, not_live_after=None)
    c0, y0 = str(old["commodity"].iloc[0]), int(old["trade_date"].dt.year.iloc[0])
    rest = 0.0
    for trial in range(trials + 1):
        root = tmp / f"kill-{name}-{trial}"
        shutil.copytree(template, root)
        out = tmp / f"kill-{name}-{trial}.json"
        ready = ctx.Event()
        p = ctx.Process(target=_kill_writer, args=(name, str(root), str(new_path), ready, str(out)))
        p.start()
        if not ready.wait(120):
            raise TimeoutError(f"{name}: the writer never started")
        t0 = time.perf_counter()
        changed = first_change(root, p, t0)
        if trial == 0:  # the unkilled run: how long the write takes, and its part on disk
            p.join(600)
            res["write_s"] = json.loads(out.read_text())["seconds"]
            res["disk_s"] = res["write_s"] - (changed or 0.0)
            rest = max(res["disk_s"], 0.01)
            shutil.rmtree(root, ignore_errors=True)
            continue
        time.sleep(rng.uniform(0, rest))
        p.kill()
        p.join()
        res["killed"] += p.exitcode == -signal.SIGKILL and not out.exists()
        b = BACKENDS[name](root)
        state = None
        try:
            got = b.read()
        except Exception:  # noqa: BLE001 - counted
            outcomes["unreadable"] += 1
        else:
            state = "old" if frames_equal(got, old) else "new" if frames_equal(got, new) else None
            outcomes[state or "mixed"] += 1
        v = _safe(b.verify)
        res["verify_whole"] += isinstance(v, tuple) and v[0]
        if state == "old" and isinstance(v, tuple) and v[1] is not None:  # the write's files
            res["not_live"] = max(res["not_live"] or 0, v[1])
            if hasattr(b, "vacuum_finds"):
                res["vacuum_finds"] = max(res.get("vacuum_finds", 0), b.vacuum_finds())
        try:
            b.upsert(upsert_rows(old, c0, y0))
            b.read(c0)
            res["writable"] += 1
        except Exception:  # noqa: BLE001 - counted
            pass
        v = _safe(b.verify)
        if state == "old" and isinstance(v, tuple) and v[1] is not None:
            res["not_live_after"] = max(res["not_live_after"] or 0, v[1])
        shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(template, ignore_errors=True)
    res.update(outcomes)
    return res


# ---- code size and dependency weight -------------------------------------------------------
def code_lines(source: str) -> int:
    """Lines holding code: no blank lines, comments or docstrings."""
    tree = ast.parse(source)
    doc: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            v = body[0].value
            if isinstance(v, ast.Constant) and isinstance(v.value, str):
                doc.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                            tokenize.DEDENT, tokenize.ENDMARKER):  # fmt: skip
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines - doc)


def adapter_lines(name: str) -> int:
    """Code lines of the backend's class (``delta-merge``: plus what it inherits)."""
    n = code_lines(inspect.getsource(BACKENDS[name]))
    if name == "delta-merge":
        upsert = textwrap.dedent(inspect.getsource(DeltaBackend.upsert))
        n += code_lines(inspect.getsource(DeltaBackend)) - code_lines(upsert)
    return n


PANEL_CODE = (  # store.py's panel and pre-manifest (legacy) code: not needed for settlements
    "_check_panel_name", "panels", "write_panel", "append_panel", "read_panel", "_read_panel",
    "_panel_arrays", "_panel_tables", "_table_to_panel_rows", "_join_panel_rows",
    "_merge_panel_arrays", "_legacy_manifest", "_legacy_year_files",
)  # fmt: skip


def library_lines() -> dict[str, int]:
    """store.py's lines: all, code, and code outside the panel and legacy functions."""
    import ssjax.data.store as store

    src = Path(store.__file__).read_text()
    lines = src.splitlines()
    panel = 0
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.FunctionDef) and node.name in PANEL_CODE:
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            panel += code_lines(textwrap.dedent("\n".join(lines[start - 1 : node.end_lineno])))
    code = code_lines(src)
    return {"total": len(lines), "code": code, "settlements_code": code - panel}


def installed_mb(dist: str) -> float | None:
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    return sum(f.size or 0 for f in files) / 1e6


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---- report --------------------------------------------------------------------------------
NAMES = {
    "parquetstore": "ParquetStore",
    "delta": "Delta",
    "delta-merge": "Delta MERGE",
    "duckdb": "DuckDB",
    "pyarrow": "pyarrow",
}
FEATURES = {  # what each gives natively (checked by reading docs/code, not measured)
    "parquetstore": "commodity/year dirs, plain-Parquet readable, version (manifest), "
    "checksummed verify(repair), per-store lock, panels",
    "delta": "commodity/year dirs (partition columns only in paths), versions + time travel, "
    "optimistic commits; needs vacuum for old files; pyarrow alone sees stale files",
    "delta-merge": "as delta; row-level MERGE on the key (no pandas merge)",
    "duckdb": "one opaque file (needs duckdb to read), primary key, ACID transactions, "
    "one writer process holds the file (readers too are locked out)",
    "pyarrow": "commodity/year dirs, nothing else: no lock, no transaction, no version",
}


def fmt_verify(v: Any) -> str:
    if not isinstance(v, (list, tuple)):
        return str(v)
    return ("whole" if v[0] else "NOT whole") + ("" if v[1] is None else f", {v[1]} not live")


def fmt_s(x: Any) -> str:
    return "—" if x is None else f"{x:.2f}"


def markdown(res: dict[str, Any]) -> str:
    m = res["meta"]
    lines = [
        "# Settlement store: ParquetStore against Delta Lake, DuckDB and pyarrow.dataset",
        "",
        f"Command: `{m['command']}`  ",
        f"Machine: {m['machine']}, {m['cpus']} CPUs, load average at start "
        f"{m['loadavg_start']}, at end {m['loadavg_end']} (shared with other jobs: times "
        "are indicative); Python {py}, pandas {pd}, pyarrow {pa}, deltalake {dl}, duckdb {dd}; "
        "total run {t:.0f} s.".format(
            py=m["python"],
            pd=m["pandas"],
            pa=m["pyarrow"],
            dl=m["deltalake"],
            dd=m["duckdb"],
            t=m["seconds"],
        ),  # fmt: skip
        "",
    ]
    for ds_name, info in res["datasets"].items():
        lines += [
            f"## Speed and size: {ds_name} ({info['rows']:,} rows, {info['commodities']} "
            f"commodities, {info['partitions']} commodity-years)",
            "",
            f"Every write validates first (`validate_settlements` + typed Arrow table: "
            f"{info['validate_s']:.2f} s for the full table). ParquetStore's write without "
            f"`os.fsync` (patched out in this process): "
            f"{fmt_s(info['backends'].get('parquetstore', {}).get('write_nofsync_s'))} s.",
            "",
            "| backend | write s | upsert 1 partition s | read all s | read 1 commodity s "
            "| files | MB on disk | read back correct | rows plain pyarrow sees in the files |",
            "|---|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        for name, r in info["backends"].items():
            plain = r["plain_pyarrow_rows"]
            plain = "— (one DuckDB file)" if plain is None else f"{plain:,} of {r['rows']:,}"
            lines.append(
                f"| {name} | {fmt_s(r['write_s'])} | {fmt_s(r['upsert_s'])} | "
                f"{fmt_s(r['read_s'])} | {fmt_s(r['read_one_s'])} | {r['files']} | "
                f"{r['bytes'] / 1e6:.1f} | {'yes' if r['correct'] else 'NO'} | {plain} |"
            )
        lines.append("")
    c = res["concurrency"]
    if c:
        n = next(iter(c.values()))["writes"]
        lines += [
            f"## Two concurrent writers ({n} one-row upserts into the same partition, "
            "copper store)",
            "",
            "| backend | lost writes | writes that raised | retries | gave up | verify | s "
            "| errors seen |",
            "|---|---:|---:|---:|---:|---|---:|---|",
        ]
        for name, r in c.items():
            errs = "; ".join(f"{k} ×{v}" for k, v in r.get("errors", {}).items()) or "none"
            lines.append(
                f"| {name} | {r.get('lost')} | {r.get('conflicted')} | {r.get('retries')} | "
                f"{r.get('failed')} | {fmt_verify(r.get('verify'))} | {r['seconds']:.1f} | {errs} |"
            )
        lines.append("")
    k = res["kills"]
    if k:
        first = next(iter(k.values()))
        lines += [
            f"## Writers killed (SIGKILL) during a large upsert ({first['rows']:,} rows, every "
            f"price changed; {first['trials']} kills each)",
            "",
            "Each writer is killed after its first file change on disk, at a random delay in "
            "[0, the rest of an unkilled upsert]. *Not live*: files on disk that the live "
            "version does not use, the most seen after a kill that left the old table (the "
            "killed write's files) and after one more upsert.",
            "",
            "| backend | upsert s (on disk) | killed | old | new | mixed | unreadable "
            "| live data whole | not live after kill | after next upsert | writable after |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in k.items():
            nl = ["—" if r[x] is None else str(r[x]) for x in ("not_live", "not_live_after")]
            lines.append(
                f"| {name} | {r['write_s']:.2f} ({r['disk_s']:.2f}) | {r['killed']} | "
                f"{r['old']} | {r['new']} | {r['mixed']} | {r['unreadable']} | "
                f"{r['verify_whole']} | {nl[0]} | {nl[1]} | {r['writable']} |"
            )
        lines.append("")
    lib = res["code"]["library"]
    lines += [
        "## Code and dependencies",
        "",
        "| backend | adapter code lines (this file) | library code in ssjax | new dependency "
        "| installed MB | what it gives |",
        "|---|---:|---|---|---:|---|",
    ]
    for name in res["backends"]:
        dist = DISTRIBUTIONS.get(name)
        lib_txt = (
            f"store.py: {lib['code']} code lines ({lib['total']} with docs), "
            f"{lib['settlements_code']} without panels and legacy migration"
            if name == "parquetstore"
            else "—"
        )
        dep = f"{dist} {res['meta'].get(dist)}" if dist else "none (pyarrow)"
        mb = res["code"]["installed_mb"].get(dist) if dist else None
        lines.append(
            f"| {name} | {res['code']['adapter'][name]} | {lib_txt} | {dep} | "
            f"{'—' if mb is None else f'{mb:.0f}'} | {FEATURES[name]} |"
        )
    lines += ["", "## Verdict", "", verdict(res), ""]
    return "\n".join(lines)


WHEEL_MB = {  # `pip download <dist> --no-deps`: manylinux x86_64 wheels (CPython 3.11)
    ("deltalake", "1.6.6"): 52.0,
    ("duckdb", "2.0.1"): 24.9,
}


def verdict(res: dict[str, Any]) -> str:
    """The verdict paragraph, its numbers from this run (full runs of every backend only)."""
    need = ("parquetstore", "delta", "delta-merge", "duckdb", "pyarrow")
    if (
        res["meta"]["quick"]
        or "synthetic" not in res["datasets"]
        or not all(n in res["backends"] for n in need)
    ):
        return "(quick or partial run: no verdict; run it in full with deltalake and duckdb.)"
    k, c, code = res["kills"], res["concurrency"], res["code"]
    info = res["datasets"]["synthetic"]
    syn = info["backends"]
    lib, ad, mb = code["library"], code["adapter"], code["installed_mb"]
    safe = [n for n in need if k[n]["mixed"] + k[n]["unreadable"] == 0 and c[n]["lost"] == 0]
    others = need[1:]

    def dep(d: str) -> str:
        w = WHEEL_MB.get((d, res["meta"][d]))
        return f"{d} ({f'{w:.0f} MB wheel, ' if w else ''}{mb[d]:.0f} MB installed)"

    def vs(key: str) -> str:
        return f"{syn['parquetstore'][key]:.2f} vs {min(syn[n][key] for n in others):.2f} s"

    if "parquetstore" not in safe:
        head = "**ParquetStore failed a check (see the tables): do not keep it as it is.**"
    else:
        head = "**Keep ParquetStore.**"
    pa_bad = k["pyarrow"]["unreadable"] + k["pyarrow"]["mixed"]
    text = (
        f"{head} {', '.join(NAMES[n] for n in safe)} lost no concurrent write and every kill "
        f"left the old or the new table; plain pyarrow.dataset lost {c['pyarrow']['lost']}/"
        f"{c['pyarrow']['writes']} writes and {pa_bad}/{k['pyarrow']['trials']} kills left it "
        f"unreadable or mixed. Delta/DuckDB would replace store.py's {lib['settlements_code']} "
        f"settlement code lines by ~{ad['delta']}/{ad['duckdb']}-line adapters plus a retry "
        f"loop (writers raise, not queue: {c['delta']['retries']}× CommitFailedError, "
        f"{c['duckdb']['retries']}× lock IOException in {c['delta']['writes']} writes), but add "
        f"{dep('deltalake')} or {dep('duckdb')} where pyarrow suffices, and our expiration "
        "check, panels and checksummed verify remain. Speed gives no reason (synthetic, "
        f"ParquetStore vs best other): write {vs('write_s')} "
        f"({syn['parquetstore']['write_nofsync_s']:.2f} s without fsync, durability a SIGKILL "
        f"does not test), upsert {vs('upsert_s')}, full read {vs('read_s')} (pandas concat and "
        f"sort; pyarrow reads the layout in {syn['pyarrow']['read_s']:.2f} s). Moving loses a "
        "directory plain pyarrow/pandas read right: Delta's files hold "
        f"{syn['delta']['plain_pyarrow_rows']:,} rows for {syn['delta']['rows']:,} and killed "
        f"writes' orphans (up to {k['delta']['not_live']}; a default VACUUM finds "
        f"{k['delta'].get('vacuum_finds', 0)}) outlive the next write, which removed "
        f"ParquetStore's {k['parquetstore']['not_live']}; DuckDB is one opaque "
        f"{syn['duckdb']['bytes'] / 1e6:.0f} MB file "
        f"({syn['duckdb']['bytes'] / syn['parquetstore']['bytes']:.1f}× the Parquet) that a "
        "writing process locks against every other process."
    )
    return textwrap.fill(text, width=100)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="copper only, few trials (~30 s)")
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--repeats", type=int, default=None, help="timed passes (best taken)")
    ap.add_argument("--writes", type=int, default=None, help="concurrent writes per process")
    ap.add_argument("--kills", type=int, default=None, help="killed writers per backend")
    ap.add_argument("--kill-commodities", type=int, default=None)
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json")
    args = ap.parse_args(argv)
    if args.report_only:
        res = json.loads((args.out / "store_alternatives.json").read_text())
        (args.out / "store_alternatives.md").write_text(markdown(res))
        return res
    quick = args.quick
    repeats = args.repeats or (1 if quick else 2)
    writes = args.writes or (3 if quick else 10)
    n_kills = args.kills if args.kills is not None else (2 if quick else 10)
    kill_comm = args.kill_commodities or 2
    names = [n for n in args.backends if available(n)]
    skipped = [n for n in args.backends if n not in names]
    t_start = time.perf_counter()
    load0 = tuple(round(x, 2) for x in os.getloadavg())
    base = copper()
    data = {"copper": base}
    if not quick:
        data["synthetic"] = synthetic(base)
    res: dict[str, Any] = {"backends": names, "skipped": skipped, "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="store-alt-") as t:
        tmp = Path(t)
        for ds_name, df in data.items():
            info = {
                "rows": len(df),
                "commodities": int(df["commodity"].nunique()),
                "partitions": int(df.groupby(["commodity", df["trade_date"].dt.year]).ngroups),
                "backends": {},
            }
            info["validate_s"], _ = best(lambda df=df: prepare(df), repeats)
            c0 = str(df["commodity"].iloc[0])
            up = upsert_rows(df, c0, int(df["trade_date"].dt.year.median()))
            expected = to_frame(prepare(pd.concat([df, up]).drop_duplicates(KEY, keep="last")))
            runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
            for _ in range(repeats):  # round robin: a burst of load hits every backend alike
                for name in names:
                    runs[name].append(speed(name, df, up, expected, tmp))
            for name in names:
                info["backends"][name] = fastest(runs[name])
                print(f"{ds_name} {name}: {info['backends'][name]}", flush=True)
            res["datasets"][ds_name] = info
        ctx = context(names)
        res["concurrency"] = {}
        for name in names:
            res["concurrency"][name] = concurrency(name, base, tmp, ctx, writes)
            print(f"concurrency {name}: {res['concurrency'][name]}", flush=True)
        if quick:
            old = base[base["trade_date"] >= "2008-01-01"].reset_index(drop=True)
        else:
            syn = data["synthetic"]
            keep = sorted(syn["commodity"].unique())[:kill_comm]
            old = syn[syn["commodity"].isin(keep)].reset_index(drop=True)
        res["kills"] = {}
        for i, name in enumerate(names):
            r = kills(name, old, tmp, ctx, n_kills, seed=i)
            r["rows"] = len(old)
            res["kills"][name] = r
            print(f"kills {name}: {r}", flush=True)
    res["code"] = {
        "adapter": {n: adapter_lines(n) for n in names},
        "library": library_lines(),
        "installed_mb": {d: installed_mb(d) for d in ("deltalake", "duckdb", "pyarrow")},
    }
    res["meta"] = {
        "command": "python experiments/store_alternatives.py"
        + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "pandas": pd.__version__,
        "pyarrow": pa.__version__,
        "deltalake": version("deltalake"),
        "duckdb": version("duckdb"),
        "loadavg_start": load0,
        "loadavg_end": tuple(round(x, 2) for x in os.getloadavg()),
        "seconds": time.perf_counter() - t_start,
        "quick": quick,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "store_alternatives.json").write_text(json.dumps(res, indent=1, default=str))
    (args.out / "store_alternatives.md").write_text(markdown(res))
    print(f"wrote {args.out / 'store_alternatives.md'} ({res['meta']['seconds']:.0f} s)")
    return res


if __name__ == "__main__":
    main()
