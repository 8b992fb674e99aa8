"""Market data container and input validation (the boundary where NaNs stop).

``MarketData`` holds what the filter needs as dense arrays: log futures prices ``log_f [T, M]``,
times to maturity ``ttm [T, M]`` (years, ACT/365), the observation ``mask [T, M]`` (True =
observed), the step lengths ``dt [T-1]`` (``dt[i]`` is the step from date i to date i+1) and,
optionally, the log spot ``log_s [T]`` with its mask. Values under a false mask are replaced by
harmless numbers here, so they never reach a computation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.typing import ArrayLike

__all__ = [
    "MarketData",
    "make_market_data",
    "check_tenor_order",
    "dt_from_dates",
    "year_fraction",
    "PAD_MULTIPLE",
    "padded_length",
    "t_star_index",
    "window_data",
]

DAYS_PER_YEAR = 365.0


class MarketData(NamedTuple):
    """Dense, validated panel for the filter (a pytree: vmap over panels works)."""

    log_f: Array  # [T, M] ln F_mkt, 0 where masked
    ttm: Array  # [T, M] years, 0 where masked
    mask: Array  # [T, M] bool, True = observed
    dt: Array  # [T-1] years between consecutive dates
    log_s: Array | None = None  # [T] ln S, 0 where masked
    mask_s: Array | None = None  # [T] bool

    @property
    def n_dates(self) -> int:
        return self.log_f.shape[-2]

    @property
    def n_tenors(self) -> int:
        return self.log_f.shape[-1]

    @property
    def nobs(self) -> Array:
        n = jnp.sum(self.mask)
        if self.mask_s is not None:
            n = n + jnp.sum(self.mask_s)
        return n


def dt_from_dates(dates: ArrayLike) -> np.ndarray:
    """Step lengths in years (ACT/365) between consecutive ``dates`` (anything pandas parses)."""
    import pandas as pd

    idx = pd.DatetimeIndex(pd.to_datetime(np.asarray(dates)))
    if len(idx) < 2:
        raise ValueError("dates: need at least 2 dates")
    days = np.diff(idx.values).astype("timedelta64[s]").astype(np.float64) / 86400.0
    if np.any(days <= 0):
        bad = np.flatnonzero(days <= 0)[:5]
        raise ValueError(
            f"dates must be strictly increasing; not at positions {[int(i) + 1 for i in bad]}"
        )
    return days / DAYS_PER_YEAR


def year_fraction(start: ArrayLike, end: ArrayLike) -> np.ndarray:
    """ACT/365 year fractions from ``start`` to ``end`` (datetime64 arrays, broadcast): whole
    calendar days / 365, the theory document's convention for ttm and Δt."""
    days = (np.asarray(end, "datetime64[D]") - np.asarray(start, "datetime64[D]")).astype(float)
    return days / DAYS_PER_YEAR


def t_star_index(t_star: Any, n_dates: int, dates: Any = None) -> int:
    """The date index of t* (the last date a fit may use) among ``n_dates`` dates.

    ``None`` or ``""``: the last date; an integer (or its string; negative counts from the
    end); or a date (needs ``dates``): the last date on or before it. t* must leave at least 2
    dates, and a date after the last one is refused (it would silently mean the last date).
    """
    if t_star is None or (isinstance(t_star, str) and t_star == ""):
        return n_dates - 1
    if isinstance(t_star, float | np.floating):
        if not (np.isfinite(t_star) and float(t_star).is_integer()):
            raise ValueError(f"t_star must be a date or a whole date index, got {t_star!r}")
        t_star = int(t_star)
    if isinstance(t_star, bool):
        raise ValueError(f"t_star must be a date or a date index, got {t_star!r}")
    if isinstance(t_star, int | np.integer) or (
        isinstance(t_star, str) and t_star.lstrip("-").isdigit()
    ):
        t = int(t_star)
        t = t + n_dates if t < 0 else t
        if not 1 <= t < n_dates:
            raise ValueError(
                f"t_star index must leave at least 2 dates and be < {n_dates}, got {t_star}"
            )
        return t
    if dates is None:
        raise ValueError("t_star given as a date needs dates=")
    import pandas as pd

    dates = pd.DatetimeIndex(dates)
    try:
        ts = pd.Timestamp(t_star)
    except (TypeError, ValueError):
        raise ValueError(f"t_star must be a date or a date index, got {t_star!r}") from None
    if ts > dates[-1]:
        raise ValueError(f"t_star {ts.date()} is after the last date {dates[-1].date()}")
    pos = int(dates.searchsorted(ts, side="right")) - 1
    if pos < 1:
        raise ValueError(f"t_star {ts.date()} leaves fewer than 2 dates")
    return pos


def _as_2d(name: str, a) -> np.ndarray:
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numeric: {e}") from None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape [T, M], got shape {arr.shape}")
    return arr


