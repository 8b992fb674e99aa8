"""Rolling recalibration: batched fits over commodities × windows.

``recalibrate(panels, window=W, step=s)`` fits Θ on every window of W dates ending at
W−1, W−1+s, … for every commodity, and returns Θ, standard errors, log-likelihood, convergence,
the filtered state and model forwards at each window end, and innovation diagnostics.

How the batch runs (jitted; one compiled program per window shape and chunk size):

* windows are cut with ``lax.dynamic_slice`` from ``[C, T, M]`` arrays; a commodity's dates
  without data are masked (ragged histories share one date index);
* **cold** mode (``warm_start=False``) fits every window in parallel from its own data-derived
  start: ``vmap`` of the jittable fit (L-BFGS MLE or structured EM) over a chunk of
  ``chunk_size`` windows. A vmapped ``while_loop`` runs every lane until the slowest converges,
  so each chunk first gets a small step budget (``budget``); the lanes that have not
  converged within it are gathered, padded to a power of two (a handful of compiled sizes) and
  refitted in a second vmapped pass with the full budget;
* **warm** mode walks each commodity's windows in order (``lax.scan``), starting window w from
  window w−1's optimum (few steps each), with ``vmap`` across commodities; the windows are cut
  into chunks of ``chunk_size`` window ends, the last optimum carried from chunk to chunk;
* **devices**: every chunk is split over a 1-D device mesh with ``jax.shard_map`` (lanes in
  cold mode, commodities in warm mode), so the same call uses every GPU of a machine and,
  after ``jax.distributed.initialize()``, every device of several machines. On each device
  the lanes run in vmapped groups of exactly ``vector_width`` (``lax.map`` over the groups),
  so a lane's floating-point path is the same whatever the device count and chunk size: the
  results equal a one-device run exactly;
* **starts and escapes**: cold mode (and ``explore``) can fit ``n_starts`` points per
  window as lanes of the same batch (:func:`ssjax.optimum.start_design`) and keeps the best;
  in every mode a fit that ends at a degenerate point (κ, σ_X or σ_Y → 0, κ → ∞, |ρ| → 1) is
  refitted from it moved inside, and a warm start never starts from such a point;
* **refinement** (``refine``): a window's likelihood is often multi-modal (which tenors end
  up fitted exactly, s.d. → 0), and a fit stops at the optimum its path reaches. After the
  fits, each window is refitted from its neighbours' optima where those score higher on its
  data, or where they price other tenors exactly (another mode), in rounds until nothing
  improves; warm starts and these refits start from the other optimum moved off the boundary
  (:func:`escape_boundary`). Warm mode also fits seeds from data-derived starts on every
  ``explore``-th window and the last (default 16; ``explore=True``: every window), which the
  refinement spreads to their neighbours. On the calibration benchmark (natural gas, Brent
  and WTI, 198 windows; ``experiments/bench_optimum.py``) cold and default warm mode end at
  the best known optimum in all but one window (0.87 nats below);
* **resumable**: with ``out_dir`` each finished chunk is written to a Parquet file there
  (atomically: temporary file, then rename) beside a manifest naming the run; running the same
  call again skips the chunks already on disk, so a run killed mid-way and restarted ends with
  the same results as an uninterrupted one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax import Array, lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .data import MarketData, pad_dates, window_data
from .em import EM_STATUS_MESSAGES, fit_em
from .filter import default_prior, kalman_filter, log_likelihood_data
from .inference import parameter_uncertainty
from .mle import FTOL, GTOL, STATUS_MESSAGES, check_fit_options, fit_mle, stopped
from .mle import default_start as _default_start
from .model import forward_curve
from .optimum import bound_vector, move_inside, offset_start, pull_back, start_design
from .panels import Panel, StackedPanels, as_stacked, market_stack
from .params import Params, flatten_params, param_names, unflatten_params
from .progress import progress_bar

__all__ = [
    "RollingResult",
    "recalibrate",
    "window_data",
    "pull_back",
    "escape_boundary",
    "TRACE_COUNTS",
]

_AXIS = "batch"
#: how many times each batched program was traced (a retrace is a recompilation)
TRACE_COUNTS: Counter = Counter()
_MANIFEST = "manifest.json"
_FORMAT_VERSION = 4  # 4: robust standard errors in the post-fit numbers
REFINE_MODES = ("neighbours", "past", "none")
#: warm mode's default ``explore`` (with a refinement): seeds on every 16th window and the last
EXPLORE_STRIDE = 16
#: a neighbour's optimum is refitted from when it beats a window's own by more than this
REFINE_GATE = 1e-3
#: a refit replaces a window's result when it ends higher by more than this (nats)
REFINE_ACCEPT = 1e-4


# --------------------------------------------------------------------------------------
# The one-window case (pure, jittable) and its batched forms
# --------------------------------------------------------------------------------------
def _padded_window(stack: MarketData, c: Array, end: Array, window: int) -> MarketData:
    """The window padded with masked dates like :class:`ssjax.KalmanEngine` pads a fit.

    Padding does not change the likelihood, but it changes the floating-point path of the
    optimizer; on a flat or multi-modal likelihood the same padding keeps a batched fit on
    exactly the path of a standalone engine fit of that window.
    """
    from .engine import PAD_MULTIPLE

    n = -(-window // PAD_MULTIPLE) * PAD_MULTIPLE
    return pad_dates(window_data(stack, c, end, window), n)


class WindowFit(NamedTuple):
    """One window's fit, whatever the method (a pytree: it vmaps)."""

    params: Params
    loglik: Array
    stopped: Array  # the stopping rule fired: interior optimum or boundary (mle.stopped)
    num_steps: Array  # optimizer steps (MLE) or EM iterations
    status: Array  # the method's status code


def escape_boundary(
    p: Params,
    ref: Params,
    floor: float,
    data: MarketData,
    prior: Any = None,
    *,
    revert: bool = True,
) -> Params:
    """A start for ``data`` from another optimum ``p``: :func:`pull_back`, then each raised
    s.d. kept only where the log-likelihood of ``data`` grows with it there.

    A tenor whose s.d. the likelihood drives back to zero would cost L-BFGS many steps to
    walk back down the flat log-s.d. direction; it starts where it was. (One gradient
    evaluation; ``floor = 0`` returns ``p``; ``revert=False`` is :func:`pull_back` alone.)
    """
    pb = pull_back(p, ref, floor)
    if floor <= 0 or not revert:
        return pb
    prior = default_prior(data) if prior is None else prior
    g = jax.grad(lambda q: log_likelihood_data(q, data, prior))(pb)

    def keep(a_pb, a, ga):
        return None if a is None else jnp.where(ga > 0, a_pb, a)

    return pb._replace(
        sigma_x=keep(pb.sigma_x, p.sigma_x, g.sigma_x),
        meas_sd=keep(pb.meas_sd, p.meas_sd, g.meas_sd),
        spot_sd=keep(pb.spot_sd, p.spot_sd, g.spot_sd),
    )


def _fit_window(
    stack,
    c,
    end,
    init,
    use_init,
    offset,
    *,
    window,
    method,
    max_steps,
    gradient,
    filter_method,
    floor,
    revert=True,
    pad=True,
) -> WindowFit:
    """Fit one window from ``init`` moved inside and off the boundary (``use_init``) or from
    its data-derived start moved by ``offset`` (one start of a design:
    ``(log_scale [4], rho, keep_rho)``, see :func:`ssjax.optimum.offset_start`; with
    ``use_init`` its ``rho`` is what a ρ at ±1 in ``init`` becomes)."""
    raw = window_data(stack, c, end, window)
    # padded like a standalone KalmanEngine fit (the same floating-point path) unless asked not
    # to: a warm fit starts elsewhere anyway, and the padded dates cost ~20% of its time
    data = _padded_window(stack, c, end, window) if pad else raw
    ds = _default_start(raw)
    log_scale, rho, keep_rho = offset
    # a degenerate optimum (a factor gone, |ρ| = 1) is no start: its degenerate coordinates
    # are moved back inside first (the others are kept)
    init = move_inside(init, ds, rho)
    init = escape_boundary(init, ds, floor, data, default_prior(raw), revert=revert)
    seed = offset_start(ds, log_scale, rho, keep_rho)
    start = jax.tree.map(lambda a, b: jnp.where(use_init, a, b), init, seed)
    prior = default_prior(raw)
    # the prior and the free mask as KalmanEngine passes them
    free = jnp.ones_like(flatten_params(start))
    if method == "MLE":
        r = fit_mle(
            data,
            start,
            prior,
            free,
            max_steps=max_steps,
            gradient=gradient,
            filter_method=filter_method,
        )
        return WindowFit(r.params, r.loglik, stopped(r.status), r.num_steps, r.status)
    r = fit_em(data, start, prior, free, max_iters=max_steps)
    return WindowFit(r.params, r.loglik, stopped(r.status), r.num_iters, r.status)


