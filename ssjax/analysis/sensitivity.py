r"""Gradient-based sensitivity of the model to Θ and the state, and identification diagnostics.

Everything in the engine is differentiable, so the questions below are answered with exact
derivatives (autodiff) rather than finite differences:

* :func:`forward_jacobian` / :func:`forward_path_jacobian`: ∂F_model/∂Θ and ∂F_model/∂x with
  the state x = (X, Y) held fixed (the closed form's own sensitivity), one date or every date;
* :func:`total_forward_jacobian`: dF_model_path/dΘ when the states are the filter's (or the
  smoother's) estimates from the same market data, so a change in Θ also moves the states;
* :func:`loglik_derivatives`: value, gradient and Hessian of the log-likelihood;
* :func:`elasticity_table`: the same Jacobians as a tidy table with elasticities
  (θ/F)·∂F/∂θ;
* :func:`jacobian`: forward or reverse mode, picked by shape (the weights' derivative with
  respect to Θ, :func:`ssjax.trading.sizing.weights_jacobian`, uses it);
* :func:`profile_likelihood`: ℓ re-maximized over the other parameters on a grid of one
  parameter, the grid points fitted in one ``vmap``;
* :func:`identification`: eigen-analysis of the Hessian (scaled to unit diagonal) naming the
  parameter combinations the data barely determine.

Derivatives are taken with respect to the flat physical parameter vector in
:func:`ssjax.core.params.flatten_params` order (names from :func:`ssjax.core.params.param_names`).
Forward mode (``jacfwd``) is used where there are fewer inputs than outputs, reverse mode
otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax import Array
from jax.typing import ArrayLike

from ssjax._lazy import scipy_stats as stats
from ssjax.core.filter import Prior, default_prior, kalman_filter, log_likelihood_data
from ssjax.core.market import MarketData
from ssjax.core.model import forward_curve, measurement
from ssjax.core.params import Params, flatten_params, param_names, unflatten_params
from ssjax.core.smoother import rts_smoother

__all__ = [
    "ForwardJacobian",
    "forward_jacobian",
    "forward_path_jacobian",
    "total_forward_jacobian",
    "LoglikDerivatives",
    "loglik_derivatives",
    "elasticity_table",
    "jacobian",
    "ProfileLikelihood",
    "profile_likelihood",
    "Identification",
    "identification",
]


def jacobian(f: Callable[[Array], Array], x: Array, n_out: int) -> Array:
    """Jacobian of ``f`` at ``x`` [n]: forward mode when n ≤ n_out, reverse mode otherwise."""
    return (jax.jacfwd if x.shape[0] <= n_out else jax.jacrev)(f)(x)


class ForwardJacobian(NamedTuple):
    """Model forwards and their derivatives (leading [T] axis for the path versions)."""

    F: Array  # [M] (or [T, M]) model forwards
    d_theta: Array  # [M, n] (or [T, M, n]) ∂F/∂θ, θ the flat physical parameters
    d_state: Array | None  # [M, 2] (or [T, M, 2]) ∂F/∂(X, Y); None for the total Jacobian


def forward_jacobian(p: Params, state: ArrayLike, ttm: ArrayLike) -> ForwardJacobian:
    """∂F(t, t+Δ)/∂Θ and ∂F/∂(X, Y) at one date, the state held fixed (jittable).

    Args:
        p: parameters.
        state: (X, Y) [2].
        ttm: times to maturity [M] in years.
    """
    state = jnp.asarray(state)
    ttm = jnp.asarray(ttm)
    vec = flatten_params(p)
    M = ttm.shape[0]
    F = forward_curve(p, state, ttm)
    d_theta = jacobian(lambda v: forward_curve(unflatten_params(v, p), state, ttm), vec, M)
    # ∂F/∂X = b F, ∂F/∂Y = F exactly (ln F is linear in the state)
    b, _ = measurement(p, ttm)
    d_state = jnp.stack([b * F, F], axis=-1)
    return ForwardJacobian(F, d_theta, d_state)


def forward_path_jacobian(p: Params, states: ArrayLike, ttm: ArrayLike) -> ForwardJacobian:
    """:func:`forward_jacobian` at every date: states [T, 2], ttm [T, M] → [T, M, ...]."""
    return jax.vmap(forward_jacobian, in_axes=(None, 0, 0))(p, jnp.asarray(states), ttm)


def _model_path(p: Params, data: MarketData, prior: Prior, smoothed: bool) -> Array:
    filt = kalman_filter(p, data, prior)
    if smoothed:
        states = rts_smoother(p, data, prior, filt).smoothed_means
    else:
        states = filt.filtered_means
    return jax.vmap(forward_curve, in_axes=(None, 0, 0))(p, states, data.ttm)


def total_forward_jacobian(
    p: Params, data: MarketData, prior: Prior | None = None, *, smoothed: bool = False
) -> ForwardJacobian:
    """dF_model_path/dΘ [T, M, n] with the states re-estimated from ``data`` under each Θ.

    F_model_path[t] = F(Θ, x̂_t(Θ)) where x̂_t is the filtered (``smoothed=False``) or
    smoothed state, so the total derivative is ∂F/∂Θ + ∂F/∂x · dx̂_t/dΘ: how the model curve
    fitted to the same market prices moves when a parameter changes. Its last row is the
    derivative of ``F_model_t``. Cells under a false mask carry the model curve at the
    panel's ttm there (as ``ttm`` holds them). Forward mode through the filter's scan.
    """
    prior = default_prior(data) if prior is None else prior
    vec = flatten_params(p)

    def path(v: Array) -> Array:
        return _model_path(unflatten_params(v, p), data, prior, smoothed)

    F = path(vec)
    return ForwardJacobian(F, jacobian(path, vec, F.size), None)


_total_forward_jacobian_jit = jax.jit(total_forward_jacobian, static_argnames="smoothed")
_forward_path_jacobian_jit = jax.jit(forward_path_jacobian)


class LoglikDerivatives(NamedTuple):
    """Log-likelihood and its exact derivatives in the flat physical parameters."""

    loglik: Array  # ()
    grad: Array  # [n]
    hessian: Array  # [n, n]


def loglik_derivatives(
    p: Params, data: MarketData, prior: Prior | None = None
) -> LoglikDerivatives:
    """Value, gradient and Hessian of the exact log-likelihood at ``p`` (jittable)."""
    prior = default_prior(data) if prior is None else prior
    vec = flatten_params(p)

    def ll(v: Array) -> Array:
        return log_likelihood_data(unflatten_params(v, p), data, prior, unroll=1)

    value, grad = jax.value_and_grad(ll)(vec)
    H = jax.hessian(ll)(vec)
    return LoglikDerivatives(value, grad, 0.5 * (H + H.T))


def elasticity_table(
    p: Params,
    states: ArrayLike | None = None,
    ttm: ArrayLike | None = None,
    *,
    data: MarketData | None = None,
    prior: Prior | None = None,
    total: bool = False,
    smoothed: bool = False,
    dates: Sequence[Any] | None = None,
    tenor_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Tidy table of ∂F/∂θ and elasticities (θ/F)·∂F/∂θ per date, tenor and parameter.

    Either the state-fixed sensitivity at given ``states`` [T, 2] (or [2]) and ``ttm``
    [T, M] (or [M]), or, with ``total=True`` and ``data``, the total derivative through the
    filter (:func:`total_forward_jacobian`). Columns: ``date``, ``tenor``, ``parameter``,
    ``F``, ``dF_dtheta``, ``elasticity`` (and ``dF_dX``, ``dF_dY`` rows as parameters
    ``X`` and ``Y`` in the state-fixed case, with elasticity ∂ln F/∂x).
    """
    names = param_names(p)
    theta = np.asarray(flatten_params(p), float)
    if total:
        if data is None:
            raise ValueError("data: total=True needs the panel the states are filtered from")
        jac = _total_forward_jacobian_jit(p, data, prior, smoothed=smoothed)
    else:
        if states is None or ttm is None:
            raise ValueError("states and ttm are needed unless total=True")
        states_a = jnp.asarray(states)
        ttm_a = jnp.asarray(ttm)
        if states_a.ndim == 1:
            states_a, ttm_a = states_a[None], ttm_a[None]
        if states_a.shape[-1] != 2 or ttm_a.ndim != 2 or ttm_a.shape[0] != states_a.shape[0]:
            raise ValueError(
                f"states must be [T, 2] and ttm [T, M] with the same T, got "
                f"{tuple(states_a.shape)} and {tuple(ttm_a.shape)}"
            )
        jac = _forward_path_jacobian_jit(p, states_a, ttm_a)
    F = np.asarray(jac.F, float)
    dth = np.asarray(jac.d_theta, float)
    T, M = F.shape
    dates = list(range(T)) if dates is None else list(dates)
    tenor_names = [f"T{i + 1}" for i in range(M)] if tenor_names is None else list(tenor_names)
    if len(dates) != T or len(tenor_names) != M:
        raise ValueError(f"dates/tenor_names must have {T} and {M} entries")
    cols = list(names)
    blocks = [dth]
    scale = [theta]
    if jac.d_state is not None:
        cols += ["X", "Y"]
        blocks.append(np.asarray(jac.d_state, float))
        scale.append(np.array([np.nan, np.nan]))
    D = np.concatenate(blocks, axis=-1)  # [T, M, P]
    th = np.concatenate(scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        el = np.where(np.isnan(th), D / F[..., None], D * th / F[..., None])
    P = len(cols)
    return pd.DataFrame(
        {
            "date": np.repeat(np.asarray(dates, dtype=object), M * P),
            "tenor": np.tile(np.repeat(np.asarray(tenor_names, dtype=object), P), T),
            "parameter": np.tile(np.asarray(cols, dtype=object), T * M),
            "F": np.repeat(F.ravel(), P),
            "dF_dtheta": D.ravel(),
            "elasticity": el.ravel(),
        }
    )


class ProfileLikelihood(NamedTuple):
    """Profile log-likelihood of one parameter on a grid."""

    name: str
    grid: np.ndarray  # [G]
    loglik: np.ndarray  # [G] max over the other parameters at each grid value
    lr: np.ndarray  # [G] 2(ℓ̂ − ℓ_profile) (χ²₁ under the null θ = grid value)
    converged: np.ndarray  # [G]
    params: Params  # leaves with a leading [G] axis
    loglik_max: float  # ℓ̂ the profile is measured against
    ci: tuple[float, float]  # likelihood-ratio confidence interval (NaN where not bracketed)
    level: float

    def to_frame(self) -> pd.DataFrame:
        """The curve as a DataFrame (grid, loglik, lr, converged)."""
        return pd.DataFrame(
            {
                self.name: self.grid,
                "loglik": self.loglik,
                "lr": self.lr,
                "converged": self.converged,
            }
        )


def _crossing(x: np.ndarray, y: np.ndarray, level: float, side: int) -> float:
    """Linear interpolation of where y crosses ``level`` moving away from argmin(y)."""
    i0 = int(np.nanargmin(y))
    rng = range(i0, len(x) - 1) if side > 0 else range(i0, 0, -1)
    for i in rng:
        j = i + side
        if np.isfinite(y[j]) and y[j] >= level > y[i]:
            return float(x[i] + (level - y[i]) * (x[j] - x[i]) / (y[j] - y[i]))
    return float("nan")


def profile_likelihood(
    data: MarketData,
    p_hat: Params,
    name: str,
    grid: ArrayLike,
    *,
    prior: Prior | None = None,
    free: ArrayLike | None = None,
    level: float = 0.95,
    max_steps: int = 500,
) -> ProfileLikelihood:
    """Profile log-likelihood of parameter ``name`` over ``grid``, the others re-optimized.

    Each grid point is an L-BFGS fit (:func:`ssjax.fit.mle.fit_mle`) started from ``p_hat``
    with ``name`` held at the grid value; all grid points run in one ``jit(vmap)``. ``name``
    is a flat parameter name (``"kappa"``, ``"rho"``, ``"meas_sd[2]"`` …, see
    :func:`ssjax.core.params.param_names`). The likelihood-ratio interval at ``level`` is where
    2(ℓ̂ − ℓ_profile) crosses the χ²₁ quantile (NaN on a side the grid does not reach);
    ℓ̂ is the larger of ℓ(p_hat) and the profile's maximum.
    """
    from ssjax.fit.mle import fit_mle

    names = param_names(p_hat)
    if name not in names:
        raise ValueError(f"name: {name!r} is not a parameter of this model; one of {names}")
    k = names.index(name)
    grid_a = np.asarray(grid, float).ravel()
    if grid_a.size < 2 or not np.all(np.isfinite(grid_a)):
        raise ValueError("grid: needs at least two finite values")
    prior = default_prior(data) if prior is None else prior
    vec = flatten_params(p_hat)
    n = vec.shape[0]
    base_free = jnp.ones(n) if free is None else jnp.asarray(free, vec.dtype)
    free_k = base_free.at[k].set(0.0)

    def one(g: Array):
        init = unflatten_params(vec.at[k].set(g), p_hat)
        return fit_mle(data, init, prior, free_k, max_steps=max_steps)

    res = jax.jit(jax.vmap(one))(jnp.asarray(grid_a, vec.dtype))
    ll = np.asarray(res.loglik, float)
    ll_hat = float(log_likelihood_data(p_hat, data, prior))
    ll_max = max(ll_hat, float(np.nanmax(ll)))
    lr = 2.0 * (ll_max - ll)
    crit = float(stats.chi2.ppf(level, 1))
    ci = (_crossing(grid_a, lr, crit, -1), _crossing(grid_a, lr, crit, +1))
    return ProfileLikelihood(
        name, grid_a, ll, lr, np.asarray(res.converged), res.params, ll_max, ci, level
    )


@dataclass
class Identification:
    """Eigen-analysis of the (negative) Hessian of the log-likelihood.

    The information matrix I = −∇²ℓ is scaled to unit diagonal, C = D^{-1/2} I D^{-1/2}
    (D = diag I), so eigenvalues compare parameters of different units: C's eigenvalues
    lie in [0, n], and an eigenvalue near 0 is a combination of parameters whose joint
    movement barely changes ℓ. A parameter with (numerically) zero curvature of its own is
    reported as ``flat``.
    """

    names: list[str]
    eigenvalues: np.ndarray  # [n] of the scaled information, ascending
    eigenvectors: np.ndarray  # [n, n] columns, in the scaled coordinates
    condition_number: float  # of the scaled information (max/min eigenvalue)
    raw_eigenvalues: np.ndarray  # [n] of the unscaled information, ascending
    flat: list[str]  # parameters with zero own curvature
    weak: list[dict]  # one per weak direction: eigenvalue, combination, dominant names
    tol: float

    @property
    def at_maximum(self) -> bool:
        """False when the information has a clearly negative eigenvalue (not a maximum of ℓ:
        the diagnostics are then about a saddle or a slope, not about the estimate)."""
        return bool(self.eigenvalues.size == 0 or self.eigenvalues[0] > -self.tol)

    @property
    def weakly_identified(self) -> list[str]:
        """Names of all parameters involved in a flat or weak direction."""
        out = list(self.flat)
        for w in self.weak:
            out += [n for n in w["dominant"] if n not in out]
        return out

    def to_frame(self) -> pd.DataFrame:
        """Eigenvalues with each direction's loadings (scaled coordinates) per parameter."""
        df = pd.DataFrame(self.eigenvectors.T, columns=self.names)
        df.insert(0, "eigenvalue", self.eigenvalues)
        return df

    def summary(self) -> str:
        """A readable report of the condition number and the weak directions."""
        lines = [f"scaled information: condition number {self.condition_number:.3g}"]
        if not self.at_maximum:
            lines.append(
                "WARNING: negative curvature (smallest eigenvalue "
                f"{self.eigenvalues[0]:.3g}); evaluate at a converged maximum"
            )
        if self.flat:
            lines.append("flat (no curvature at all): " + ", ".join(self.flat))
        if not self.weak and not self.flat:
            lines.append(f"no direction with eigenvalue below {self.tol:g}: all identified")
        for w in self.weak:
            lines.append(f"weak direction (eigenvalue {w['eigenvalue']:.3g}): {w['combination']}")
        return "\n".join(lines)


def identification(
    hessian: ArrayLike,
    names: Sequence[str],
    *,
    free: ArrayLike | None = None,
    tol: float = 1e-4,
    loading: float = 0.3,
) -> Identification:
    """Identification diagnostics from the Hessian of the log-likelihood (NumPy, not jitted).

    Evaluate it at a maximum of ℓ (a converged fit): away from one, the Hessian of an
    unidentified model need not be singular (the gradient term of the chain rule remains).

    Args:
        hessian: ∇²ℓ [n, n] at the estimate (e.g. :func:`loglik_derivatives`).
        names: parameter names [n] (e.g. ``param_names(p)``).
        free: optional mask [n]; fixed parameters are left out.
        tol: a scaled eigenvalue below ``tol`` marks a weakly identified direction.
        loading: parameters whose |loading| in such a direction is at least this are named.
    """
    H = np.asarray(hessian, float)
    names = list(names)
    n = len(names)
    if H.shape != (n, n):
        raise ValueError(f"hessian must be [{n}, {n}] for {n} names, got {H.shape}")
    if not np.all(np.isfinite(H)):
        raise ValueError("hessian has non-finite entries")
    keep = np.ones(n, bool) if free is None else np.asarray(free, bool)
    info = -0.5 * (H + H.T)
    d = np.diag(info).copy()
    scale = max(float(np.max(np.abs(d[keep]))), 1e-300) if keep.any() else 1.0
    flat_mask = keep & (np.abs(d) <= 1e-12 * scale)
    flat = [names[i] for i in np.flatnonzero(flat_mask)]
    use = keep & ~flat_mask
    idx = np.flatnonzero(use)
    sub = info[np.ix_(idx, idx)]
    sq = np.sqrt(np.abs(np.diag(sub)))
    C = sub / sq[:, None] / sq[None, :]
    ev, vecs = np.linalg.eigh(C)
    raw = np.linalg.eigvalsh(sub) if idx.size else np.zeros(0)
    kept = [names[i] for i in idx]
    weak = []
    for j in np.flatnonzero(ev < tol):
        v = vecs[:, j] / np.max(np.abs(vecs[:, j]))
        order = np.argsort(-np.abs(v))
        dom = [kept[i] for i in order if abs(v[i]) >= loading]
        combo = " ".join(f"{v[i]:+.2f}·{kept[i]}" for i in order if abs(v[i]) >= 0.05)
        weak.append({"eigenvalue": float(ev[j]), "combination": combo, "dominant": dom})
    cond = float(ev[-1] / ev[0]) if ev.size and ev[0] > 0 else float("inf")
    return Identification(kept, ev, vecs, cond, raw, flat, weak, tol)
