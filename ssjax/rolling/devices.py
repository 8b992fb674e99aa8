"""The 1-D device mesh the batches are split over, and moving arrays onto and off it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

_AXIS = "batch"


# --------------------------------------------------------------------------------------
# Devices and host transfers
# --------------------------------------------------------------------------------------
def _mesh(devices: Sequence[Any] | int | None) -> Mesh:
    if devices is None:
        devs = jax.devices()
    elif isinstance(devices, int):
        if not 1 <= devices <= len(jax.devices()):
            raise ValueError(
                f"devices must be between 1 and the {len(jax.devices())} visible, got {devices}"
            )
        devs = jax.devices()[:devices]
    else:
        devs = list(devices)
        if not devs:
            raise ValueError("devices must not be empty")
    return Mesh(np.asarray(devs), (_AXIS,))


def _put(x: Any, mesh: Mesh, spec: P) -> Any:
    """A global array of the host value ``x`` laid out by ``spec`` (every process holds x)."""
    sharding = NamedSharding(mesh, spec)

    def one(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])

    return jax.tree.map(one, x)


def _host(x: Any) -> Any:
    """Global arrays back to NumPy on this host (gathered across processes if several)."""
    if jax.process_count() > 1:  # pragma: no cover - needs several processes
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return jax.tree.map(np.asarray, x)


def _bucket(n: int, cap: int, multiple: int) -> int:
    """``n`` rounded up to a power of two (at most ``cap``) and to a multiple of ``multiple``."""
    b = min(1 << max(n - 1, 0).bit_length(), cap)
    return -(-max(b, n) // multiple) * multiple


def _take(tree: Any, idx: np.ndarray) -> Any:
    return jax.tree.map(lambda a: np.asarray(a)[idx], tree)
