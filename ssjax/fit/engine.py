"""The document's ``KalmanEngine`` block and its function form ``compute_model_forward``.

Thin shell around the pure core: validates inputs, picks starting values, runs the jitted fit,
computes uncertainty, states and model forwards, and wraps everything in a
:class:`ssjax.fit.results.KalmanFit`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax import Array
from jax.typing import ArrayLike

from ssjax.core.filter import FilterResult, Prior, default_prior, kalman_filter, log_likelihood_data
from ssjax.core.market import (
    MarketData,
    check_tenor_order,
    make_market_data,
    pad_dates,
    padded_length,
    t_star_index,
)
from ssjax.core.model import forward_curve
from ssjax.core.params import (
    Params,
    flatten_params,
    make_params,
    to_unconstrained,
    unflatten_params,
    validate_params,
)
from ssjax.core.smoother import SmootherResult, rts_smoother
from ssjax.fit.coordinates import KAPPA_FLOOR, on_ridge
from ssjax.fit.em import EM_STATUS_MESSAGES, fit_em
from ssjax.fit.inference import parameter_uncertainty
from ssjax.fit.mle import (
    check_fit_options,
    default_start,
    fit_mle,
    free_mask,
    negative_loglik,
    status_message,
    stopped,
)
from ssjax.fit.optimum import (
    bound_names,
    bound_vector,
    degenerate,
    describe_bounds,
    move_inside,
    multi_start,
    pull_back,
    stack_params,
    start_design,
)
from ssjax.fit.results import KalmanFit

__all__ = [
    "KalmanEngine",
    "compute_model_forward",
    "ModelForward",
    "log_likelihood",
    "model_forwards",
]


def _is_traced(*xs) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(xs))


def _prior(data: MarketData, x0, P0) -> Prior:
    d = default_prior(data)
    mean = d.mean if x0 is None else jnp.asarray(x0, data.log_f.dtype)
    cov = d.cov if P0 is None else jnp.asarray(P0, data.log_f.dtype)
    if not _is_traced(mean, cov):
        if np.shape(mean) != (2,):
            raise ValueError(f"x0 must have shape [2] (X, Y), got {np.shape(mean)}")
        if np.shape(cov) != (2, 2):
            raise ValueError(f"P0 must have shape [2, 2], got {np.shape(cov)}")
        c = np.asarray(cov)
        if not np.all(np.isfinite(c)) or not np.allclose(c, c.T):
            raise ValueError("P0 must be a finite symmetric matrix")
        if np.linalg.eigvalsh(c)[0] < 0:
            raise ValueError("P0 must be positive semi-definite")
        if not np.all(np.isfinite(np.asarray(mean))):
            raise ValueError("x0 must be finite")
    return Prior(mean, cov)


def model_forwards(p: Params, states: ArrayLike, ttm: ArrayLike) -> Array:
    """F_model [T, M] from states [T, 2] and ttm [T, M]: ``forward_curve`` vmapped over dates."""
    return jax.vmap(forward_curve, in_axes=(None, 0, 0))(p, jnp.asarray(states), jnp.asarray(ttm))


def log_likelihood(
    params: Params,
    F_mkt: ArrayLike,
    ttm: ArrayLike,
    mask: ArrayLike | None = None,
    dt: ArrayLike | float | None = None,
    x0: ArrayLike | None = None,
    P0: ArrayLike | None = None,
    *,
    S: ArrayLike | None = None,
    dates: ArrayLike | None = None,
) -> Array:
    """Exact log-likelihood of a futures panel under ``params`` (pure; differentiate it).

    Concrete inputs are validated (clear ``ValueError`` on bad shapes, prices, ttm or
    parameters). Under a transformation (jit/grad/vmap over the data) the data are taken as
    given: ``mask`` defaults to the finite entries of ``F_mkt``.

    Example:
        >>> import jax, ssjax
        >>> panel = ssjax.datasets.load_wti_ss2000()
        >>> p = ssjax.make_params(1.5, 0.3, 0.16, 0.3, 0.01, [0.04, 0.005, 0.003, 0.001, 0.004])
        >>> g = jax.grad(ssjax.log_likelihood)(p, panel.F_mkt, panel.ttm, dt=panel.dt)
    """
    if not _is_traced(F_mkt, ttm, mask, dt, S):
        if not _is_traced(params):
            validate_params(params, n_tenors=np.shape(F_mkt)[-1] if np.ndim(F_mkt) == 2 else None)
        data = make_market_data(F_mkt, ttm, S=S, mask=mask, dt=dt, dates=dates)
    else:
        F = jnp.asarray(F_mkt)
        m = jnp.isfinite(F) if mask is None else jnp.asarray(mask, bool)
        tt = jnp.broadcast_to(jnp.asarray(ttm, F.dtype), F.shape)
        steps = jnp.broadcast_to(jnp.asarray(dt, F.dtype), (F.shape[0] - 1,))
        log_s = mask_s = None
        if S is not None:
            s = jnp.asarray(S, F.dtype)
            mask_s = jnp.isfinite(s) & (s > 0)
            log_s = jnp.where(mask_s, jnp.log(jnp.where(mask_s, s, 1.0)), 0.0)
        data = MarketData(
            log_f=jnp.where(m, jnp.log(jnp.where(m, F, 1.0)), 0.0),
            ttm=jnp.where(m, tt, 0.0),
            mask=m,
            dt=steps,
            log_s=log_s,
            mask_s=mask_s,
        )
    return log_likelihood_data(params, data, _prior(data, x0, P0))


class ModelForward(NamedTuple):
    """Output of :func:`compute_model_forward` (the document's block outputs)."""

    Theta: dict
    state_t: np.ndarray  # [2]
    F_model_t: np.ndarray  # [M]
    state_path: np.ndarray  # [T, 2]
    F_model_path: np.ndarray  # [T, M]
    fit: KalmanFit


class _Calib(NamedTuple):
    """What one calibration run reports to the shell."""

    params: Params
    loglik: float
    converged: bool
    status: str
    num_steps: int
    grad_norm: float
    extra: dict
    stopped: bool  # converged, or stopped at a boundary


class _Lanes(NamedTuple):
    """Every start's fit, batched along a leading axis (one vmapped program)."""

    params: Params
    loglik: Array
    status: Array
    converged: Array
    num_steps: Array  # optimizer steps (MLE, hybrid's MLE stage) or EM iterations
    grad_norm: Array  # the MLE's max-norm gradient at the end (NaN for EM: see _grad_norm)
    em: Any  # EMResult of the EM stage (EM and hybrid) or None


#: starts whose log-likelihood is within this of the best count as reaching it
AT_BEST_TOL = 1e-3
#: rounds of restarts from a degenerate best end point (κ, σ_X, σ_Y or ρ at a bound)
MAX_ESCAPES = 2
#: rounds of restarts of the best end point with its boundary noise s.d.s raised
MAX_POLISH = 2
#: rounds of restarts that price another tenor exactly (see ``KalmanEngine.fit``)
MAX_SWITCH = 2
#: the switch round's starts: the best end point pulled back to these floors ...
SWITCH_FLOORS = (1.0, 0.3)
#: ... with one tenor's noise s.d. set to this fraction of its data-derived start
SWITCH_PIN = 0.1


def _keep_fixed(p: Params, ref: Params, free: Array) -> Params:
    """``p`` with every parameter held fixed (``free == 0``) at its value in ``ref``."""
    v = jnp.where(jnp.asarray(free) > 0, flatten_params(p), flatten_params(ref))
    return unflatten_params(v, p)


@jax.jit
def _pin_sd(p: Params, ref: Params, j: Array) -> Params:
    """``p`` with noise s.d. ``j`` at ``SWITCH_PIN`` × its value in ``ref``."""
    return p._replace(meas_sd=p.meas_sd.at[j].set(SWITCH_PIN * ref.meas_sd[j]))


@functools.partial(
    jax.jit,
    static_argnames=(
        "method", "max_steps", "gradient", "filter_method", "em_iters", "em_accelerate", "ecme",
    ),
)  # fmt: skip
def _fit_lanes(
    data: MarketData,
    inits: Params,
    prior: Prior,
    free: Array,
    gtol: float,
    ftol: float,
    em_tol: float,
    *,
    method: str,
    max_steps: int,
    gradient: str,
    filter_method: str,
    em_iters: int,
    em_accelerate: bool,
    ecme: bool,
) -> _Lanes:
    """Fit from every start in ``inits`` (leading axis) by ``method``: one vmapped program."""

    def one(init: Params) -> _Lanes:
        em = None
        if method in ("EM", "HYBRID"):
            em = fit_em(
                data, init, prior, free, max_iters=em_iters, tol=em_tol,
                accelerate=em_accelerate, ecme=ecme,
            )  # fmt: skip
            if method == "EM":
                nan = jnp.full_like(em.loglik, jnp.nan)
                return _Lanes(em.params, em.loglik, em.status, em.converged, em.num_iters, nan, em)
            init = em.params
        # a start on the κ → 0, ρ → −1 ridge runs in the spot–slope coordinates (as in the
        # rolling fits: one floating-point path for both), unless one of κ, σ_X, σ_Y, ρ is
        # held fixed (the spot–slope coordinates mix them)
        ridge = on_ridge(init) & _factors_free(free)
        r = fit_mle(
            data, init, prior, free, max_steps=max_steps, gtol=gtol, ftol=ftol,
            gradient=gradient, filter_method=filter_method, spot_slope=ridge,
        )  # fmt: skip
        return _Lanes(r.params, r.loglik, r.status, r.converged, r.num_steps, r.grad_norm, em)

    return jax.vmap(one)(inits)


def _factors_free(free: Array) -> Array:
    """True when κ, σ_X, σ_Y and ρ (the first four entries of the flat mask) are all free."""
    return jnp.all(jnp.asarray(free)[:4] > 0)


def _pick(lanes: _Lanes) -> int:
    """The best lane: highest log-likelihood among those that stopped (converged or at a
    boundary), else among the finite ones, else lane 0."""
    ll = np.asarray(lanes.loglik, float)
    ok = np.isfinite(ll) & np.asarray(stopped(lanes.status))
    pool = ok if ok.any() else np.isfinite(ll)
    if not pool.any():
        return 0
    return int(np.argmax(np.where(pool, ll, -np.inf)))


def _starts_at_best(lanes: _Lanes, best: int, n_design: int) -> int:
    """How many of the first ``n_design`` lanes (the independent starts) ended within
    ``AT_BEST_TOL`` of lane ``best``'s log-likelihood."""
    ll = np.asarray(lanes.loglik, float)
    design = ll[:n_design]
    return int(np.sum(np.isfinite(design) & (design >= ll[best] - AT_BEST_TOL)))


def _concat(a: _Lanes, b: _Lanes) -> _Lanes:
    return jax.tree.map(lambda x, y: np.concatenate([np.asarray(x), np.asarray(y)]), a, b)


@jax.jit
def _grad_norm(p: Params, data: MarketData, prior: Prior, free: Array) -> Array:
    """Max-norm of the gradient of −loglik/n in unconstrained coordinates (free entries)."""
    template = to_unconstrained(p)
    v = flatten_params(template)
    scale = jnp.maximum(data.nobs.astype(v.dtype), 1.0)
    g = jax.grad(negative_loglik)(v, template, data, prior, scale)
    return jnp.max(jnp.abs(g * free))


@functools.partial(jax.jit, static_argnames=("smoothed",))
def _post_fit(p: Params, data: MarketData, prior: Prior, ttm: Array, smoothed: bool):
    """The states and the model forwards at the optimum, in one compiled program."""
    filt = kalman_filter(p, data, prior)
    smooth = rts_smoother(p, data, prior, filt) if smoothed else None
    path = filt.filtered_means if smooth is None else smooth.smoothed_means
    return filt, smooth, model_forwards(p, path, ttm)


_uncertainty = jax.jit(parameter_uncertainty)


def _covariances(
    p: Params, data: MarketData, prior: Prior, free: Array
) -> tuple[np.ndarray, np.ndarray]:
    """(Hessian, sandwich) covariances at ``p``: what ``KalmanFit.cov`` computes on first use.

    The exact Hessian (forward over forward through the filter) is a program of its own,
    compiled and run only when a fit's standard errors are read: it is about a fifth of a
    first ``KalmanEngine().fit``'s compile time, which a caller who needs only Θ, the states
    or the forwards no longer pays.
    """
    unc = _uncertainty(p, data, prior, free)
    return np.asarray(unc.cov), np.asarray(unc.cov_robust)


def _first_dates(filt: FilterResult, smooth: SmootherResult | None, T: int):
    """Cut the padded filter and smoother outputs back to the T real dates."""
    filt = jax.tree.map(lambda a: a[:T] if a.ndim else a, filt)
    if smooth is not None:
        smooth = SmootherResult(
            smoothed_means=smooth.smoothed_means[:T],
            smoothed_covs=smooth.smoothed_covs[:T],
            lag_one_covs=smooth.lag_one_covs[: T - 1],
            gains=smooth.gains[: T - 1],
            filter=filt,
        )
    return filt, smooth


_THETA_KEYS = (
    "kappa",
    "sigma_x",
    "sigma_y",
    "rho",
    "mu",
    "meas_sd",
    "lambda_x",
    "mu_star",
    "spot_sd",
)


def _aligned(F: pd.DataFrame, ttm: Any, mask: Any) -> tuple[pd.DataFrame, Any, Any]:
    """``ttm`` (and ``mask``) as DataFrames aligned to ``F_mkt``'s dates and tenors by label;
    labels that disagree are refused (a positional match would pair the wrong cells)."""
    out = []
    for name, x in (("ttm", ttm), ("mask", mask)):
        if not isinstance(x, pd.DataFrame):
            out.append(x)
            continue
        if set(x.columns) != set(F.columns):
            raise ValueError(
                f"{name}'s columns {list(x.columns)} are not F_mkt's {list(F.columns)}: the "
                "frames are aligned by their labels"
            )
        if len(x.index) != len(F.index) or not x.index.sort_values().equals(F.index.sort_values()):
            raise ValueError(f"{name}'s index (dates) is not F_mkt's: the frames are aligned "
                             "by their labels")  # fmt: skip
        if x.index.has_duplicates or F.index.has_duplicates:
            raise ValueError("F_mkt or ttm has duplicated dates in its index")
        x = x.reindex(index=F.index, columns=F.columns)
        out.append(x.to_numpy(bool if name == "mask" else float))
    return F, out[0], out[1]


class KalmanEngine:
    """Fit Θ by maximum likelihood (or EM), filter/smooth the states, compute model forwards.

    Args:
        method: ``"MLE"`` (exact-gradient L-BFGS), ``"EM"`` (structured EM, see
            :func:`ssjax.fit.em.fit_em`) or ``"hybrid"`` (``hybrid_em_iters`` EM iterations, then
            MLE from there).
        risk_premium: fit the 2000 paper's risk-premium form (``lambda_x``, ``mu_star``).
        shared_noise: one measurement s.d. for all tenors instead of one per tenor.
        states: ``"filtered"`` (default: no look-ahead) or ``"smoothed"`` for ``state_path``
            and ``F_model_path``. ``state_t`` is always the filtered state at t*.
        n_starts: starting points fitted together as one vmapped batch (default 16): the
            data-derived start and ``n_starts − 1`` points spread around it over κ, σ_X,
            σ_Y, the noise s.d.s and ρ of both signs (:func:`ssjax.fit.optimum.start_design`,
            shuffled by ``seed``), or, with ``theta0``, ``theta0`` and ``n_starts − 1`` of
            them. The highest end point that stopped is kept; if it is degenerate (κ, σ_X or
            σ_Y → 0, |ρ| → 1) the fit restarts from it moved inside (up to two rounds). The
            result says how many fits reached the best value (``starts_at_best``). Real
            panels' likelihoods are often multi-modal: how often fewer starts miss the best
            optimum is measured in ``experiments/results/bench_optimum.md``. ``n_starts=1``
            is the single fit from the data-derived start (or ``theta0``), for speed (the
            escape and the polish still run; the round that prices each other tenor exactly,
            which runs only where independent starts disagree, does not).
        max_steps, gtol, ftol: optimizer stopping rules (see :func:`ssjax.fit.mle.fit_mle`).
        fixed: ``{"rho": True, ...}`` holds those parameters at their starting values.
        seed: seed for the random starts.
        em_max_iters, em_tol, em_accelerate: EM stopping rules and SQUAREM acceleration
            (:func:`ssjax.fit.em.fit_em`).
        em_variant: ``"ECME"`` (default: the structural and then the noise CM-step maximize
            the observed log-likelihood after the closed-form noise step; reaches the MLE
            where a measurement s.d. heads to zero, as on the bundled WTI panel) or
            ``"ECM"`` (every CM-step on the expected complete-data log-likelihood Q; cheaper
            per iteration, crawls near such a boundary). See :func:`ssjax.fit.em.m_step`.
        hybrid_em_iters: EM iterations before the MLE stage of ``method="hybrid"``.
        gradient: the MLE's gradient: ``"autodiff"`` (default; reverse mode through the
            filter) or ``"fisher"`` (Fisher's identity first, autodiff to finish; see
            :func:`ssjax.fit.mle.fit_mle`).
        filter_method: the MLE's filter: ``"sequential"`` (default), ``"parallel"``
            (parallel-in-time) or ``"auto"`` (see :func:`ssjax.fit.mle.fit_mle`). States, forwards
            and standard errors come from the sequential filter and smoother either way.

    Example:
        >>> import ssjax
        >>> panel = ssjax.datasets.load_wti_ss2000()
        >>> fit = ssjax.KalmanEngine().fit(panel.F_mkt, panel.ttm, dates=panel.dates)
        >>> fit.theta["kappa"], fit.F_model_t          # doctest: +SKIP
    """

    def __init__(
        self,
        method: str = "MLE",
        *,
        risk_premium: bool = False,
        shared_noise: bool = False,
        states: str = "filtered",
        n_starts: int = 16,
        max_steps: int = 1000,
        gtol: float = 1e-6,
        ftol: float = 1e-11,
        fixed: dict[str, bool] | None = None,
        seed: int = 0,
        em_max_iters: int = 500,
        em_tol: float = 1e-10,
        em_accelerate: bool = True,
        em_variant: str = "ECME",
        hybrid_em_iters: int = 5,
        gradient: str = "autodiff",
        filter_method: str = "sequential",
    ) -> None:
        method = method.upper()
        check_fit_options(gradient, filter_method)
        if method not in ("MLE", "EM", "HYBRID"):
            raise ValueError(f"method must be 'MLE', 'EM' or 'hybrid', got {method!r}")
        em_variant = em_variant.upper()
        if em_variant not in ("ECM", "ECME"):
            raise ValueError(f"em_variant must be 'ECM' or 'ECME', got {em_variant!r}")
        if em_max_iters < 1 or hybrid_em_iters < 1:
            raise ValueError("em_max_iters and hybrid_em_iters must be >= 1")
        if states not in ("filtered", "smoothed"):
            raise ValueError(f"states must be 'filtered' or 'smoothed', got {states!r}")
        if n_starts < 1:
            raise ValueError("n_starts must be >= 1")
        self.method = method
        self.risk_premium = risk_premium
        self.shared_noise = shared_noise
        self.states = states
        self.n_starts = n_starts
        self.max_steps = max_steps
        self.gtol = gtol
        self.ftol = ftol
        self.fixed = fixed
        self.seed = seed
        self.em_max_iters = em_max_iters
        self.em_tol = em_tol
        self.em_accelerate = em_accelerate
        self.em_variant = em_variant
        self.hybrid_em_iters = hybrid_em_iters
        self.gradient = gradient
        self.filter_method = filter_method

    # ---- helpers ----------------------------------------------------------------------
    def _start(self, data: MarketData, theta0: Params | dict | None) -> Params:
        start = default_start(data, risk_premium=self.risk_premium)
        if self.shared_noise:
            start = start._replace(meas_sd=jnp.median(start.meas_sd))
        if theta0 is None:
            return start
        if isinstance(theta0, Params):
            validate_params(theta0, n_tenors=data.n_tenors)
            return theta0
        unknown = set(theta0) - set(_THETA_KEYS)
        if unknown:
            raise ValueError(f"theta0: unknown parameter names {sorted(unknown)}")
        merged = {k: v for k, v in start._asdict().items()}
        merged.update(theta0)
        if (merged["lambda_x"] is None) != (merged["mu_star"] is None):
            if merged["mu_star"] is None:
                merged["mu_star"] = merged["mu"]
            else:
                merged["lambda_x"] = 0.0
        p = make_params(**merged)
        validate_params(p, n_tenors=data.n_tenors)
        return p

    def _starts(self, data_start: Params, start: Params, user: bool, free: Array) -> Params:
        """The batch of starts: ``start`` (the user's ``theta0``) first when ``user``, then
        the design around the data-derived start (:func:`ssjax.fit.optimum.start_design`); every
        parameter held fixed keeps its value in ``start``."""
        n = self.n_starts - int(user)
        parts = [jax.tree.map(lambda a: jnp.asarray(a)[None], start)] if user else []
        if n > 0:
            parts.append(multi_start(data_start, start_design(n, self.seed)))
        batch = jax.tree.map(lambda *a: jnp.concatenate(a), *parts)
        flat = jax.vmap(flatten_params)(batch)
        flat = jnp.where(free[None] > 0, flat, flatten_params(start)[None])
        return jax.vmap(lambda v: unflatten_params(v, start))(flat)

    # ---- the block --------------------------------------------------------------------
    def fit(
        self,
        F_mkt: ArrayLike,
        ttm: ArrayLike,
        S: ArrayLike | None = None,
        mask: ArrayLike | None = None,
        dt: ArrayLike | float | None = None,
        dates: ArrayLike | None = None,
        t_star: int | Any | None = None,
        theta0: Params | dict | None = None,
        x0: ArrayLike | None = None,
        P0: ArrayLike | None = None,
        tenor_names: list[str] | None = None,
    ) -> KalmanFit:
        """Calibrate Θ on the data up to and including ``t_star`` and compute the outputs.

        Args:
            F_mkt: futures prices [T, M] (a DataFrame's columns name the tenors).
            ttm: times to maturity [T, M] in years (ACT/365), or [M] for fixed maturities.
            S: optional spot prices [T] (an extra observable with Δ = 0 and its own noise).
            mask: bool [T, M], True = observed; default: the finite entries of ``F_mkt``.
            dt: step length(s) in years (scalar or [T-1]); or give ``dates``.
            dates: [T] dates; steps are derived as ACT/365 year fractions.
            t_star: last date used (an index, or a date when ``dates`` is given); default
                the last date.
            theta0: starting values (a :class:`Params` or a partial dict); default derived
                from the data (:func:`ssjax.fit.mle.default_start`).
            x0, P0: prior mean [2] and covariance [2, 2] of (X, Y) at the first date before
                its observations; default x0 = [0, mean observed ln F at the first date],
                P0 = I.
            tenor_names: labels of the tenors for tables.
        """
        if isinstance(F_mkt, pd.DataFrame):
            F_mkt, ttm, mask = _aligned(F_mkt, ttm, mask)
            tenor_names = tenor_names or [str(c) for c in F_mkt.columns]
            if dates is None and isinstance(F_mkt.index, pd.DatetimeIndex):
                dates = F_mkt.index
            F_mkt = F_mkt.to_numpy(float)
        elif isinstance(ttm, pd.DataFrame):
            raise ValueError("ttm is a DataFrame but F_mkt is not: give both as DataFrames "
                             "(aligned by their labels) or both as arrays")  # fmt: skip
        F_np = np.asarray(F_mkt, float)
        if F_np.ndim != 2:
            raise ValueError(f"F_mkt must have shape [T, M], got {F_np.shape}")
        T_full, M = F_np.shape
        ttm_np = np.asarray(ttm, float)
        if ttm_np.ndim == 1 and ttm_np.shape[0] == M:
            ttm_np = np.broadcast_to(ttm_np, (T_full, M))
        dates_idx = None if dates is None else pd.DatetimeIndex(pd.to_datetime(np.asarray(dates)))
        t_idx = t_star_index(t_star, T_full, dates_idx)
        sl = slice(0, t_idx + 1)
        steps = dt
        if dt is not None and np.ndim(dt) == 1:
            if np.shape(dt) != (T_full - 1,):
                raise ValueError(
                    f"dt must be a scalar or have shape [T-1]=[{T_full - 1}], got {np.shape(dt)}"
                )
            steps = np.asarray(dt)[:t_idx]
        data = make_market_data(
            F_np[sl],
            ttm_np[sl],
            S=None if S is None else np.asarray(S, float)[sl],
            mask=None if mask is None else np.asarray(mask)[sl],
            dt=steps,
            dates=None if dates_idx is None else dates_idx[sl],
        )
        # a tenor panel: columns in maturity order on every date
        check_tenor_order(ttm_np[sl], np.asarray(data.mask), increasing=True)
        prior = _prior(data, x0, P0)
        start = self._start(data, theta0)
        if (S is not None) != (start.spot_sd is not None):
            raise ValueError("theta0 has spot_sd but no S was given (or the reverse)")
        free = free_mask(start, self.fixed)

        # pad to a multiple of PAD_MULTIPLE dates (masked: pure predictions) so that windows
        # of different lengths share one compiled program
        T = data.n_dates
        n_pad = padded_length(T)
        data_pad = pad_dates(data, n_pad)
        free_j = jnp.ones(flatten_params(start).shape[0]) if free is None else jnp.asarray(free)

        data_start = self._start(data, None) if theta0 is not None else start
        starts = self._starts(data_start, start, theta0 is not None, free_j)
        lanes = self._run_lanes(data_pad, starts, prior, free_j)
        n_design = int(np.shape(lanes.loglik)[0])
        best = _pick(lanes)

        r = self._search(lanes, best, n_design, start, data_start, data_pad, prior, free_j)
        best = r
        p = best.params
        ttm_fit = np.where(np.isfinite(ttm_np[sl]), ttm_np[sl], np.nan)
        ttm_pad = np.zeros((n_pad, M))
        ttm_pad[:T] = np.nan_to_num(ttm_fit)
        filt, smooth, F_path = _post_fit(
            p, data_pad, prior, jnp.asarray(ttm_pad), smoothed=self.states == "smoothed"
        )
        filt, smooth = _first_dates(filt, smooth, T)
        path = np.asarray(filt.filtered_means if smooth is None else smooth.smoothed_means)
        F_path = np.where(np.isfinite(ttm_fit), np.asarray(F_path)[:T], np.nan)
        state_t = np.asarray(filt.filtered_means[-1])
        F_t = np.asarray(forward_curve(p, state_t, np.nan_to_num(ttm_fit[-1])))
        F_t = np.where(np.isfinite(ttm_fit[-1]), F_t, np.nan)
        names = tenor_names or [f"T{i + 1}" for i in range(M)]
        if len(names) != M:
            raise ValueError(f"tenor_names has {len(names)} entries for {M} tenors")
        return KalmanFit(
            params=p,
            method=self.method,
            loglik=best.loglik,
            nobs=int(data.nobs),
            converged=best.converged,
            status=best.status,
            num_steps=best.num_steps,
            grad_norm=best.grad_norm,
            state_t=state_t,
            state_path=path,
            F_model_t=F_t,
            F_model_path=F_path,
            t_star=t_idx,
            covariances=functools.partial(_covariances, p, data_pad, prior, free_j),
            free=np.asarray(free_j),
            filter_result=filt,
            smoother_result=smooth,
            tenor_names=names,
            dates=None if dates_idx is None else dates_idx[sl],
            states=self.states,
            at_bound=bound_names(p, free_j, names),
            bound_text=describe_bounds(p, free_j, names),
            n_starts=int(best.extra["n_starts"]),
            starts_at_best=int(best.extra["starts_at_best"]),
            optimum_reached=best.stopped,
            extra={
                "F_mkt_t": F_np[t_idx],
                "start": start,
                "prior": prior,
                "data": data,
                **best.extra,
            },
        )

    def _search(self, lanes, best, n_design, start, data_start, data_pad, prior, free_j):
        """After the starts: escape a degenerate best point, polish a best point with a noise
        s.d. at zero, and (where the starts disagree) try pricing each other tenor exactly;
        returns the best fit with the rounds' counts in ``extra``."""

        def escape(lanes: _Lanes, best: int) -> tuple[_Lanes, int, int]:
            return self._escape(lanes, best, n_design, data_start, data_pad, prior, free_j)

        lanes, best, escapes = escape(lanes, best)
        lanes, best, ridge = self._ridge_polish(lanes, best, n_design, data_pad, prior, free_j)
        # an end point with a noise s.d. at its bound can sit on the flat boundary short of a
        # better optimum that prices another tenor exactly: restart it with those s.d.s
        # raised to a spread of floors (from near its optimum: a few steps each)
        polishes = 0
        while polishes < MAX_POLISH:
            end = jax.tree.map(lambda a, i=best: jnp.asarray(a[i]), lanes.params)
            if not bool(jnp.any(bound_vector(end, free_j)[5:])):
                break
            polishes += 1
            floors = np.geomspace(0.003, 0.3, n_design) if n_design > 1 else np.full(1, 0.01)
            inits = stack_params(
                [_keep_fixed(pull_back(end, data_start, f), end, free_j) for f in floors]
            )
            lanes, best, improved = self._restart(lanes, best, inits, data_pad, prior, free_j)
            if not improved:
                break
        # the likelihood of a window is often multi-modal in which tenor is priced exactly
        # (its s.d. at ~0): an end point with one pinned can sit below the mode that pins
        # another, out of the polish's reach. Restart from it pulled back, with each free
        # tenor's s.d. in turn set near zero; only where the independent starts disagree
        # (the likelihood is multi-modal here), and never with n_starts=1 (no second start
        # to disagree with). Why, in figures: docs/design.md ("the switch round")
        switches = 0
        M_sd = int(np.size(start.meas_sd))
        split = n_design > 1 and _starts_at_best(lanes, best, n_design) < n_design
        while switches < MAX_SWITCH and split and M_sd > 1:
            end = jax.tree.map(lambda a, i=best: jnp.asarray(a[i]), lanes.params)
            if not bool(jnp.any(bound_vector(end, free_j)[5 : 5 + M_sd])):
                break
            switches += 1
            inits = self._switch_starts(end, data_start, free_j, M_sd)
            improved = False
            for a in range(0, len(inits), n_design):
                part = inits[a : a + n_design]
                part = part + [part[-1]] * (n_design - len(part))  # one compiled lane count
                lanes, best, up = self._restart(
                    lanes, best, stack_params(part), data_pad, prior, free_j, strict=True
                )
                improved |= up
            if not improved:
                break
            # a better mode found this way can be a degenerate end point: escape it too
            lanes, best, more = escape(lanes, best)
            escapes += more
        ll_all = np.asarray(lanes.loglik, float)
        at_best = _starts_at_best(lanes, best, n_design)
        r = self._result(lanes, best, data_pad, prior, free_j)
        r.extra.update(
            n_starts=n_design, starts_at_best=at_best, escape_rounds=escapes,
            ridge_rounds=ridge, polish_rounds=polishes, switch_rounds=switches, fits=ll_all.size,
            start_logliks=ll_all,
        )  # fmt: skip
        return r

    def _escape(self, lanes, best, n_design, data_start, data_pad, prior, free_j):
        """A degenerate best end point (a factor gone, |ρ| = 1) is escaped from, not
        accepted: its degenerate coordinates are moved back inside, ρ spread over both signs
        (it stays only where nothing inside is higher). Where that round finds nothing
        higher, the next takes κ, σ_X and σ_Y from the data-derived start as well: from a
        point with a large κ (X nearly white noise) and σ_X, ρ at their bounds, restoring σ_X
        and ρ alone leads L-BFGS back to the same point (a start at κ = 490 did, 554 nats
        below the optimum). Returns (lanes, best, rounds)."""
        rounds = 0
        reset = False
        while rounds < MAX_ESCAPES and bool(
            degenerate(jax.tree.map(lambda a, i=best: a[i], lanes.params), free_j)
        ):
            rounds += 1
            end = jax.tree.map(lambda a, i=best: jnp.asarray(a[i]), lanes.params)
            rhos = np.linspace(-0.6, 0.6, n_design) if n_design > 1 else np.zeros(1)
            if reset:
                factors = end._replace(
                    kappa=data_start.kappa, sigma_x=data_start.sigma_x,
                    sigma_y=data_start.sigma_y,
                )  # fmt: skip
                starts = [
                    _keep_fixed(factors._replace(rho=jnp.asarray(r, end.rho.dtype)), end, free_j)
                    for r in rhos
                ]
            else:
                starts = [move_inside(end, data_start, r, free_j) for r in rhos]
            lanes, best, improved = self._restart(
                lanes, best, stack_params(starts), data_pad, prior, free_j
            )
            if not improved:
                if reset:
                    break
                reset = True
        return lanes, best, rounds

    def _ridge_polish(self, lanes, best, n_design, data_pad, prior, free_j):
        """A best end point on the κ → 0, ρ → −1 ridge (one the escape kept: nothing inside
        is higher) is refitted from itself in the spot–slope coordinates, where the ridge is
        the single direction log κ (:mod:`ssjax.fit.coordinates`): the factors' coordinates
        stop on the ridge's curved valley up to a few nats short. The lanes spread κ along
        the ridge (× 0.3 … 3); only ``method="MLE"`` has this round. Returns (lanes, best,
        rounds)."""
        end = jax.tree.map(lambda a, i=best: jnp.asarray(a[i]), lanes.params)
        if self.method != "MLE" or not bool(on_ridge(end) & _factors_free(free_j)):
            return lanes, best, 0
        scales = np.geomspace(0.3, 3.0, n_design) if n_design > 1 else np.ones(1)
        # (κ stays above the spot–slope floor, so that the lane's start maps back exactly)
        inits = stack_params(
            [end._replace(kappa=jnp.maximum(end.kappa * f, 2.0 * KAPPA_FLOOR)) for f in scales]
        )
        lanes, best, _ = self._restart(lanes, best, inits, data_pad, prior, free_j, strict=True)
        return lanes, best, 1

    def _run_lanes(self, data: MarketData, inits: Params, prior: Prior, free: Array) -> _Lanes:
        """Fit from every start in ``inits`` by the engine's method (one vmapped program)."""
        em_iters = self.em_max_iters if self.method == "EM" else self.hybrid_em_iters
        out = _fit_lanes(
            data, inits, prior, free, self.gtol, self.ftol, self.em_tol,
            method=self.method, max_steps=self.max_steps, gradient=self.gradient,
            filter_method=self.filter_method, em_iters=em_iters,
            em_accelerate=self.em_accelerate, ecme=self.em_variant == "ECME",
        )  # fmt: skip
        return jax.tree.map(np.asarray, out)

    @staticmethod
    def _switch_starts(end: Params, data_start: Params, free: Array, M: int) -> list[Params]:
        """Starts of a switch round: ``end`` pulled back to each of ``SWITCH_FLOORS`` with
        one free tenor's noise s.d. at ``SWITCH_PIN`` × its data-derived start."""
        free_sd = np.asarray(free)[5 : 5 + M] > 0
        out = []
        for f in SWITCH_FLOORS:
            base = _keep_fixed(pull_back(end, data_start, f), end, free)
            out += [_pin_sd(base, data_start, j) for j in np.flatnonzero(free_sd)]
        return out

    def _restart(
        self,
        lanes: _Lanes,
        best: int,
        inits: Params,
        data: MarketData,
        prior: Prior,
        free: Array,
        strict: bool = False,
    ) -> tuple[_Lanes, int, bool]:
        """Fit ``inits`` as more lanes; the new best lane, and whether it beats the old best
        by more than ``AT_BEST_TOL`` (``strict``: only then is the best lane replaced; the
        same optimum reached again can sit nearer the boundary, a noise s.d. at 1e-12
        instead of 1e-7, where the Hessian is no longer finite)."""
        ll_before = float(np.asarray(lanes.loglik)[best])
        old = best
        lanes = _concat(lanes, self._run_lanes(data, inits, prior, free))
        best = _pick(lanes)
        improved = float(np.asarray(lanes.loglik)[best]) > ll_before + AT_BEST_TOL
        return lanes, best if improved or not strict else old, improved

    def _result(self, lanes: _Lanes, i: int, data: MarketData, prior: Prior, free: Array) -> _Calib:
        """Lane ``i`` of a batch as the shell reports it."""
        p = jax.tree.map(lambda a: jnp.asarray(a[i]), lanes.params)
        status = int(lanes.status[i])
        extra: dict[str, Any] = {}
        if lanes.em is not None:
            em = jax.tree.map(lambda a: a[i], lanes.em)
            n_it = int(em.num_iters)
            extra = {
                "em_loglik_path": np.asarray(em.loglik_path)[: n_it + 1],
                "em_iterations": n_it,
                "em_steps": int(em.num_em_steps),
                "em_status": EM_STATUS_MESSAGES[int(em.status)],
                "em_variant": self.em_variant,
                "em_rollbacks": int(em.rollbacks),
                "em_loglik_decreases": int(em.ll_decreases),
            }
            if self.method == "HYBRID":
                extra["mle_steps"] = int(lanes.num_steps[i])
        if self.method == "EM":
            text = EM_STATUS_MESSAGES[status]
            grad_norm = float(_grad_norm(p, data, prior, free))
        else:
            text = status_message(status)
            grad_norm = float(lanes.grad_norm[i])
        return _Calib(
            params=p,
            loglik=float(lanes.loglik[i]),
            converged=bool(lanes.converged[i]),
            status=text,
            num_steps=int(lanes.num_steps[i]),
            grad_norm=grad_norm,
            extra=extra,
            stopped=bool(stopped(status)),
        )


def compute_model_forward(
    F_mkt: ArrayLike,
    ttm: ArrayLike,
    S: ArrayLike | None = None,
    *,
    method: str = "MLE",
    theta0: Params | dict | None = None,
    t_star: int | Any | None = None,
    mask: ArrayLike | None = None,
    dt: ArrayLike | float | None = None,
    dates: ArrayLike | None = None,
    **engine_kwargs: Any,
) -> ModelForward:
    """The document's ``ComputeModelForward()``: calibrate, filter and price at t*.

    Returns ``Theta``, ``state_t [2]``, ``F_model_t [M]``, ``state_path [T, 2]`` and
    ``F_model_path [T, M]`` (plus the full :class:`KalmanFit` as ``fit``).
    """
    fit = KalmanEngine(method, **engine_kwargs).fit(
        F_mkt, ttm, S=S, mask=mask, dt=dt, dates=dates, t_star=t_star, theta0=theta0
    )
    return ModelForward(
        fit.theta, fit.state_t, fit.F_model_t, fit.state_path, fit.F_model_path, fit
    )