def _NO_OFFSET(dtype):
    """The zero offset (the data-derived start itself; ρ at ±1 in a start moves to 0)."""
    return (jnp.zeros(4, dtype), jnp.zeros((), dtype), jnp.ones((), bool))


def _zero_offsets(n: int, dtype) -> tuple:
    """``n`` lanes of the zero offset (host arrays; see :func:`_NO_OFFSET`)."""
    return (np.zeros((n, 4), dtype), np.zeros(n, dtype), np.ones(n, bool))


def _offsets(design, idx: np.ndarray, dtype) -> tuple:
    """Host arrays of the design's offsets for lanes taking start ``idx``."""
    return (
        np.asarray(design.log_scale[idx], dtype),
        np.asarray(design.rho[idx], dtype),
        np.asarray(design.keep_rho[idx], bool),
    )


def _lanes(fn, xs, width: int):
    """``fn`` over the leading axis of ``xs`` in vmapped groups of exactly ``width`` lanes.

    A fixed group width makes every lane's floating-point path independent of how many
    lanes a device holds (so of the chunk size and the device count); it also bounds the
    vmapped ``while_loop``'s wait for its slowest lane to the group.
    """
    return lax.map(lambda a: fn(*a), xs, batch_size=width)


def _cold_body(stack, cs, ends, inits, use_init, offsets, *, width, **fit_kw):
    TRACE_COUNTS["cold"] += 1
    fn = functools.partial(_fit_window, **fit_kw)
    return _lanes(lambda *a: fn(stack, *a), (cs, ends, inits, use_init, offsets), width)


def _warm_body(stack, cs, ends, carry, have, *, width, **fit_kw):
    """``lax.scan`` over the window ends of each commodity, vmapped over commodities."""
    TRACE_COUNTS["warm"] += 1
    fn = functools.partial(_fit_window, pad=False, **fit_kw)

    def per_commodity(c, p0, h0):
        def body(state, e):
            p, h = state
            r = fn(stack, c, e, p, h, _NO_OFFSET(p.kappa.dtype))
            ok = r.stopped & jnp.isfinite(r.loglik)
            nxt = jax.tree.map(lambda a, b: jnp.where(ok, a, b), r.params, p)
            return (nxt, h | ok), r

        (p_last, h_last), res = lax.scan(body, (p0, h0), ends)
        return res, p_last, h_last

    return _lanes(per_commodity, (cs, carry, have), width)


def _post_body(stack, cs, ends, params, *, window, width, standard_errors):
    """Per window: standard errors, filtered state and forwards at the end, diagnostics."""
    TRACE_COUNTS["post"] += 1

    def one(c, e, p):
        data = window_data(stack, c, e, window)
        prior = default_prior(data)
        if standard_errors:  # exact Hessian and sandwich (the costliest part of this pass)
            unc = parameter_uncertainty(p, data, prior)
            std_err = jnp.sqrt(jnp.diagonal(unc.cov))
            std_err_robust = jnp.sqrt(jnp.diagonal(unc.cov_robust))
        else:
            std_err = std_err_robust = jnp.full_like(flatten_params(p), jnp.nan)
        filt = kalman_filter(p, data, prior)
        state = filt.filtered_means[-1]
        f_t = forward_curve(p, state, data.ttm[-1])
        v = jnp.where(data.mask, filt.innovation_vars, 1.0)
        u = jnp.where(data.mask, filt.innovations / jnp.sqrt(v), 0.0)  # standardized
        n_i = jnp.sum(data.mask, axis=0)
        n = jnp.maximum(jnp.sum(n_i), 1)
        mean_u = jnp.sum(u, axis=0) / jnp.maximum(n_i, 1)
        var_u = jnp.sum(u * u, axis=0) / jnp.maximum(n_i, 1) - mean_u**2
        nan = jnp.asarray(jnp.nan, u.dtype)
        return {
            "std_err": std_err,
            "std_err_robust": std_err_robust,
            "state_t": state,
            "F_model_t": f_t,
            # mean squared standardized innovation (1 if the model is well specified)
            "mean_nis": jnp.sum(u * u) / n,
            "innov_mean": jnp.where(n_i > 0, mean_u, nan),
            "innov_sd": jnp.where(n_i > 1, jnp.sqrt(jnp.maximum(var_u, 0.0)), nan),
            "nobs": n_i,
        }

    return _lanes(one, (cs, ends, params), width)


def _loglik_body(stack, cs, ends, params, *, window, width):
    """Each lane's window log-likelihood at ``params`` (the refinement's cheap gate)."""
    TRACE_COUNTS["loglik"] += 1

    def one(c, e, p):
        data = window_data(stack, c, e, window)
        return log_likelihood_data(p, data, default_prior(data))

    return _lanes(one, (cs, ends, params), width)


_BODIES = {"cold": _cold_body, "warm": _warm_body, "post": _post_body, "loglik": _loglik_body}
_PROGRAMS: dict[tuple, Callable] = {}


def _program(kind: str, mesh: Mesh, **static) -> Callable:
    """The jitted, mesh-sharded program for ``kind`` (built once per mesh and settings).

    The stacked panel is replicated on every device; the batch arguments (lanes in cold
    mode and for the post-fit, commodities in warm mode) are split along the mesh axis.
    """
    key = (kind, mesh, tuple(sorted(static.items())))
    if key not in _PROGRAMS:
        body = functools.partial(_BODIES[kind], **static)
        if kind == "warm":  # (stack, cs, ends, carry, have): ends replicated
            in_specs = (P(), P(_AXIS), P(), P(_AXIS), P(_AXIS))
        elif kind == "cold":  # (stack, cs, ends, inits, use_init, offsets)
            in_specs = (P(), P(_AXIS), P(_AXIS), P(_AXIS), P(_AXIS), P(_AXIS))
        else:  # post and loglik: (stack, cs, ends, params)
            in_specs = (P(), P(_AXIS), P(_AXIS), P(_AXIS))
        sharded = jax.shard_map(
            body, mesh=mesh, in_specs=in_specs, out_specs=P(_AXIS), check_vma=False
        )
        _PROGRAMS[key] = jax.jit(sharded)
    return _PROGRAMS[key]


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


