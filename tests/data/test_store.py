"""The Parquet store: settlements (partitioned, idempotent, atomic) and panels; the lock,
the manifest (crash consistency, killed writers) and verify."""

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import store_worker

import ssjax.data.store as store_mod
from ssjax.data.settlements import SettlementError
from ssjax.data.store import SETTLEMENT_COLUMNS, ParquetStore
from ssjax.datasets import Panel, load_wti_ss2000

EXPIRY = {
    "CLG24": "2024-01-22",
    "CLH24": "2024-02-20",
    "NGG24": "2024-01-29",
    "NGH24": "2024-02-26",
}
DAYS = ["2023-12-28", "2023-12-29", "2024-01-02", "2024-01-03"]


def settle(days=DAYS, commodities=("CL", "NG"), bump=0.0, volume=True):
    """A small settlement table (deliberately not in canonical order)."""
    rows = []
    for d in days:
        i = DAYS.index(d)
        for c in commodities:
            for j, code in enumerate(sorted(k for k in EXPIRY if k.startswith(c))):
                base = 70.0 if c == "CL" else 2.5
                rows.append(
                    {
                        "trade_date": d,
                        "commodity": c,
                        "contract": code,
                        "expiration_date": EXPIRY[code],
                        "settlement_price": base + 0.25 * i + 0.5 * j + bump,
                        "volume": 1000.0 + 10 * i + j,
                        "open_interest": 5000.0 + j,
                    }
                )
    df = pd.DataFrame(rows).iloc[::-1].reset_index(drop=True)
    if not volume:
        df = df.drop(columns=["volume", "open_interest"])
    return df


