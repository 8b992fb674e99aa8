"""A run cut into chunks: the resumable Parquet files in ``out_dir`` (with a manifest naming
the run and the device layout it ran on) and the progress bar.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd

from ssjax.core.market import MarketData
from ssjax.core.params import Params, flatten_params
from ssjax.progress import progress_bar
from ssjax.rolling.devices import _from_lead, _lead

_MANIFEST = "manifest.json"
# 4: robust standard errors in the post-fit numbers; 5: FitStatus codes; 6: the device layout
_FORMAT_VERSION = 6
#: the parts of the device layout a run's numbers depend on: a folder written under another
#: count of devices or another platform is not resumed (the last bits differ; how the devices
#: are spread over processes changes nothing: docs/design.md, "Several processes")
RESULT_LAYOUT = ("devices", "platform")


def _digest(stack: MarketData, config: dict) -> str:
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for a in (stack.log_f, stack.ttm, stack.mask, stack.dt):
        a = np.ascontiguousarray(np.asarray(a))
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


class _ChunkStore:
    """A folder of per-chunk Parquet files and a manifest naming the run they belong to.

    Under several processes (``jax.distributed``) only process 0 touches the folder (the
    others may not see it, or see it late on a network file system): it checks the manifest,
    lists the files and reads them, and sends the others what it found; it alone writes.
    """

    def __init__(
        self, path: str | os.PathLike, key: str, config: dict, n_chunks: int, layout: dict
    ):
        self.path = Path(path)
        self.lead = _lead()
        self.multi = jax.process_count() > 1
        want = {"format": _FORMAT_VERSION, "key": key, "n_chunks": n_chunks, "config": config,
                "layout": layout}  # fmt: skip
        error = self._open(want) if self.lead else ""
        if self.multi:  # pragma: no cover - several processes
            files = sorted(p.name for p in self.path.glob("*.parquet")) if self.lead else []
            sent = json.loads(_from_lead(json.dumps([error, files]).encode()))
            error, self.files = sent[0], set(sent[1])
        if error:
            raise ValueError(error)

    def _open(self, want: dict) -> str:
        """Create the folder and its manifest, or check the one there; the refusal, if any."""
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = self.path / _MANIFEST
        if not manifest.exists():
            _atomic_write(manifest, lambda p: Path(p).write_text(json.dumps(want, indent=2)))
            return ""
        have = json.loads(manifest.read_text())
        where = f"out_dir {str(self.path)!r}"
        if have.get("format") != want["format"]:
            return (
                f"{where} was written by another version of ssjax (run-folder format "
                f"{have.get('format')}, this one writes {want['format']}); use another folder "
                "or delete it"
            )
        if have.get("key") != want["key"]:
            return (
                f"{where} holds chunks of a different run (other data or settings); use another "
                "folder or delete it"
            )
        old, new = have["layout"], want["layout"]
        if any(old[k] != new[k] for k in RESULT_LAYOUT):
            return (
                f"{where} was written on {layout_text(old)}; this run is on "
                f"{layout_text(new)}. A run's numbers depend on the number of devices and the "
                "platform (in the last bits), so chunks of both would not equal one "
                f"uninterrupted run: resume it on {old['devices']} {old['platform']} "
                "device(s) (recalibrate(devices=...); the number of processes may differ), "
                "or use another folder"
            )
        return ""

    def file(self, kind: str, k: int) -> Path:
        return self.path / f"{kind}-{k:05d}.parquet"

    def has(self, kind: str, k: int) -> bool:
        if self.multi:  # pragma: no cover - several processes: what process 0 found
            return self.file(kind, k).name in self.files
        return self.file(kind, k).exists()

    def write(self, kind: str, k: int, arrays: dict[str, np.ndarray]) -> None:
        if not self.lead:  # pragma: no cover - several processes: process 0 writes
            return
        df = _arrays_to_frame(arrays)
        _atomic_write(self.file(kind, k), lambda p: df.to_parquet(p, index=False))

    def read(self, kind: str, k: int, shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
        if self.multi:  # pragma: no cover - several processes: process 0's file
            data = _from_lead(self.file(kind, k).read_bytes() if self.lead else None)
            return _frame_to_arrays(pd.read_parquet(io.BytesIO(data)), shapes)
        return _frame_to_arrays(pd.read_parquet(self.file(kind, k)), shapes)


def layout_text(layout: dict) -> str:
    """``4 cpu devices in 2 processes (2 + 2)``: a layout of the manifest, in words."""
    n, per = layout["devices"], layout["devices_per_process"]
    procs = f"{len(per)} processes ({' + '.join(map(str, per))})" if len(per) > 1 else "1 process"
    return f"{n} {layout['platform']} device{'s' if n != 1 else ''} in {procs}"


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
