"""Where the tests find the repository's files, wherever the test module sits."""

from pathlib import Path

#: the repository's root (holds ``ssjax/``, ``experiments/``, ``docs/``)
REPO = Path(__file__).resolve().parents[1]
#: format samples of exchange settlement files
FIXTURES = REPO / "tests" / "fixtures"
