"""The main job: config handling and the whole pipeline from the command line."""

import json
import re
import sys
import time

import numpy as np
import pandas as pd
import pytest

import ssjax
from ssjax.app.cli import main
from ssjax.app.pipeline import (
    DEFAULTS,
    check_config,
    check_data,
    load_config,
    merge_config,
    orders_at_t_star,
    run_pipeline,
    to_toml,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ssjax.trading.engine import Order, TradeEngine, TradingConfig, prepare_trading_inputs


def test_config_file_overrides_and_unknown_keys(tmp_path):
    p = tmp_path / "cfg.toml"
    p.write_text('[engine]\nsizing = "qp"\ngamma = 3.0\n[trading]\nz_in = 1.5\n')
    cfg = load_config(p)
    assert cfg["engine"]["sizing"] == "qp" and cfg["engine"]["gamma"] == 3.0
    assert cfg["trading"]["z_in"] == 1.5 and cfg["trading"]["z_out"] == DEFAULTS["trading"]["z_out"]
    with pytest.raises(ValueError, match="unknown key 'zin' in \\[trading\\]"):
        merge_config(DEFAULTS, {"trading": {"zin": 1.0}})
    with pytest.raises(ValueError, match="unknown section \\[trade\\]"):
        merge_config(DEFAULTS, {"trade": {}})
    bad = tmp_path / "bad.toml"
    bad.write_text("[engine\n")
    with pytest.raises(ValueError, match="bad.toml"):
        load_config(bad)


@pytest.mark.parametrize(
    "over, msg",
    [
        ({"backtest": {"enabled": "no"}}, "[backtest] enabled: must be true or false, got 'no'"),
        ({"backtest": {"recalibrate_every": 0}}, "recalibrate_every must be an integer >= 1"),
        ({"backtest": {"min_window": 60.5}}, "min_window must be an integer >= 1"),
        ({"backtest": {"warm_start": "yes"}}, "warm_start must be True or False"),
        ({"trading": {"fee": -0.01}}, "[trading] TradingConfig.fee must be >= 0 (a cost)"),
        ({"trading": {"sigma_window": 60.5}}, "TradingConfig.sigma_window must be an integer"),
        ({"trading": {"z_in": "two"}}, "TradingConfig.z_in must be a number, got 'two'"),
        ({"trading": {"z_in": 1.0, "z_out": 2.0}}, "need 0 <= z_out < z_in"),
        ({"trading": {"execution_lag": -1}}, "TradingConfig.execution_lag must be >= 0"),
        ({"engine": {"sizing": "kelly"}}, "[engine] sizing must be 'vol_target' or 'qp'"),
        ({"engine": {"vol_target": "10%"}}, "[engine] vol_target: must be a number"),
        ({"engine": {"top_k": -1}}, "[engine] top_k: must be an integer >= 0"),
        ({"model": {"method": "OLS"}}, "[model] method: must be MLE, EM or hybrid"),
        ({"model": {"shared_noise": 1}}, "[model] shared_noise: must be true or false"),
        ({"data": {"source": "nowhere.csv"}}, "[data] source: no such file"),
        ({"data": {"ranks": [5, 1]}}, "[data] ranks: must be a non-empty increasing list"),
        ({"data": {"t_star": "someday"}}, "[data] t_star: is not a date"),
        ({"data": {"roll_days": -2}}, "[data] roll_days: must be an integer >= 0"),
        ({"output": {"folder": ""}}, "[output] folder: must be a path"),
    ],
)
def test_every_setting_is_checked_before_any_work(tmp_path, over, msg):
    """One rule per case: refused by check_config with one line naming the key, and by
    run_pipeline before anything is computed or written."""
    out = str(tmp_path / "x")
    cfg = merge_config(DEFAULTS, {**over, "output": {"folder": out, **over.get("output", {})}})
    with pytest.raises(ValueError, match=re.escape(msg)):
        check_config(cfg)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=re.escape(msg)):
        run_pipeline(cfg)
    assert time.perf_counter() - t0 < 5.0  # refused before the fit (which takes ~10 s)
    assert not (tmp_path / "x").exists()  # nothing written