def expected(df):
    """What the store should give back for ``df``: typed, canonical order, RangeIndex."""
    out = df.copy()
    for c in ("trade_date", "expiration_date"):
        out[c] = pd.to_datetime(out[c]).astype("datetime64[ns]")
    for c in ("commodity", "contract"):
        out[c] = out[c].astype(str)
    for c in ("volume", "open_interest"):
        if c not in out:
            out[c] = np.nan
    out = out[list(SETTLEMENT_COLUMNS)]
    out = out.sort_values(["commodity", "trade_date", "expiration_date", "contract"])
    return out.reset_index(drop=True)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root: file bytes, or None for a directory."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def spy_reads(monkeypatch):
    """Record the paths pyarrow.parquet.read_table opens."""
    seen: list[str] = []
    real = pq.read_table

    def spy(source, *args, **kwargs):
        seen.append(str(source))
        return real(source, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", spy)
    return seen


def part(commodity, year):
    """A settlement partition's directory (its file's name changes with every write)."""
    return os.path.join("settlements", f"commodity={commodity}", f"year={year}")


def data_files(root):
    """The Parquet files under root, relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*.parquet"))


def manifest_files(root):
    """{(section, commodity or panel, year): file} of the partitions the manifest lists."""
    manifest = json.loads((Path(root) / "manifest.json").read_text())
    return {
        (section, key, int(year)): entry["file"]
        for section in ("settlements", "panels")
        for key, parts in manifest[section].items()
        for year, entry in parts.items()
    }


def dirs(paths, root):
    """The partition directories of files (relative to root), in order."""
    return [os.path.dirname(os.path.relpath(p, root)) for p in paths]


# ---- settlements ------------------------------------------------------------------------------
def test_round_trip_values_and_dtypes(tmp_path):
    store = ParquetStore(tmp_path / "store")
    df = settle()
    df["note"] = "x"  # not a schema column: not stored
    written = store.write_settlements(df)
    assert len(written) == 4
    got = store.read_settlements()
    pd.testing.assert_frame_equal(got, expected(settle()))
    assert list(got.columns) == list(SETTLEMENT_COLUMNS)
    assert got["trade_date"].dtype == "datetime64[ns]"
    assert got["expiration_date"].dtype == "datetime64[ns]"
    assert pd.api.types.is_string_dtype(got["contract"])
    assert pd.api.types.is_string_dtype(got["commodity"])
    assert got["settlement_price"].dtype == float
    assert isinstance(got.index, pd.RangeIndex)
    assert store.commodities() == ["CL", "NG"]
    assert store.date_range("CL") == (pd.Timestamp("2023-12-28"), pd.Timestamp("2024-01-03"))


def test_optional_columns_absent_are_nan(tmp_path):
    store = ParquetStore(tmp_path)
    store.write_settlements(settle(volume=False))
    got = store.read_settlements()
    assert got["volume"].isna().all() and got["open_interest"].isna().all()
    pd.testing.assert_frame_equal(got, expected(settle(volume=False)))


def test_partition_layout(tmp_path):
    store = ParquetStore(tmp_path)
    written = store.write_settlements(settle())
    files = data_files(tmp_path)
    assert dirs(files, ".") == sorted(part(c, y) for c in ("CL", "NG") for y in (2023, 2024))
    assert dirs(written, tmp_path) == dirs(files, ".")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [".lock", "manifest.json"]
    t = pq.read_table(written[0], partitioning=None).to_pandas()
    assert set(t["commodity"]) == {"CL"}
    assert set(pd.to_datetime(t["trade_date"]).dt.year) == {2023}
    keys = list(zip(t["trade_date"], t["expiration_date"], t["contract"], strict=True))
    assert keys == sorted(keys)


def test_idempotent_reappend(tmp_path):
    store = ParquetStore(tmp_path)
    store.write_settlements(settle())
    first = store.read_settlements()
    store.write_settlements(settle(days=["2024-01-03"]))
    store.write_settlements(settle())
    got = store.read_settlements()
    assert not got.duplicated(["trade_date", "commodity", "contract"]).any()
    pd.testing.assert_frame_equal(got, first)


def test_append_new_day_with_correction(tmp_path):
    store = ParquetStore(tmp_path)
    store.write_settlements(settle(days=DAYS[:3]))
    new = settle(days=DAYS[3:])
    fix = settle(days=DAYS[2:3], commodities=("CL",))
    fix = fix[fix["contract"] == "CLG24"].copy()
    fix["settlement_price"] = 99.0
    store.write_settlements(pd.concat([new, fix]))  # duplicate index labels are fine
    got = store.read_settlements()
    assert len(got) == 16
    day = got[got["trade_date"] == "2024-01-02"].set_index("contract")["settlement_price"]
    assert day["CLG24"] == 99.0
    assert day["CLH24"] == 70.0 + 0.25 * 2 + 0.5  # not in the new batch: kept
    want = expected(settle())
    want.loc[(want["trade_date"] == "2024-01-02") & (want["contract"] == "CLG24"), "v"] = 1
    want.loc[want.pop("v") == 1, "settlement_price"] = 99.0
    pd.testing.assert_frame_equal(got, want)


def test_partition_pruning(tmp_path, spy_reads):
    store = ParquetStore(tmp_path)
    store.write_settlements(settle())
    spy_reads.clear()
    got = store.read_settlements("CL", start="2024-01-01")
    assert dirs(spy_reads, tmp_path) == [part("CL", 2024)]
    assert set(got["commodity"]) == {"CL"} and got["trade_date"].min() == pd.Timestamp("2024-01-02")

    spy_reads.clear()
    store.read_settlements(start="2023-12-29", end="2023-12-31")
    assert sorted(dirs(spy_reads, tmp_path)) == [
        part("CL", 2023),
        part("NG", 2023),
    ]

    spy_reads.clear()
    store.read_settlements("NG", end=pd.Timestamp("2023-12-31"))
    assert dirs(spy_reads, tmp_path) == [part("NG", 2023)]

    spy_reads.clear()
    assert store.read_settlements("HO").empty
    assert spy_reads == []


def test_filters(tmp_path):
    store = ParquetStore(tmp_path)
    store.write_settlements(settle())
    got = store.read_settlements(start="2023-12-29", end="2024-01-02 15:30")
    assert sorted(got["trade_date"].dt.strftime("%Y-%m-%d").unique()) == DAYS[1:3]
    assert isinstance(got.index, pd.RangeIndex) and got.index[0] == 0
    one = store.read_settlements(contracts="NGH24")
    assert list(one["contract"].unique()) == ["NGH24"] and len(one) == 4
    two = store.read_settlements(["NG", "CL"], contracts=["CLG24", "NGG24"], end="2023-12-28")
    assert list(two["contract"]) == ["CLG24", "NGG24"]
    want = expected(settle())
    want = want[want["contract"].isin(["CLG24", "NGG24"]) & (want["trade_date"] <= "2023-12-28")]
    pd.testing.assert_frame_equal(two, want.reset_index(drop=True))
    none = store.read_settlements("CL", start="2025-01-01")
    assert none.empty and list(none.columns) == list(SETTLEMENT_COLUMNS)
    assert none["trade_date"].dtype == "datetime64[ns]"
    with pytest.raises(ValueError, match="after end"):
        store.read_settlements(start="2024-01-03", end="2024-01-01")
    with pytest.raises(ValueError, match="start"):
        store.read_settlements(start="not a date")


def test_empty_store(tmp_path):
    store = ParquetStore(tmp_path / "nowhere")
    got = store.read_settlements()
    assert got.empty and list(got.columns) == list(SETTLEMENT_COLUMNS)
    assert store.commodities() == [] and store.panels() == []
    with pytest.raises(ValueError, match="no settlements stored for commodity 'CL'"):
        store.date_range("CL")
    assert store.write_settlements(settle().iloc[:0]) == []
    assert not (tmp_path / "nowhere").exists()


def _failing_batch(store):
    """A store with CL 2023 only, and a batch touching CL 2023 (existing) and new partitions."""
    store.write_settlements(settle(days=DAYS[:2], commodities=("CL",)))
    batch = settle(bump=1.0)  # CL 2023 (replace), CL 2024, NG 2023, NG 2024 (new)
    return batch


def flaky_writes(monkeypatch, fail_on):
    """Make the store's nth file creation (partitions, then the manifest) leave half a file
    and fail."""
    real, calls = store_mod._write_new, []

    def flaky(path, data):
        calls.append(path)
        if len(calls) == fail_on:
            Path(path).write_bytes(data[: len(data) // 2])
            raise OSError("disk full")
        return real(path, data)

    monkeypatch.setattr(store_mod, "_write_new", flaky)
    return calls


@pytest.mark.parametrize("fail_on", [1, 2, 4, 5])  # 4 partitions, then (5) the manifest
def test_failed_parquet_write_leaves_store_unchanged(tmp_path, monkeypatch, fail_on):
    store = ParquetStore(tmp_path)
    batch = _failing_batch(store)
    before, content = snapshot(tmp_path), store.read_settlements()
    calls = flaky_writes(monkeypatch, fail_on)
    with pytest.raises(OSError, match="disk full"):
        store.write_settlements(batch)
    monkeypatch.undo()
    assert len(calls) == fail_on and (fail_on < 5) == calls[-1].name.endswith(".parquet")
    assert snapshot(tmp_path) == before  # same bytes, no temp files, no new directories
    pd.testing.assert_frame_equal(store.read_settlements(), content)


def test_failed_commit_leaves_store_unchanged(tmp_path, monkeypatch):
    store = ParquetStore(tmp_path)
    batch = _failing_batch(store)
    before, content = snapshot(tmp_path), store.read_settlements()
    real, calls = os.replace, []

    def flaky(src, dst, *args, **kwargs):
        calls.append((src, dst))
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="rename failed"):
        store.write_settlements(batch)
    monkeypatch.undo()
    assert [Path(dst).name for _, dst in calls] == ["manifest.json"]  # the one rename
    assert snapshot(tmp_path) == before
    pd.testing.assert_frame_equal(store.read_settlements(), content)
    # and the store still works
    store.write_settlements(batch)
    pd.testing.assert_frame_equal(store.read_settlements(), expected(settle(bump=1.0)))
    assert store.verify().ok and len(data_files(tmp_path)) == 4
    assert real is os.replace


def _bad(kind):
    df = settle()
    if kind == "missing column":
        return df.drop(columns=["expiration_date"]), "missing column"
    if kind == "duplicate rows":
        return pd.concat([df, df.iloc[:1]], ignore_index=True), "duplicate"
    if kind == "trade after expiry":
        df.loc[df["contract"] == "CLG24", "expiration_date"] = "2023-12-29"
        return df, "past expiry"
    if kind == "unparseable date":
        df.loc[5, "trade_date"] = "2024-01-32"
        return df, r"trade_date: unparseable dates at rows \[5\] \('2024-01-32'\)"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["missing column", "duplicate rows", "trade after expiry", "unparseable date"]
)
def test_invalid_input_writes_nothing(tmp_path, kind):
    store = ParquetStore(tmp_path / "s")
    df, msg = _bad(kind)
    with pytest.raises(SettlementError, match=msg):
        store.write_settlements(df)
    assert not (tmp_path / "s").exists()
    store.write_settlements(settle(days=DAYS[:1]))
    before = snapshot(tmp_path)
    with pytest.raises(SettlementError, match=msg):
        store.write_settlements(df)
    assert snapshot(tmp_path) == before


def test_bad_price_masked_with_warning(tmp_path):
    store = ParquetStore(tmp_path)
    df = settle()
    df.loc[
        (df["contract"] == "CLG24") & (df["trade_date"] == "2024-01-02"), "settlement_price"
    ] = -37.63
    with pytest.raises(SettlementError, match="non-positive"):
        store.write_settlements(df, on_bad_price="raise")
    assert store.commodities() == []
    with pytest.warns(UserWarning, match="masked"):
        store.write_settlements(df)
    got = store.read_settlements(contracts="CLG24").set_index("trade_date")["settlement_price"]
    assert np.isnan(got[pd.Timestamp("2024-01-02")])
    assert got.notna().sum() == 3


def test_expiration_conflicts_with_stored_rows(tmp_path):
    store = ParquetStore(tmp_path)
    store.write_settlements(settle(days=DAYS[:2], commodities=("CL",)))  # 2023 only
    before = snapshot(tmp_path)
    other_year = settle(days=DAYS[2:3], commodities=("CL",))
    other_year.loc[other_year["contract"] == "CLH24", "expiration_date"] = "2024-02-21"
    with pytest.raises(SettlementError, match="CLH24: expiration 2024-02-21"):
        store.write_settlements(other_year)
    same_year = settle(days=DAYS[1:2], commodities=("CL",)).iloc[:1]
    same_year["contract"], same_year["expiration_date"] = "CLG24", "2024-01-23"
    same_year = pd.concat([same_year, settle(days=DAYS[2:3], commodities=("NG",))])
    with pytest.raises(SettlementError, match="more than one expiration_date"):
        store.write_settlements(same_year.assign(trade_date=DAYS[1]))
    assert snapshot(tmp_path) == before


def test_bad_commodity_name(tmp_path):
    df = settle(commodities=("CL",)).assign(commodity="C/L")
    with pytest.raises(ValueError, match=r"commodity names \['C/L'\] cannot be stored"):
        ParquetStore(tmp_path / "s").write_settlements(df)
    assert not (tmp_path / "s").exists()


# ---- panels -----------------------------------------------------------------------------------
def small_panel(S=None, mask="explicit", commodity="CL", dtype=float):
    dates = pd.DatetimeIndex(["2024-01-02", "2024-01-03", "2024-01-05", "2024-01-08"])
    F = np.array(
        [[70.1, 70.5, np.nan], [70.2, np.nan, 71.0], [np.nan, np.nan, np.nan], [70.4, 70.9, 71.3]],
        dtype=dtype,
    )
    ttm = np.where(np.isfinite(F), 0.05 + 0.08 * np.arange(3), np.nan).astype(dtype)
    contracts = np.array(
        [
            ["CLG24", "CLH24", ""],
            ["CLG24", "CLH24|CLJ24", "CLJ24"],
            ["", None, ""],
            ["CLH24", "CLJ24", "CLK24"],
        ],
        dtype=object,
    )
    m = np.isfinite(F)
    m[3, 2] = False  # observed price but masked out
    dt = np.diff(dates.values).astype("timedelta64[D]").astype(float) / 365.0
    return Panel(
        dates=dates,
        F_mkt=F,
        ttm=ttm,
        S=S,
        contracts=contracts,
        tenor_names=["c1", "c2", "c3"],
        dt=dt,
        mask=None if mask is None else m,
        commodity=commodity,
    )


def assert_panel_equal(got, want):
    assert isinstance(got, Panel)
    pd.testing.assert_index_equal(got.dates, pd.DatetimeIndex(want.dates), exact=True)
    for field in ("F_mkt", "ttm", "dt"):
        a, b = getattr(got, field), np.asarray(getattr(want, field))
        assert a.dtype == b.dtype and a.shape == b.shape, field
        np.testing.assert_array_equal(a, b, err_msg=field)  # NaN where NaN, else exact
    if want.S is None:
        assert got.S is None
    else:
        np.testing.assert_array_equal(got.S, np.asarray(want.S, float))
    if want.mask is None:
        assert got.mask is None
    else:
        assert got.mask.dtype == bool
        np.testing.assert_array_equal(got.mask, want.mask)
    assert got.contracts.dtype == object and got.contracts.shape == want.contracts.shape
    assert got.contracts.tolist() == np.asarray(want.contracts, dtype=object).tolist()
    assert got.tenor_names == list(want.tenor_names)
    assert got.commodity == want.commodity


def panel_file(name, year):
    """A panel partition's directory."""
    return os.path.join("panels", name, f"year={year}")


def sliced(panel, start=None, end=None):
    """What a range read of ``panel`` should give: its rows from start to end."""
    keep = np.ones(len(panel.dates), bool)
    if start is not None:
        keep &= panel.dates >= pd.Timestamp(start)
    if end is not None:
        keep &= panel.dates <= pd.Timestamp(end)
    rows = np.flatnonzero(keep)
    return panel._replace(
        dates=panel.dates[rows],
        F_mkt=panel.F_mkt[rows],
        ttm=panel.ttm[rows],
        S=None if panel.S is None else panel.S[rows],
        contracts=panel.contracts[rows],
        dt=panel.dt[rows[0] : rows[-1]],
        mask=None if panel.mask is None else panel.mask[rows],
    )


@pytest.mark.parametrize(
    "panel",
    [
        small_panel(),
        small_panel(S=np.array([70.0, np.nan, np.inf, 70.3]), commodity=None),
        small_panel(mask=None, dtype=np.float32),
    ],
    ids=["S None", "S given", "mask None float32"],
)
def test_panel_round_trip(tmp_path, panel):
    store = ParquetStore(tmp_path)
    paths = store.write_panel("cl_nearby", panel)
    assert dirs(paths, tmp_path) == [panel_file("cl_nearby", 2024)]
    assert store.panels() == ["cl_nearby"]
    got = store.read_panel("cl_nearby")
    assert_panel_equal(got, panel)
    # long-cell form: one row per date × tenor
    t = pq.read_table(paths[0], partitioning=None)
    assert t.num_rows == 12
    spot = ["spot"] if panel.S is not None else []
    assert t.column_names == ["date", "tenor", "price", "ttm", "mask", "contract", "dt", *spot]


def test_panel_round_trip_wti_and_custom_dt(tmp_path):
    store = ParquetStore(tmp_path)
    wti = load_wti_ss2000()
    store.write_panel("wti", wti)
    assert_panel_equal(store.read_panel("wti"), wti)
    odd = small_panel()._replace(dt=np.full(3, 1 / 52))  # not ACT/365: stored as given
    store.write_panel("weekly", odd)
    np.testing.assert_array_equal(store.read_panel("weekly").dt, odd.dt)
    assert store.panels() == ["weekly", "wti"]


def test_panel_partitioned_by_year_and_pruned(tmp_path, spy_reads):
    store = ParquetStore(tmp_path)
    wti = load_wti_ss2000()  # 1990-01-02 .. 1995-02-14
    written = store.write_panel("wti", wti)
    files = data_files(tmp_path)
    assert dirs(files, ".") == [panel_file("wti", y) for y in range(1990, 1996)]
    assert [str(p.relative_to(tmp_path)) for p in written] == files
    t = pq.read_table(written[3], partitioning=None).to_pandas()
    assert set(t["date"].dt.year) == {1993} and len(t) == 52 * 5

    spy_reads.clear()
    got = store.read_panel("wti", start="1993-03-01", end="1994-02-01")
    assert dirs(spy_reads, tmp_path) == [
        panel_file("wti", 1993),
        panel_file("wti", 1994),
    ]
    assert_panel_equal(got, sliced(wti, "1993-03-01", "1994-02-01"))
    assert got.dates[0] == pd.Timestamp("1993-03-02") and got.dt.shape == (len(got.dates) - 1,)

    spy_reads.clear()
    got = store.read_panel("wti", start="1995-01-01 12:00")  # times are dropped
    assert dirs(spy_reads, tmp_path) == [panel_file("wti", 1995)]
    assert_panel_equal(got, sliced(wti, "1995-01-01"))

    spy_reads.clear()
    got = store.read_panel("wti", end=pd.Timestamp("1990-01-09"))
    assert dirs(spy_reads, tmp_path) == [panel_file("wti", 1990)]
    assert list(got.dates.strftime("%Y-%m-%d")) == ["1990-01-02", "1990-01-09"]
    assert_panel_equal(got, sliced(wti, end="1990-01-09"))

    spy_reads.clear()
    with pytest.raises(ValueError, match=r"panel 'wti' \(years 1990-1995\) has no dates from"):
        store.read_panel("wti", start="1996-01-01")
    assert spy_reads == []
    with pytest.raises(ValueError, match="has no dates from 1993-03-03 to 1993-03-03"):
        store.read_panel("wti", start="1993-03-03", end="1993-03-03")  # a Wednesday
    assert dirs(spy_reads, tmp_path) == [panel_file("wti", 1993)]
    with pytest.raises(ValueError, match="after end"):
        store.read_panel("wti", start="1994-01-01", end="1993-01-01")
    with pytest.raises(ValueError, match="end: cannot read"):
        store.read_panel("wti", end="someday")


def test_panel_rewrite_is_idempotent_and_replaces_every_partition(tmp_path):
    store = ParquetStore(tmp_path)
    wti = load_wti_ss2000()
    store.write_panel("wti", wti)
    before = snapshot(tmp_path)
    store.write_panel("wti", wti)
    assert snapshot(tmp_path) == before  # the same bytes
    short = sliced(wti, start="1994-01-01")
    store.write_panel("wti", short)  # fewer years: the old partitions go
    files = data_files(tmp_path)  # the superseded files and their directories are gone
    assert dirs(files, ".") == [panel_file("wti", 1994), panel_file("wti", 1995)]
    assert sorted(os.listdir(tmp_path / "panels" / "wti")) == ["year=1994", "year=1995"]
    assert_panel_equal(store.read_panel("wti"), short)


def test_append_panel_adds_dates_idempotently(tmp_path):
    store = ParquetStore(tmp_path)
    wti = load_wti_ss2000()
    head, tail = sliced(wti, end="1993-06-30"), sliced(wti, start="1993-01-01")  # overlap
    written = store.append_panel("wti", head)  # nothing stored yet: a plain write
    assert [p.parent.name for p in written] == [f"year={y}" for y in range(1990, 1994)]
    moved = tail._replace(F_mkt=tail.F_mkt + 1.0)  # the overlapping dates are replaced
    store.append_panel("wti", moved)
    got = store.read_panel("wti")
    n = len(head.dates) - len(sliced(wti, "1993-01-01", "1993-06-30").dates)
    assert_panel_equal(
        got, wti._replace(F_mkt=np.concatenate([wti.F_mkt[:n], wti.F_mkt[n:] + 1.0]))
    )
    before = snapshot(tmp_path)
    store.append_panel("wti", moved)  # again: no duplicate dates, same bytes
    assert snapshot(tmp_path) == before
    with pytest.raises(ValueError, match=r"cannot append to panel 'wti': tenor_names"):
        store.append_panel("wti", tail._replace(tenor_names=list("abcde")))
    with pytest.raises(ValueError, match="S: the stored panel has a spot series"):
        store.append_panel("wti", tail._replace(S=None))
    assert snapshot(tmp_path) == before


def test_append_panel_dt_and_mask(tmp_path):
    """dt between dates from one panel is that panel's; across the seam, ACT/365."""
    p = small_panel()._replace(dt=np.full(3, 1 / 52))
    first = sliced(p, end="2024-01-03")._replace(dt=np.array([0.5]))  # rows 0, 1
    rest = sliced(p, start="2024-01-03")._replace(mask=None)  # rows 1, 2, 3
    store = ParquetStore(tmp_path)
    store.write_panel("p", first)
    store.append_panel("p", rest)
    got = store.read_panel("p")
    # row 1 comes from `rest` now: 0 -> 1 crosses the seam; 1 -> 2 -> 3 are rest's
    np.testing.assert_array_equal(got.dt, [1 / 365, 1 / 52, 1 / 52])
    # one mask given: the merged mask is explicit; rest's rows get its finite prices
    np.testing.assert_array_equal(got.mask[0], p.mask[0])
    np.testing.assert_array_equal(got.mask[1:], np.isfinite(p.F_mkt[1:]))
    store.write_panel("q", first._replace(mask=None))
    store.append_panel("q", rest)
    assert store.read_panel("q").mask is None
    assert store.panels() == ["p", "q"]


@pytest.mark.parametrize("existing", [True, False], ids=["replace", "new"])
@pytest.mark.parametrize("fail", ["file", "commit"])
def test_failed_panel_write_leaves_store_unchanged(tmp_path, monkeypatch, existing, fail):
    store = ParquetStore(tmp_path / "s")
    store.write_settlements(settle(days=DAYS[:1]))
    if existing:
        store.write_panel("p", small_panel())
    before = snapshot(tmp_path)
    if fail == "file":
        flaky_writes(monkeypatch, 2)  # the second year's file
    else:

        def no_commit(*args, **kwargs):
            raise OSError("disk full")

        monkeypatch.setattr(os, "replace", no_commit)
    with pytest.raises(OSError, match="disk full"):
        store.write_panel("p", load_wti_ss2000())  # six year partitions
    monkeypatch.undo()
    assert snapshot(tmp_path) == before  # same bytes, no scratch files or directories left
    if existing:
        assert store.panels() == ["p"]
        assert_panel_equal(store.read_panel("p"), small_panel())
    else:
        assert store.panels() == [] and not (tmp_path / "s" / "panels").exists()


def test_panel_overwrite_is_atomic(tmp_path, monkeypatch):
    store = ParquetStore(tmp_path)
    store.write_panel("p", small_panel())
    before = snapshot(tmp_path)

    def fail(*args, **kwargs):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="rename failed"):
        store.write_panel("p", small_panel(S=np.arange(4.0)))
    with pytest.raises(OSError, match="rename failed"):
        store.append_panel("p", small_panel()._replace(F_mkt=small_panel().F_mkt + 1.0))
    store.append_panel("p", small_panel())  # changes nothing: nothing to commit
    monkeypatch.undo()
    assert snapshot(tmp_path) == before
    assert_panel_equal(store.read_panel("p"), small_panel())


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "a\\b", "..", ".", "x\0y", "a=b", "p.tmp-" + "0" * 32, "p.bak-" + "f" * 32, 3],
)
def test_bad_panel_name(tmp_path, name):
    store = ParquetStore(tmp_path)
    with pytest.raises(ValueError, match="invalid panel name"):
        store.write_panel(name, small_panel())
    with pytest.raises(ValueError, match="invalid panel name"):
        store.read_panel(name)
    assert not tmp_path.joinpath("panels").exists()