# --------------------------------------------------------------------------------------
# The result and its on-disk chunks
# --------------------------------------------------------------------------------------
@dataclass
class RollingResult:
    """Per commodity and window end: Θ, s.e., loglik, convergence, states, forwards."""

    commodities: list[str]
    window: int
    step: int
    method: str
    dates: pd.DatetimeIndex  # common date index of the stacked panel
    end_index: np.ndarray  # [W] window-end indices into ``dates``
    params: Params  # leaves [C, W] (meas_sd [C, W, M])
    std_err: np.ndarray  # [C, W, n_params] (flat physical order, NaN where not available)
    loglik: np.ndarray  # [C, W]
    converged: np.ndarray  # [C, W] an interior optimum (stopping rule met, no bound active)
    num_steps: np.ndarray  # [C, W] optimizer steps (MLE) or EM iterations
    status: np.ndarray  # [C, W] the method's status code (see ``status_text``)
    state_t: np.ndarray  # [C, W, 2] filtered (X, Y) at the window end
    F_model_t: np.ndarray  # [C, W, M]
    F_mkt_t: np.ndarray  # [C, W, M]
    mean_nis: np.ndarray  # [C, W] mean squared standardized innovation (≈1 when well fit)
    innov_mean: np.ndarray  # [C, W, M] mean standardized innovation per tenor (≈0)
    innov_sd: np.ndarray  # [C, W, M] s.d. of the standardized innovations per tenor (≈1)
    nobs: np.ndarray  # [C, W, M] observations per tenor in the window
    valid: np.ndarray  # [C, W] window has data
    mode: str
    seconds: float
    info: dict = field(default_factory=dict)
    refined: np.ndarray | None = None  # [C, W] result from a refinement refit (``refine``)
    #: [C, W] the stopping rule fired: an interior optimum or a boundary end point
    optimum_reached: np.ndarray | None = None
    #: [C, W, n_params] free parameters at a bound of their domain (ssjax.optimum.at_bounds)
    at_bound: np.ndarray | None = None
    #: [C, W, n_params] robust (sandwich) standard errors, like ``std_err``; well above
    #: ``std_err`` where the Gaussian model is misspecified for the window's data
    std_err_robust: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.refined is None:
            self.refined = np.zeros(np.shape(self.valid), bool)
        if self.optimum_reached is None:
            self.optimum_reached = np.asarray(self.converged, bool).copy()
        if self.at_bound is None:
            self.at_bound = np.zeros(np.shape(self.std_err), bool)
        if self.std_err_robust is None:
            self.std_err_robust = np.full(np.shape(self.std_err), np.nan)

    def bound_text(self, c: int, w: int) -> str:
        """The parameters of window ``w`` of commodity ``c`` that ended at a bound."""
        names = self.param_names
        return ", ".join(n for n, f in zip(names, self.at_bound[c, w], strict=True) if f)

    @property
    def end_dates(self) -> pd.DatetimeIndex:
        return self.dates[self.end_index]

    @property
    def param_names(self) -> list[str]:
        return param_names(jax.tree.map(lambda a: a[0, 0], self.params))

    def status_text(self, c: int, w: int) -> str:
        """The stopping reason of window ``w`` of commodity ``c``."""
        if not self.valid[c, w]:
            return "no data in the window"
        table = STATUS_MESSAGES if self.method == "MLE" else EM_STATUS_MESSAGES
        return table.get(int(self.status[c, w]), f"status {int(self.status[c, w])}")

    def drift_alerts(self, panels: Any = None, **kw: Any) -> pd.DataFrame:
        """Window ends where Θ jumps or the innovations drift (:func:`ssjax.drift.drift_alerts`;
        pass the ``panels`` given to :func:`recalibrate` to also run the CUSUM)."""
        from .drift import drift_alerts

        return drift_alerts(self, panels, **kw)

    def to_frame(self) -> pd.DataFrame:
        """A tidy table: one row per (commodity, window end) with Θ, s.e. and diagnostics."""
        names = self.param_names
        C, W = self.loglik.shape
        flat = np.concatenate(
            [np.asarray(v, float).reshape(C, W, -1) for v in self.params if v is not None],
            axis=-1,
        )
        rows = []
        for c in range(C):
            for w in range(W):
                if not self.valid[c, w]:
                    continue
                r = {"commodity": self.commodities[c], "window_end": self.end_dates[w]}
                r.update(dict(zip(names, flat[c, w], strict=True)))
                r.update({f"se_{n}": s for n, s in zip(names, self.std_err[c, w], strict=True)})
                r.update(
                    {
                        f"se_robust_{n}": s
                        for n, s in zip(names, self.std_err_robust[c, w], strict=True)
                    }
                )
                r.update(
                    loglik=self.loglik[c, w],
                    converged=bool(self.converged[c, w]),
                    optimum_reached=bool(self.optimum_reached[c, w]),
                    at_bound=self.bound_text(c, w),
                    refined=bool(self.refined[c, w]),
                    num_steps=int(self.num_steps[c, w]),
                    status=self.status_text(c, w),
                    X_t=self.state_t[c, w, 0],
                    Y_t=self.state_t[c, w, 1],
                    mean_nis=self.mean_nis[c, w],
                )
                for m in range(self.F_model_t.shape[-1]):
                    r[f"F_model_t[{m}]"] = self.F_model_t[c, w, m]
                    r[f"F_mkt_t[{m}]"] = self.F_mkt_t[c, w, m]
                    r[f"innov_sd[{m}]"] = self.innov_sd[c, w, m]
                rows.append(r)
        return pd.DataFrame(rows)

    def to_parquet(self, path: str | os.PathLike) -> None:
        """Write the tidy table to Parquet (pyarrow)."""
        self.to_frame().to_parquet(path, index=False)

    def to_xarray(self) -> Any:
        """An ``xarray.Dataset`` (commodity × window_end [× tenor]); needs xarray installed."""
        try:
            import xarray as xr
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ImportError("to_xarray needs xarray: pip install xarray") from e
        cw = ("commodity", "window_end")
        cwm = cw + ("tenor",)
        coords = {"commodity": self.commodities, "window_end": self.end_dates}
        data: dict[str, Any] = {}
        for k, v in self.params._asdict().items():
            if v is None:
                continue
            data[k] = (cw if np.ndim(v) == 2 else cwm, np.asarray(v))
        data.update(
            loglik=(cw, self.loglik),
            converged=(cw, self.converged),
            optimum_reached=(cw, self.optimum_reached),
            refined=(cw, self.refined),
            num_steps=(cw, self.num_steps),
            mean_nis=(cw, self.mean_nis),
            X_t=(cw, self.state_t[..., 0]),
            Y_t=(cw, self.state_t[..., 1]),
            F_model_t=(cwm, self.F_model_t),
            F_mkt_t=(cwm, self.F_mkt_t),
            innov_sd=(cwm, self.innov_sd),
        )
        return xr.Dataset(data, coords=coords, attrs={"method": self.method, "mode": self.mode})


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


# --------------------------------------------------------------------------------------
# The shell
# --------------------------------------------------------------------------------------
def _params_template(stack: MarketData, window: int) -> Params:
    """A start of the right structure (the leaves' shapes are what matters)."""
    return _default_start(window_data(stack, jnp.asarray(0), jnp.asarray(window - 1), window))