def _first_bad(bad: np.ndarray, k: int = 5) -> str:
    idx = np.argwhere(bad)[:k]
    cells = ", ".join(
        f"(t={int(i[0])}, m={int(i[1])})" if len(i) == 2 else f"t={int(i[0])}" for i in idx
    )
    more = "" if bad.sum() <= k else f" and {int(bad.sum()) - k} more"
    return cells + more


def check_tenor_order(ttm: ArrayLike, mask: ArrayLike, *, increasing: bool = True) -> None:
    """Refuse observed maturities that leave the factors unidentified: two tenors at the same
    ttm on a date (the same contract twice) and, with ``increasing`` (tenor panels, whose
    columns are in maturity order), a tenor whose ttm is not above every earlier observed
    tenor's on that date (swapped columns). Raises ``ValueError`` naming the first cell."""
    tt = np.asarray(ttm, float)
    m = np.asarray(mask, bool)
    T, M = tt.shape
    obs = np.where(m & np.isfinite(tt), tt, np.nan)
    if increasing:
        bad = np.zeros((T, M), bool)
        last = np.full(T, -np.inf)
        for j in range(M):
            here = np.isfinite(obs[:, j])
            bad[:, j] = here & (obs[:, j] <= last)
            last = np.where(here, obs[:, j], last)
        what = "must increase across tenors on each date (columns in maturity order)"
    else:
        srt = np.sort(obs, axis=1)  # NaN last
        dup_row = np.any(np.diff(srt, axis=1) == 0, axis=1)
        bad = np.zeros((T, M), bool)
        for t in np.flatnonzero(dup_row):
            vals, counts = np.unique(obs[t][np.isfinite(obs[t])], return_counts=True)
            bad[t] = np.isin(obs[t], vals[counts > 1])
        what = "must differ across the observed tenors of a date (two tenors at one maturity)"
    if bad.any():
        t, j = np.argwhere(bad)[0]
        raise ValueError(
            f"ttm {what}; at date {t}, tenor {j} (ttm {tt[t, j]:.6g}); {int(bad.sum())} cell(s)"
        )


def make_market_data(
    F_mkt: ArrayLike,
    ttm: ArrayLike,
    *,
    S: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    dt: ArrayLike | float | None = None,
    dates: ArrayLike | None = None,
    dtype=None,
) -> MarketData:
    """Validate raw arrays and build a :class:`MarketData`.

    Args:
        F_mkt: futures prices [T, M] (> 0 where observed).
        ttm: times to maturity in years [T, M] (finite and ≥ 0 where observed), or [M] for
            fixed maturities on every date.
        S: optional spot prices [T]; NaN or non-positive entries are treated as missing only if
            ``S`` is given with NaN there (a non-positive finite spot is an error).
        mask: optional bool [T, M], True = observed. Defaults to the finite entries of F_mkt.
            Values under a false mask may be anything, NaN included.
        dt: step length(s) in years: a scalar, or an array [T-1] (``dt[i]`` is the step from
            date i to date i+1). Exclusive with ``dates``.
        dates: [T] dates; the steps are derived as ACT/365 year fractions.
        dtype: float dtype of the arrays (default: float64 when x64 is on).

    Raises:
        ValueError: naming the argument and the problem (shape, NaN or non-positive price
            where observed, negative ttm where observed, an all-missing column, T < 2, ...).
    """
    F = _as_2d("F_mkt", F_mkt)
    T, M = F.shape
    if T < 2:
        raise ValueError(f"F_mkt must have at least 2 dates (rows), got T={T}")
    tt = np.asarray(ttm, dtype=np.float64)
    if tt.ndim == 1 and tt.shape[0] == M:
        tt = np.broadcast_to(tt, (T, M))
    if tt.shape != (T, M):
        raise ValueError(f"ttm must have the shape of F_mkt {(T, M)} (or [M]), got {tt.shape}")
    if mask is None:
        m = ~np.isnan(F)  # NaN = not observed; an infinite price is an error below
    else:
        m = np.asarray(mask)
        if m.shape != (T, M):
            raise ValueError(f"mask must have the shape of F_mkt {(T, M)}, got {m.shape}")
        if m.dtype != bool:
            if not np.all(np.isin(m, (0, 1))):
                raise ValueError("mask must be boolean (True = observed)")
            m = m.astype(bool)
    bad = m & ~np.isfinite(F)
    if bad.any():
        raise ValueError(f"F_mkt is NaN or infinite where mask says observed at {_first_bad(bad)}")
    bad = m & (F <= 0)
    if bad.any():
        raise ValueError(
            f"F_mkt must be > 0 where observed; non-positive prices at {_first_bad(bad)} "
            "(mask them out or clean them before fitting)"
        )
    bad = m & ~np.isfinite(tt)
    if bad.any():
        raise ValueError(f"ttm is NaN or infinite where observed at {_first_bad(bad)}")
    bad = m & (tt < 0)
    if bad.any():
        raise ValueError(
            f"ttm must be >= 0 where observed (expired contract?); negative at {_first_bad(bad)}"
        )
    empty = ~m.any(axis=0)
    if empty.any():
        raise ValueError(
            f"F_mkt columns {np.flatnonzero(empty).tolist()} have no observed value; drop them"
        )

    if dt is not None and dates is not None:
        raise ValueError("give either dt or dates, not both")
    if dates is not None:
        dates_arr = np.asarray(dates)
        if dates_arr.shape[0] != T:
            raise ValueError(f"dates must have length T={T}, got {dates_arr.shape[0]}")
        steps = dt_from_dates(dates_arr)
    elif dt is None:
        raise ValueError("dt is required (a scalar in years or an array [T-1]), or give dates")
    else:
        steps = np.asarray(dt, dtype=np.float64)
        if steps.ndim == 0:
            steps = np.full(T - 1, float(steps))
        if steps.shape != (T - 1,):
            raise ValueError(
                f"dt must be a scalar or have shape [T-1]=[{T - 1}], got {steps.shape}"
            )
    if not np.all(np.isfinite(steps)) or np.any(steps <= 0):
        raise ValueError("dt must be finite and > 0 (years between consecutive dates)")

    log_s = mask_s = None
    if S is not None:
        s = np.asarray(S, dtype=np.float64).reshape(-1)
        if s.shape != (T,):
            raise ValueError(f"S must have shape [T]=[{T}], got {np.shape(S)}")
        mask_s = np.isfinite(s)
        bad = mask_s & (s <= 0)
        if bad.any():
            raise ValueError(f"S must be > 0 where observed; non-positive at {_first_bad(bad)}")
        log_s = np.where(mask_s, np.log(np.where(mask_s & (s > 0), s, 1.0)), 0.0)

    log_f = np.where(m, np.log(np.where(m, F, 1.0)), 0.0)
    tt = np.where(m, tt, 0.0)
    dtype = dtype or jnp.result_type(float)

    def cast(a):
        return None if a is None else jnp.asarray(a, dtype=dtype)

    return MarketData(
        log_f=cast(log_f),
        ttm=cast(tt),
        mask=jnp.asarray(m),
        dt=cast(steps),
        log_s=cast(log_s),
        mask_s=None if mask_s is None else jnp.asarray(mask_s),
    )