def test_panel_errors(tmp_path):
    store = ParquetStore(tmp_path)
    with pytest.raises(FileNotFoundError, match="no panel 'nope'"):
        store.read_panel("nope")
    p = small_panel()
    with pytest.raises(ValueError, match="ttm has shape"):
        store.write_panel("p", p._replace(ttm=p.ttm[:, :2]))
    with pytest.raises(ValueError, match="tenor_names"):
        store.write_panel("p", p._replace(tenor_names=["a", "b"]))
    with pytest.raises(ValueError, match="S has shape"):
        store.write_panel("p", p._replace(S=np.ones(3)))
    with pytest.raises(ValueError, match="contracts must hold str"):
        store.write_panel("p", p._replace(contracts=np.where(p.mask, p.contracts, np.nan)))
    with pytest.raises(ValueError, match="mask must be a bool array"):
        store.write_panel("p", p._replace(mask=p.mask.astype(int)))
    with pytest.raises(ValueError, match="dates has 3 dates"):
        store.write_panel("p", p._replace(dates=p.dates[:3]))
    with pytest.raises(ValueError, match=r"dt has shape \(4,\), expected \(3,\)"):
        store.write_panel("p", p._replace(dt=np.ones(4)))
    with pytest.raises(ValueError, match=r"strictly increasing; date 2 \(2024-01-03"):
        store.write_panel("p", p._replace(dates=p.dates[[0, 1, 1, 3]]))
    with pytest.raises(ValueError, match=r"no dates \(T = 0\)"):
        empty = {f: getattr(p, f)[:0] for f in ("dates", "F_mkt", "ttm", "contracts", "mask")}
        store.write_panel("p", p._replace(dt=p.dt[:0], **empty))
    assert store.panels() == [] and not (tmp_path / "panels").exists()
    # not a panel: a plain Parquet file where a partition of a store without manifest is
    plain = tmp_path / panel_file("plain", 2024) / "data.parquet"
    plain.parent.mkdir(parents=True)
    pq.write_table(pa.table({"x": [1.0, 2.0]}), plain)
    with pytest.raises(ValueError, match="not an ssjax panel file"):
        store.read_panel("plain")
    # a partition holding another year's dates (the manifest lists it under 2023)
    store.write_panel("moved", p)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["panels"]["moved"]["2023"] = manifest["panels"]["moved"].pop("2024")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="outside the partition's year 2023"):
        store.read_panel("moved")
    assert store.panels() == ["moved", "plain"]
    report = store.verify()
    assert [x.split(":")[0] for x in report.bad_schema] == [
        manifest["panels"]["moved"]["2023"]["file"],  # sorted by panel name
        "panels/plain/year=2024/data.parquet",
    ]