def recalibrate(
    panels: Panel | StackedPanels | dict[str, Panel],
    *,
    window: int = 104,
    step: int = 1,
    method: str = "MLE",
    warm_start: bool = False,
    chunk_size: int = 128,
    budget: int = 100,
    max_steps: int | None = None,
    vector_width: int = 16,
    ends: Sequence[int] | None = None,
    dtype: Any = jnp.float64,
    devices: Sequence[Any] | int | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    gradient: str = "autodiff",
    filter_method: str = "auto",
    standard_errors: bool = True,
    warm_floor: float = 0.01,
    refine: str = "neighbours",
    explore: bool | int | None = None,
    max_refine_rounds: int = 100,
    n_starts: int = 4,
    seed: int = 0,
) -> RollingResult:
    """Fit Θ on rolling windows of every commodity.

    Args:
        panels: one :class:`Panel`, a dict of panels (stacked on the union of their dates)
            or a :class:`StackedPanels`.
        window: dates per window; step: dates between window ends.
        method: ``"MLE"`` (L-BFGS on the exact log-likelihood) or ``"EM"`` (structured
            EM, ECME; see :func:`ssjax.em.fit_em`).
        warm_start: walk each commodity's windows in order from the previous optimum
            (``lax.scan``); otherwise all windows in parallel from data-derived starts.
        chunk_size: windows per vmapped chunk (cold mode) or window ends per chunk (warm
            mode); also the unit of the files in ``out_dir``. Rounded up to a multiple of
            the number of devices in cold mode.
        budget: first-pass step budget of cold mode; windows not converged within it are
            refitted from their start with ``max_steps`` (so every window follows the same
            path as a standalone :class:`ssjax.KalmanEngine` fit).
        max_steps: the full step budget (default 1000 L-BFGS steps, 500 EM iterations).
        vector_width: lanes vmapped together on a device (cold mode: windows; warm mode:
            commodities, at most C). Each group of lanes runs until its slowest lane stops,
            and every lane's floating-point path depends only on this width, so results do
            not change with ``chunk_size`` or the number of devices. Larger widths use a
            GPU better; on a CPU 8-32 is about as fast as any.
        ends: explicit window-end indices into the stacked date index (increasing, each at
            least ``window − 1``) instead of ``window − 1, window − 1 + step, …``.
        dtype: ``jnp.float64`` (default) or ``jnp.float32`` for throughput.
        devices: the devices to split each chunk over: a list, a number (the first n of
            ``jax.devices()``) or ``None`` (all visible, across processes after
            ``jax.distributed.initialize()``).
        out_dir: a folder for per-chunk Parquet files; a rerun of the same call (same data
            and settings) reads the finished chunks instead of fitting them again.
        progress: show a progress bar (``tqdm.auto``; default ``None``: when stderr is a
            terminal or in a notebook; see :mod:`ssjax.progress`).
        gradient, filter_method: the MLE's gradient (``"autodiff"`` or ``"fisher"``) and
            filter (``"sequential"``, ``"parallel"`` or ``"auto"``); see
            :func:`ssjax.mle.fit_mle`. Ignored by ``method="EM"``. The default ``"auto"`` is
            the sequential scan on a CPU and the parallel-in-time filter on a GPU/TPU (from
            ``PARALLEL_MIN_DATES`` = 64 dates): on an H200 the sequential scan's per-date
            latency made warm fits of 1,001 windows of 104 weeks take 31.8 s, the parallel
            filter 4.0 s (``experiments/results/gpu/``). It is resolved before the run, so a
            resumed run on another backend refuses the other filter's chunks.
        standard_errors: compute each window's standard errors from the exact Hessian
            (default). ``False`` skips them (``std_err`` is NaN): on the bundled panel with
            104-week windows the Hessians take ~20% of a warm run.
        warm_floor: every fit that starts from another optimum (window w−1's in warm mode,
            the refinement's starts) starts from it moved off the boundary: noise s.d.s and
            σ_X raised to at least ``warm_floor`` × the window's data-derived start where the
            window's log-likelihood grows with them there, |ρ| at most ``1 − warm_floor / 10``
            (:func:`escape_boundary`). Without it a tenor fitted exactly in window w−1
            (s.d. → 0, where the likelihood is flat in log s.d.) stays pinned in window w: on
            the bundled panel, 30 of 165 warm windows then ended below the cold fit, by up to
            147 nats. ``0`` starts from the optimum as it is.
        refine: after the fits, look for better optima among the neighbouring windows'
            (the likelihood of a window is often multi-modal: which tenors end up fitted
            exactly). ``"neighbours"`` (default): each window's log-likelihood is evaluated
            at the optima of windows w−1 and w+1; where one is higher by more than 1e-3,
            or where it has another pattern of noise s.d.s at zero (another mode; once per
            window and pattern), the window is refitted from it (moved off the boundary) and
            the refit is kept if it ends higher; rounds repeat until no window improves (a
            better optimum travels one window per round). First, every fit that started from its
            data-derived start (all of them in cold mode; in warm mode each commodity's first
            and, with ``explore``, the seeds kept), and every fit that ended with a noise s.d.
            at its bound, is restarted once from its own end point with every boundary s.d.
            raised (such a fit can stop on the flat boundary short of the optimum, or keep
            the previous window's exactly-priced tenor where this window prices another
            one exactly). ``"past"``: only
            window w−1's optimum is tried, so which optimum a window reports never depends
            on later data (the estimate is the window's MLE either way; use it for strictly
            causal backtests). ``"none"``: the fits as they end. Refined windows are flagged
            in ``refined``.
        max_refine_rounds: cap on the refinement rounds (``info["refine_rounds"]``).
        explore: warm mode only: also probe seed windows from their data-derived starts
            (``n_starts`` each, ``budget`` L-BFGS steps, as cold mode's first pass); where a
            probe ends above the warm fit, the window is refitted from the probe's end point
            with the full budget and the refit kept if it stops higher, before the
            refinement, which then spreads it to the neighbours. A probe only shows that a
            better mode exists, so it is not run to convergence (on 1,001 WTI windows the
            probes take a third of the time full seed fits took, with the same optima).
            An integer k seeds every k-th window and the last; ``True`` every window;
            ``False``/``0`` none. Default (``None``): 16 with a
            refinement, none with ``refine="none"`` (nothing would spread the seeds). A
            warm path follows one optimum from window to window and cannot find another that
            is better over a stretch of windows but reached from neither end: on the WTI
            panel, windows ending every 4 weeks, plain warm ends 1.1-7.2 nats below the best
            known optimum in the last 8 windows; seeds every 16th window find it.

        n_starts, seed: starting points per window of every fit from data-derived starts
            (cold mode, and ``explore``'s seeds; default 4): the window's data-derived start
            and ``n_starts − 1`` points spread around it (:func:`ssjax.optimum.start_design`,
            shuffled by ``seed``), all fitted as lanes of the same vmapped batch; the best
            is kept. ``n_starts=1`` is one fit per window from its data-derived start (the
            path of a standalone ``KalmanEngine(n_starts=1)`` fit).
            Whatever the mode, a fit that ends at a degenerate point (κ, σ_X or σ_Y
            → 0, |ρ| → 1) is refitted from it moved inside (ρ at −0.5, 0 and 0.5) and the
            better result kept (``info["escaped"]``).

    A window whose tenors are all unobserved is marked ``valid=False`` (its numbers are NaN).
    """
    method = method.upper()
    if refine not in REFINE_MODES:
        raise ValueError(f"refine must be one of {REFINE_MODES}, got {refine!r}")
    if not (np.isfinite(warm_floor) and 0.0 <= warm_floor <= 1.0):
        raise ValueError(f"warm_floor must lie in [0, 1], got {warm_floor}")
    if explore is None:
        explore = EXPLORE_STRIDE if refine != "none" else 0
    if isinstance(explore, bool | np.bool_):
        stride = 1 if explore else 0
    elif isinstance(explore, int | np.integer) and explore >= 0:
        stride = int(explore)
    else:
        raise ValueError(f"explore must be a bool or a window stride >= 0, got {explore!r}")
    if n_starts < 1:
        raise ValueError(f"n_starts must be >= 1, got {n_starts}")
    if max_refine_rounds < 0:
        raise ValueError(f"max_refine_rounds must be >= 0, got {max_refine_rounds}")
    if method not in ("MLE", "EM"):
        raise ValueError(f"method must be 'MLE' or 'EM', got {method!r}")
    check_fit_options(gradient, filter_method)
    if filter_method == "auto":  # resolved here: it names the run's chunks in out_dir
        from .engine import PAD_MULTIPLE
        from .parallel_filter import choose_method

        padded = -(-window // PAD_MULTIPLE) * PAD_MULTIPLE
        filter_method = "sequential" if gradient == "fisher" else choose_method(padded)
    sp = as_stacked(panels)
    T = len(sp.dates)
    if window < 3 or window > T:
        raise ValueError(f"window must be between 3 and the number of dates {T}, got {window}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if chunk_size < 1 or budget < 1 or vector_width < 1:
        raise ValueError(
            "chunk_size, budget and vector_width must be >= 1, got "
            f"{chunk_size}, {budget}, {vector_width}"
        )
    max_steps = (1000 if method == "MLE" else 500) if max_steps is None else int(max_steps)
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.float64), jnp.dtype(jnp.float32)):
        raise ValueError(f"dtype must be float64 or float32, got {dtype}")
    mesh = _mesh(devices)
    n_dev = mesh.devices.size

    C = len(sp.commodities)
    stack = market_stack(sp, dtype)
    if ends is None:
        ends = np.arange(window - 1, T, step)
    else:
        ends = np.asarray(ends, dtype=np.int64).reshape(-1)
        if (
            ends.size == 0
            or ends.min() < window - 1
            or ends.max() >= T
            or np.any(np.diff(ends) <= 0)
        ):
            raise ValueError(
                f"ends must be increasing indices between window - 1 = {window - 1} and "
                f"T - 1 = {T - 1}, got {ends[:5].tolist()}..."
            )
    W = ends.size
    # a window is valid when it has at least one observation on two different dates
    obs_dates = sp.mask.any(axis=-1)  # [C, T]
    cum = np.concatenate([np.zeros((C, 1), int), np.cumsum(obs_dates, axis=1)], axis=1)
    valid = (cum[:, ends + 1] - cum[:, ends + 1 - window]) >= 2

    mode = "warm" if warm_start else "cold"
    config = dict(
        window=window, ends=ends.tolist(), method=method, mode=mode, chunk_size=chunk_size,
        budget=budget if mode == "cold" or (stride and warm_start) else None,
        max_steps=max_steps, dtype=str(dtype),
        vector_width=vector_width,
        commodities=list(sp.commodities),
        gradient=gradient, filter_method=filter_method, standard_errors=bool(standard_errors),
        warm_floor=float(warm_floor), refine=refine, max_refine_rounds=int(max_refine_rounds),
        explore=stride if warm_start else 0, n_starts=int(n_starts), seed=int(seed),
    )  # fmt: skip
    stack_dev = _put(stack, mesh, P())
    template = _params_template(stack, window)

    t0 = time.perf_counter()
    if warm_start:
        flat, post, info = _run_warm(
            stack, stack_dev, template, ends, valid, mesh, n_dev, config, out_dir, progress
        )
    else:
        flat, post, info = _run_cold(
            stack, stack_dev, template, ends, valid, mesh, n_dev, config, out_dir, progress
        )
    if warm_start:
        # the fits that started from the data-derived start: each commodity's first windows,
        # up to its first that stopped at an optimum (later ones start from the previous one)
        ok = (np.asarray(flat["stopped"], bool).reshape(C, W) & valid).astype(int)
        from_data = (np.cumsum(ok, axis=1) - ok == 0).reshape(-1)
    else:
        from_data = np.ones(C * W, bool)
    if warm_start and stride:
        # the seeds: every stride-th window and the last, probed from data-derived starts
        sel = np.unique(np.concatenate([np.arange(0, W, stride), [W - 1]]))
        t1 = time.perf_counter()
        flat, post, better, einfo = _explore(
            stack, stack_dev, template, ends, valid, sel, mesh, n_dev, config, out_dir, flat,
            post,
        )  # fmt: skip
        from_data |= better
        info.update(einfo, explore_seconds=time.perf_counter() - t1)
    refined = np.zeros(C * W, bool)
    if refine != "none" and max_refine_rounds > 0:
        t1 = time.perf_counter()
        flat, post, refined, rinfo = _refine(
            stack, stack_dev, template, ends, valid, mesh, n_dev, config, out_dir, flat, post,
            from_data,
        )  # fmt: skip
        info.update(rinfo, refine_seconds=time.perf_counter() - t1)
    seconds = time.perf_counter() - t0

    def grid(a):
        a = np.asarray(a)
        return a.reshape((C, W) + a.shape[1:])

    nan = np.nan

    def blank(a):
        a = grid(a).astype(float)
        return np.where(valid.reshape((C, W) + (1,) * (a.ndim - 2)), a, nan)

    params = jax.tree.map(blank, flat["params"])
    F_mkt_t = np.where(sp.mask[:, ends], sp.F_mkt[:, ends], nan)
    # a contract is known behind the tenor at the window end (observed, or a positive ttm)
    known = (sp.ttm[:, ends] > 0) | sp.mask[:, ends]
    return RollingResult(
        commodities=list(sp.commodities),
        window=window,
        step=step,
        method=method,
        dates=sp.dates,
        end_index=ends,
        params=params,
        std_err=blank(post["std_err"]),
        std_err_robust=blank(post["std_err_robust"]),
        loglik=blank(flat["loglik"]),
        converged=grid(np.isin(flat["status"], (GTOL, FTOL))).astype(bool) & valid,
        optimum_reached=grid(flat["stopped"]).astype(bool) & valid,
        at_bound=grid(np.asarray(jax.vmap(bound_vector)(flat["params"]))) & valid[..., None],
        num_steps=grid(flat["num_steps"]).astype(int),
        status=grid(flat["status"]).astype(int),
        state_t=blank(post["state_t"]),
        F_model_t=np.where(known, blank(post["F_model_t"]), nan),
        F_mkt_t=F_mkt_t,
        mean_nis=blank(post["mean_nis"]),
        innov_mean=blank(post["innov_mean"]),
        innov_sd=blank(post["innov_sd"]),
        nobs=grid(post["nobs"]).astype(int),
        valid=valid,
        refined=grid(refined).astype(bool) & valid,
        mode=mode,
        seconds=seconds,
        info={**info, "devices": n_dev, "budget": budget, "chunk_size": chunk_size},
    )


