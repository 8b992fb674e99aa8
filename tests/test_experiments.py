"""The research experiments' README writer and (slow) smoke runs of the scripts."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

EXP = Path(__file__).resolve().parents[1] / "experiments"


def _load(name, monkeypatch):
    monkeypatch.syspath_prepend(str(EXP))  # the scripts import each other by name
    spec = importlib.util.spec_from_file_location(name, EXP / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, mod)
    spec.loader.exec_module(mod)
    return mod


def test_write_readme_inserts_then_replaces(tmp_path, monkeypatch):
    research = _load("research", monkeypatch)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nintro\n\n## Development\n\ndev text\n")
    research.write_readme("## Results\n\nfirst\n", readme)
    text = readme.read_text()
    assert text.index("## Results") < text.index("## Development")
    assert research.BEGIN in text and research.END in text and "first" in text
    research.write_readme("## Results\n\nsecond\n", readme)
    again = readme.read_text()
    assert "first" not in again and again.count(research.BEGIN) == 1
    assert again.replace("second", "first") == text  # only the section changed
    plain = tmp_path / "R2.md"
    plain.write_text("# y\n")
    research.write_readme("## Results\n\nz\n", plain)
    assert plain.read_text().startswith("# y\n\n" + research.BEGIN)


def test_results_section_matches_the_committed_run_folders(monkeypatch):
    research = _load("research", monkeypatch)
    text = research.section()
    for head in ("### Schwartz and Smith (2000)", "### Model comparison",
                 "### Out of sample", "### Trading report"):  # fmt: skip
        assert head in text
    assert "nan" not in text.lower().replace("nans", "")
    # the README carries exactly this section (regenerate with experiments/research.py)
    readme = (EXP.parent / "README.md").read_text()
    inside = readme.split(research.BEGIN, 1)[1].split(research.END, 1)[0]
    assert inside.strip() == text.strip()
    t2 = pd.read_csv(EXP / "results" / "reproduce_ss2000" / "table2_values.csv", index_col=0)
    assert f"{t2.loc['kappa', 'risk_premium_fixed']:.4f}" in text


@pytest.mark.slow
def test_experiment_scripts_run(tmp_path, monkeypatch):
    rep = _load("reproduce_ss2000", monkeypatch)
    assert rep.main(["--out", str(tmp_path / "rep")]) == 0
    t2 = pd.read_csv(tmp_path / "rep" / "table2_values.csv", index_col=0)
    assert 1.3 < t2.loc["kappa", "risk_premium_fixed"] < 1.7
    cmp_ = _load("model_comparison", monkeypatch)
    assert cmp_.main(["--out", str(tmp_path / "cmp"), "--starts", "2"]) == 0
    tab = pd.read_csv(tmp_path / "cmp" / "table4_wti.csv", index_col=0)
    assert tab.loglik.idxmax() == "two_factor"
    oos = _load("out_of_sample", monkeypatch)
    args = ["--out", str(tmp_path / "oos"), "--data", "wti", "--refit-every", "52"]
    assert oos.main(args) == 0
    cfg = json.loads((tmp_path / "oos" / "config.json").read_text())
    assert cfg["config"]["refit_every"] == 52 and cfg["seconds"] > 0
    assert (tmp_path / "oos" / "dm_wti.md").exists()
