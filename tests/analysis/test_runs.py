"""Run folders for experiments (ssjax.analysis.runs)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import ssjax  # noqa: E402
from ssjax.analysis.runs import RunFolder, array_hash, markdown_table, panel_hash  # noqa: E402


def test_markdown_table_formats():
    df = pd.DataFrame(
        {"x": [1.23456, np.nan], "p_value": [1e-20, 0.0412], "ok": [True, False], "s": ["a", "b"]},
        index=pd.Index(["r1", "r2"], name="row"),
    )
    md = markdown_table(df, ".3f")
    lines = md.splitlines()
    assert lines[0] == "| row | x | p_value | ok | s |"
    assert lines[1] == "|---|---|---|---|---|"
    assert lines[2] == "| r1 | 1.235 | <1e-16 | yes | a |"
    assert lines[3] == "| r2 | — | 0.0412 | no | b |"
    assert markdown_table(df[["s"]], index=False).splitlines()[2] == "| a |"
    multi = pd.DataFrame(
        {"v": [1.0]}, index=pd.MultiIndex.from_tuples([(4, "F1")], names=["h", "t"])
    )
    assert markdown_table(multi).splitlines()[0::2] == ["| h | t | v |", "| 4 | F1 | 1 |"]
    ints = pd.DataFrame({"df": pd.array([2, None], dtype="Int64")})
    assert markdown_table(ints, index=False).splitlines()[2:] == ["| 2 |", "| — |"]


def test_hashes_are_stable_and_sensitive():
    a = np.arange(6.0).reshape(2, 3)
    assert array_hash(a) == array_hash(a.copy())
    assert array_hash(a) != array_hash(a.reshape(3, 2))  # shape enters
    b = a.copy()
    b[0, 0] = np.nan
    assert array_hash(b) == array_hash(b.copy()) != array_hash(a)
    wti = ssjax.datasets.load_wti_ss2000()
    h = panel_hash(wti)
    assert len(h) == 16 and h == panel_hash(ssjax.datasets.load_wti_ss2000())
    assert h != panel_hash(ssjax.datasets.load_wti_ss2000(maturities="fixed"))


def test_run_folder_writes_provenance(tmp_path):
    run = RunFolder(tmp_path / "exp", {"window": 104, "path": tmp_path}, {"wti": "abc"},
                    track=False)  # fmt: skip
    cfg = json.loads((tmp_path / "exp" / "config.json").read_text())
    assert cfg["config"]["window"] == 104 and cfg["data"] == {"wti": "abc"}
    assert cfg["ssjax_version"] == ssjax.__version__ and "seconds" not in cfg
    df = pd.DataFrame({"a": [1.0, 2.0]})
    text = run.table("tab", df, title="T", note="n")
    assert text.startswith("**T**") and text.endswith("n")
    assert pd.read_csv(tmp_path / "exp" / "tab.csv", index_col=0)["a"].tolist() == [1.0, 2.0]
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    assert run.figure("fig", fig).stat().st_size > 0
    run.text("notes", "hello\n\n")
    assert (tmp_path / "exp" / "notes.md").read_text() == "hello\n"
    secs = run.finish({"loglik": 1.5})
    cfg = json.loads((tmp_path / "exp" / "config.json").read_text())
    assert cfg["seconds"] == secs >= 0 and cfg["metrics"] == {"loglik": 1.5}
    assert cfg["tables"] == ["tab"] and cfg["figures"] == ["fig"]


def test_run_folder_logs_to_mlflow_when_available(tmp_path, monkeypatch):
    calls: list[tuple] = []
    fake = types.ModuleType("mlflow")
    for name in ("set_tracking_uri", "create_experiment", "set_experiment", "start_run",
                 "log_params", "log_artifact", "log_metrics", "end_run"):  # fmt: skip
        setattr(fake, name, lambda *a, _n=name, **k: calls.append((_n, a, k)))
    fake.get_experiment_by_name = lambda name: None
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    run = RunFolder(tmp_path / "exp", {"z_in": 2.0}, {"wti": "abc"})
    run.table("tab", pd.DataFrame({"a": [1.0]}))
    run.finish({"sharpe": 0.5, "bad": float("nan")})
    names = [c[0] for c in calls]
    assert names[:5] == [
        "set_tracking_uri", "create_experiment", "set_experiment", "start_run", "log_params"
    ]  # fmt: skip
    assert calls[0][1][0].startswith("sqlite:///") and calls[0][1][0].endswith("mlflow.db")
    assert calls[1][1][0] == "exp" and calls[1][2]["artifact_location"].endswith("/mlruns")
    assert calls[3][2]["run_name"] == "exp"
    assert calls[4][1][0]["config.z_in"] == "2.0"
    metrics = next(c[1][0] for c in calls if c[0] == "log_metrics")
    assert metrics["sharpe"] == 0.5 and "bad" not in metrics and "seconds" in metrics
    assert names[-1] == "end_run" and names.count("log_artifact") == 3


def test_run_folder_without_mlflow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import fails
    run = RunFolder(tmp_path / "exp", {})
    assert run._mlflow is None
    with pytest.raises(TypeError):
        RunFolder(tmp_path / "x")  # config is required


def test_git_commit_ignores_the_run_folders(monkeypatch, tmp_path):
    import ssjax.analysis.runs as R

    seen = []

    def fake_git(args, cwd):
        seen.append(args)
        if args[0] == "rev-parse":
            return "abc123" if args[1] == "HEAD" else str(tmp_path)
        excluded = any(a.startswith(":(exclude") for a in args)
        return "" if excluded else " M results/x.csv"

    monkeypatch.setattr(R, "_git", fake_git)
    assert R._git_commit() == "abc123-dirty"  # whole checkout: the results count
    assert R._git_commit(exclude=tmp_path / "results") == "abc123"
    assert seen[-1][-1] == ":(exclude,top)results"
    assert R._git_commit(exclude=Path("/elsewhere")) == "abc123-dirty"  # nothing excluded
    monkeypatch.setattr(R, "_git", lambda args, cwd: None)
    assert R._git_commit() is None  # not a checkout