def _fit_arrays(r: WindowFit) -> dict[str, Any]:
    """A WindowFit of global arrays as flat host arrays (params flattened to [B, n])."""
    return _flat_fit(_host(r))


def _flat_fit(r: WindowFit) -> dict[str, Any]:
    """A WindowFit already on the host as flat arrays (params flattened to [B, n])."""
    out = {
        "params": jax.vmap(flatten_params)(r.params),
        "loglik": r.loglik,
        "stopped": r.stopped,
        "num_steps": r.num_steps,
        "status": r.status,
    }
    return {k: np.array(v) for k, v in out.items()}  # writable copies


def _unflat_params(flat: np.ndarray, template: Params) -> Params:
    return jax.vmap(lambda v: unflatten_params(v, template))(jnp.asarray(flat))


def _run_post(
    stack_dev, cs, es, params_flat, template, mesh, window, dtype, width, standard_errors
) -> dict:
    prog = _program("post", mesh, window=window, width=width, standard_errors=standard_errors)
    params = _unflat_params(params_flat.astype(dtype), template)
    out = prog(stack_dev, *_put((cs, es, params), mesh, P(_AXIS)))
    return _host(out)


def _fit_kw(config: dict, width: int) -> dict:
    """The static settings of a window fit program, from the run's config."""
    return dict(
        window=config["window"],
        method=config["method"],
        width=width,
        gradient=config["gradient"],
        filter_method=config["filter_method"],
        floor=config["warm_floor"],
    )


def _best_per_window(r: dict, K: int) -> np.ndarray:
    """Index (into the lanes of ``r``, K consecutive lanes per window) of each window's best
    fit: the highest log-likelihood among the lanes that stopped, else among the finite."""
    ll = np.asarray(r["loglik"], float).reshape(-1, K)
    ok = np.asarray(r["stopped"], bool).reshape(-1, K) & np.isfinite(ll)
    pool = np.where(ok.any(axis=1, keepdims=True), ok, np.isfinite(ll))
    score = np.where(pool, ll, -np.inf)
    return np.arange(ll.shape[0]) * K + np.argmax(score, axis=1)


def _degenerate_lanes(r: dict, template: Params) -> np.ndarray:
    """Host mask: fits that stopped at a degenerate point (κ, σ_X, σ_Y or ρ at a bound)."""
    p = _unflat_params(np.asarray(r["params"]), template)
    flags = np.asarray(jax.vmap(bound_vector)(p))[:, :4].any(axis=1)
    return flags & np.isfinite(np.asarray(r["loglik"], float))


#: ρ values a degenerate end point restarts from (its ρ at ±1 moved there, κ/σ moved inside)
ESCAPE_RHOS = (-0.5, 0.0, 0.5)


def _escape(r: dict, full, stack_dev, mesh, unit, cap, cs, es, template, dtype) -> int:
    """Refit every degenerate fit in ``r`` (flat host arrays, changed in place) from its end
    point moved inside, ρ at each of :data:`ESCAPE_RHOS`; the best refit replaces it when
    higher. Returns the number of fits replaced."""
    deg = np.flatnonzero(_degenerate_lanes(r, template))
    if deg.size == 0:
        return 0
    nr = len(ESCAPE_RHOS)
    lanes = np.repeat(deg, nr)
    rho = np.tile(np.asarray(ESCAPE_RHOS), deg.size)
    inits = _unflat_params(np.asarray(r["params"])[lanes].astype(dtype), template)
    off = (np.zeros((lanes.size, 4), dtype), rho.astype(dtype), np.zeros(lanes.size, bool))
    parts = _batched(full, stack_dev, mesh, unit, cap, cs[lanes], es[lanes], inits,
                     extra=(np.ones(lanes.size, bool), off))  # fmt: skip
    parts = [_flat_fit(p) for p in parts]
    res = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    pick = _best_per_window(res, nr)
    n = 0
    for i, lane in enumerate(deg):
        j = pick[i]
        if res["stopped"][j] and res["loglik"][j] > r["loglik"][lane] + REFINE_ACCEPT:
            for k in r:
                r[k][lane] = res[k][j]
            n += 1
    return n


