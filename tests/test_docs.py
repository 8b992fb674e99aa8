"""Every Python example of the README and of ``docs/`` runs as written.

The ``python`` blocks of one page run in order in one namespace (a page reads like a script),
from a scratch folder that sees the repository's ``tests/fixtures`` (the data page reads a sample
file from there). A block preceded by ``<!-- not run: reason -->`` is skipped; the reason is
part of the page.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib
import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: pages whose examples run from their own test modules (test_docs_<name>.py), so that the
#: test runner can give them to other workers (it distributes whole files)
OWN_MODULE = ("rolling.md", "analysis.md")
FENCE = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
SKIP = re.compile(r"<!-- not run: [^>]+-->\s*$")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every ``python`` block not marked ``not run``."""
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if SKIP.search(before):
            continue
        out.append((text.count("\n", 0, m.start()) + 2, m.group(1)))
    return out


def test_the_block_reader_finds_and_skips():
    text = "x\n```python\na = 1\n```\n<!-- not run: no cluster -->\n```python\nb\n```\n"
    assert python_blocks(text) == [(3, "a = 1\n")]


def test_every_page_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme, page.name


def run_page(page: Path, tmp_path: Path, monkeypatch) -> None:
    """Run the page's blocks in order, in one namespace, from a scratch folder."""
    matplotlib.use("Agg")
    (tmp_path / "tests").mkdir()
    os.symlink(REPO / "tests" / "fixtures", tmp_path / "tests" / "fixtures")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for line, code in python_blocks(page.read_text()):
        exec(compile(code, f"{page.name}:{line}", "exec"), namespace)  # noqa: S102


def test_every_page_with_examples_is_run():
    own = {p.stem.removeprefix("test_docs_") + ".md" for p in Path(__file__).parent.glob(
        "test_docs_*.py")}  # fmt: skip
    assert own == set(OWN_MODULE)
    assert all((REPO / "docs" / name).exists() for name in OWN_MODULE)


@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if python_blocks(p.read_text()) and p.name not in OWN_MODULE],
    ids=lambda p: p.name,
)
def test_examples_run(page, tmp_path, monkeypatch):
    run_page(page, tmp_path, monkeypatch)
