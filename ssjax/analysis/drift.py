r"""Drift alerts for rolling recalibrations: parameter jumps and innovation CUSUMs.

Two kinds of alert, per commodity and window end (:func:`drift_alerts`):

* **parameter**: Θ_i moved by more than ``k`` standard errors from the previous usable
  window (converged, finite estimate and s.e.): z = (θ_w − θ_prev) / s. Rolling windows
  usually overlap, and two estimates that share most of their dates differ by much less than
  two independent ones. The default scale (``scale="overlap"``) accounts for it: an ML
  estimate is to first order an average of per-date score contributions, so θ_w − θ_prev
  depends only on the g = end_w − end_prev dates that entered and the g that left, and
  Var(θ_w − θ_prev) ≈ (se_prev² + se_w²) · min(1, g / window); hence
  s = √((se_prev² + se_w²) · min(1, g / window)). ``"pooled"`` drops the factor (the s.d.
  of the difference of two independent estimates: right for non-overlapping windows, very
  conservative for overlapping ones); ``"current"`` uses s = se_w. Many parameters and
  windows are tested and the estimates' tails are heavier than normal, hence the default
  k = 5 of :func:`drift_alerts` (see there).
  :func:`parameter_jumps` is the array core.
* **cusum**: a one-sided (upper) tabular CUSUM of Page (1954) on *out-of-sample* innovation
  scores. For window w, the data of the dates after the previous window end (ends[w−1],
  ends[w]] are filtered with the previous window's Θ (estimated without them), inside
  window w's data. Per tenor, Q = Σ u² of the marginal standardized innovations over those
  dates, and for ``"all"`` Q = Σ NIS_t (jointly whitened, all tenors); under a stable model
  Q ~ χ²(n) (n the number of terms), and the Wilson–Hilferty transform
  z = ((Q/n)^{1/3} − (1 − 2/(9n))) / √(2/(9n)) is ≈ N(0, 1). The scores of different windows
  use disjoint dates, so they are (nearly) independent, and the CUSUM
  C_w = max(0, C_{w−1} + z_w − k) with allowance k = 0.5 and bound h = 5 (s.d. units) has an
  in-control average run length of about 930 windows for each series; it detects an increase
  of one s.d. in the scores in about 10 windows, and the large misfit of a regime change in
  one or two. A drift inflates the out-of-sample innovations (a mean shift too: E u² = 1 + δ²),
  hence the upper side only. :func:`cusum` is the array core (either side).

The CUSUM needs the panel data (the rolling result holds only window-end values): pass the
same ``panels`` as to :func:`ssjax.rolling.recalibrate`. Without them only parameter alerts
are computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.typing import ArrayLike

from ssjax.analysis.diagnostics import joint_innovations
from ssjax.core.filter import default_prior, kalman_filter
from ssjax.core.market import window_data
from ssjax.data.panels import as_stacked, market_stack

__all__ = [
    "ParameterJumps",
    "CusumResult",
    "parameter_jumps",
    "cusum",
    "wilson_hilferty",
    "innovation_scores",
    "drift_alerts",
    "walk_forward_alerts",
]

DEFAULT_PARAMS = ("kappa", "sigma_x", "sigma_y", "rho", "mu")


# --------------------------------------------------------------------------------------
# Array cores
# --------------------------------------------------------------------------------------
class ParameterJumps(NamedTuple):
    """Output of :func:`parameter_jumps` (W windows, P parameters)."""

    z: np.ndarray  # [W, P] (θ_w − θ_prev) / s, NaN where there is no previous window
    alert: np.ndarray  # [W, P] |z| > k
    previous: np.ndarray  # [W, P] index of the previous usable window (−1: none)


def parameter_jumps(
    values: ArrayLike,
    se: ArrayLike,
    k: float = 3.0,
    *,
    scale: str = "pooled",
    usable: ArrayLike | None = None,
    ends: ArrayLike | None = None,
    window: int | None = None,
) -> ParameterJumps:
    """Windows where a parameter moved by more than ``k`` standard errors.

    Args:
        values: estimates [W, P] (or [W]) in window order.
        se: their standard errors, same shape (NaN: unknown; such a window is skipped).
        k: the threshold on |z|.
        scale: ``"pooled"``: z = Δ / √(se_prev² + se_w²); ``"overlap"``: the pooled s
            times √min(1, (ends_w − ends_prev) / window) (needs ``ends`` and ``window``; see
            the module docstring); ``"current"``: z = Δ / se_w.
        usable: bool [W] (or [W, P]); False skips a window (e.g. not converged).
        ends: window-end date indices [W] (for ``scale="overlap"``).
        window: dates per window (for ``scale="overlap"``).

    Each window is compared with the last earlier *usable* window (finite value and s.e. > 0).
    """
    v = np.asarray(values, dtype=float)
    s = np.asarray(se, dtype=float)
    one_d = v.ndim == 1
    if one_d:
        v, s = v[:, None], s[:, None]
    if v.ndim != 2:
        raise ValueError(f"values must have shape [W, P] or [W], got {np.shape(values)}")
    if s.shape != v.shape:
        raise ValueError(f"se must have the shape of values {v.shape}, got {np.shape(se)}")
    if not np.isfinite(k) or k <= 0:
        raise ValueError(f"k must be a positive number, got {k}")
    if scale not in ("pooled", "overlap", "current"):
        raise ValueError(f"scale must be 'pooled', 'overlap' or 'current', got {scale!r}")
    if scale == "overlap":
        if ends is None or window is None:
            raise ValueError("scale='overlap' needs ends and window")
        e = np.asarray(ends, dtype=float).reshape(-1)
        if e.shape[0] != v.shape[0] or np.any(np.diff(e) <= 0):
            raise ValueError(f"ends must be {v.shape[0]} increasing window-end indices")
        if int(window) != window or window < 1:
            raise ValueError(f"window must be a positive integer, got {window}")
    ok = np.isfinite(v) & np.isfinite(s) & (s > 0)
    if usable is not None:
        u = np.asarray(usable, bool)
        if u.ndim == 1:
            u = u[:, None]
        if u.shape[0] != v.shape[0]:
            raise ValueError(f"usable must have {v.shape[0]} rows, got shape {np.shape(usable)}")
        ok &= u
    W, P = v.shape
    z = np.full((W, P), np.nan)
    prev = np.full((W, P), -1, dtype=int)
    last = np.full(P, -1, dtype=int)
    for w in range(W):
        has = last >= 0
        prev[w] = last
        cols = np.flatnonzero(has & ok[w])
        if cols.size:
            j = last[cols]
            d = v[w, cols] - v[j, cols]
            if scale == "current":
                sc = s[w, cols]
            else:
                sc = np.sqrt(s[j, cols] ** 2 + s[w, cols] ** 2)
                if scale == "overlap":
                    sc = sc * np.sqrt(np.minimum(1.0, (e[w] - e[j]) / float(window)))
            z[w, cols] = d / sc
        last = np.where(ok[w], w, last)
    alert = np.abs(np.nan_to_num(z)) > k
    if one_d:
        return ParameterJumps(z[:, 0], alert[:, 0], prev[:, 0])
    return ParameterJumps(z, alert, prev)


class CusumResult(NamedTuple):
    """Output of :func:`cusum` for a series of W scores."""

    upper: np.ndarray  # [W] C⁺_w = max(0, C⁺_{w−1} + z_w − k)
    lower: np.ndarray  # [W] C⁻_w = max(0, C⁻_{w−1} − z_w − k)
    alarm: np.ndarray  # [W] bool: a statistic crossed h at w
    side: np.ndarray  # [W] +1 (upper), −1 (lower), 0 (no alarm)
    start: np.ndarray  # [W] first index of the run that crossed (change-point estimate), −1


def cusum(
    z: ArrayLike, k: float = 0.5, h: float = 5.0, *, side: str = "upper", reset: bool = True
) -> CusumResult:
    """Page's tabular CUSUM of scores z_w that are ≈ N(0, 1) while nothing changes.

    Args:
        z: the scores [W]; NaN entries (no data) leave the statistics unchanged.
        k: the allowance (half the shift, in s.d., the chart is tuned for).
        h: the decision bound, in s.d. units (k = 0.5, h = 5: in-control run length ≈ 930
            per side for Gaussian scores; h = 4: ≈ 340).
        side: ``"upper"``, ``"lower"`` or ``"both"``.
        reset: restart a side at 0 after it signals (so a later episode signals again);
            otherwise every window above the bound is an alarm.

    ``start[w]`` of an alarm is the first window of the run of positive statistic that led
    to it: the usual estimate of when the change began.
    """
    x = np.asarray(z, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"z must be one-dimensional, got shape {x.shape}")
    if not np.isfinite(k) or k < 0:
        raise ValueError(f"k must be a finite number >= 0, got {k}")
    if not np.isfinite(h) or h <= 0:
        raise ValueError(f"h must be a positive number, got {h}")
    if side not in ("upper", "lower", "both"):
        raise ValueError(f"side must be 'upper', 'lower' or 'both', got {side!r}")
    W = x.size
    up, lo = np.zeros(W), np.zeros(W)
    alarm = np.zeros(W, bool)
    which = np.zeros(W, int)
    start = np.full(W, -1, int)
    cu = cl = 0.0
    su = sl = -1
    for w in range(W):
        if np.isfinite(x[w]):
            nu = max(0.0, cu + x[w] - k)
            nl = max(0.0, cl - x[w] - k)
            su = (w if cu == 0.0 else su) if nu > 0 else -1
            sl = (w if cl == 0.0 else sl) if nl > 0 else -1
            cu, cl = nu, nl
        up[w], lo[w] = cu, cl
        hit_u = side in ("upper", "both") and cu > h
        hit_l = side in ("lower", "both") and cl > h
        if hit_u or hit_l:
            alarm[w] = True
            pick_up = hit_u and (not hit_l or cu >= cl)
            which[w] = 1 if pick_up else -1
            start[w] = su if pick_up else sl
            if reset:
                if hit_u:
                    cu, su = 0.0, -1
                if hit_l:
                    cl, sl = 0.0, -1
    return CusumResult(up, lo, alarm, which, start)


def wilson_hilferty(q: ArrayLike, n: ArrayLike) -> np.ndarray:
    """N(0, 1) scores of χ²(n) values by the Wilson–Hilferty cube-root transform (NaN: n ≤ 0)."""
    q = np.asarray(q, dtype=float)
    n = np.asarray(n, dtype=float)
    pos = n > 0
    nn = np.where(pos, n, 1.0)
    c = 2.0 / (9.0 * nn)
    with np.errstate(invalid="ignore"):
        zz = (np.cbrt(np.where(pos, q, 0.0) / nn) - (1.0 - c)) / np.sqrt(c)
    return np.where(pos, zz, np.nan)


# --------------------------------------------------------------------------------------
# Out-of-sample innovation scores of a rolling run
# --------------------------------------------------------------------------------------
def _oos_one(stack, c, end, p, *, window):
    data = window_data(stack, c, end, window)
    filt = kalman_filter(p, data, default_prior(data))
    v = jnp.where(data.mask, filt.innovation_vars, 1.0)
    u = jnp.where(data.mask, filt.innovations / jnp.sqrt(v), 0.0)
    _, nis, nobs, _ = joint_innovations(p, data, filt)
    return u * u, data.mask, nis, nobs


_OOS: dict[int, Any] = {}


def _oos_program(window: int):
    if window not in _OOS:

        def run(stack, cs, es, params):
            fn = lambda c, e, p: _oos_one(stack, c, e, p, window=window)  # noqa: E731
            return jax.vmap(fn)(cs, es, params)

        _OOS[window] = jax.jit(run)
    return _OOS[window]


def _usable(result) -> np.ndarray:
    reached = getattr(result, "optimum_reached", None)
    ok = result.converged if reached is None else reached
    return np.asarray(result.valid, bool) & np.asarray(ok, bool)


def innovation_scores(result: Any, panels: Any) -> pd.DataFrame:
    """Out-of-sample innovation scores of every window of a rolling run (the CUSUM input).

    For window w (w ≥ 1, with a usable earlier window w′: valid and converged), the dates
    after ``end_index[w′]`` in window w are filtered inside window w with window w′'s Θ.
    Returns a tidy table: ``commodity``, ``window`` (index), ``window_end``, ``name`` (a
    tenor label or ``"all"``), ``q`` (Σ u² per tenor, Σ NIS for ``"all"``), ``n`` (terms)
    and ``z`` (:func:`wilson_hilferty`, ≈ N(0, 1) while the model is stable).

    Args:
        result: a :class:`ssjax.rolling.RollingResult`.
        panels: the panels the run was given (a Panel, a dict of Panels or StackedPanels).
    """
    sp = as_stacked(panels)
    if list(sp.commodities) != list(result.commodities) or len(sp.dates) != len(result.dates):
        raise ValueError(
            "panels do not match the rolling result (other commodities or dates): pass the "
            "panels the run was given"
        )
    if not np.array_equal(np.asarray(sp.dates), np.asarray(result.dates)):
        raise ValueError("panels: their dates differ from the rolling result's")
    stack = market_stack(sp, jnp.float64)
    ends = np.asarray(result.end_index)
    window = int(result.window)
    C, W = np.shape(result.loglik)
    M = stack.log_f.shape[-1]
    ok = _usable(result)
    lanes = []  # (c, w, w_prev)
    for c in range(C):
        last = -1
        for w in range(W):
            if ok[c, w]:
                if last >= 0:
                    lanes.append((c, w, last))
                last = w
    names = _tenor_labels(sp, M)
    cols = ["commodity", "window", "window_end", "name", "q", "n", "z"]
    if not lanes:
        return pd.DataFrame(columns=cols)
    lc = np.array([x[0] for x in lanes], np.int32)
    lw = np.array([x[1] for x in lanes], np.int64)
    lp = np.array([x[2] for x in lanes], np.int64)
    params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)[lc, lp], jnp.float64), result.params)
    u2, mask, nis, nobs = _oos_program(window)(
        stack, jnp.asarray(lc), jnp.asarray(ends[lw], jnp.int32), params
    )
    u2, mask, nis, nobs = (np.asarray(a) for a in (u2, mask, nis, nobs))
    # dates of window w after the previous usable window's end (never the window's first date)
    t_abs = ends[lw][:, None] - (window - 1) + np.arange(window)[None, :]
    new = (t_abs > ends[lp][:, None]) & (np.arange(window)[None, :] >= 1)
    m_new = mask & new[:, :, None]
    q_t = np.sum(np.where(m_new, u2, 0.0), axis=1)  # [L, M]
    n_t = np.sum(m_new, axis=1)
    q_all = np.sum(np.where(new, nis, 0.0), axis=1)
    n_all = np.sum(np.where(new, nobs, 0), axis=1)
    q = np.concatenate([q_t, q_all[:, None]], axis=1)
    n = np.concatenate([n_t, n_all[:, None]], axis=1)
    z = wilson_hilferty(q, n)
    end_dates = result.dates[ends[lw]]
    rows = {
        "commodity": np.repeat(np.asarray(result.commodities, object)[lc], M + 1),
        "window": np.repeat(lw, M + 1),
        "window_end": np.repeat(np.asarray(end_dates), M + 1),
        "name": np.tile(np.asarray(names + ["all"], object), len(lanes)),
        "q": q.ravel(),
        "n": n.ravel().astype(int),
        "z": z.ravel(),
    }
    return pd.DataFrame(rows, columns=cols)


def _tenor_labels(sp, M: int) -> list[str]:
    tn = sp.tenor_names
    if tn and isinstance(tn[0], (list, tuple)):
        first = list(tn[0])
        if all(list(t) == first for t in tn) and len(first) == M:
            return [str(x) for x in first]
    elif tn and len(tn) == M:
        return [str(x) for x in tn]
    return [f"T{i + 1}" for i in range(M)]


# --------------------------------------------------------------------------------------
# The alerts table
# --------------------------------------------------------------------------------------
_COLUMNS = [
    "commodity",
    "window_end",
    "window",
    "kind",
    "name",
    "value",
    "previous",
    "z",
    "threshold",
    "since",
    "reason",
]


def _cusum_rows(
    z, k, h, *, commodity, name, what, score, index, dated, origin
) -> list[dict[str, Any]]:
    """Alert rows of the upper CUSUM of scores ``z``: row i is dated ``dated[i]`` with
    window index ``index[i]``; the run's start is reported as ``origin[start]``."""
    res = cusum(z, k, h, side="upper")
    rows = []
    for i in np.flatnonzero(res.alarm):
        # the statistic before this score (0 after an alarm: the chart restarts)
        before = 0.0 if i == 0 or res.alarm[i - 1] else float(res.upper[i - 1])
        stat = float(res.upper[i])
        since = origin[res.start[i]]
        rows.append(
            {
                "commodity": commodity,
                "window_end": dated[i],
                "window": int(index[i]),
                "kind": "cusum",
                "name": name,
                "value": stat,
                "previous": before,
                "z": float(z[i]),
                "threshold": float(h),
                "since": since,
                "reason": f"CUSUM of out-of-sample {what} reached {stat:.1f} > h={h:g} "
                f"({score} z={z[i]:+.1f}; run since {since.date()})",
            }
        )
    return rows


