"""The store's tests' writer processes: ``run`` executes ParquetStore calls in a child process.

The tests start these with multiprocessing's "forkserver" context, this module preloaded: the
server is a fresh interpreter (not a fork of the test process) that imports ssjax once, and
each writer is a fork of it, so a writer starts in milliseconds instead of the second or two
an interpreter takes to import ssjax.
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

from ssjax.data.store import ParquetStore


def run(
    root: str,
    calls: list[tuple[str, tuple[Any, ...]]],
    crash_at: str | None = None,
    go: Any = None,
) -> None:
    """Run each ``(method, args)`` of ``calls`` on ``ParquetStore(root)``, in order.

    ``crash_at`` sets ``$SSJAX_STORE_CRASH_AT`` (the store kills the process at that phase of
    a write); with an event ``go``, the calls wait for it to be set.
    """
    if crash_at is not None:
        os.environ["SSJAX_STORE_CRASH_AT"] = crash_at
    store = ParquetStore(root, timeout=30)
    if go is not None and not go.wait(60):
        raise TimeoutError("never told to go")
    for method, args in calls:
        getattr(store, method)(*args)


def context() -> multiprocessing.context.BaseContext:
    """The forkserver context, with the store (and so ssjax) loaded in the server.

    (The server does not get the tests' ``sys.path`` before it preloads, so this module is
    loaded by each writer; the store comes from the installed package.)
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["ssjax.data.store"])
    return ctx
