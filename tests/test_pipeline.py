"""The main job: config handling and the whole pipeline from the command line."""

import json

import pandas as pd
import pytest

from ssjax.cli import main
from ssjax.pipeline import DEFAULTS, load_config, merge_config


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


def test_print_config_applies_flags(capsys):
    assert main(["--print-config", "--sizing", "qp", "--z-in", "2.5", "--ranks", "1,3"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["engine"]["sizing"] == "qp" and cfg["trading"]["z_in"] == 2.5
    assert cfg["data"]["ranks"] == [1, 3]


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
    theta = json.loads((out / "theta.json").read_text())
    assert set(theta) >= {"kappa", "sigma_x", "sigma_y", "rho", "mu", "meas_sd"}
    assert (out / "backtest" / "equity.png").stat().st_size > 0
    assert (out / "backtest" / "metrics.json").exists()


def test_main_job_t_star_and_no_backtest(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--output-dir", str(out), "--no-backtest", "--t-star", "1993-06-29", "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "t* = 1993-06-29" in text and "backtest metrics" not in text
    assert not (out / "backtest").exists()
    with pytest.raises(SystemExit, match="unknown key"):
        bad = tmp_path / "x.toml"
        bad.write_text("[model]\nmethd = 'EM'\n")
        main(["--config", str(bad)])