# ---- the manifest, verify and old stores ---------------------------------------------------
def test_manifest_versions_and_idempotent_writes_commit_nothing(tmp_path):
    store = ParquetStore(tmp_path)
    store.write_settlements(settle(days=DAYS[:2]))
    store.write_panel("p", small_panel())
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["version"] == 2
    assert sorted(manifest["settlements"]) == ["CL", "NG"] and list(manifest["panels"]) == ["p"]
    assert sorted(manifest_files(tmp_path).values()) == data_files(tmp_path)
    before = snapshot(tmp_path)
    store.write_settlements(settle(days=DAYS[1:2]))  # rows already stored: nothing to commit
    store.write_panel("p", small_panel())
    assert snapshot(tmp_path) == before
    written = store.write_settlements(settle(days=DAYS[2:], commodities=("CL",)))
    after = json.loads((tmp_path / "manifest.json").read_text())
    assert after["version"] == 3 and after["panels"] == manifest["panels"]
    assert after["settlements"]["NG"] == manifest["settlements"]["NG"]  # untouched: same files
    assert dirs(written, tmp_path) == [part("CL", 2024)] and "data-v3-" in written[0].name


def test_verify_reports_and_repairs(tmp_path):
    store = ParquetStore(tmp_path)
    assert ParquetStore(tmp_path / "none").verify() == store_mod.StoreReport(version=0)
    assert not (tmp_path / "none").exists()
    store.write_settlements(settle())
    store.write_panel("p", small_panel())
    report = store.verify()
    assert report.ok and report.version == 2 and report.partitions == 5
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    files = manifest_files(tmp_path)
    (tmp_path / files["settlements", "CL", 2023]).unlink()  # missing
    (tmp_path / files["settlements", "CL", 2024]).write_bytes(b"garbage")  # unreadable
    # unordered: the NG 2023 rows reversed, the checksum updated to match
    ng = pq.read_table(tmp_path / files["settlements", "NG", 2023])
    ng_file = tmp_path / files["settlements", "NG", 2023]
    ng_file.unlink()
    pq.write_table(ng.take(list(range(ng.num_rows))[::-1]), ng_file)
    manifest["settlements"]["NG"]["2023"]["sha256"] = None
    # bad schema: a column dropped (a changed checksum alone would read "unreadable")
    ng24 = tmp_path / files["settlements", "NG", 2024]
    table = pq.read_table(ng24)
    ng24.unlink()
    pq.write_table(table.drop(["volume"]), ng24)
    manifest["settlements"]["NG"]["2024"]["sha256"] = None
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    strays = [
        tmp_path / part("CL", 2023) / "data-v9-deadbeef.parquet",  # a killed write's file
        tmp_path / "manifest.json.tmp-0123",  # and its manifest
        tmp_path / "panels" / "old" / "year=2020" / "data.parquet",  # an old directory
    ]
    for p in strays:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    report = store.verify()
    assert not report.ok and report.partitions == 5
    assert report.missing == (files["settlements", "CL", 2023],)
    assert [x.split(":")[0] for x in report.unreadable] == [files["settlements", "CL", 2024]]
    assert [x.split(":")[0] for x in report.unordered] == [files["settlements", "NG", 2023]]
    assert [x.split(":")[0] for x in report.bad_schema] == [files["settlements", "NG", 2024]]
    want = sorted(str(p.relative_to(tmp_path)) for p in strays)
    assert sorted(report.stray) == want and report.removed == ()
    assert all(p.exists() for p in strays)
    report = store.verify(repair=True)
    assert sorted(report.removed) == want and not any(p.exists() for p in strays)
    assert not (tmp_path / "panels" / "old").exists()  # emptied directories go too
    assert report.missing and not store.verify().stray  # the rest is only reported


