"""The 1-D device mesh the batches are split over, moving arrays onto and off it, and what
several processes (``jax.distributed``) must agree on: the layout, and bytes from process 0."""

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
    if jax.process_count() > 1:  # pragma: no cover - several processes
        # every process runs the same programs: each must own a part of the mesh
        owners = {d.process_index for d in devs}
        idle = sorted(set(range(jax.process_count())) - owners)
        if idle:
            raise ValueError(
                f"devices: under jax.distributed every process must own devices of the mesh; "
                f"process(es) {idle} own none of the {len(devs)} chosen (devices=None uses all)"
            )
    return Mesh(np.asarray(devs), (_AXIS,))


def _layout(mesh: Mesh) -> dict[str, Any]:
    """The run's device and process layout (recorded in ``out_dir``'s manifest): the mesh's
    device count and platform, the processes and how many of the mesh's devices each owns."""
    devs = list(mesh.devices.flat)
    per = [0] * jax.process_count()
    for d in devs:
        per[d.process_index] += 1
    return {
        "devices": len(devs),
        "platform": devs[0].platform,
        "processes": jax.process_count(),
        "devices_per_process": per,
    }


def _lead() -> bool:
    """Whether this process writes files and shows progress (process 0)."""
    return jax.process_index() == 0


def _from_lead(data: bytes | None) -> bytes:
    """``data`` of process 0, on every process (the others pass anything; one process: as
    given). Used for what only process 0 reads from ``out_dir``: the others may not see it."""
    if jax.process_count() == 1:
        return b"" if data is None else data
    return _broadcast_bytes(data)


def _broadcast_bytes(data: bytes | None) -> bytes:  # pragma: no cover - several processes
    from jax.experimental import multihost_utils

    lead = _lead()
    n = len(data) if lead and data is not None else 0
    n = int(multihost_utils.broadcast_one_to_all(np.array([n], np.int32))[0])
    buf = np.zeros(1 << max(n - 1, 0).bit_length(), np.uint8)  # few sizes: few compiles
    if lead and n:
        buf[:n] = np.frombuffer(data, np.uint8)
    return multihost_utils.broadcast_one_to_all(buf)[:n].tobytes()


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
