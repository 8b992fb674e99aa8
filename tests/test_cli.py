"""The ssjax command: the main job on the bundled panel."""

from pathlib import Path

import pandas as pd
import pytest

from ssjax.cli import main


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
    df = pd.DataFrame(wti.F_mkt[:120], columns=wti.tenor_names)
    for i, name in enumerate(wti.tenor_names):
        df[f"{name}_ttm"] = wti.ttm[:120, i]
    df.insert(0, "date", wti.dates[:120])
    path = tmp_path / "panel.csv"
    df.to_csv(path, index=False)
    assert main(["--csv", str(path)]) in (0, 1)
    assert "120 dates x 5 tenors" in capsys.readouterr().out


def test_em_method(capsys):
    assert main(["--fit-only", "--method", "em", "--shared-noise"]) == 0
    out = capsys.readouterr().out
    assert "Method:" in out and "EM iterations:" in out


def test_data_option_fits_copper_and_files(tmp_path, capsys):
    assert main(["--fit-only", "--data", "copper", "--ranks", "1,4,8", "--resample", "W-TUE"]) == 0
    out = capsys.readouterr().out
    assert "HG nearby ranks ['HG1', 'HG4', 'HG8']" in out and "HG8=" in out
    # a CME settlement file from the fixtures, any layout is detected
    fixture = str(Path(__file__).parent / "fixtures" / "cme_settlements_sample.csv")
    assert main(["--fit-only", "--data", fixture, "--commodity", "HG", "--ranks", "4"]) in (0, 1)
    assert "HG nearby ranks" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="several commodities"):
        main(["--fit-only", "--data", fixture])
    with pytest.raises(SystemExit, match="--ranks"):
        main(["--fit-only", "--data", fixture, "--ranks", "a,b"])
