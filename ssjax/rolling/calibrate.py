"""``recalibrate``: Θ on rolling windows of many commodities, one call."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from ssjax.data.panels import Panel, StackedPanels, as_stacked, market_stack
from ssjax.fit.mle import FTOL, GTOL
from ssjax.fit.optimum import bound_vector
from ssjax.rolling.config import RollingConfig, _Run
from ssjax.rolling.devices import _lead, _mesh, _put
from ssjax.rolling.kernels import _params_template
from ssjax.rolling.modes import _run_cold, _run_warm
from ssjax.rolling.refine import _explore, _refine
from ssjax.rolling.result import RollingResult

__all__ = ["recalibrate"]


def recalibrate(
    panels: Panel | StackedPanels | dict[str, Panel],
    config: RollingConfig | None = None,
    *,
    ends: Sequence[int] | None = None,
    devices: Sequence[Any] | int | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    **settings: Any,
) -> RollingResult:
    """Fit Θ on rolling windows of every commodity.

    Args:
        panels: one :class:`~ssjax.data.panels.Panel`, a dict of panels (stacked on the union
            of their dates) or a :class:`~ssjax.data.panels.StackedPanels`.
        config: the settings (:class:`~ssjax.rolling.config.RollingConfig`: window, step,
            method, warm or cold mode, starts, refinement, precision, chunking); default
            ``RollingConfig()``.
        ends: explicit window-end indices into the stacked date index (increasing, each at
            least ``window − 1``) instead of ``window − 1, window − 1 + step, …``.
        devices: the devices to split each chunk over: a list, a number (the first n of
            ``jax.devices()``) or ``None`` (all visible, across processes after
            ``jax.distributed.initialize()``).
        out_dir: a folder for per-chunk Parquet files; a rerun of the same call (same data
            and settings) reads the finished chunks instead of fitting them again.
        progress: show a progress bar (``tqdm.auto``; default ``None``: when stderr is a
            terminal or in a notebook; see :mod:`ssjax.progress`).
        **settings: any field of :class:`~ssjax.rolling.config.RollingConfig`, replacing
            the one in ``config`` (``recalibrate(panels, window=52, warm_start=True)``).

    A window whose tenors are all unobserved is marked ``valid=False`` (its numbers are NaN).
    """
    cfg = (config or RollingConfig()).replace(**settings)
    run = _plan(panels, cfg, ends, devices, out_dir, progress)
    C, W = run.valid.shape
    t0 = time.perf_counter()
    flat, post, info = _run_warm(run) if cfg.warm_start else _run_cold(run)
    if cfg.warm_start:
        # the fits that started from the data-derived start: each commodity's first windows,
        # up to its first that stopped at an optimum (later ones start from the previous one)
        ok = (np.asarray(flat["stopped"], bool).reshape(C, W) & run.valid).astype(int)
        from_data = (np.cumsum(ok, axis=1) - ok == 0).reshape(-1)
    else:
        from_data = np.ones(C * W, bool)
    if cfg.stride:
        # the seeds: every stride-th window and the last, probed from data-derived starts
        sel = np.unique(np.concatenate([np.arange(0, W, cfg.stride), [W - 1]]))
        t1 = time.perf_counter()
        flat, post, better, einfo = _explore(run, sel, flat, post)
        from_data |= better
        info.update(einfo, explore_seconds=time.perf_counter() - t1)
    refined = np.zeros(C * W, bool)
    if cfg.refine != "none" and cfg.max_refine_rounds > 0:
        t1 = time.perf_counter()
        flat, post, refined, rinfo = _refine(run, flat, post, from_data)
        info.update(rinfo, refine_seconds=time.perf_counter() - t1)
    info.update(devices=run.n_dev, budget=cfg.budget, chunk_size=cfg.chunk_size)
    return _result(run, flat, post, refined, time.perf_counter() - t0, info)


def _plan(panels, cfg: RollingConfig, ends, devices, out_dir, progress) -> _Run:
    """Check the settings against the data and lay out the run (stack, ends, mesh)."""
    sp = as_stacked(panels)
    T = len(sp.dates)
    window = cfg.window
    if window > T:
        raise ValueError(f"window must be between 3 and the number of dates {T}, got {window}")
    if ends is None:
        ends = np.arange(window - 1, T, cfg.step)
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
    C = len(sp.commodities)
    # a window is valid when it has at least one observation on two different dates
    obs_dates = sp.mask.any(axis=-1)  # [C, T]
    cum = np.concatenate([np.zeros((C, 1), int), np.cumsum(obs_dates, axis=1)], axis=1)
    valid = (cum[:, ends + 1] - cum[:, ends + 1 - window]) >= 2
    mesh = _mesh(devices)
    stack = market_stack(sp, cfg.jnp_dtype)
    return _Run(
        config=cfg, filter_method=cfg.resolved_filter(), stack=stack,
        stack_dev=_put(stack, mesh, P()), template=_params_template(stack, window),
        ends=ends, valid=valid, panels=sp, mesh=mesh,
        out_dir=out_dir, progress=progress if _lead() else False,  # process 0's bar only
    )  # fmt: skip


def _result(run: _Run, flat, post, refined, seconds: float, info: dict) -> RollingResult:
    """The host arrays of every lane as a :class:`RollingResult` ([C, W, ...] grids)."""
    sp, cfg, ends, valid = run.panels, run.config, run.ends, run.valid
    C, W = valid.shape

    def grid(a):
        a = np.asarray(a)
        return a.reshape((C, W) + a.shape[1:])

    nan = np.nan

    def blank(a):
        a = grid(a).astype(float)
        return np.where(valid.reshape((C, W) + (1,) * (a.ndim - 2)), a, nan)

    F_mkt_t = np.where(sp.mask[:, ends], sp.F_mkt[:, ends], nan)
    # a contract is known behind the tenor at the window end (observed, or a positive ttm)
    known = (sp.ttm[:, ends] > 0) | sp.mask[:, ends]
    return RollingResult(
        commodities=list(sp.commodities),
        window=cfg.window,
        step=cfg.step,
        method=cfg.fit_method,
        dates=sp.dates,
        end_index=ends,
        params=jax.tree.map(blank, flat["params"]),
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
        mode=cfg.mode,
        seconds=seconds,
        info=info,
    )
