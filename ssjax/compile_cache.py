"""A persistent XLA compilation cache, on by default.

Most of what a new Python process waits for in ssjax is XLA compiling the filter, the fit and
the Hessian programs. JAX can keep compiled programs on disk and reuse them in later
processes; ssjax turns that on when it is imported, in the user's cache directory:

* ``$SSJAX_CACHE_DIR`` when set (an empty value, ``0``, ``off`` or ``none`` turns the cache
  off);
* otherwise ``$XDG_CACHE_HOME/ssjax/xla`` (default ``~/.cache/ssjax/xla``) on Linux,
  ``~/Library/Caches/ssjax/xla`` on macOS, ``%LOCALAPPDATA%\\ssjax\\Cache\\xla`` on Windows.

If JAX already has a cache directory (``JAX_COMPILATION_CACHE_DIR`` or
``jax.config.update("jax_compilation_cache_dir", ...)`` before the import), ssjax leaves it
alone. Every program is cached, however quickly it compiled (JAX's default skips those
under a second, which are most of ssjax's). Cached programs are keyed by the program, the
JAX/XLA versions, the backend and the compile options, so a cache never changes a result;
JAX writes each entry atomically, so processes can share a directory.

:func:`enable` moves the cache (or turns it back on), :func:`disable` turns it off for the
rest of the process, :func:`cache_dir` says where it is. :func:`compile_log` records what
JAX traced, lowered and compiled inside a ``with`` block (the tests use it to check that no
entry point compiles again on a second call of the same shapes).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache as _cc

__all__ = ["CompileLog", "cache_dir", "compile_log", "default_cache_dir", "disable", "enable"]

#: environment variable naming the cache folder (empty, ``0``, ``off``, ``none``: no cache)
ENV = "SSJAX_CACHE_DIR"
_OFF = {"", "0", "off", "none", "false", "no"}


def default_cache_dir() -> Path | None:
    """The folder ssjax uses when nothing is configured (``None``: turned off by
    ``$SSJAX_CACHE_DIR``)."""
    env = os.environ.get(ENV)
    if env is not None:
        return None if env.strip().lower() in _OFF else Path(env).expanduser()
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
        return base / "ssjax" / "Cache" / "xla"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ssjax" / "xla"


def cache_dir() -> Path | None:
    """The persistent cache folder JAX uses now (``None``: no persistent cache)."""
    d = jax.config.jax_compilation_cache_dir
    return Path(d) if d else None


def enable(path: str | os.PathLike | None = None) -> Path:
    """Turn the persistent compilation cache on, in ``path`` (default: :func:`default_cache_dir`,
    or ``~/.cache/ssjax/xla`` if that is turned off). Creates the folder. Returns it."""
    p = Path(path).expanduser() if path is not None else default_cache_dir()
    if p is None:
        p = Path.home() / ".cache" / "ssjax" / "xla"
    p.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(p))
    # cache every program: most of ssjax's compile in well under JAX's default second
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _cc.reset_cache()  # a cache JAX already opened elsewhere is reopened here
    return p


def disable() -> None:
    """Turn the persistent compilation cache off for the rest of the process."""
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_enable_compilation_cache", False)
    _cc.reset_cache()


def _enable_default() -> None:
    """At import: the default cache, unless JAX has one already or it is turned off."""
    if jax.config.jax_compilation_cache_dir:
        return  # the user's own JAX cache
    p = default_cache_dir()
    if p is None:
        return
    try:
        enable(p)
    except OSError:  # a read-only home: run without a persistent cache
        return


_TRACE = "/jax/core/compile/jaxpr_trace_duration"
_LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
_COMPILE = "/jax/core/compile/backend_compile_duration"
_HITS = "/jax/compilation_cache/cache_hits"
_MISSES = "/jax/compilation_cache/cache_misses"


@dataclass
class CompileLog:
    """What JAX traced, lowered to XLA and compiled inside :func:`compile_log`.

    Each list holds ``(function name, seconds)``. A lowering is a new executable; ``backend``
    holds its XLA step, a compilation or a load from the persistent cache (``cache_hits``
    counts the loads, ``cache_misses`` the programs compiled and written to the cache).
    """

    traces: list[tuple[str, float]] = field(default_factory=list)
    lowerings: list[tuple[str, float]] = field(default_factory=list)
    backend: list[tuple[str, float]] = field(default_factory=list)
    cache_hits: int = 0
    cache_misses: int = 0

    @property
    def seconds(self) -> float:
        """Seconds spent tracing, lowering and compiling."""
        return sum(s for _, s in self.traces + self.lowerings + self.backend)

    def by_function(self) -> dict[str, tuple[int, float]]:
        """``{name: (lowerings, seconds traced + lowered + compiled)}``, slowest first."""
        out: dict[str, list] = {}
        for name, s in self.traces + self.lowerings + self.backend:
            out.setdefault(name, [0, 0.0])[1] += s
        for name, _ in self.lowerings:
            out[name][0] += 1
        return dict(sorted(((k, (n, s)) for k, (n, s) in out.items()), key=lambda kv: -kv[1][1]))


@contextlib.contextmanager
def compile_log() -> Iterator[CompileLog]:
    """Record the traces, lowerings and compilations of the ``with`` block.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ssjax.compile_cache import compile_log
        >>> f = jax.jit(lambda x: x + 1)
        >>> with compile_log() as log:
        ...     _ = f(jnp.ones(3)); _ = f(jnp.zeros(3))
        >>> len(log.lowerings)
        1
    """
    log = CompileLog()
    where = {_TRACE: log.traces, _LOWER: log.lowerings, _COMPILE: log.backend}

    def listener(event: str, duration: float, **kw: object) -> None:
        if event in where:
            where[event].append((str(kw.get("fun_name", "?")), float(duration)))

    def counter(event: str, **kw: object) -> None:
        if event == _HITS:
            log.cache_hits += 1
        elif event == _MISSES:
            log.cache_misses += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    jax.monitoring.register_event_listener(counter)
    try:
        yield log
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
        jax.monitoring.unregister_event_listener(counter)
