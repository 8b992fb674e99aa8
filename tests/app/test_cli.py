"""The ssjax command: the main job on the bundled panel, and --csv/--data inputs."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from repo_paths import FIXTURES

import ssjax
from ssjax.app.cli import main

FIX = FIXTURES


def test_fit_only_prints_summary(capsys):
    assert main(["--fit-only"]) == 0
    out = capsys.readouterr().out
    assert "bundled Schwartz-Smith (2000) weekly WTI panel" in out
    assert "Schwartz-Smith two-factor model results" in out
    assert "F_model_t:" in out and "F_mkt_t:" in out


def test_options_and_output_file(tmp_path, capsys):
    out_csv = tmp_path / "path.csv"
    assert main(["--t-star", "1994-06-30", "--output", str(out_csv)]) == 0
    df = pd.read_csv(out_csv, index_col=0, parse_dates=True)
    assert df.index[-1] == pd.Timestamp("1994-06-28")
    assert list(df.columns[:2]) == ["X", "Y"] and df.shape[1] == 7
    assert "1994-06-28" in capsys.readouterr().out


def test_csv_input(tmp_path, wti, capsys):
    # 60 dates x 3 tenors: the shape of the --data fits below (one JAX compilation for all)
    df = pd.DataFrame(wti.F_mkt[:60, :3], columns=wti.tenor_names[:3])
    for i, name in enumerate(wti.tenor_names[:3]):
        df[f"{name}_ttm"] = wti.ttm[:60, i]
    df.insert(0, "date", wti.dates[:60])
    path = tmp_path / "panel.csv"
    df.to_csv(path, index=False)
    assert main(["--csv", str(path)]) == 0  # 0: the fit converged
    out = capsys.readouterr().out
    assert f"data: {path}: 60 dates x 3 tenors" in out
    assert (
        re.search(r"Status:\s+(converged|stopped at a boundary)", out)
        and "No. observations:" in out
    )
    assert "F_mkt_t:   " + _row(wti.tenor_names[:3], wti.F_mkt[59, :3]) in out


def test_em_method(capsys):
    assert main(["--fit-only", "--method", "em", "--shared-noise"]) == 0
    out = capsys.readouterr().out
    assert "Method:" in out and "EM iterations:" in out


def _row(names, values):
    return "  ".join(f"{n}={v:.4f}" for n, v in zip(names, values, strict=True))


def test_data_option_fits_bundled_copper(capsys):
    assert main(["--fit-only", "--data", "copper", "--ranks", "1,4,8", "--resample", "W-TUE"]) == 0
    out = capsys.readouterr().out
    assert "HG nearby ranks ['HG1', 'HG4', 'HG8']" in out and "HG8=" in out
    assert re.search(r"Status:\s+(converged|stopped at a boundary)", out)


def _copper_slice(tmp_path):
    """The last 60 dates, nearby ranks 1-3, of the bundled copper file, as a plain CSV."""
    raw = pd.read_csv(Path(ssjax.datasets.__path__[0]) / "schwartz97_copper_daily.csv.gz")
    last = sorted(raw["date"].unique())[-60:]
    part = raw[raw["date"].isin(last) & (raw["nearby"] <= 3)]
    path = tmp_path / "copper_long.csv"
    part.to_csv(path, index=False)  # date, nearby, contract, last_trade_date, ttm_days, price..
    day = part[part["date"] == last[-1]].sort_values("nearby")
    return path, [], "HG", day["price"].to_numpy()


def _continuous(tmp_path):
    path = FIX / "quandl_continuous_sample.csv"
    wide = pd.read_csv(path)
    return (
        path,
        ["--continuous", "chris"],
        "CL",
        wide.iloc[-1][[f"CHRIS/CME_CL{k} - Settle" for k in (1, 2, 3)]],
    )


def _cme(tmp_path):
    path = FIX / "cme_settlements_sample.csv"
    raw = pd.read_csv(path, dtype=str)
    day = raw[(raw["BizDt"] == raw["BizDt"].max()) & (raw["Sym"] == "CL")]
    day = day[day["LastTrdDt"] >= day["BizDt"]].sort_values("LastTrdDt")
    return path, ["--commodity", "CL"], "CL", day["SettlePrice"].astype(float).to_numpy()[:3]


@pytest.mark.parametrize(
    "layout, nobs",
    [
        (_copper_slice, 180),
        # 177: the CLI ranks contracts through their last trading day (roll at expiry), and a
        # CHRIS file has already rolled on the 3 expiry days, so CL1 has no price there
        (_continuous, 177),
        (_cme, 180),
    ],
    ids=["long per-contract CSV", "continuous CL1..CLn", "CME settlement CSV"],
)
def test_data_file_layouts_fit_end_to_end(tmp_path, capsys, layout, nobs):
    path, extra, root, last_prices = layout(tmp_path)
    rc = main(["--fit-only", "--data", str(path), "--ranks", "3", *extra])
    out = capsys.readouterr().out
    assert rc == 0  # the fit converged
    names = [f"{root}{k}" for k in (1, 2, 3)]
    assert f"data: {path}, {root} nearby ranks {names}: 60 dates x 3 tenors" in out
    assert re.search(rf"No\. observations:\s+{nobs}\b", out)
    assert re.search(r"Status:\s+(converged|stopped at a boundary)", out)
    assert "F_mkt_t:   " + _row(names, np.asarray(last_prices, float)) in out


def test_data_option_errors(tmp_path):
    fixture = str(FIX / "cme_settlements_sample.csv")
    with pytest.raises(SystemExit, match="several commodities"):
        main(["--fit-only", "--data", fixture])
    with pytest.raises(SystemExit, match="--ranks"):
        main(["--fit-only", "--data", fixture, "--ranks", "a,b"])
    with pytest.raises(SystemExit, match="commodity 'ZZ' is not in the table"):
        main(["--fit-only", "--data", fixture, "--commodity", "ZZ"])
    with pytest.raises(SystemExit, match="--data: .*No such file"):
        main(["--fit-only", "--data", str(tmp_path / "missing.csv")])
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "date,contract,last_trade_date,price\n"
        "2024-08-02,CLU24,2024-08-20,78.42\n"
        "2024-08-01,CLU24,2024-08-20,76.30\n"
        "2024-08-32,CLV24,2024-09-20,75.00\n"
        "2024-08-22,CLU24,2024-08-20,80.00\n"
    )
    with pytest.raises(SystemExit) as err:  # every problem of the file at once, by line
        main(["--fit-only", "--data", str(bad)])
    msg = str(err.value)
    assert msg.startswith("--data: 2 problem(s) with the settlement data in bad.csv:")
    assert "trade_date: unparseable dates at rows [4] ('2024-08-32')" in msg
    assert "contracts past expiry at rows [5]" in msg