def legacy_store(root):
    """A store as the module wrote it before the manifest, with leftovers of killed writes."""
    store = ParquetStore(root)
    store.write_settlements(settle())
    store.write_panel("p", small_panel())
    for f in data_files(root):
        os.replace(root / f, root / os.path.dirname(f) / "data.parquet")
    (root / "manifest.json").unlink()
    (root / ".lock").unlink()
    token = "ab" * 16
    leftovers = [
        root / part("CL", 2023) / f"data.parquet.tmp-{token}",
        root / part("NG", 2024) / f"data.parquet.bak-{token}",
        root / "panels" / f"p.bak-{token}" / "year=2024" / "data.parquet",
    ]
    for p in leftovers:
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / part("CL", 2023) / "data.parquet", p)
    return store, leftovers


def test_store_without_manifest_is_read_and_migrated_by_the_first_write(tmp_path):
    store, leftovers = legacy_store(tmp_path)
    pd.testing.assert_frame_equal(store.read_settlements(), expected(settle()))
    assert_panel_equal(store.read_panel("p"), small_panel())
    assert store.panels() == ["p"] and store.commodities() == ["CL", "NG"]
    report = store.verify()
    assert report.version == 0 and report.partitions == 5
    assert sorted(report.stray) == sorted(str(p.relative_to(tmp_path)) for p in leftovers)
    store.write_settlements(settle(days=DAYS[3:], commodities=("CL",), bump=1.0))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["version"] == 1
    assert manifest["panels"]["p"]["2024"]["file"] == "panels/p/year=2024/data.parquet"
    assert store.verify().ok and not any(p.exists() for p in leftovers)
    want = expected(settle())
    last = (want["commodity"] == "CL") & (want["trade_date"] == DAYS[3])
    want.loc[last, "settlement_price"] += 1.0
    pd.testing.assert_frame_equal(store.read_settlements(), want)
    assert_panel_equal(store.read_panel("p"), small_panel())


