"""The model's one-step maps against NumPy formulas and Monte Carlo."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import np_measurement, np_transition

import ssjax
from ssjax.core.model import decay_integral
from ssjax.core.params import (
    flatten_params,
    from_unconstrained,
    param_names,
    to_unconstrained,
    unflatten_params,
)

RTOL = 1e-12  # same formulas evaluated two ways in float64


def test_measurement_and_transition_match_numpy(theta_wti, params_wti):
    ttm = np.array([0.0, 0.01, 0.3, 1.0, 2.5])
    b, A = ssjax.measurement(params_wti, ttm)
    b_ref, A_ref = np_measurement(theta_wti, ttm)
    np.testing.assert_allclose(b, b_ref, rtol=RTOL)
    np.testing.assert_allclose(A, A_ref, rtol=RTOL, atol=1e-15)
    phi, c, Q = ssjax.transition(params_wti, 7 / 365)
    F_ref, c_ref, Q_ref = np_transition(theta_wti, 7 / 365)
    np.testing.assert_allclose(phi, F_ref[0, 0], rtol=RTOL)
    np.testing.assert_allclose(c, c_ref, rtol=RTOL)
    np.testing.assert_allclose(Q, Q_ref, rtol=RTOL)


def test_risk_premium_form_nests_document_model(theta_wti, params_wti):
    ttm = np.linspace(0, 3, 7)
    p_rp = params_wti._replace(lambda_x=jnp.asarray(0.0), mu_star=params_wti.mu)
    np.testing.assert_allclose(
        ssjax.measurement(p_rp, ttm)[1], ssjax.measurement(params_wti, ttm)[1]
    )
    p_rp = params_wti._replace(lambda_x=jnp.asarray(0.2), mu_star=jnp.asarray(-0.03))
    ref = np_measurement({**theta_wti, "lambda_x": 0.2, "mu_star": -0.03}, ttm)[1]
    np.testing.assert_allclose(ssjax.measurement(p_rp, ttm)[1], ref, rtol=RTOL, atol=1e-15)


@pytest.mark.parametrize("kappa", [0.0, 1e-12, 1e-6, 1e-4 * 0.999, 1e-4 * 1.001, 0.5, 30.0])
def test_decay_integral_small_kappa(kappa):
    t = 1.7
    exact = t if kappa == 0 else float(-np.expm1(-kappa * t) / kappa)
    np.testing.assert_allclose(decay_integral(kappa, t), exact, rtol=1e-13)
    g = jax.grad(decay_integral)(jnp.asarray(kappa), t)
    fd_h = 1e-6
    k0 = max(kappa, fd_h)
    fd = (
        (decay_integral(k0 + fd_h, t) - decay_integral(k0 - fd_h, t)) / (2 * fd_h)
        if kappa > fd_h
        else -t * t / 2
    )
    assert np.isfinite(g)
    np.testing.assert_allclose(g, fd, rtol=1e-5)


def test_closed_form_forward_equals_monte_carlo(params_wti):
    """F(t,T) = E[exp(X_T + Y_T) | X_t, Y_t] under the exact conditional law (3 MC s.e.)."""
    p = params_wti
    state = jnp.array([0.1, 3.0])
    horizons = np.array([0.05, 0.5, 2.0])
    n = 400_000
    key = jax.random.key(0)
    for h in horizons:
        phi, c, Q = ssjax.transition(p, h)
        z = jax.random.normal(key, (n, 2)) @ jnp.linalg.cholesky(Q).T
        xT = jnp.array([phi * state[0], state[1]]) + c + z
        draws = np.exp(np.asarray(xT.sum(1)))
        mc, se = draws.mean(), draws.std() / np.sqrt(n)
        f = float(ssjax.forward_curve(p, state, jnp.array([h]))[0])
        assert abs(f - mc) < 3 * se, (h, f, mc, se)


def test_simulated_moments_match_transition(params_wti):
    p = params_wti
    dt = 0.25
    ttm = jnp.ones((2, 5))
    sims = jax.vmap(lambda k: ssjax.simulate(p, k, ttm, dt, x0=(0.2, 3.0)).states[1])(
        jax.random.split(jax.random.key(1), 200_000)
    )
    phi, c, Q = ssjax.transition(p, dt)
    mean = np.array([phi * 0.2, 3.0]) + np.asarray(c)
    se = np.sqrt(np.diag(Q) / sims.shape[0])
    assert np.all(np.abs(np.asarray(sims.mean(0)) - mean) < 4 * se)
    np.testing.assert_allclose(np.cov(np.asarray(sims).T), Q, rtol=0.02, atol=1e-5)


def test_parameter_round_trip_and_flattening(params_wti):
    p = params_wti._replace(
        lambda_x=jnp.asarray(0.1), mu_star=jnp.asarray(0.02), spot_sd=jnp.asarray(0.01)
    )
    back = from_unconstrained(to_unconstrained(p))
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(back), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-14)
    v = flatten_params(p)
    assert v.shape == (5 + 5 + 3,)
    again = unflatten_params(v, p)
    np.testing.assert_array_equal(flatten_params(again), v)
    names = param_names(p, ["a", "b", "c", "d", "e"])
    assert names[:5] == ["kappa", "sigma_x", "sigma_y", "rho", "mu"]
    assert names[5] == "meas_sd[a]" and names[-3:] == ["lambda_x", "mu_star", "spot_sd"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rho=1.0), "rho must lie in"),
        (dict(rho=-1.2), "rho must lie in"),
        (dict(kappa=0.0), "kappa must be > 0"),
        (dict(sigma_x=-0.1), "sigma_x must be > 0"),
        (dict(sigma_y=np.nan), "sigma_y must be finite"),
        (dict(meas_sd=[0.01, 0.0]), "meas_sd must be > 0"),
        (dict(meas_sd=[[0.01]]), "meas_sd must be a scalar or a vector"),
        (dict(lambda_x=0.1), "give both or neither"),
    ],
)
def test_make_params_rejects_bad_values(kwargs, match):
    base = dict(kappa=1.0, sigma_x=0.3, sigma_y=0.2, rho=0.1, mu=0.0, meas_sd=[0.01, 0.02])
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ssjax.make_params(**base)
