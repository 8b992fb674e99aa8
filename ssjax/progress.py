"""Progress bars for long work (``tqdm.auto``: a widget in notebooks, a bar in terminals).

Every long-running function takes ``progress: bool | None``. ``None`` (the default) shows a
bar when someone is watching: stderr is a terminal, or the code runs in a Jupyter kernel.
``True`` always shows one, ``False`` never. A bar names the work it counts; while a program
is being compiled (the first call of a new shape in a process, or loaded from the
compilation cache) its text says so.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["progress_bar", "watching"]


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # pragma: no cover - a broken IPython install
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def watching() -> bool:
    """True when a progress bar would be seen: a terminal on stderr or a notebook."""
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stderr
        tty = False
    return tty or _in_notebook()


class _Null:
    """A bar that shows nothing (``progress=False``, or nobody watching)."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_description_str(self, s: str, refresh: bool = True) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(total: int, desc: str, enabled: bool | None = None, unit: str = "it") -> Any:
    """A ``tqdm.auto`` bar of ``total`` steps (or a silent stand-in when not ``enabled``;
    ``None``: when :func:`watching`). Use it as a context manager or call ``close()``."""
    if not (watching() if enabled is None else enabled):
        return _Null()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                leave=True, mininterval=0.5)  # fmt: skip