def drift_alerts(
    result: Any,
    panels: Any = None,
    *,
    k: float = 5.0,
    params: Sequence[str] = DEFAULT_PARAMS,
    scale: str = "overlap",
    cusum_k: float = 0.5,
    cusum_h: float = 5.0,
    cusum_on: Sequence[str] | None = ("all",),
) -> pd.DataFrame:
    """Window ends where Θ jumped or an innovation CUSUM crossed its bound, with the reason.

    Args:
        result: a :class:`ssjax.rolling.RollingResult`.
        panels: the panels the run was given; needed for the CUSUM alerts (``None``: only
            parameter alerts).
        k: parameter alert when |z| > k, z = Δθ / s.e. (see ``scale``). The default 5 is
            for the ``"overlap"`` scale: on stable simulated panels (3 tenors, windows of 100
            weekly dates, step 10) |z| exceeded 3 in 2.5% of the tests (the estimates'
            tails are heavier than the first-order normal law: the likelihood is sometimes
            flat or multi-modal in κ), and never 4.5; a κ break from 0.5 to 3 reached 6.7-12.
        params: which parameters to watch (names of ``result.param_names``, e.g.
            ``"meas_sd[0]"`` too).
        scale: ``"overlap"`` (default), ``"pooled"`` or ``"current"``: the s.e. scale of
            the change (:func:`parameter_jumps`, module docstring).
        cusum_k, cusum_h: allowance and bound of the upper CUSUM, in s.d. units.
        cusum_on: which score series get a CUSUM: ``"all"`` (the joint NIS, default) and/or
            tenor labels (marginal, per tenor); ``None`` or empty: no CUSUM. Each series is
            a separate chart, so each adds its own false-alarm rate.

    Returns:
        A tidy DataFrame, one row per alert, sorted by commodity and window end: ``commodity``,
        ``window_end``, ``window`` (index), ``kind`` (``"parameter"`` or ``"cusum"``),
        ``name`` (parameter, or tenor / ``"all"``), ``value`` (θ_w, or the CUSUM statistic),
        ``previous`` (θ of the previous usable window, or the CUSUM before this window),
        ``z`` (Δθ / s, or this window's score), ``threshold`` (k or h), ``since`` (CUSUM:
        the window end where the run began, the change-point estimate) and ``reason``.
        Windows whose fit reached no optimum (neither converged nor stopped at a boundary)
        are skipped (and compared across).
    """
    names_all = list(result.param_names)
    params = list(params)
    unknown = [p for p in params if p not in names_all]
    if unknown:
        raise ValueError(f"params: unknown names {unknown} (the run has {names_all})")
    C, W = np.shape(result.loglik)
    flat = np.concatenate(
        [np.asarray(v, float).reshape(C, W, -1) for v in result.params if v is not None], axis=-1
    )
    se = np.asarray(result.std_err, float)
    idx = [names_all.index(p) for p in params]
    ok = _usable(result)
    end_dates = result.end_dates
    rows: list[dict[str, Any]] = []
    for c in range(C):
        pj = parameter_jumps(
            flat[c][:, idx], se[c][:, idx], k, scale=scale, usable=ok[c],
            ends=result.end_index, window=result.window,
        )  # fmt: skip
        for w, j in zip(*np.nonzero(pj.alert), strict=True):
            prev = int(pj.previous[w, j])
            v, v0, zz = flat[c, w, idx[j]], flat[c, prev, idx[j]], pj.z[w, j]
            rows.append(
                {
                    "commodity": result.commodities[c],
                    "window_end": end_dates[w],
                    "window": int(w),
                    "kind": "parameter",
                    "name": params[j],
                    "value": float(v),
                    "previous": float(v0),
                    "z": float(zz),
                    "threshold": float(k),
                    "since": end_dates[prev],
                    "reason": f"{params[j]} moved {zz:+.1f} s.e. ({v0:.4g} -> {v:.4g}) "
                    f"since {end_dates[prev].date()}",
                }
            )
    if panels is not None and cusum_on:
        scores = innovation_scores(result, panels)
        avail = set(scores["name"]) if len(scores) else set()
        bad = [s for s in cusum_on if s not in avail and len(scores)]
        if bad:
            raise ValueError(f"cusum_on: unknown series {bad} (have {sorted(avail)})")
        for (cname, sname), g in scores.groupby(["commodity", "name"], sort=False):
            if sname not in cusum_on:
                continue
            g = g.sort_values("window")
            z = g["z"].to_numpy()
            wins = g["window"].to_numpy()
            what = "NIS (all tenors)" if sname == "all" else f"squared innovations {sname}"
            rows += _cusum_rows(
                z, cusum_k, cusum_h, commodity=cname, name=sname, what=what,
                score="window score", index=wins, dated=end_dates[wins],
                origin=end_dates[wins],
            )  # fmt: skip
    out = pd.DataFrame(rows, columns=_COLUMNS)
    if len(out):
        out = out.sort_values(["commodity", "window_end", "kind", "name"], kind="stable")
        out = out.reset_index(drop=True)
    return out