#: fits pad their dates (masked: pure predictions) to a multiple of this, so that windows of
#: different lengths share one compiled program (:func:`padded_length`)
PAD_MULTIPLE = 64


def padded_length(n_dates: int) -> int:
    """``n_dates`` rounded up to a multiple of :data:`PAD_MULTIPLE`."""
    return -(-int(n_dates) // PAD_MULTIPLE) * PAD_MULTIPLE


def pad_dates(data: MarketData, n_dates: int) -> MarketData:
    """Append fully-masked dates so the panel has ``n_dates`` rows.

    Masked dates are pure prediction steps: the log-likelihood, the filtered moments of the
    original dates and the smoothed moments (no data follow) are unchanged. Padding panels to
    a few fixed lengths lets one compiled function serve windows of many lengths.
    """
    T = data.log_f.shape[0]
    extra = n_dates - T
    if extra < 0:
        raise ValueError(f"cannot pad {T} dates down to {n_dates}")
    if extra == 0:
        return data

    # NumPy when the arrays are concrete: eager jnp ops would compile for every new length
    concrete = not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(data))
    xp = np if concrete else jnp

    def pad(a, value=0):
        if a is None:
            return None
        widths = [(0, extra)] + [(0, 0)] * (a.ndim - 1)
        out = xp.pad(xp.asarray(a), widths, constant_values=value)
        return jnp.asarray(out) if concrete else out

    dt_np = xp.asarray(data.dt)
    dt = xp.concatenate([dt_np, xp.broadcast_to(dt_np[-1:], (extra,))])
    dt = jnp.asarray(dt) if concrete else dt
    return MarketData(
        log_f=pad(data.log_f),
        ttm=pad(data.ttm),
        mask=pad(data.mask, False),
        dt=dt,
        log_s=pad(data.log_s),
        mask_s=pad(data.mask_s, False),
    )


def window_data(stack: MarketData, c: Array, end: Array, window: int) -> MarketData:
    """The window of ``window`` dates ending at index ``end`` of commodity ``c`` (jittable)."""
    start = jnp.asarray(end) - (window - 1)
    zero = jnp.zeros_like(start)

    def cut(a, length):
        a = a[c]
        sizes = (length,) + a.shape[1:]
        return lax.dynamic_slice(a, (start,) + (zero,) * (a.ndim - 1), sizes)

    return MarketData(
        log_f=cut(stack.log_f, window),
        ttm=cut(stack.ttm, window),
        mask=cut(stack.mask, window),
        dt=lax.dynamic_slice(stack.dt[c], (start,), (window - 1,)),
    )
