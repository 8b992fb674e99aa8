"""The examples of ``docs/analysis.md`` run as written (see ``tests/test_docs.py``)."""

from test_docs import REPO, run_page


def test_examples_run(tmp_path, monkeypatch):
    run_page(REPO / "docs" / "analysis.md", tmp_path, monkeypatch)