# --------------------------------------------------------------------------------------
# Drift alerts of a walk-forward backtest (the main job's report)
# --------------------------------------------------------------------------------------
def walk_forward_alerts(
    params: pd.DataFrame,
    *,
    k: float = 5.0,
    names: Sequence[str] = DEFAULT_PARAMS,
    cusum_k: float = 0.5,
    cusum_h: float = 5.0,
    commodity: str = "",
) -> pd.DataFrame:
    """Drift alerts from the recalibrations of :func:`ssjax.trading.backtest.walk_forward`.

    ``params`` is ``BacktestResult.params``: one row per calibration date with Θ, ``se_<θ>``
    (``walk_forward(..., standard_errors=True)``), ``n_dates``, ``converged``, ``used`` and
    ``oos_z``, ``oos_from``: the out-of-sample score of the dates since the previous
    calibration (their joint NIS under its Θ, by :func:`wilson_hilferty`).

    * **parameter**: |Δθ| / s > ``k`` against the previous usable calibration, with s the
      pooled s.e. times √(new dates / dates of the current fit): the expanding windows share
      all but the new dates, the same overlap correction as the rolling alerts use.
    * **cusum**: the upper CUSUM of the ``oos_z`` series crosses ``cusum_h`` (the model
      predicts the dates after a calibration worse than its own errors say). The alert is
      dated at the calibration where the block that pushed it over became known; ``since``
      is the calibration whose Θ began the run of excess (``oos_from``).

    Returns the table of :func:`drift_alerts` (``window`` is the calibration's index).
    """
    cols = list(_COLUMNS)
    if len(params) == 0:
        return pd.DataFrame(columns=cols)
    dates = pd.DatetimeIndex(params.index)
    col = "optimum_reached" if "optimum_reached" in params else "converged"
    usable = np.array(params[col], dtype=bool)
    if "used" in params:
        usable &= np.array(params["used"] == "fit", dtype=bool)
    rows: list[dict[str, Any]] = []
    watch = [n for n in names if n in params.columns and f"se_{n}" in params.columns]
    if watch:
        v = params[watch].to_numpy(float)
        s = params[[f"se_{n}" for n in watch]].to_numpy(float)
        n_dates = params["n_dates"].to_numpy(float)
        pj = parameter_jumps(v, s, k, scale="pooled", usable=usable)
        for w, j in zip(*np.nonzero(np.isfinite(pj.z)), strict=True):
            prev = int(pj.previous[w, j])
            frac = np.sqrt(min(1.0, (n_dates[w] - n_dates[prev]) / n_dates[w]))
            zz = pj.z[w, j] / frac
            if abs(zz) <= k:
                continue
            rows.append(
                {
                    "commodity": commodity,
                    "window_end": dates[w],
                    "window": int(w),
                    "kind": "parameter",
                    "name": watch[j],
                    "value": float(v[w, j]),
                    "previous": float(v[prev, j]),
                    "z": float(zz),
                    "threshold": float(k),
                    "since": dates[prev],
                    "reason": f"{watch[j]} moved {zz:+.1f} s.e. ({v[prev, j]:.4g} -> "
                    f"{v[w, j]:.4g}) since the calibration of {dates[prev].date()}",
                }
            )
    if "oos_z" in params.columns:
        z = np.array(params["oos_z"], dtype=float)
        origin = pd.DatetimeIndex(params["oos_from"]) if "oos_from" in params else dates
        rows += _cusum_rows(
            z, cusum_k, cusum_h, commodity=commodity, name="all", what="NIS (all tenors)",
            score="score of the dates since the previous calibration",
            index=np.arange(len(z)), dated=dates, origin=origin,
        )  # fmt: skip
    out = pd.DataFrame(rows, columns=cols)
    if len(out):
        out = out.sort_values(["window_end", "kind", "name"], kind="stable").reset_index(drop=True)
    return out