def test_lost_manifest_is_refused(tmp_path):
    store = ParquetStore(tmp_path)
    store.write_settlements(settle(days=DAYS[:1]))
    store.write_settlements(settle(days=DAYS[1:2]))
    (tmp_path / "manifest.json").unlink()
    before = snapshot(tmp_path)
    for call in (store.read_settlements, store.verify, lambda: store.write_settlements(settle())):
        with pytest.raises(ValueError, match="manifest.json is missing but the store holds files"):
            call()
    assert snapshot(tmp_path) == before


def test_reader_retries_when_a_writer_deletes_its_files(tmp_path, monkeypatch):
    """A read that took the manifest just before a commit finds its files gone: it starts
    again from the new manifest (and never mixes the two versions)."""
    store = ParquetStore(tmp_path)
    store.write_settlements(settle(days=DAYS[:2]))
    real, calls = pq.read_table, []

    def racing(source, *args, **kwargs):
        calls.append(source)
        if len(calls) == 1:  # between the reader's manifest and its first file: a write
            monkeypatch.setattr(pq, "read_table", real)
            ParquetStore(tmp_path).write_settlements(settle(bump=1.0))
            monkeypatch.setattr(pq, "read_table", racing)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", racing)
    got = store.read_settlements()
    monkeypatch.undo()
    pd.testing.assert_frame_equal(got, expected(settle(bump=1.0)))
    assert not Path(calls[0]).exists() and len(calls) == 1 + 4


