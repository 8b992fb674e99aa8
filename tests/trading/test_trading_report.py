"""experiments/trading_report.py --quick: the run folder's files and finite numbers."""

import importlib.util
import json
import math
import sys

import numpy as np
import pandas as pd
from repo_paths import REPO

SCRIPT = REPO / "experiments" / "trading_report.py"


def _load(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # it imports model_comparison
    spec = importlib.util.spec_from_file_location("trading_report", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "trading_report", mod)  # dataclasses look it up
    spec.loader.exec_module(mod)
    return mod


def test_trading_report_quick(tmp_path, monkeypatch):
    mod = _load(monkeypatch)
    out = tmp_path / "trading"
    assert mod.main(["--quick", "--out", str(out)]) == 0

    for name in (
        "sweep.csv", "sweep.md", "summary.csv", "summary.md", "caveats.md", "config.json",
        "equity_default.png", "sharpe_vs_zin.png", "equity_default.csv",
        "calibrations_wti.csv", "calibrations_wti.md", "holdout.csv", "lags.csv",
        "yearly.csv",
    ):  # fmt: skip
        assert (out / name).stat().st_size > 0, name

    sweep = pd.read_csv(out / "sweep.csv")
    q = mod.QUICK
    assert len(sweep) == 2 * len(q["z_in"]) * len(q["cost_ticks"])
    assert set(sweep["sizing"]) == {"vol_target", "qp"}
    for col in ("sharpe", "max_drawdown", "turnover", "total_net", "total_cost", "n_trades"):
        assert np.isfinite(sweep[col]).all(), col
    assert (sweep["max_drawdown"] >= 0).all() and (sweep["n_trades"] > 0).all()
    assert (sweep.loc[sweep["cost_ticks"] == 0, "total_cost"] == 0).all()
    assert (sweep.loc[sweep["cost_ticks"] > 0, "total_cost"] > 0).all()
    assert (sweep["qp_failures"] == 0).all()
    np.testing.assert_allclose(
        sweep["total_net"], sweep["total_gross"] - sweep["total_cost"], atol=1e-12
    )

    # the Sharpe's standard error is the library's (Lo 2002) and the halves split the dates
    assert (sweep["sharpe_se"] > 0).all() and np.isfinite(sweep["sharpe_h1"]).all()
    assert set(sweep["lag"]) == set(q["lags"]) and set(sweep["book"]) == set(q["books"])
    lags = pd.read_csv(out / "lags.csv")
    assert sorted(set(lags["lag"])) == [0, 1, 2] and len(lags) == 6
    hold = pd.read_csv(out / "holdout.csv")
    assert len(hold) == 2 and hold["deflated_sharpe_prob"].between(0, 1).all()
    assert "Is there an edge?" in (out / "summary.md").read_text()
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 2 and np.isfinite(summary["default_sharpe"]).all()
    for name in ("summary.md", "sweep.md", "caveats.md"):
        assert "multiple testing" in (out / name).read_text(), name

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["quick"] is True and cfg["seconds"] > 0
    assert "load_wti_ss2000_contracts" in cfg["data"]
    assert all(math.isfinite(v) for v in cfg["metrics"].values())
