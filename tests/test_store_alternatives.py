"""Smoke run of experiments/store_alternatives.py --quick (ParquetStore against other stores).

ParquetStore and plain pyarrow.dataset always run; Delta Lake and DuckDB only where
``deltalake``/``duckdb`` are installed (CI does not install them).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

EXP = Path(__file__).resolve().parents[1] / "experiments"


def _load(monkeypatch):
    monkeypatch.syspath_prepend(str(EXP))  # the writer processes import the script by name
    spec = importlib.util.spec_from_file_location(
        "store_alternatives", EXP / "store_alternatives.py"
    )
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "store_alternatives", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    ("backends", "needs"),
    [
        (["parquetstore", "pyarrow"], None),
        (["delta", "delta-merge"], "deltalake"),
        (["duckdb"], "duckdb"),
    ],
)
def test_quick_run(backends, needs, tmp_path, monkeypatch):
    if needs is not None:
        pytest.importorskip(needs)
    mod = _load(monkeypatch)
    res = mod.main(["--quick", "--backends", *backends, "--out", str(tmp_path)])
    assert res["backends"] == backends
    saved = json.loads((tmp_path / "store_alternatives.json").read_text())
    assert saved["backends"] == backends
    text = (tmp_path / "store_alternatives.md").read_text()
    for head in ("## Speed and size: copper", "## Two concurrent writers", "## Writers killed"):
        assert head in text
    for name in backends:
        speed = res["datasets"]["copper"]["backends"][name]
        assert speed["correct"] and speed["rows"] == 29_435 + 5  # 5 new rows in the upsert
        conc, kill = res["concurrency"][name], res["kills"][name]
        assert kill["old"] + kill["new"] + kill["mixed"] + kill["unreadable"] == kill["trials"]
        if name != "pyarrow":  # the transactional stores: no lost write, old or new state
            assert conc["readable"] is True and conc["failed"] == conc["lost"] == 0
            assert kill["mixed"] == kill["unreadable"] == 0
            assert kill["writable"] == kill["verify_whole"] == kill["trials"]
        assert res["code"]["adapter"][name] > 0
    if "parquetstore" in backends:  # writers queue on the lock: nothing raises
        assert res["concurrency"]["parquetstore"]["retries"] == 0
        assert res["code"]["library"]["settlements_code"] < res["code"]["library"]["code"]