# ---- the lock ---------------------------------------------------------------------------------
@pytest.mark.parametrize("flock", [True, False], ids=["flock", "exclusive-create"])
def test_write_times_out_while_another_writer_holds_the_lock(tmp_path, monkeypatch, flock):
    if not flock:
        monkeypatch.setattr(store_mod, "fcntl", None)
    lock = tmp_path / (".lock" if flock else ".lock.excl")
    holder, waiter = ParquetStore(tmp_path), ParquetStore(tmp_path, timeout=0.1)
    holder.write_settlements(settle(days=DAYS[:1]))
    before = snapshot(tmp_path)
    with holder._locked():
        t0 = time.monotonic()
        with pytest.raises(
            TimeoutError, match=re.escape(f"0.1 s waiting for the write lock {lock}")
        ):
            waiter.write_settlements(settle())
        assert 0.1 <= time.monotonic() - t0 < 2
        with pytest.raises(TimeoutError, match="write lock"):
            waiter.append_panel("p", small_panel())
        with pytest.raises(TimeoutError, match="write lock"):
            waiter.verify()
        assert waiter.read_settlements().shape == (4, 7)  # readers take no lock
    assert snapshot(tmp_path) == before
    waiter.write_settlements(settle())  # released
    pd.testing.assert_frame_equal(waiter.read_settlements(), expected(settle()))
    assert lock.exists() == flock  # the exclusive-create lock file goes when released


