r"""European options on futures under the Schwartz–Smith model (Black-76 at the model variance).

**Variance of ln F at option expiry.** Let Δ = T − t be the futures' time to maturity and
τ ≤ Δ the option's. By the measurement equation at the option's expiry,

.. math::
    \ln F(t+\tau, T) = e^{-\kappa(\Delta-\tau)} X_{t+\tau} + Y_{t+\tau} + A(\Delta-\tau),

so given (X_t, Y_t) it is Gaussian, and with b = e^{−κ(Δ−τ)} and the exact transition
covariance Q(τ) of :func:`ssjax.core.model.transition` over τ,

.. math::
    V(\Delta, \tau) = b^2 Q_{11} + Q_{22} + 2 b Q_{12}
      = \sigma_X^2 e^{-2\kappa(\Delta-\tau)}\frac{1-e^{-2\kappa\tau}}{2\kappa}
      + \sigma_Y^2\tau
      + 2\rho\sigma_X\sigma_Y e^{-\kappa(\Delta-\tau)}\frac{1-e^{-\kappa\tau}}{\kappa}.

Equivalently, d ln F(s, T) has loadings e^{−κ(T−s)}σ_X on dW^X and σ_Y on dW^Y, and V is
∫_t^{t+τ} of its instantaneous variance. The drifts (μ, λ_X, μ*) only move the mean, so V
does not depend on them, and it is the same under the real-world and risk-neutral measures.
Under the risk-neutral measure F(·, T) is a martingale, so ln F(t+τ, T) ~ N(ln F − V/2, V)
and a European option expiring at t+τ is worth Black-76 with total variance V:

.. math::
    C = D\,[F N(d_1) - K N(d_2)],\quad P = D\,[K N(-d_2) - F N(-d_1)],\quad
    d_{1,2} = \frac{\ln(F/K) \pm V/2}{\sqrt V},\quad D = e^{-r\tau}.

The model's Black implied volatility is √(V/τ) (as τ → 0 it tends to the instantaneous
volatility of ln F(t, T)). The decay factors use the κ → 0-stable helper of
:mod:`ssjax.core.model`, so κ = 0 (two random walks) is finite, exact and differentiable.

Numerics: prices are the out-of-the-money option's formula plus the intrinsic value (put–call
parity), which keeps deep in-the-money time values accurate; zero total variance (τ → 0 or
σ → 0) gives the discounted intrinsic value with finite gradients (double-``where``).
Everything is pure JAX (jit / vmap / grad), in float64 or float32. Functions that take
concrete (non-traced) inputs validate them and raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.scipy.special import erfc
from jax.typing import ArrayLike

from ssjax.core.model import decay_terms, log_forward
from ssjax.core.params import Params

__all__ = [
    "model_log_variance",
    "model_implied_vol",
    "black76",
    "futures_option_price",
    "futures_option_price_from_state",
    "OptionGreeks",
    "greeks",
    "greeks_from_state",
    "ImpliedVol",
    "IV_STATUS",
    "implied_vol",
    "implied_vol_checked",
]

#: Status codes of :func:`implied_vol`.
IV_STATUS = {
    0: "converged",
    1: "did not converge within max_iter",
    2: "invalid input (non-positive or non-finite price, F, K or tau, or non-finite rate)",
    3: "price below the discounted intrinsic value (no-arbitrage lower bound)",
    4: "price at or above the no-arbitrage upper bound (D·F for a call, D·K for a put)",
    5: "price at the lower bound to within rounding (time value below 8 ulps of the "
    "discounted intrinsic value, or a zero price): the price does not determine the volatility",
}
_OK, _MAXITER, _INVALID, _BELOW, _ABOVE, _AT_LOWER = 0, 1, 2, 3, 4, 5
_S_MAX = 50.0  # largest total standard deviation σ√τ the solver searches


# ----------------------------------------------------------------------------- validation
def _is_traced(*xs) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(xs))


def _check(name: str, value, ok, what: str) -> None:
    """Raise ``ValueError`` if a concrete ``value`` fails ``ok`` (skipped when traced)."""
    if value is None or _is_traced(value):
        return
    a = np.asarray(value)
    if a.dtype == bool:
        return
    bad = ~(np.isfinite(a) & ok(a))
    if np.any(bad):
        raise ValueError(f"{name} must be {what}, got {a[bad].ravel()[0].item()!r}")


def _check_ttm(ttm_future, ttm_option) -> None:
    _check("ttm_future", ttm_future, lambda a: a >= 0, "finite and >= 0")
    _check("ttm_option", ttm_option, lambda a: a >= 0, "finite and >= 0")
    if _is_traced(ttm_future, ttm_option):
        return
    tf, to = np.broadcast_arrays(np.asarray(ttm_future), np.asarray(ttm_option))
    if np.any(to > tf):
        i = np.argmax((to > tf).ravel())
        bad_to, bad_tf = to.ravel()[i].item(), tf.ravel()[i].item()
        raise ValueError(
            f"ttm_option must not exceed ttm_future (the option expires before or with the "
            f"future), got ttm_option={bad_to!r} > ttm_future={bad_tf!r}"
        )


def _check_fk(F, K) -> None:
    _check("F", F, lambda a: a > 0, "finite and > 0")
    _check("K", K, lambda a: a > 0, "finite and > 0")


def _dtype(*xs):
    return jnp.result_type(*[x for x in xs if x is not None], float)


def _cast(dtype, *xs):
    return tuple(jnp.asarray(x, dtype) for x in xs)


# ----------------------------------------------------------------------------- model variance
def model_log_variance(p: Params, ttm_future: ArrayLike, ttm_option: ArrayLike) -> Array:
    """Var[ln F(t+τ, T) | X_t, Y_t]: the total Black variance of an option on a future.

    Args:
        p: model parameters (only kappa, sigma_x, sigma_y, rho enter).
        ttm_future: the future's time to maturity Δ (years), any shape.
        ttm_option: the option's time to expiry τ, 0 ≤ τ ≤ Δ (broadcasts with Δ).

    Returns:
        V(Δ, τ) (see the module docstring); NaN where τ < 0 or τ > Δ (under a trace;
        concrete inputs raise ``ValueError`` instead).
    """
    _check_ttm(ttm_future, ttm_option)
    tf, to = _cast(_dtype(p.kappa, ttm_future, ttm_option), ttm_future, ttm_option)
    _, g1, g2 = decay_terms(p.kappa, to)
    b = jnp.exp(-p.kappa * (tf - to))
    v = (
        p.sigma_x**2 * (b * b) * g2
        + p.sigma_y**2 * to
        + 2.0 * p.rho * p.sigma_x * p.sigma_y * b * g1
    )
    return jnp.where((to >= 0) & (to <= tf), v, jnp.nan)


def model_implied_vol(p: Params, ttm_future: ArrayLike, ttm_option: ArrayLike) -> Array:
    """The model's Black-76 implied volatility √(V/τ); at τ = 0 its limit (instantaneous vol).

    Same arguments and NaN convention as :func:`model_log_variance`.
    """
    _check_ttm(ttm_future, ttm_option)
    tf, to = _cast(_dtype(p.kappa, ttm_future, ttm_option), ttm_future, ttm_option)
    _, g1, g2 = decay_terms(p.kappa, to)
    b = jnp.exp(-p.kappa * (tf - to))
    pos = to > 0
    t_safe = jnp.where(pos, to, 1.0)
    r1 = jnp.where(pos, g1 / t_safe, 1.0)  # g1/τ → 1 and g2/τ → 1 as τ → 0
    r2 = jnp.where(pos, g2 / t_safe, 1.0)
    rate = p.sigma_x**2 * (b * b) * r2 + p.sigma_y**2 + 2.0 * p.rho * p.sigma_x * p.sigma_y * b * r1
    return jnp.where((to >= 0) & (to <= tf), jnp.sqrt(rate), jnp.nan)


# ----------------------------------------------------------------------------- Black-76
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)


@jax.custom_jvp
def _ncdf(x: Array) -> Array:
    """Standard normal CDF (``ndtr``) with the derivative φ(x) written out.

    N(x) = erfc(−x/√2)/2: relative accuracy in the lower tail, absolute (ε) in the upper, as
    ``ndtr``, from one erfc. The derivative φ(x) is written out: differentiating through the
    erfc expansion gives the same numbers with a much larger graph (slow Greek compiles).
    """
    return 0.5 * erfc(-x * _INV_SQRT_2)


@_ncdf.defjvp
def _ncdf_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return _ncdf(x), _INV_SQRT_2PI * jnp.exp(-0.5 * x * x) * t


def _black_total(F, K, w, D, is_call):
    """D · Black-76 at total variance ``w`` (elementwise; finite gradients as w → 0)."""
    small = w <= jnp.sqrt(jnp.finfo(w.dtype).tiny)
    s = jnp.sqrt(jnp.where(small, 1.0, w))
    d1 = jnp.log(F / K) / s + 0.5 * s
    d2 = d1 - s
    otm_call = F <= K
    # time value = the out-of-the-money option's formula (accurate; two N(·) calls), then
    # add the intrinsic value (put–call parity) for the in-the-money side
    big, small_t = jnp.where(otm_call, F, K), jnp.where(otm_call, K, F)
    tv = big * _ncdf(jnp.where(otm_call, d1, -d2)) - small_t * _ncdf(jnp.where(otm_call, d2, -d1))
    zero = jnp.zeros_like(F)
    intr = jnp.where(is_call, jnp.where(otm_call, zero, F - K), jnp.where(otm_call, K - F, zero))
    undisc = intr + jnp.where(small, zero, tv)
    return D * undisc


def black76(
    F: ArrayLike,
    K: ArrayLike,
    tau: ArrayLike,
    sigma: ArrayLike,
    rate: ArrayLike = 0.0,
    is_call: ArrayLike = True,
    discount: ArrayLike | None = None,
) -> Array:
    """Black-76 price of a European option on a futures price (elementwise, broadcasting).

    Args:
        F: futures price (> 0).
        K: strike (> 0).
        tau: time to expiry in years (≥ 0).
        sigma: Black volatility (≥ 0).
        rate: continuously compounded rate; the discount factor is e^{−rate·τ}.
        is_call: True for calls, False for puts (a bool or a bool array).
        discount: the discount factor D itself; overrides ``rate`` when given.

    Returns:
        D·(F N(d1) − K N(d2)) for calls, D·(K N(−d2) − F N(−d1)) for puts; the discounted
        intrinsic value when σ²τ = 0 (value and gradients finite).
    """
    _check_fk(F, K)
    _check("tau", tau, lambda a: a >= 0, "finite and >= 0")
    _check("sigma", sigma, lambda a: a >= 0, "finite and >= 0")
    _check("discount", discount, lambda a: a > 0, "finite and > 0")
    dt = _dtype(F, K, tau, sigma, rate, discount)
    F, K, tau, sigma, rate = _cast(dt, F, K, tau, sigma, rate)
    D = jnp.exp(-rate * tau) if discount is None else jnp.asarray(discount, dt)
    return _black_total(F, K, sigma**2 * tau, D, jnp.asarray(is_call, bool))


def futures_option_price(
    p: Params,
    F: ArrayLike,
    K: ArrayLike,
    ttm_future: ArrayLike,
    ttm_option: ArrayLike,
    rate: ArrayLike = 0.0,
    is_call: ArrayLike = True,
) -> Array:
    """Price of a European option (expiry τ = ``ttm_option``) on a future (maturity Δ).

    Black-76 at the model's total variance :func:`model_log_variance`, discounted at
    e^{−rate·τ}. ``F`` is the current futures price (market or model). Elementwise over
    broadcast inputs.
    """
    _check_fk(F, K)
    _check_ttm(ttm_future, ttm_option)
    dt = _dtype(p.kappa, F, K, ttm_future, ttm_option, rate)
    F, K, tf, to, rate = _cast(dt, F, K, ttm_future, ttm_option, rate)
    w = model_log_variance(p, tf, to)
    return _black_total(F, K, w, jnp.exp(-rate * to), jnp.asarray(is_call, bool))


def futures_option_price_from_state(
    p: Params,
    state: ArrayLike,
    K: ArrayLike,
    ttm_future: ArrayLike,
    ttm_option: ArrayLike,
    rate: ArrayLike = 0.0,
    is_call: ArrayLike = True,
) -> Array:
    """:func:`futures_option_price` with the model forward F = exp(ln F(state, Δ)).

    Args:
        state: one filtered state ``[X, Y]`` (e.g. ``fit.state_t``).
        Others as in :func:`futures_option_price`.
    """
    _check("K", K, lambda a: a > 0, "finite and > 0")
    _check("state", state, lambda a: np.ones_like(a, bool), "finite")
    if not _is_traced(state) and np.shape(state)[-1:] != (2,):
        raise ValueError(f"state must have shape [2] (X, Y), got {np.shape(state)}")
    _check_ttm(ttm_future, ttm_option)
    dt = _dtype(p.kappa, state, K, ttm_future, ttm_option, rate)
    state, tf = _cast(dt, state, ttm_future)
    F = jnp.exp(log_forward(p, state, tf))
    return futures_option_price(p, F, K, tf, ttm_option, rate, is_call)


# ----------------------------------------------------------------------------- Greeks
class OptionGreeks(NamedTuple):
    """Autodiff sensitivities of :func:`futures_option_price` (same shape as the inputs).

    Attributes:
        price: the option price.
        delta: ∂price/∂F (at fixed model variance).
        gamma: ∂²price/∂F².
        vega: ∂Black-76/∂σ at σ = the model implied vol (per unit of volatility).
        theta: ∂price/∂t (calendar time: Δ and τ both decrease; F, or the state, held fixed).
        rho_rate: ∂price/∂rate.
        dparams: ∂price/∂Θ as a :class:`Params` tree (kappa, sigma_x, sigma_y, rho are the
            ones that move the variance; with the state, mu/mu_star/lambda_x move F too;
            unused fields are zero). Leaves have the input shape (+ the leaf's own shape).
        dstate: ∂price/∂[X, Y], shape [..., 2] (:func:`greeks_from_state` only).
    """

    price: Array
    delta: Array
    gamma: Array
    vega: Array
    theta: Array
    rho_rate: Array
    dparams: Params
    dstate: Array | None = None


def _elementwise(fn, fixed: tuple, *args):
    """Apply scalar ``fn(*fixed, *args)`` over the broadcast shape of ``args`` via vmap."""
    shape = jnp.broadcast_shapes(*[jnp.shape(a) for a in args])
    if shape == ():
        return fn(*fixed, *args)
    flat = [jnp.reshape(jnp.broadcast_to(a, shape), (-1,)) for a in args]
    out = jax.vmap(fn, in_axes=(None,) * len(fixed) + (0,) * len(flat))(*fixed, *flat)
    return jax.tree.map(lambda o: jnp.reshape(o, shape + o.shape[1:]), out)


def _price_bumped(p, F, K, tf, to, rate, is_call, dF, dsig):
    """Model price with F → F + dF and Black vol σ → σ + dsig (to first order, via the total
    variance w → w + 2σ·τ·dsig, σ·τ = √(wτ)); its gradients at dF = dsig = 0 are delta, vega."""
    w = model_log_variance(p, tf, to)
    w = w + 2.0 * jnp.sqrt(lax.stop_gradient(w * to)) * dsig
    return _black_total(F + dF, K, w, jnp.exp(-rate * to), is_call)


def _value_grads_gamma(f, args, dF_index: int):
    """(value, grads w.r.t. all ``args``, ∂²f/∂dF²) in one forward-over-reverse pass."""
    vg = jax.value_and_grad(f, argnums=tuple(range(len(args))))

    def along_dF(dF):
        return vg(*args[:dF_index], dF, *args[dF_index + 1 :])

    dF = args[dF_index]
    (value, grads), (_, tangents) = jax.jvp(along_dF, (dF,), (jnp.ones_like(dF),))
    return value, grads, tangents[dF_index]


def _greeks_F_scalar(p, F, K, tf, to, rate, is_call):
    def f(p, tf, to, rate, dF, dsig):
        return _price_bumped(p, F, K, tf, to, rate, is_call, dF, dsig)

    zero = jnp.zeros_like(F)
    price, (gp, gtf, gto, gr, delta, vega), gamma = _value_grads_gamma(
        f, (p, tf, to, rate, zero, zero), 4
    )
    return OptionGreeks(price, delta, gamma, vega, -(gtf + gto), gr, gp)


def greeks(
    p: Params,
    F: ArrayLike,
    K: ArrayLike,
    ttm_future: ArrayLike,
    ttm_option: ArrayLike,
    rate: ArrayLike = 0.0,
    is_call: ArrayLike = True,
) -> OptionGreeks:
    """Price and autodiff Greeks of :func:`futures_option_price` (``dstate`` is None).

    Inputs broadcast (vmapped internally over their common shape); jit the call for speed.
    """
    _check_fk(F, K)
    _check_ttm(ttm_future, ttm_option)
    dt = _dtype(p.kappa, F, K, ttm_future, ttm_option, rate)
    args = _cast(dt, F, K, ttm_future, ttm_option, rate) + (jnp.asarray(is_call, bool),)
    return _elementwise(_greeks_F_scalar, (p,), *args)


def _greeks_state_scalar(p, state, K, tf, to, rate, is_call):
    def f(p, state, tf, to, rate, dF, dsig):
        F = jnp.exp(log_forward(p, state, tf))
        return _price_bumped(p, F, K, tf, to, rate, is_call, dF, dsig)

    zero = jnp.zeros_like(tf)
    price, (gp, gs, gtf, gto, gr, delta, vega), gamma = _value_grads_gamma(
        f, (p, state, tf, to, rate, zero, zero), 5
    )
    return OptionGreeks(price, delta, gamma, vega, -(gtf + gto), gr, gp, gs)


def greeks_from_state(
    p: Params,
    state: ArrayLike,
    K: ArrayLike,
    ttm_future: ArrayLike,
    ttm_option: ArrayLike,
    rate: ArrayLike = 0.0,
    is_call: ArrayLike = True,
) -> OptionGreeks:
    """Greeks of :func:`futures_option_price_from_state`, including ``dstate`` = ∂price/∂[X, Y].

    ``delta``/``gamma``/``vega`` are w.r.t. F and σ at the model forward; ``theta`` holds the
    state fixed (F rolls along the model curve); ``dparams`` is the total derivative (through
    the variance and through F). ``state`` is one [2] state; inputs K, ttm_*, rate, is_call
    broadcast.
    """
    _check("K", K, lambda a: a > 0, "finite and > 0")
    _check_ttm(ttm_future, ttm_option)
    if not _is_traced(state) and np.shape(state) != (2,):
        raise ValueError(f"state must have shape [2] (X, Y), got {np.shape(state)}")
    dt = _dtype(p.kappa, state, K, ttm_future, ttm_option, rate)
    (state,) = _cast(dt, state)
    args = _cast(dt, K, ttm_future, ttm_option, rate) + (jnp.asarray(is_call, bool),)
    return _elementwise(_greeks_state_scalar, (p, state), *args)


# ----------------------------------------------------------------------------- implied vol
class ImpliedVol(NamedTuple):
    """Result of :func:`implied_vol` (arrays of the broadcast input shape).

    Attributes:
        vol: Black-76 implied volatility; NaN where ``status`` is 2, 3, 4 or 5.
        converged: True where the solver met ``tol`` (status 0).
        status: an :data:`IV_STATUS` code.
        iterations: Newton/bisection iterations used per element.
    """

    vol: Array
    converged: Array
    status: Array
    iterations: Array


def _log_time_value(lnF, lnK, s):
    """ln of the Black time value (undiscounted) at total s.d. ``s`` (−inf on underflow)."""
    x = lnF - lnK
    d1 = x / s + 0.5 * s
    d2 = d1 - s
    otm_call = x <= 0
    # the out-of-the-money option's formula: accurate, no cancellation against intrinsic
    big, small = jnp.exp(jnp.where(otm_call, lnF, lnK)), jnp.exp(jnp.where(otm_call, lnK, lnF))
    tv = big * _ncdf(jnp.where(otm_call, d1, -d2)) - small * _ncdf(jnp.where(otm_call, d2, -d1))
    return jnp.log(jnp.maximum(tv, 0.0)), d1


def implied_vol(
    price: ArrayLike,
    F: ArrayLike,
    K: ArrayLike,
    tau: ArrayLike,
    rate: ArrayLike = 0.0,
    is_call: ArrayLike = True,
    tol: float = 1e-12,
    max_iter: int = 64,
) -> ImpliedVol:
    """Black-76 implied volatility by safeguarded Newton (pure, jittable, vmap-able).

    Solves ln TV(s) = ln TV_mkt for the total s.d. s = σ√τ, where TV is the undiscounted time
    value (price/D minus intrinsic, the same for calls and puts by parity). ln TV is increasing
    and concave in s, so Newton from below approaches monotonically; each step is kept inside
    a bracket [lo, hi] (updated from the sign of the residual) and replaced by a (geometric)
    bisection when it leaves it. The start is the Corrado–Miller/Brenner–Subrahmanyam
    approximation, or the small-s asymptote s ≈ |ln(F/K)|/√(2 ln(√(FK)/TV)) far from the
    money. Stops when |Δs| ≤ tol·s. Runs one ``lax.while_loop`` over the whole batch (or per
    element under ``vmap``). Searches s ≤ 50; not meant to be differentiated (no
    implicit-function rule is defined).

    Args:
        price: option prices (discounted).
        F, K, tau, rate, is_call: as in :func:`black76` (all broadcast together).
        tol: relative tolerance on the volatility (floored at 8 ε of the dtype, so float32
            inputs converge too).
        max_iter: iteration cap.

    Returns:
        :class:`ImpliedVol`. Prices outside the no-arbitrage bounds, D·max(±(F−K), 0) ≤ price
        < D·F (calls) or D·K (puts), or non-positive/non-finite inputs get status 3/4/2 and
        NaN vol. A price at the lower bound to within rounding (time value at most 8 ε times
        the discounted intrinsic value: deep in the money, or a short or low-volatility
        option; or a price of 0) gets status 5 and NaN vol, not converged: any volatility
        from 0 up to where the time value shows in the price reprices it, so the price
        carries no volatility (such options are usually quoted on the other side of
        parity). Use :func:`implied_vol_checked` for a
        ``ValueError`` naming the prices outside the bounds (status 5 is not an error).
    """
    dt = _dtype(price, F, K, tau, rate)
    price, F, K, tau, rate = jnp.broadcast_arrays(*_cast(dt, price, F, K, tau, rate))
    is_call = jnp.broadcast_to(jnp.asarray(is_call, bool), price.shape)
    eps = jnp.finfo(dt).eps
    tol = jnp.maximum(tol, 8 * eps)  # float32: 1e-12 is below the attainable precision

    finite = (
        jnp.isfinite(price) & jnp.isfinite(F) & jnp.isfinite(K) & jnp.isfinite(tau)
    ) & jnp.isfinite(rate)
    invalid = ~finite | (F <= 0) | (K <= 0) | (tau <= 0) | (price < 0)
    Fs = jnp.where(invalid, 1.0, F)
    Ks = jnp.where(invalid, 1.0, K)
    ts = jnp.where(invalid, 1.0, tau)
    D = jnp.exp(-jnp.where(invalid, 0.0, rate) * ts)
    intrinsic = jnp.where(is_call, jnp.maximum(Fs - Ks, 0.0), jnp.maximum(Ks - Fs, 0.0))
    lower = D * intrinsic
    upper = D * jnp.where(is_call, Fs, Ks)
    slack = 8.0 * eps * D * jnp.maximum(Fs, Ks)
    below = ~invalid & (price < lower - slack)
    above = ~invalid & ~below & (price >= upper)
    # a time value within rounding of the intrinsic value (deep in the money, short or low
    # vol), or a zero price: every volatility from 0 up to where the time value shows in the
    # price reprices it
    at_lower = ~invalid & ~below & ~above & (price - lower <= 8.0 * eps * lower)
    failed = invalid | below | above
    solve = ~failed & ~at_lower

    tv = jnp.where(solve, (price - lower) / D, 1.0)  # undiscounted time value
    ln_tv = jnp.log(tv)
    lnF, lnK = jnp.log(Fs), jnp.log(Ks)
    x = lnF - lnK
    # initial guess: Corrado–Miller (→ Brenner–Subrahmanyam at the money), else asymptote
    m = tv + 0.5 * jnp.abs(Fs - Ks)
    arg = m * m - (Fs - Ks) ** 2 / math.pi
    s_cm = math.sqrt(2 * math.pi) / (Fs + Ks) * (m + jnp.sqrt(jnp.maximum(arg, 0.0)))
    depth = jnp.maximum(0.5 * (lnF + lnK) - ln_tv, 1e-3)
    s_as = jnp.abs(x) / jnp.sqrt(2.0 * depth)
    s0 = jnp.where(arg > 0, s_cm, s_as)
    s0 = jnp.clip(jnp.where(jnp.isfinite(s0), s0, 0.5), 1e-8, 0.5 * _S_MAX)

    lo0 = jnp.zeros_like(s0)
    hi0 = jnp.full_like(s0, _S_MAX)
    it0 = jnp.zeros(s0.shape, jnp.int32)
    conv0 = jnp.zeros(s0.shape, bool)
    done0 = ~solve

    def cond(c):
        _, _, _, it, done, _ = c
        return jnp.any(~done) & (jnp.max(it) < max_iter)

    def body(c):
        s, lo, hi, it, done, conv = c
        f_ln, d1 = _log_time_value(lnF, lnK, s)
        f = f_ln - ln_tv
        lo = jnp.where(f < 0, s, lo)
        hi = jnp.where(f > 0, s, hi)
        # Newton: d TV/ds = F φ(d1)  ⇒  step = −f · TV / (F φ(d1))
        ln_vega = lnF - 0.5 * d1 * d1 - 0.5 * math.log(2 * math.pi)
        step = -f * jnp.exp(f_ln - ln_vega)
        s_newton = s + step
        small_step = (jnp.abs(step) <= tol * s) | (f == 0)
        inside = jnp.isfinite(s_newton) & (s_newton >= lo) & (s_newton <= hi)
        s_bis = jnp.where(lo > 0, jnp.sqrt(lo * hi), 0.5 * hi)
        s_new = jnp.where(small_step | inside, s_newton, s_bis)
        s_new = jnp.where(small_step & ~inside, s, s_new)  # a NaN/odd tiny step: keep s
        narrow = (hi - lo) <= 4 * eps * hi
        s_new = jnp.where(narrow & ~small_step, 0.5 * (lo + hi), s_new)
        now = small_step | narrow
        s = jnp.where(done, s, s_new)
        it = it + (~done).astype(it.dtype)
        conv = conv | (~done & now)
        return s, lo, hi, it, done | now, conv

    s, _, _, it, _, conv = lax.while_loop(cond, body, (s0, lo0, hi0, it0, done0, conv0))
    status = jnp.where(
        invalid,
        _INVALID,
        jnp.where(
            below,
            _BELOW,
            jnp.where(
                above, _ABOVE, jnp.where(at_lower, _AT_LOWER, jnp.where(conv, _OK, _MAXITER))
            ),
        ),
    ).astype(jnp.int32)
    vol = jnp.where(failed | at_lower, jnp.nan, s / jnp.sqrt(ts))
    return ImpliedVol(vol, conv & ~failed, status, it)


_implied_vol_jit = jax.jit(implied_vol)


def implied_vol_checked(
    price: ArrayLike,
    F: ArrayLike,
    K: ArrayLike,
    tau: ArrayLike,
    rate: ArrayLike = 0.0,
    is_call: ArrayLike = True,
    tol: float = 1e-12,
    max_iter: int = 64,
) -> ImpliedVol:
    """:func:`implied_vol` (jitted) that raises ``ValueError`` on bad prices or inputs.

    The message names each offending price by index, the bound it violates and its value
    (up to ten of them). Non-convergence is not an error: see ``converged``/``status``.
    Returns an :class:`ImpliedVol` of NumPy arrays.
    """
    # pass only non-default settings so the compiled solver is shared with plain
    # ``jax.jit(implied_vol)`` calls
    kw = {} if tol == 1e-12 else {"tol": tol}
    if max_iter != 64:
        kw["max_iter"] = max_iter
    out = _implied_vol_jit(price, F, K, tau, rate, is_call, **kw)
    out = ImpliedVol(*(np.asarray(v) for v in out))
    st = out.status
    bad = np.isin(st, (_INVALID, _BELOW, _ABOVE))
    if not np.any(bad):
        return out
    P, Fb, Kb, tb, rb, cb = np.broadcast_arrays(
        np.asarray(price, float),
        np.asarray(F, float),
        np.asarray(K, float),
        np.asarray(tau, float),
        np.asarray(rate, float),
        np.asarray(is_call, bool),
    )
    msgs = []
    idx_list = list(zip(*np.nonzero(bad), strict=True)) if st.ndim else [()]
    for idx in idx_list[:10]:
        name = "price" + ("[" + ", ".join(str(int(i)) for i in idx) + "]" if idx else "")
        kind = "call" if cb[idx] else "put"
        D = float(np.exp(-rb[idx] * tb[idx])) if np.isfinite(rb[idx] * tb[idx]) else np.nan
        f, k, pr = float(Fb[idx]), float(Kb[idx]), float(P[idx])
        if st[idx] == _INVALID:
            msgs.append(
                f"{name}: invalid input (need finite price >= 0, F > 0, K > 0, tau > 0, "
                f"finite rate; got price={pr!r}, F={f!r}, K={k!r}, tau={float(tb[idx])!r}, "
                f"rate={float(rb[idx])!r})"
            )
        elif st[idx] == _BELOW:
            lb = D * max(f - k, 0.0) if cb[idx] else D * max(k - f, 0.0)
            form = "D*max(F-K, 0)" if cb[idx] else "D*max(K-F, 0)"
            msgs.append(
                f"{name}={pr!r} is below the lower bound {form}={lb!r} ({kind}, F={f!r}, K={k!r})"
            )
        else:
            ub = D * (f if cb[idx] else k)
            form = "D*F" if cb[idx] else "D*K"
            msgs.append(
                f"{name}={pr!r} is at or above the upper bound {form}={ub!r} "
                f"({kind}, F={f!r}, K={k!r})"
            )
    more = f" (and {len(idx_list) - 10} more)" if len(idx_list) > 10 else ""
    raise ValueError(
        f"implied_vol: {len(idx_list)} price(s) violate no-arbitrage bounds or are invalid: "
        + "; ".join(msgs)
        + more
    )
