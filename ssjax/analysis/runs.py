"""Run folders for experiments: tables, figures and the provenance to reproduce them.

A :class:`RunFolder` is a directory that an experiment writes into:

* ``config.json`` — the settings, the ssjax/JAX/NumPy versions, the git commit (when the
  code runs from a checkout), the hash of every dataset used, the start time and, once
  :meth:`RunFolder.finish` runs, the wall time and headline metrics;
* ``<name>.csv`` and ``<name>.md`` per table (:meth:`RunFolder.table`);
* ``<name>.png`` per figure (:meth:`RunFolder.figure`).

If MLflow is importable and ``track=True`` (the default), the same parameters, metrics and
artifacts are also logged to a local SQLite-backed MLflow store (``mlflow.db`` beside the
run folders unless ``mlflow_uri`` is given; artifacts of a new experiment go to ``mlruns/``
there). Nothing requires MLflow, and nothing here reaches the network.

Example:
    >>> run = RunFolder("/tmp/demo", {"window": 104})          # doctest: +SKIP
    >>> run.table("fit", df); run.finish({"loglik": 4035.3})   # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["RunFolder", "markdown_table", "array_hash", "panel_hash"]


def markdown_table(df: pd.DataFrame, fmt: str = ".4g", index: bool = True) -> str:
    """A DataFrame as a GitHub Markdown table (no ``tabulate`` dependency).

    Floats use ``fmt``; NaN prints as ``—``; a column whose name ends in ``p_value`` keeps
    small values readable (``<1e-16`` below that). A MultiIndex gives one column per level.
    """
    if index and isinstance(df.index, pd.MultiIndex):  # one column per level
        df, index = df.reset_index(), False
    cols = ([str(df.index.name or "")] if index else []) + [str(c) for c in df.columns]

    def cell(x: object, col: str) -> str:
        if x is pd.NA or x is None:
            return "—"
        if isinstance(x, bool | np.bool_):
            return "yes" if x else "no"
        if isinstance(x, float | np.floating):
            if not np.isfinite(x):
                return "—" if np.isnan(x) else ("∞" if x > 0 else "−∞")
            if col.endswith("p_value"):
                return "<1e-16" if x < 1e-16 else format(float(x), ".3g")
            return format(float(x), fmt)
        return str(x)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i, row in zip(df.index, df.itertuples(index=False), strict=True):
        vals = ([str(i)] if index else []) + [
            cell(x, str(c)) for x, c in zip(row, df.columns, strict=True)
        ]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def array_hash(*arrays: Any, n: int = 16) -> str:
    """First ``n`` hex digits of the SHA-256 of the arrays' float64 bytes (NaN-stable)."""
    h = hashlib.sha256()
    for a in arrays:
        x = np.ascontiguousarray(np.asarray(a, dtype=float))
        h.update(str(x.shape).encode())
        h.update(x.tobytes())
    return h.hexdigest()[:n]


def panel_hash(panel: Any) -> str:
    """Hash of a :class:`ssjax.datasets.Panel`'s prices, times to maturity and dates."""
    dates = np.asarray(pd.DatetimeIndex(panel.dates).asi8, dtype=float)
    return array_hash(panel.F_mkt, panel.ttm, dates)


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_commit(exclude: Path | None = None) -> str | None:
    """HEAD of the checkout ssjax runs from, with ``-dirty`` if tracked files differ from it.

    ``exclude``: a folder whose changes do not count (the run folders themselves, which the
    experiments rewrite as they run).
    """
    here = Path(__file__).resolve().parent
    head = _git(["rev-parse", "HEAD"], here)
    if head is None:
        return None
    spec = ["--", ":/"]  # the whole checkout
    top = _git(["rev-parse", "--show-toplevel"], here)
    if exclude is not None and top is not None:
        try:
            rel = Path(exclude).resolve().relative_to(Path(top).resolve())
            spec = ["--", ":/", f":(exclude,top){rel.as_posix()}"]
        except ValueError:
            pass  # outside the checkout: nothing to exclude
    dirty = _git(["status", "--porcelain", "--untracked-files=no", *spec], here)
    return head + ("-dirty" if dirty else "")


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, float | int | str | bool) or x is None:
        return x
    return str(x)