def start_worker(root, calls, **kwargs):
    """Start a process running ``calls`` on the store at root (see store_worker)."""
    proc = store_worker.context().Process(
        target=store_worker.run, args=(str(root), calls), kwargs=kwargs
    )
    proc.start()
    return proc


def test_concurrent_writers_lose_no_rows(tmp_path):
    """Two processes append 10 batches each to the same partition at the same moment."""
    days = pd.bdate_range("2024-01-02", periods=20)
    batches = [
        pd.DataFrame(
            {
                "trade_date": [d, d],
                "commodity": "CL",
                "contract": ["CLM24", "CLZ24"],
                "expiration_date": ["2024-05-20", "2024-11-19"],
                "settlement_price": [70.0 + i, 71.0 + i],
            }
        )
        for i, d in enumerate(days)
    ]
    go = store_worker.context().Event()
    procs = [
        start_worker(
            tmp_path / "store", [("write_settlements", (b,)) for b in batches[k::2]], go=go
        )
        for k in range(2)
    ]
    go.set()  # both write at the same moment
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = ParquetStore(tmp_path / "store")
    got = store.read_settlements()
    pd.testing.assert_frame_equal(got, expected(pd.concat(batches)))
    report = store.verify()
    assert report.ok and report.version == 20 and not report.stray


# ---- killed writers -------------------------------------------------------------------------
PHASES = ["file", "manifest", "commit", "cleanup"]  # the store's crash points, in order
STRAYS = {"file": 1, "manifest": 5, "commit": 2, "cleanup": 1}  # left by a kill there


def settlement_case(root):
    """Old: CL and NG 2023; the write changes both and adds 2024 (4 files, 2 superseded)."""
    store = ParquetStore(root)
    store.write_settlements(settle(days=DAYS[:2]))
    return store, [("write_settlements", (settle(bump=1.0),))]


def panel_case(root):
    """Old: WTI to mid-1993; the append changes 1992-1993 and adds 1994-1995 (1990-1991
    kept): 4 files written, 2 superseded."""
    wti = load_wti_ss2000()
    store = ParquetStore(root)
    store.write_panel("wti", sliced(wti, end="1993-06-30"))
    tail = sliced(wti, start="1992-01-01")
    return store, [("append_panel", ("wti", tail._replace(F_mkt=tail.F_mkt + 1.0)))]


CASES = {"settlements": settlement_case, "panels": panel_case}


def state(store, kind):
    return store.read_settlements() if kind == "settlements" else store.read_panel("wti")


def assert_same_state(kind, got, want):
    if kind == "settlements":
        pd.testing.assert_frame_equal(got, want)
    else:
        assert_panel_equal(got, want)


@pytest.fixture(scope="module")
def killed_writes(tmp_path_factory):
    """One process per (kind, phase), all started at once: each runs its case's write and
    kills itself at the phase."""
    tmp = tmp_path_factory.mktemp("killed")
    cases = {}
    for kind, make in CASES.items():
        ref, calls = make(tmp / f"{kind}-ref")
        old = state(ref, kind)
        for method, args in calls:
            getattr(ref, method)(*args)
        new = state(ref, kind)
        for phase in PHASES:
            store, _ = make(tmp / f"{kind}-{phase}")
            proc = start_worker(store.root, calls, crash_at=phase)
            cases[kind, phase] = (store, proc, old, new)
    yield cases
    for _, proc, _, _ in cases.values():
        if proc.is_alive():
            proc.kill()
        proc.join()


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("kind", list(CASES))
def test_killed_write_leaves_old_or_new_state(killed_writes, kind, phase):
    store, proc, old, new = killed_writes[kind, phase]
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL  # died at the phase
    # a reader sees the whole old state before the commit, the whole new one after it
    assert_same_state(kind, state(store, kind), old if PHASES.index(phase) < 2 else new)
    report = store.verify()
    assert len(report.stray) == STRAYS[phase] and report.removed == ()
    assert not (report.missing or report.unreadable or report.bad_schema or report.unordered)
    assert all((store.root / f).exists() for f in report.stray)
    if kind == "settlements":  # verify(repair=True) removes the leftovers ...
        assert store.verify(repair=True).removed == report.stray
        assert not any((store.root / f).exists() for f in report.stray)
    # ... and so does the next write (the lock died with the process)
    store.timeout = 5.0
    if kind == "settlements":
        store.write_settlements(settle(bump=3.0))
        want = expected(settle(bump=3.0))
    else:
        want = load_wti_ss2000()
        store.write_panel("wti", want)
    assert_same_state(kind, state(store, kind), want)
    report = store.verify()
    assert report.ok and not report.stray and len(data_files(store.root)) == report.partitions