def _run_cold(stack, stack_dev, template, ends, valid, mesh, n_dev, config, out_dir, progress):
    C, W = valid.shape
    window, method = config["window"], config["method"]
    width = config["vector_width"]
    unit = width * n_dev  # lanes per call are a multiple of this: whole groups on each device
    K = config["n_starts"]
    design = start_design(K, config["seed"])
    B = -(-config["chunk_size"] // unit) * unit  # windows per chunk (B * K lanes)
    cs_all = np.repeat(np.arange(C), W).astype(np.int32)
    es_all = np.tile(ends, C).astype(np.int32)
    valid_all = valid.reshape(-1)
    N = C * W
    n_chunks = -(-N // B)
    store = None
    if out_dir is not None:
        store = _ChunkStore(out_dir, _digest(stack, config), config, n_chunks)
    kw = _fit_kw(config, width)
    first = _program("cold", mesh, max_steps=config["budget"], **kw)
    full = _program("cold", mesh, max_steps=config["max_steps"], **kw)
    dtype = stack.log_f.dtype
    dummy = jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (B * K,) + a.shape), template)
    label = f"recalibrate {method} cold"
    bar = _Progress(n_chunks, int(valid_all.sum()), progress, label)
    parts_fit, parts_post = [], []
    computed = second_total = escaped = 0
    for k in range(n_chunks):
        wins = np.arange(k * B, min((k + 1) * B, N))
        n = wins.size
        if store is not None and store.has("chunk", k):
            part = store.read("chunk", k, _cold_shapes(template, stack))
            bar.update(int(valid_all[wins].sum()), computed=False)
        else:
            # a short chunk is padded (repeating its last lane) only to a power of two of
            # whole groups: a padded lane costs as much as a real one
            L = _bucket(n * K, B * K, unit)
            lane_w = np.repeat(wins, K)  # K starts of each window, side by side
            lane_s = np.tile(np.arange(K), n)
            pad = np.full(L - n * K, n * K - 1)
            lane_w = np.concatenate([lane_w, lane_w[pad]])
            lane_s = np.concatenate([lane_s, lane_s[pad]])
            cs, es = cs_all[lane_w], es_all[lane_w]
            off = _offsets(design, lane_s, dtype)
            use = np.zeros(L, bool)
            d1 = jax.tree.map(lambda a: a[:L], dummy)
            r = _fit_arrays(first(stack_dev, *_put((cs, es, d1, use, off), mesh, P(_AXIS))))
            r = {name: v[: n * K] for name, v in r.items()}
            real = valid_all[lane_w[: n * K]]
            todo = np.flatnonzero(~r["stopped"] & real)
            second_total += todo.size
            if todo.size:
                # the stragglers start over from their start with the full budget: the same
                # path as a standalone fit from there (continuing from the first pass's end
                # point would restart L-BFGS's memory and preconditioner and can stop
                # elsewhere on a flat likelihood)
                nb = _bucket(todo.size, B * K, unit)
                sub = np.concatenate([todo, np.full(nb - todo.size, todo[0])])
                d2 = jax.tree.map(lambda a: a[:nb], dummy)
                o2 = tuple(np.asarray(x)[sub] for x in off)
                r2 = _fit_arrays(
                    full(stack_dev, *_put((cs[sub], es[sub], d2, np.zeros(nb, bool), o2),
                                          mesh, P(_AXIS)))
                )  # fmt: skip
                for name in r:
                    r[name][todo] = r2[name][: todo.size]
            best = _best_per_window(r, K)
            r = {name: np.array(v[best]) for name, v in r.items()}
            cw, ew = cs_all[wins], es_all[wins]
            real_w = np.flatnonzero(valid_all[wins])
            sub_r = {name: v[real_w] for name, v in r.items()}
            escaped += _escape(sub_r, full, stack_dev, mesh, unit, B, cw[real_w], ew[real_w],
                               template, dtype)  # fmt: skip
            for name in r:
                r[name][real_w] = sub_r[name]
            nw = _bucket(n, B, unit)
            pw = np.concatenate([np.arange(n), np.full(nw - n, n - 1)])
            post = _run_post(
                stack_dev, cw[pw], ew[pw], r["params"][pw], template, mesh, window, dtype,
                width, config["standard_errors"],
            )  # fmt: skip
            part = {f"fit/{k2}": v[:n] for k2, v in r.items()}
            part.update({f"post/{k2}": np.asarray(v)[:n] for k2, v in post.items()})
            if store is not None:
                store.write("chunk", k, part)
            computed += 1
            bar.update(int(valid_all[wins].sum()), computed=True)
        parts_fit.append({k2[4:]: v for k2, v in part.items() if k2.startswith("fit/")})
        parts_post.append({k2[5:]: v for k2, v in part.items() if k2.startswith("post/")})
    flat = {k2: np.concatenate([p[k2] for p in parts_fit]) for k2 in parts_fit[0]}
    flat["params"] = _unflat_params(flat["params"], template)
    post = {k2: np.concatenate([p[k2] for p in parts_post]) for k2 in parts_post[0]}
    info = {
        "chunks": n_chunks,
        "chunks_computed": computed,
        "second_pass_windows": second_total,
        "escaped": escaped,
    }
    return flat, post, info


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


