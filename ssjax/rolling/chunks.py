"""A run cut into chunks: the resumable Parquet files in ``out_dir`` (with a manifest naming
the run) and the progress bar.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ssjax.core.market import MarketData
from ssjax.core.params import Params, flatten_params
from ssjax.progress import progress_bar

_MANIFEST = "manifest.json"
_FORMAT_VERSION = 5  # 4: robust standard errors in the post-fit numbers; 5: FitStatus codes


def _digest(stack: MarketData, config: dict) -> str:
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for a in (stack.log_f, stack.ttm, stack.mask, stack.dt):
        a = np.ascontiguousarray(np.asarray(a))
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


class _ChunkStore:
    """A folder of per-chunk Parquet files and a manifest naming the run they belong to."""

    def __init__(self, path: str | os.PathLike, key: str, config: dict, n_chunks: int):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = self.path / _MANIFEST
        want = {"format": _FORMAT_VERSION, "key": key, "n_chunks": n_chunks, "config": config}
        if manifest.exists():
            have = json.loads(manifest.read_text())
            if have.get("key") != key or have.get("format") != _FORMAT_VERSION:
                raise ValueError(
                    f"out_dir {str(self.path)!r} holds chunks of a different run (other data "
                    "or settings); use another folder or delete it"
                )
        else:
            _atomic_write(manifest, lambda p: Path(p).write_text(json.dumps(want, indent=2)))

    def file(self, kind: str, k: int) -> Path:
        return self.path / f"{kind}-{k:05d}.parquet"

    def has(self, kind: str, k: int) -> bool:
        return self.file(kind, k).exists()

    def write(self, kind: str, k: int, arrays: dict[str, np.ndarray]) -> None:
        df = _arrays_to_frame(arrays)
        _atomic_write(self.file(kind, k), lambda p: df.to_parquet(p, index=False))

    def read(self, kind: str, k: int, shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
        return _frame_to_arrays(pd.read_parquet(self.file(kind, k)), shapes)


def _atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _arrays_to_frame(arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    """Rows = leading axis; one column per trailing element, named ``name[i]``."""
    cols: dict[str, np.ndarray] = {}
    for name, a in arrays.items():
        a = np.asarray(a)
        flat = a.reshape(a.shape[0], int(np.prod(a.shape[1:])))  # also with no rows
        if a.ndim == 1:
            cols[name] = a
        else:
            for i in range(flat.shape[1]):
                cols[f"{name}[{i}]"] = flat[:, i]
    return pd.DataFrame(cols)


def _frame_to_arrays(df: pd.DataFrame, shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
    out = {}
    for name, (trail, dtype) in shapes.items():
        if not trail:
            out[name] = df[name].to_numpy().astype(dtype)
        else:
            n = int(np.prod(trail))
            flat = np.stack([df[f"{name}[{i}]"].to_numpy() for i in range(n)], axis=1)
            out[name] = flat.reshape((len(df),) + tuple(trail)).astype(dtype)
    return out


def _shapes(arrays: dict[str, np.ndarray]) -> dict[str, tuple]:
    return {k: (np.asarray(v).shape[1:], np.asarray(v).dtype) for k, v in arrays.items()}


class _Progress:
    """A progress bar of the fits (``ssjax.progress``): chunks done and fits per second."""

    def __init__(self, n_chunks: int, n_fits: int, enabled: bool | None, label: str):
        self.n_chunks = n_chunks
        self.chunks = 0
        self.bar = progress_bar(n_fits, label, enabled, unit="fit")
        self.bar.set_postfix_str(f"chunk 1/{n_chunks}: compiling on a first call")

    def update(self, fits: int, computed: bool) -> None:
        self.chunks += 1
        self.bar.update(fits)
        if self.chunks < self.n_chunks:
            self.bar.set_postfix_str(f"chunk {self.chunks + 1}/{self.n_chunks}")
        else:
            self.bar.set_postfix_str("")
            self.bar.close()


def _cold_shapes(template: Params, stack: MarketData) -> dict[str, tuple]:
    n = flatten_params(template).shape[0]
    M = stack.log_f.shape[-1]
    f8, i4, b1 = np.float64, np.int32, np.bool_
    return {
        "fit/params": ((n,), f8), "fit/loglik": ((), f8), "fit/stopped": ((), b1),
        "fit/num_steps": ((), i4), "fit/status": ((), i4),
        "post/std_err": ((n,), f8), "post/std_err_robust": ((n,), f8),
        "post/state_t": ((2,), f8), "post/F_model_t": ((M,), f8),
        "post/mean_nis": ((), f8), "post/innov_mean": ((M,), f8), "post/innov_sd": ((M,), f8),
        "post/nobs": ((M,), i4),
    }  # fmt: skip