class RunFolder:
    """A folder for one experiment run, with its provenance in ``config.json``.

    Args:
        path: the folder (created; files of the same names are overwritten).
        config: the experiment's settings (JSON-serializable values).
        data: ``{name: hash}`` of the datasets used (see :func:`panel_hash`).
        track: also log to MLflow when it is importable.
        mlflow_uri: tracking URI (default ``sqlite:///<parent of path>/mlflow.db``).
        experiment: MLflow experiment name (default: the folder's name).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        config: Mapping[str, Any],
        data: Mapping[str, str] | None = None,
        *,
        track: bool = True,
        mlflow_uri: str | None = None,
        experiment: str | None = None,
    ) -> None:
        import jax

        from ssjax._version import __version__

        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._t0 = time.perf_counter()
        self.tables: list[str] = []
        self.figures: list[str] = []
        self.meta: dict[str, Any] = {
            "config": _jsonable(dict(config)),
            "data": dict(data or {}),
            "ssjax_version": __version__,
            "jax_version": jax.__version__,
            "numpy_version": np.__version__,
            "python": platform.python_version(),
            "backend": jax.default_backend(),
            "git_commit": _git_commit(exclude=self.path.parent),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        self._write_config()
        self._mlflow = None
        if track:
            try:
                import mlflow  # noqa: F401
            except ImportError:
                mlflow = None
            if mlflow is not None:
                self._start_mlflow(mlflow_uri, experiment or self.path.name)

    # ---- MLflow (optional) ------------------------------------------------------------
    def _start_mlflow(self, uri: str | None, experiment: str) -> None:
        import mlflow

        uri = uri or f"sqlite:///{(self.path.parent / 'mlflow.db').resolve()}"
        mlflow.set_tracking_uri(uri)
        if mlflow.get_experiment_by_name(experiment) is None:
            # artifacts beside the store, not in ./mlruns of whatever the working folder is
            where = (self.path.parent / "mlruns").resolve().as_uri()
            mlflow.create_experiment(experiment, artifact_location=where)
        mlflow.set_experiment(experiment)
        mlflow.start_run(run_name=self.path.name)
        flat = {f"config.{k}": v for k, v in self.meta["config"].items()}
        flat.update({f"data.{k}": v for k, v in self.meta["data"].items()})
        flat["ssjax_version"] = self.meta["ssjax_version"]
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
        self._mlflow = mlflow
        self.meta["mlflow_uri"] = uri

    def _write_config(self) -> None:
        (self.path / "config.json").write_text(json.dumps(self.meta, indent=2) + "\n")

    # ---- outputs ------------------------------------------------------------------------
    def table(
        self,
        name: str,
        df: pd.DataFrame,
        *,
        fmt: str = ".4g",
        index: bool = True,
        title: str | None = None,
        note: str | None = None,
    ) -> str:
        """Write ``name.csv`` and ``name.md`` (title, table, note); returns the Markdown."""
        df.to_csv(self.path / f"{name}.csv", index=index)
        text = (f"**{title}**\n\n" if title else "") + markdown_table(df, fmt, index)
        if note:
            text += "\n\n" + note
        (self.path / f"{name}.md").write_text(text + "\n")
        self.tables.append(name)
        if self._mlflow is not None:
            self._mlflow.log_artifact(str(self.path / f"{name}.csv"))
            self._mlflow.log_artifact(str(self.path / f"{name}.md"))
        return text

    def figure(self, name: str, fig: Any, dpi: int = 110) -> Path:
        """Save a Matplotlib figure as ``name.png`` and close it."""
        import matplotlib.pyplot as plt

        out = self.path / f"{name}.png"
        fig.savefig(out, dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        self.figures.append(name)
        if self._mlflow is not None:
            self._mlflow.log_artifact(str(out))
        return out

    def text(self, name: str, content: str) -> Path:
        """Write a free-form Markdown file ``name.md``."""
        out = self.path / f"{name}.md"
        out.write_text(content.rstrip() + "\n")
        if self._mlflow is not None:
            self._mlflow.log_artifact(str(out))
        return out

    def finish(self, metrics: Mapping[str, float] | None = None) -> float:
        """Record the wall time and metrics in ``config.json`` (and MLflow); returns seconds."""
        seconds = round(time.perf_counter() - self._t0, 1)
        self.meta["seconds"] = seconds
        self.meta["metrics"] = _jsonable(dict(metrics or {}))
        self.meta["tables"] = self.tables
        self.meta["figures"] = self.figures
        self._write_config()
        if self._mlflow is not None:
            vals = {k: float(v) for k, v in (metrics or {}).items() if np.isfinite(float(v))}
            vals["seconds"] = seconds
            self._mlflow.log_metrics(vals)
            self._mlflow.log_artifact(str(self.path / "config.json"))
            self._mlflow.end_run()
        return seconds
