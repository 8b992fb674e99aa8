"""Exact simulation of the two-factor model and of noisy log futures curves."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.typing import ArrayLike

from ssjax.core.model import measurement, transition
from ssjax.core.params import Params

__all__ = ["Simulation", "simulate"]


class Simulation(NamedTuple):
    """Simulated states and observations (T dates, M tenors)."""

    states: Array  # [T, 2] exact draws of (X, Y)
    log_f: Array  # [T, M] ln F with measurement noise
    F: Array  # [T, M] exp(log_f)
    log_s: Array | None  # [T] ln S (+ spot noise when params.spot_sd is set)


def simulate(
    p: Params,
    key: Array,
    ttm: ArrayLike,
    dt: ArrayLike,
    x0: ArrayLike = (0.0, 3.0),
    *,
    noise: bool = True,
) -> Simulation:
    """Draw one exact path of (X, Y) and the noisy log futures it implies.

    Args:
        p: parameters. Real-world dynamics use ``mu``; the futures curve uses the closed form
            (with ``mu_star``/``lambda_x`` when the risk-premium form is on).
        key: a JAX PRNG key.
        ttm: times to maturity [T, M] in years.
        dt: step lengths, a scalar or [T-1] (``dt[i]`` from date i to date i+1).
        x0: the state (X, Y) at the first date (default (0, 3): a price level near e³ ≈ 20).
        noise: add the measurement noise N(0, meas_sd²) (and spot noise) when True.

    Returns:
        :class:`Simulation`. Vectorize over keys or parameters with ``jax.vmap``.
    """
    ttm = jnp.asarray(ttm)
    if ttm.ndim != 2:
        raise ValueError(f"ttm must have shape [T, M], got {ttm.shape}")
    T, M = ttm.shape
    if jnp.ndim(p.meas_sd) == 1 and jnp.shape(p.meas_sd)[0] != M:
        raise ValueError(f"params.meas_sd has {jnp.shape(p.meas_sd)[0]} entries for M={M} tenors")
    dtype = ttm.dtype
    dt = jnp.broadcast_to(jnp.asarray(dt, dtype), (T - 1,))
    k_state, k_obs, k_spot = jax.random.split(key, 3)
    eps = jax.random.normal(k_state, (T - 1, 2), dtype)

    def step(x, inp):
        d, e = inp
        phi, c, Q = transition(p, d)
        L = jnp.linalg.cholesky(Q)
        x_next = jnp.stack([phi * x[0], x[1]]) + c + L @ e
        return x_next, x_next

    x0 = jnp.asarray(x0, dtype)
    _, path = lax.scan(step, x0, (dt, eps))
    states = jnp.concatenate([x0[None], path], 0)
    b, A = measurement(p, ttm)
    log_f = b * states[:, :1] + states[:, 1:] + A
    if noise:
        sd = jnp.broadcast_to(p.meas_sd, (M,))
        log_f = log_f + sd * jax.random.normal(k_obs, (T, M), dtype)
    log_s = None
    if p.spot_sd is not None:
        log_s = states[:, 0] + states[:, 1]
        if noise:
            log_s = log_s + p.spot_sd * jax.random.normal(k_spot, (T,), dtype)
    return Simulation(states, log_f, jnp.exp(log_f), log_s)