def test_settings_checked_against_the_data(tmp_path, capsys):
    """What needs the data (t* within it, a backtest window shorter than t*) is checked once
    they are loaded, before the fit; --check-config runs those checks and exits."""
    cfg = merge_config(DEFAULTS, {"data": {"t_star": "2030-01-01"}})
    with pytest.raises(ValueError, match=r"\[data\] t_star: t_star 2030-01-01 is after the last"):
        check_data(cfg)
    cfg = merge_config(DEFAULTS, {"backtest": {"min_window": 300}})
    with pytest.raises(ValueError, match=r"\[backtest\] min_window: 300 leaves no trading date"):
        check_data(cfg)
    assert main(["--check-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("settings OK: bundled") and "t* = 1995-02-14" in out
    assert "backtest trades from 1992-02-18" in out
    with pytest.raises(SystemExit, match="need 0 <= z_out < z_in"):
        main(["--z-in", "1", "--z-out", "2", "--print-config"])
    with pytest.raises(SystemExit, match="no such file"):
        main(["--check-config", "--data", str(tmp_path / "missing.csv")])


def _head(panel, n):
    return panel._replace(
        dates=panel.dates[:n], F_mkt=panel.F_mkt[:n], ttm=panel.ttm[:n],
        contracts=panel.contracts[:n], dt=panel.dt[: n - 1], mask=panel.mask[:n],
    )  # fmt: skip


def test_orders_t_are_the_backtests_decision(tmp_path):
    """One rule, live and backtested: orders_t at t* are what the backtest, run one date
    further, fills at the next settlement (execution_lag = 1), from the calibration of t*
    itself (the schedule is anchored there); with execution_lag = 0 they are the backtest's
    fills at t*."""
    from ssjax.trading.backtest import walk_forward
    from ssjax.trading.settings import WalkForwardSettings

    over = {"data": {"t_star": "1994-01-25"}, "backtest": {"recalibrate_every": 26},
            "output": {"folder": str(tmp_path / "lag1")}}  # fmt: skip
    cfg = merge_config(DEFAULTS, over)
    res = run_pipeline(cfg)
    t = int(res.fit.t_star)
    assert res.decision.orders, "the test needs a date with orders"
    saved = json.loads((tmp_path / "lag1" / "orders_t.json").read_text())
    assert saved["theta_date"] == "1994-01-25" and saved["execution_lag"] == 1
    assert [(o["tenor_id"], o["side"]) for o in saved["orders"]] == [
        (o.tenor_id, o.side) for o in res.decision.orders
    ]
    b = ssjax.datasets.load_wti_ss2000_contracts()
    start = res.backtest.info["start"]
    assert (t - start) % 26 == 0  # t* is a calibration date
    walk = WalkForwardSettings(min_window=104, recalibrate_every=26, start=start)
    trading = check_config(cfg).trading
    nxt = walk_forward(_head(b.panel, t + 2), b.settlements, walk, trading=trading)
    fills = nxt.trades[(nxt.trades["date"] == b.panel.dates[t + 1])]
    assert set(fills["kind"]) == {"order"}  # no roll on the next date
    assert (fills["decided"] == b.panel.dates[t]).all()
    got = [(int(r.tenor_id), r.side, r.size) for r in fills.itertuples()]
    want = [(o.tenor_id, o.side, o.size) for o in res.decision.orders]
    assert [g[:2] for g in got] == [w[:2] for w in want]
    # to the fit's tolerance: the longer panel pads its windows to another length, which
    # changes the summation order of the log-likelihood (Θ agrees to ~1e-10)
    np.testing.assert_allclose([g[2] for g in got], [w[2] for w in want], rtol=1e-8)

    # execution_lag = 0: the orders are the fills the backtest books at t*
    over["trading"] = {"execution_lag": 0}
    over["output"] = {"folder": str(tmp_path / "lag0")}
    res0 = run_pipeline(merge_config(DEFAULTS, over))
    at_t = res0.backtest.trades[(res0.backtest.trades["date"] == b.panel.dates[t])
                                & (res0.backtest.trades["kind"] == "order")]  # fmt: skip
    assert [(int(r.tenor_id), r.side, r.size) for r in at_t.itertuples()] == [
        (o.tenor_id, o.side, o.size) for o in res0.decision.orders
    ]


def test_print_config_applies_flags_and_reads_back(tmp_path, capsys):
    """--print-config prints valid TOML that --config reads back unchanged."""
    assert main(["--print-config", "--sizing", "qp", "--z-in", "2.5", "--ranks", "1,3"]) == 0
    text = capsys.readouterr().out
    cfg = tomllib.loads(text)
    assert cfg["engine"]["sizing"] == "qp" and cfg["trading"]["z_in"] == 2.5
    assert cfg["data"]["ranks"] == [1, 3]
    p = tmp_path / "printed.toml"
    p.write_text(text)
    assert load_config(p) == merge_config(DEFAULTS, cfg) == cfg
    assert to_toml(load_config(p)) == text


def test_main_job_writes_orders_and_backtest_report(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["--output-dir", str(out), "--recalibrate-every", "52", "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "Schwartz-Smith two-factor model results" in text
    assert "mispricing at t* = 1995-02-14" in text and "orders_t (vol_target" in text
    assert "backtest metrics:" in text
    table = pd.read_csv(out / "mispricing_t.csv", index_col=0)
    assert list(table.index) == ["CL1", "CL5", "CL9", "CL13", "CL17"]
    assert {"F_mkt", "F_model", "mispricing", "z", "signal", "target_w"} <= set(table.columns)
    orders = json.loads((out / "orders_t.json").read_text())
    assert orders["date"] == "1995-02-14" and isinstance(orders["orders"], list)
    assert orders["start_book"] == "backtest" and len(orders["w_prev"]) == 5
    assert orders["z_basis"].startswith("model filtered-residual")
    theta = json.loads((out / "theta.json").read_text())
    assert set(theta) >= {"kappa", "sigma_x", "sigma_y", "rho", "mu", "meas_sd"}
    assert (out / "backtest" / "equity.png").stat().st_size > 0
    assert (out / "backtest" / "metrics.json").exists()
    # drift alerts over the backtest's recalibrations, in the report
    alerts = pd.read_csv(out / "drift_alerts.csv")
    assert {"window_end", "kind", "name", "z", "threshold", "reason"} <= set(alerts.columns)
    assert "Drift alerts over the" in (out / "diagnostics.txt").read_text()
    params = pd.read_csv(out / "backtest" / "params.csv")
    assert {"se_kappa", "se_rho", "oos_z", "oos_n", "oos_from"} <= set(params.columns)
    assert np.all(np.isfinite(params["se_kappa"])) and np.all(params["oos_n"][1:] > 0)
    # positions survive rolls: some roll close is followed, the same date, by an order that
    # re-opens the same side in the tenor's new contract, and a round trip spans it
    trades = pd.read_csv(out / "backtest" / "trades.csv", parse_dates=["date"])
    closes = trades[trades["kind"] == "roll_close"]
    carried = [
        r for r in closes.itertuples()
        if ((trades["date"] == r.date) & (trades["tenor_id"] == r.tenor_id)
            & (trades["kind"] == "order") & (trades["side"] != r.side)
            & (trades["contract"] != r.contract)).any()
    ]  # fmt: skip
    assert carried, "no position was carried across a roll"
    trips = pd.read_csv(out / "backtest" / "round_trips.csv", parse_dates=["opened", "closed"])
    d, tenor = carried[0].date, carried[0].tenor
    assert ((trips["tenor"] == tenor) & (trips["opened"] < d) & (trips["closed"] > d)).any()
    for name in ("yearly.csv", "round_trips.csv"):
        assert (out / "backtest" / name).stat().st_size > 0
    metrics = json.loads((out / "backtest" / "metrics.json").read_text())
    assert {"sharpe_se", "sortino", "calmar", "max_drawdown_periods", "net_exposure", "beta",
            "correlation"} <= set(metrics)  # fmt: skip


def test_main_job_t_star_and_no_backtest(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--output-dir", str(out), "--no-backtest", "--t-star", "1993-06-29", "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "t* = 1993-06-29" in text and "backtest metrics" not in text
    assert "from a flat book (no backtest)" in text
    assert not (out / "backtest").exists()
    # without the backtest orders_t start from a flat book: every order is a whole target
    orders = json.loads((out / "orders_t.json").read_text())
    assert orders["start_book"] == "flat" and orders["w_prev"] == [0.0] * 5
    table = pd.read_csv(out / "mispricing_t.csv", index_col=0)
    assert (table["w_prev"] == 0).all()
    want = [(i, w) for i, w in enumerate(table["target_w"]) if abs(w) > 1e-8]
    got = [(o["tenor_id"], o["size"] * (1 if o["side"] == "BUY" else -1)) for o in orders["orders"]]
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([w for _, w in got], [w for _, w in want], rtol=1e-12)
    with pytest.raises(SystemExit, match="unknown key"):
        bad = tmp_path / "x.toml"
        bad.write_text("[model]\nmethd = 'EM'\n")
        main(["--config", str(bad)])


def test_main_job_orders_start_from_the_backtest_book(tmp_path, capsys):
    """At a t* where the backtest holds a book, orders_t rebalance that book (they do not
    rebuild it from flat), and the backtest's expiry rule applies at t*."""
    out = tmp_path / "run"
    args = ["--output-dir", str(out), "--recalibrate-every", "52", "--quiet",
            "--t-star", "1994-03-22"]  # fmt: skip
    assert main(args) == 0
    assert "the backtest's own decision at t*" in capsys.readouterr().out
    t_star = pd.Timestamp("1994-03-22")
    orders = json.loads((out / "orders_t.json").read_text())
    assert orders["start_book"] == "backtest" and orders["date"] == "1994-03-22"
    # the book the orders trade from (execution_lag = 1): the backtest's positions after
    # t*'s fills (which already rolled the tenors whose contract changed at t*)
    pos = pd.read_csv(out / "backtest" / "positions.csv", index_col=0, parse_dates=True)
    trades = pd.read_csv(out / "backtest" / "trades.csv", parse_dates=["date"])
    assert pos.index[-1] == t_star
    book = pos.iloc[-1].to_numpy(float)
    rolled = trades[(trades["date"] == t_star) & (trades["kind"] == "roll_close")]
    assert np.abs(book).sum() > 1.0  # a real book to start from
    np.testing.assert_allclose(orders["w_prev"], book, rtol=1e-15, atol=0)
    assert [r["tenor_id"] for r in orders["roll_closes"]] == rolled["tenor_id"].tolist()

    table = pd.read_csv(out / "mispricing_t.csv", index_col=0)
    np.testing.assert_allclose(table["w_prev"], book, rtol=1e-15, atol=0)
    dw = (table["target_w"] - table["w_prev"]).to_numpy()
    want = [(i, "BUY" if dw[i] > 0 else "SELL", abs(dw[i])) for i in range(5) if abs(dw[i]) > 1e-8]
    got = [(o["tenor_id"], o["side"], o["size"]) for o in orders["orders"]]
    assert [g[:2] for g in got] == [w[:2] for w in want] and got
    np.testing.assert_allclose([g[2] for g in got], [w[2] for w in want], rtol=1e-12)
    # rebalancing a held book: the orders are far smaller than the positions themselves
    assert max(g[2] for g in got) < 0.5 * np.abs(table["target_w"]).max()

    # the expiry rule at t*: recomputed from the panel (front contract expires before the
    # next Tuesday), neither opened nor held
    panel = ssjax.datasets.load_wti_ss2000_contracts().panel
    i = panel.dates.get_loc(t_star)
    expiring = (panel.ttm[i] <= 0) | (panel.ttm[i] < panel.dt[i])
    assert expiring.any() and table["expiring"].tolist() == expiring.tolist()
    assert (table.loc[expiring, "target_w"] == 0).all()
    assert (table.loc[expiring, "signal"] == 0).all()


def _t_star_inputs(ttm, F=None, z_scale=3.0):
    M = 4
    F = np.full(M, 50.0) if F is None else F
    alpha = np.full(M, 0.03)
    sd = 0.03 / z_scale
    return prepare_trading_inputs(
        F,
        np.where(np.isfinite(F), F, 50.0) * np.exp(alpha),
        ttm,
        cfg=TradingConfig(sigma_method="residuals", periods_per_year=52),
        resid_hist=np.random.default_rng(1).normal(0, 0.01, (60, M)),
        filtered_resid_var_t=np.full(M, sd**2),
    )


def test_orders_at_t_star_apply_the_backtest_rules():
    eng = TradeEngine()
    ttm = np.array([0.01, 0.01, 0.3, 0.5])
    F = np.array([50.0, 50.0, np.nan, 50.0])  # tenor 2 has no price at t*
    codes = np.array(["CLJ94", "CLJ94x", "CLQ94", "CLZ94"], dtype=object)
    expiring = np.array([True, True, False, False])  # tenors 0, 1 expire before the next date
    w_prev = np.array([0.3, 0.0, -0.2, 0.0])
    # as run_pipeline prepares them: expiring contracts have ttm 0 (not tradable)
    inp = _t_star_inputs(np.where(expiring, 0.0, ttm), F)
    assert list(inp.tradable) == [False, False, False, True] and np.all(inp.z[3] > 2)
    d = orders_at_t_star(eng, inp, w_prev, F, codes, expiring)
    ref = eng.decide(inp, w_prev)
    # held expiring position closed, flat expiring tenor not opened, unpriced tenor kept
    assert d.target_w[0] == 0 and d.target_w[1] == 0 and d.target_w[2] == -0.2
    assert d.target_w[3] == ref.target_w[3] > 0
    assert list(d.signals) == [0, 0, -1, 1]
    assert d.orders == [Order(0, "SELL", 0.3), Order(3, "BUY", float(ref.target_w[3]))]
    # even from inputs that still see the expiring contracts as tradable, they are closed
    raw = _t_star_inputs(ttm, F)
    assert raw.tradable[0] and eng.decide(raw, w_prev).target_w[0] > 0
    d2 = orders_at_t_star(eng, raw, w_prev, F, codes, expiring)
    assert d2.target_w[0] == 0 and d2.target_w[1] == 0 and d2.signals[0] == 0
    assert [o.tenor_id for o in d2.orders] == [0, 3]


def test_the_library_prints_nothing_the_command_does(tmp_path, capsys):
    """run_pipeline reports through ``say``/``log`` only (the ``ssjax`` command passes
    print and stderr); called from Python without them it is silent."""
    cfg = merge_config(DEFAULTS, {"backtest": {"enabled": False},
                                  "output": {"folder": str(tmp_path / "a")}})  # fmt: skip
    res = run_pipeline(cfg)
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == ""
    assert (tmp_path / "a" / "orders_t.json").exists() and res.backtest is None
    said, logged = [], []
    cfg["output"]["folder"] = str(tmp_path / "b")
    run_pipeline(cfg, say=said.append, log=logged.append)
    assert capsys.readouterr().out == ""
    text = "\n".join(said)
    assert "orders_t (" in text and "mispricing at t*" in text and "wrote" in text
    assert any("calibrating the model" in m for m in logged)