def _run_warm(stack, stack_dev, template, ends, valid, mesh, n_dev, config, out_dir, progress):
    C, W = valid.shape
    window, method = config["window"], config["method"]
    Bw = config["chunk_size"]
    width = config["vector_width"]
    width_c = min(width, C)  # commodities per vmapped group
    Cp = -(-C // (width_c * n_dev)) * (width_c * n_dev)  # whole groups on every device
    cs = np.concatenate([np.arange(C), np.zeros(Cp - C, int)]).astype(np.int32)
    n_chunks = -(-W // Bw)
    store = None
    if out_dir is not None:
        store = _ChunkStore(out_dir, _digest(stack, config), config, n_chunks)
    prog = _program("warm", mesh, max_steps=config["max_steps"], **_fit_kw(config, width_c))
    # the escapes from degenerate end points
    full = _program("cold", mesh, max_steps=config["max_steps"], **_fit_kw(config, width))
    unit = width * n_dev
    n = flatten_params(template).shape[0]
    carry = np.broadcast_to(np.asarray(flatten_params(template)), (Cp, n)).copy()
    have = np.zeros(Cp, bool)
    bar = _Progress(n_chunks, int(valid.sum()), progress, f"recalibrate {method} warm")
    fit_parts, post_parts = [], []
    computed = escaped = 0
    shapes = _cold_shapes(template, stack)
    B_post = -(-(C * Bw) // (width * n_dev)) * (width * n_dev)
    for k in range(n_chunks):
        w_idx = np.arange(k * Bw, min((k + 1) * Bw, W))
        nw = w_idx.size
        if store is not None and store.has("chunk", k) and store.has("carry", k):
            part = store.read("chunk", k, shapes)
            cr = store.read("carry", k, {"params": ((n,), np.float64), "have": ((), np.bool_)})
            carry, have = cr["params"], cr["have"]
            bar.update(int(valid[:, w_idx].sum()), computed=False)
        else:
            e_chunk = ends[np.concatenate([w_idx, np.full(Bw - nw, w_idx[-1])])]
            p0 = _unflat_params(carry.astype(stack.log_f.dtype), template)
            res, p_last, h_last = prog(
                stack_dev,
                _put(cs, mesh, P(_AXIS)),
                _put(e_chunk.astype(np.int32), mesh, P()),
                *_put((p0, have), mesh, P(_AXIS)),
            )
            # the padded ends repeat the chunk's last window: their fits equal it, so the
            # carry after them is the carry after the last real window
            res = jax.tree.map(lambda a: a[:C, :nw].reshape((C * nw,) + a.shape[2:]), res)
            r = _fit_arrays(res)
            carry = np.array(jax.vmap(flatten_params)(_host(p_last)), np.float64)
            have = np.array(_host(h_last))
            # lanes in commodity-major order within the chunk
            lane_c = np.repeat(np.arange(C), nw).astype(np.int32)
            lane_e = np.tile(ends[w_idx], C).astype(np.int32)
            # a degenerate end point (a factor gone, |ρ| = 1) is refitted from inside; where
            # that wins in a commodity's last window, the next chunk starts from the new one
            live = np.flatnonzero(valid[:, w_idx].reshape(-1))
            sub_r = {name: v[live] for name, v in r.items()}
            n_esc = _escape(sub_r, full, stack_dev, mesh, unit, -(-Bw // unit) * unit,
                            lane_c[live], lane_e[live], template, stack.log_f.dtype)  # fmt: skip
            if n_esc:
                for name in r:
                    r[name][live] = sub_r[name]
                last = np.arange(C) * nw + (nw - 1)
                won = r["stopped"][last] & np.isfinite(r["loglik"][last])
                carry[:C][won] = r["params"][last][won]
                have[:C] |= won
            escaped += n_esc
            pad = B_post - lane_c.size  # one shape for every chunk: one compiled post-fit
            pc = np.concatenate([lane_c, np.zeros(pad, np.int32)])
            pe = np.concatenate([lane_e, np.full(pad, lane_e[-1], np.int32)])
            pp = np.concatenate([r["params"], np.repeat(r["params"][-1:], pad, axis=0)])
            post = _run_post(
                stack_dev, pc, pe, pp, template, mesh, window, stack.log_f.dtype, width,
                config["standard_errors"],
            )  # fmt: skip
            part = {f"fit/{k2}": v for k2, v in r.items()}
            part.update({f"post/{k2}": np.asarray(v)[: lane_c.size] for k2, v in post.items()})
            if store is not None:
                store.write("chunk", k, part)
                store.write("carry", k, {"params": carry, "have": have})
            computed += 1
            bar.update(int(valid[:, w_idx].sum()), computed=True)
        fit_parts.append((w_idx, {k2[4:]: v for k2, v in part.items() if k2.startswith("fit/")}))
        post_parts.append({k2[5:]: v for k2, v in part.items() if k2.startswith("post/")})

    # chunk parts are commodity-major within their window range: reassemble [C, W, ...]
    def assemble(parts_list):
        keys = parts_list[0][1].keys()
        out = {}
        for key in keys:
            blocks = [p[key].reshape((C, len(w)) + p[key].shape[1:]) for w, p in parts_list]
            out[key] = np.concatenate(blocks, axis=1).reshape((C * W,) + blocks[0].shape[2:])
        return out

    flat = assemble(fit_parts)
    post = assemble([(w, p) for (w, _), p in zip(fit_parts, post_parts, strict=True)])
    flat["params"] = _unflat_params(flat["params"], template)
    info = {"chunks": n_chunks, "chunks_computed": computed, "second_pass_windows": 0,
            "escaped": escaped}  # fmt: skip
    return flat, post, info


# --------------------------------------------------------------------------------------
# Refinement: better optima from the neighbouring windows
# --------------------------------------------------------------------------------------
def _batched(
    prog, stack_dev, mesh, unit: int, cap: int, cs, es, payload, extra=(), pow2: bool = True
) -> list:
    """``prog`` over lanes (cs, es, payload) in calls of power-of-two sizes (whole groups;
    ``pow2=False``: the fewest whole groups, one compiled shape more per size met)."""
    outs = []
    n = cs.size
    for a in range(0, n, cap):
        b = min(a + cap, n)
        nb = _bucket(b - a, cap, unit) if pow2 else -(-(b - a) // unit) * unit
        idx = np.concatenate([np.arange(a, b), np.full(nb - (b - a), a)])
        args = (cs[idx], es[idx], jax.tree.map(lambda x, i=idx: np.asarray(x)[i], payload))
        args = args + tuple(jax.tree.map(lambda x, i=idx: np.asarray(x)[i], e) for e in extra)
        out = _host(prog(stack_dev, *_put(args, mesh, P(_AXIS))))
        outs.append(jax.tree.map(lambda x, k=b - a: np.asarray(x)[:k], out))
    return outs


def _refine(
    stack, stack_dev, template, ends, valid, mesh, n_dev, config, out_dir, flat, post, from_data
):
    """Rounds of refits from the neighbouring windows' optima (see ``recalibrate(refine=)``).

    Each round is a pure function of the results after the previous one, and its outcome (the
    lanes it changed, their fits and post-fit numbers) is written to ``refine-#####`` in
    ``out_dir``: a resumed run replays the finished rounds and goes on from there.
    """
    C, W = valid.shape
    width = config["vector_width"]
    unit = width * n_dev
    cap = -(-config["chunk_size"] // unit) * unit
    window, dtype = config["window"], stack.log_f.dtype
    kw = _fit_kw(config, width)
    fit = _program("cold", mesh, max_steps=config["max_steps"], **kw)
    # the restart of a fit from its own end point raises every boundary s.d. (L-BFGS from a
    # data-derived start can stop on the flat boundary short of the optimum)
    restart = _program("cold", mesh, max_steps=config["max_steps"], revert=False, **kw)
    ll_prog = _program("loglik", mesh, window=window, width=width)
    store = None
    if out_dir is not None:
        store = _ChunkStore(out_dir, _digest(stack, config), config, -1)
    vec = np.array(jax.vmap(flatten_params)(flat["params"]), np.float64)
    fitd = {k: np.array(flat[k]) for k in ("loglik", "stopped", "num_steps", "status")}
    post = {k: np.array(v) for k, v in post.items()}
    refined = np.zeros(C * W, bool)
    lane_c = np.repeat(np.arange(C), W).astype(np.int32)
    lane_w = np.tile(np.arange(W), C)
    lane_e = ends[lane_w].astype(np.int32)
    ok = valid.reshape(-1) & np.isfinite(fitd["loglik"])
    offsets = (-1, 1) if config["refine"] == "neighbours" else (-1,)
    shapes = {"lane": ((), np.int64), **_cold_shapes(template, stack)}
    rounds = refits = changed_total = 0
    done = False
    tried: set[tuple[int, int]] = set()  # (window, noise s.d. pattern) refitted from
    for r in range(config["max_refine_rounds"]):
        if store is not None and store.has("refine", r):
            diff = store.read("refine", r, shapes)
        else:
            if r == 0:
                # once again from their own end points with every boundary s.d. raised: the
                # fits from data-derived starts, and every fit that ended with a noise s.d.
                # at its bound (a warm path can keep a tenor pinned at ~0 where the window's
                # optimum prices another tenor exactly instead)
                pinned = _pin_keys(vec, template) != 0
                tgt = np.flatnonzero(ok & (from_data | pinned))
                src = tgt
            else:  # gate: the window's log-likelihood at its neighbours' optima
                tgt_l, src_l = [], []
                pins = _pin_keys(vec, template)
                for off in offsets:
                    nb = lane_w + off
                    pair = ok & (nb >= 0) & (nb < W)
                    src_i = np.where(pair, lane_c * W + np.clip(nb, 0, W - 1), 0)
                    pair &= ok[src_i]
                    t, s_ = np.flatnonzero(pair), src_i[pair]
                    if t.size:
                        p_nb = _unflat_params(vec[s_].astype(dtype), template)
                        parts = _batched(
                            ll_prog, stack_dev, mesh, unit, cap, lane_c[t], lane_e[t], p_nb
                        )
                        ll_nb = np.concatenate([np.atleast_1d(p) for p in parts])
                        gate = np.isfinite(ll_nb) & (ll_nb > fitd["loglik"][t] + REFINE_GATE)
                        # a neighbour that prices other tenors exactly (other noise s.d.s at
                        # zero) is a different mode: its optimum scored here can be lower
                        # although the mode is higher, so the window is refitted from it once
                        # per mode whatever the gate says
                        for i in np.flatnonzero(~gate & (pins[s_] != pins[t])):
                            key = (int(t[i]), int(pins[s_[i]]))
                            if key not in tried:
                                tried.add(key)
                                gate[i] = True
                        tgt_l.append(t[gate])
                        src_l.append(s_[gate])
                tgt = np.concatenate(tgt_l) if tgt_l else np.zeros(0, int)
                src = np.concatenate(src_l) if src_l else np.zeros(0, int)
            prog = restart if r == 0 else fit
            diff = _refit_diff(prog, tgt, vec[src], fitd["loglik"][tgt], stack_dev, mesh, unit,
                               cap, lane_c, lane_e, template, config, shapes)  # fmt: skip
            refits += tgt.size
            if store is not None:
                store.write("refine", r, diff)
        rounds += 1
        lanes = _apply_diff(diff, vec, fitd, post)
        if lanes.size:
            refined[lanes] = True
            changed_total += lanes.size
        elif r > 0:  # a round of neighbours that changed nothing: done
            done = True
            break
    flat = dict(fitd, params=_unflat_params(vec, template))
    info = {"refine_rounds": rounds, "refine_refits": refits, "refine_changed": changed_total,
            "refine_complete": done}  # fmt: skip
    return flat, post, refined, info


def _explore(
    stack, stack_dev, template, ends, valid, sel, mesh, n_dev, config, out_dir, flat, post
):
    """Warm mode's seeds (``recalibrate(explore=)``): probe windows ``sel`` of every
    commodity from ``n_starts`` data-derived starts each, with the first-pass ``budget`` of
    L-BFGS steps and nothing else (no second pass, no standard errors); where a window's best
    probe ends higher than its warm fit, refit the window from the probe's end point with the
    full budget and keep the refit if it stops at an optimum above the warm fit.

    A probe only has to show that a better mode exists, not to converge to it: the full
    refits run for the few windows that have one. Returns the updated ``flat`` and ``post``,
    the lanes replaced and the info entries. With ``out_dir`` the outcome is written (as
    ``explore-00000``) and a resumed run reads it back.
    """
    C, W = valid.shape
    width = config["vector_width"]
    unit = width * n_dev
    cap = -(-config["chunk_size"] // unit) * unit
    K = config["n_starts"]
    dtype = stack.log_f.dtype
    shapes = {"lane": ((), np.int64), **_cold_shapes(template, stack)}
    store = None
    if out_dir is not None:
        store = _ChunkStore(out_dir, _digest(stack, config), config, -1)
    lane_c = np.repeat(np.arange(C), W).astype(np.int32)
    lane_e = np.tile(ends, C).astype(np.int32)
    seeds = (np.arange(C)[:, None] * W + sel[None, :]).reshape(-1)
    seeds = seeds[valid.reshape(-1)[seeds]]
    computed = 0
    n_probed = n_refit = 0
    if store is not None and store.has("explore", 0):
        diff = store.read("explore", 0, shapes)
    else:
        computed = 1
        kw = _fit_kw(config, width)
        probe = _program("cold", mesh, max_steps=config["budget"], **kw)
        fit = _program("cold", mesh, max_steps=config["max_steps"], **kw)
        lanes = np.repeat(seeds, K)
        starts = np.tile(np.arange(K), seeds.size)
        n_probed = lanes.size
        tgt, src_vec = np.zeros(0, np.int64), None
        cur = np.nan_to_num(np.asarray(flat["loglik"], float)[seeds], nan=-np.inf)
        if lanes.size:
            dummy = jax.tree.map(
                lambda a: np.broadcast_to(np.asarray(a), (lanes.size,) + a.shape), template
            )
            off = _offsets(start_design(K, config["seed"]), starts, dtype)
            extra = (np.zeros(lanes.size, bool), off)
            # padded to whole groups only: the probes are one call per run whose size
            # depends on the run's layout (a padded lane costs as much as a real one)
            parts = _batched(probe, stack_dev, mesh, unit, cap * K, lane_c[lanes],
                             lane_e[lanes], dummy, extra=extra, pow2=False)  # fmt: skip
            parts = [_flat_fit(p) for p in parts]
            res = {k: np.concatenate([p[k] for p in parts]) for k in ("params", "loglik")}
            ll = np.where(np.isfinite(res["loglik"]), res["loglik"], -np.inf).reshape(-1, K)
            pick = np.arange(seeds.size) * K + np.argmax(ll, axis=1)
            gate = res["loglik"][pick] > cur + REFINE_GATE
            tgt, src_vec, cur = seeds[gate], res["params"][pick[gate]], cur[gate]
        n_refit = tgt.size
        diff = _refit_diff(fit, tgt, src_vec, cur, stack_dev, mesh, unit, cap, lane_c, lane_e,
                           template, config, shapes)  # fmt: skip
        if store is not None:
            store.write("explore", 0, diff)
    vec = np.array(jax.vmap(flatten_params)(flat["params"]), np.float64)
    fitd = {k: np.array(flat[k]) for k in ("loglik", "stopped", "num_steps", "status")}
    post = {k: np.array(v) for k, v in post.items()}
    better = np.zeros(C * W, bool)
    better[_apply_diff(diff, vec, fitd, post)] = True
    flat = dict(fitd, params=_unflat_params(vec, template))
    info = {
        "explore_windows": int(seeds.size),
        "explore_probes": int(n_probed),
        "explore_refits": int(n_refit),
        "explore_better": int(better.sum()),
        "explore_computed": computed,
    }
    return flat, post, better, info


def _refit_diff(
    prog,
    tgt,
    inits_flat,
    cur,
    stack_dev,
    mesh,
    unit,
    cap,
    lane_c,
    lane_e,
    template,
    config,
    shapes,
) -> dict:
    """Refit lanes ``tgt`` (a window may appear more than once) from the flat parameters
    ``inits_flat`` with ``prog``, and keep, per window, the best refit that stopped at an
    optimum above ``cur`` (the window's current log-likelihood, aligned with ``tgt``) by more
    than ``REFINE_ACCEPT``. Returns the change as ``{"lane", "fit/…", "post/…"}`` (no rows
    when nothing improved), the form in which ``out_dir`` stores it."""
    diff = {k: np.zeros((0,) + tuple(trail), dt) for k, (trail, dt) in shapes.items()}
    if len(tgt) == 0:
        return diff
    dtype = np.dtype(config["dtype"])
    inits = _unflat_params(np.asarray(inits_flat).astype(dtype), template)
    use = (np.ones(len(tgt), bool), _zero_offsets(len(tgt), dtype))
    parts = _batched(prog, stack_dev, mesh, unit, cap, lane_c[tgt], lane_e[tgt], inits,
                     extra=use)  # fmt: skip
    parts = [_flat_fit(p) for p in parts]  # _batched brought them to the host
    res = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    best: dict[int, int] = {}
    for i in range(len(tgt)):
        t = int(tgt[i])
        if not (res["stopped"][i] and np.isfinite(res["loglik"][i])):
            continue
        bar = res["loglik"][best[t]] if t in best else cur[i] + REFINE_ACCEPT
        if res["loglik"][i] > bar:
            best[t] = i
    if not best:
        return diff
    lanes = np.array(sorted(best), np.int64)
    pick = np.array([best[t] for t in lanes])
    pp = _batched_post(stack_dev, lane_c[lanes], lane_e[lanes], res["params"][pick], template,
                       mesh, config, dtype, unit, cap)  # fmt: skip
    diff = {"lane": lanes}
    diff.update({f"fit/{k}": res[k][pick] for k in res})
    diff.update({f"post/{k}": v for k, v in pp.items()})
    return diff


def _apply_diff(diff: dict, vec: np.ndarray, fitd: dict, post: dict) -> np.ndarray:
    """Write a refit diff (see :func:`_refit_diff`) into the flat parameters ``vec`` and the
    host arrays ``fitd`` and ``post`` (in place); returns the lanes it changed."""
    lanes = np.asarray(diff["lane"], np.int64)
    if lanes.size:
        vec[lanes] = diff["fit/params"]
        for k in fitd:
            fitd[k][lanes] = diff[f"fit/{k}"]
        for k in post:
            post[k][lanes] = diff[f"post/{k}"]
    return lanes


def _pin_keys(vec: np.ndarray, template: Params) -> np.ndarray:
    """Per fit (flat params [N, n]): its pattern of noise s.d.s at their bound, as a bit mask."""
    b = np.asarray(jax.vmap(bound_vector)(_unflat_params(vec, template)))[:, 5:]
    return (b.astype(np.int64) << np.arange(b.shape[1])).sum(axis=1)


def _batched_post(stack_dev, cs, es, params_flat, template, mesh, config, dtype, unit, cap):
    prog = _program("post", mesh, window=config["window"], width=config["vector_width"],
                    standard_errors=config["standard_errors"])  # fmt: skip
    params = _unflat_params(params_flat.astype(dtype), template)
    parts = _batched(prog, stack_dev, mesh, unit, cap, cs, es, params)
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
