r"""Model parameters Θ in the theory document's notation, and their unconstrained form.

Θ = {kappa, sigma_x, sigma_y, rho, mu} plus the measurement-noise standard deviations
(one per tenor, or one scalar shared by all tenors). Two optional extensions:

* the 2000 paper's risk-premium form: a short-term risk premium ``lambda_x`` and a
  risk-neutral drift ``mu_star`` separate from the real drift ``mu``. ``None`` (the default)
  means the document's model, i.e. ``lambda_x = 0`` and ``mu_star = mu``;
* ``spot_sd``: the noise s.d. of the optional spot observation ln S (``None`` when no spot).

Optimizers see only the unconstrained tree (same structure): positives through ``log``,
``rho`` through ``arctanh``, drifts unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

__all__ = [
    "Params",
    "make_params",
    "to_unconstrained",
    "from_unconstrained",
    "validate_params",
    "risk_neutral_drift",
    "short_term_premium",
    "PARAM_ORDER",
]

PARAM_ORDER = ("kappa", "sigma_x", "sigma_y", "rho", "mu", "lambda_x", "mu_star")
_POSITIVE = ("kappa", "sigma_x", "sigma_y", "meas_sd", "spot_sd")


class Params(NamedTuple):
    r"""Physical parameters of the Schwartz–Smith two-factor model.

    Attributes:
        kappa: mean-reversion speed κ > 0 of the short-term factor X.
        sigma_x: volatility σ_X > 0 of X.
        sigma_y: volatility σ_Y > 0 of the long-term factor Y.
        rho: correlation ρ ∈ (−1, 1) between dW^X and dW^Y.
        mu: drift μ of Y (real-world measure).
        meas_sd: measurement-noise s.d. of ln F, shape ``[M]`` (one per tenor) or ``()``
            (one shared by all tenors).
        lambda_x: short-term risk premium λ_X (``None``: the document's model, λ_X = 0).
        mu_star: risk-neutral drift μ* of Y (``None``: the document's model, μ* = μ).
        spot_sd: noise s.d. of the spot observation ln S (``None``: no spot is used).
    """

    kappa: Array
    sigma_x: Array
    sigma_y: Array
    rho: Array
    mu: Array
    meas_sd: Array
    lambda_x: Array | None = None
    mu_star: Array | None = None
    spot_sd: Array | None = None


def make_params(
    kappa: ArrayLike,
    sigma_x: ArrayLike,
    sigma_y: ArrayLike,
    rho: ArrayLike,
    mu: ArrayLike,
    meas_sd: ArrayLike,
    lambda_x: ArrayLike | None = None,
    mu_star: ArrayLike | None = None,
    spot_sd: ArrayLike | None = None,
    *,
    dtype=None,
    validate: bool = True,
) -> Params:
    """Build a :class:`Params` from numbers, checking every domain.

    ``lambda_x`` and ``mu_star`` switch on the risk-premium form together: give both or
    neither. Raises ``ValueError`` naming the parameter that is out of its domain.
    """
    if (lambda_x is None) != (mu_star is None):
        raise ValueError(
            "lambda_x and mu_star switch on the risk-premium form together: give both or neither"
        )
    dtype = dtype or jnp.result_type(float)

    def arr(v):
        return None if v is None else jnp.asarray(v, dtype=dtype)

    p = Params(
        arr(kappa), arr(sigma_x), arr(sigma_y), arr(rho), arr(mu), arr(meas_sd),
        arr(lambda_x), arr(mu_star), arr(spot_sd),
    )  # fmt: skip
    if validate:
        validate_params(p)
    return p


def validate_params(p: Params, n_tenors: int | None = None) -> None:
    """Raise ``ValueError`` if a parameter is non-finite or outside its domain.

    Only for concrete (non-traced) values; call it in the shell, not inside jit.
    """
    for name in PARAM_ORDER + ("meas_sd", "spot_sd"):
        v = getattr(p, name)
        if v is None:
            continue
        a = np.asarray(v)
        if name != "meas_sd" and a.ndim != 0:
            raise ValueError(f"parameter {name} must be a scalar, got shape {a.shape}")
        if name == "meas_sd":
            if a.ndim > 1:
                raise ValueError(f"meas_sd must be a scalar or a vector [M], got shape {a.shape}")
            if n_tenors is not None and a.ndim == 1 and a.shape[0] != n_tenors:
                raise ValueError(
                    f"meas_sd has {a.shape[0]} entries but the panel has {n_tenors} tenors"
                )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"parameter {name} must be finite, got {a}")
        if name in _POSITIVE and np.any(a <= 0):
            raise ValueError(f"parameter {name} must be > 0, got {a}")
        if name == "rho" and not (-1.0 < float(a) < 1.0):
            raise ValueError(f"parameter rho must lie in (-1, 1), got {float(a)}")


def risk_neutral_drift(p: Params) -> Array:
    """μ* (the risk-neutral drift of Y); equals μ in the document's model."""
    return p.mu if p.mu_star is None else p.mu_star


def short_term_premium(p: Params) -> Array:
    """λ_X; zero in the document's model."""
    return jnp.zeros_like(p.kappa) if p.lambda_x is None else p.lambda_x


def _map(p: Params, pos, rho_fn, ident) -> Params:
    out = {}
    for name, v in p._asdict().items():
        if v is None:
            out[name] = None
        elif name in _POSITIVE:
            out[name] = pos(v)
        elif name == "rho":
            out[name] = rho_fn(v)
        else:
            out[name] = ident(v)
    return Params(**out)


def to_unconstrained(p: Params) -> Params:
    """Physical → unconstrained (log for positives, arctanh for ρ)."""
    return _map(p, jnp.log, jnp.arctanh, lambda v: v)


def from_unconstrained(u: Params) -> Params:
    """Unconstrained → physical (exp for positives, tanh for ρ)."""
    return _map(u, jnp.exp, jnp.tanh, lambda v: v)


def param_names(p: Params, tenor_names=None) -> list[str]:
    """Flat names of the free parameters in :func:`flatten_params` order."""
    names = []
    for name, v in p._asdict().items():
        if v is None:
            continue
        a = np.asarray(v)
        if a.ndim == 0:
            names.append(name)
        else:
            labels = tenor_names if tenor_names is not None else range(a.shape[0])
            names.extend(f"{name}[{lab}]" for lab in labels)
    return names


@jax.jit
def flatten_params(p: Params) -> Array:
    """Concatenate the leaves of ``p`` (in field order) into one vector."""
    return jnp.concatenate([jnp.ravel(v) for v in p if v is not None])


@jax.jit
def unflatten_params(vec: Array, like: Params) -> Params:
    """Inverse of :func:`flatten_params` given a template with the same structure."""
    out, i = {}, 0
    for name, v in like._asdict().items():
        if v is None:
            out[name] = None
            continue
        n = int(np.size(v))
        out[name] = jnp.reshape(vec[i : i + n], jnp.shape(v))
        i += n
    return Params(**out)
