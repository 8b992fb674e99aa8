"""Sensitivities against finite differences; identification on constructed panels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssjax
from ssjax.analysis import sensitivity as S
from ssjax.core.params import flatten_params, param_names, unflatten_params
from ssjax.trading import sizing
from ssjax.trading.engine import Limits, TradeEngine, TradingConfig, prepare_trading_inputs

P_TRUE = ssjax.make_params(1.2, 0.3, 0.15, 0.3, 0.04, [0.02, 0.01, 0.015])
# the 2000 paper's risk-premium form: lambda_x and mu_star enter only through A(Δ)
P_RP = ssjax.make_params(1.2, 0.3, 0.15, 0.3, 0.04, [0.02, 0.01, 0.015], 0.05, 0.02)
T = 80


def _panel(ttm_row, seed=0, mask=None, roll=True):
    ttm = np.tile(np.asarray(ttm_row, float), (T, 1))
    if roll:  # contracts age by 0.002 years a date
        ttm = ttm - np.arange(T)[:, None] * 0.002
    sim = ssjax.simulate(P_TRUE, jax.random.key(seed), ttm, 1 / 52)
    return ssjax.make_market_data(np.exp(np.asarray(sim.log_f)), ttm, dt=1 / 52, mask=mask)


@pytest.fixture(scope="module")
def data():
    return _panel([0.2, 0.6, 1.2])


def _fd(f, x, h=1e-6):
    """Central differences of f: R^n → R^k (NumPy), columns per coordinate."""
    x = np.asarray(x, float)
    cols = []
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h * max(1.0, abs(x[i]))
        cols.append((np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * e[i]))
    return np.stack(cols, axis=-1)


def test_forward_jacobian_matches_finite_differences():
    state = jnp.array([0.1, 3.2])
    ttm = jnp.array([0.1, 0.5, 2.0])
    jac = jax.jit(S.forward_jacobian)(P_TRUE, state, ttm)
    vec = np.asarray(flatten_params(P_TRUE))
    fd = _fd(
        lambda v: ssjax.forward_curve(unflatten_params(jnp.asarray(v), P_TRUE), state, ttm), vec
    )
    np.testing.assert_allclose(jac.d_theta, fd, rtol=1e-6, atol=1e-9)
    fd_x = _fd(lambda x: ssjax.forward_curve(P_TRUE, jnp.asarray(x), ttm), np.asarray(state))
    np.testing.assert_allclose(jac.d_state, fd_x, rtol=1e-7)
    # meas_sd does not enter the closed form
    assert np.all(np.asarray(jac.d_theta)[:, 5:] == 0)


def test_total_forward_jacobian_and_last_row(data):
    jac = S._total_forward_jacobian_jit(P_TRUE, data)
    vec = np.asarray(flatten_params(P_TRUE))
    sel = [0, 1, 3, 5]  # kappa, sigma_x, rho, meas_sd[0]: the state moves with each

    prior = ssjax.default_prior(data)

    @jax.jit
    def path_j(v):
        return S._model_path(unflatten_params(v, P_TRUE), data, prior, False)

    def path(v):
        full = vec.copy()
        full[sel] = v
        return path_j(jnp.asarray(full))

    fd = _fd(path, vec[sel], h=1e-6)
    np.testing.assert_allclose(np.asarray(jac.d_theta)[..., sel], fd, rtol=2e-5, atol=1e-7)
    # the total derivative differs from the state-fixed one: the states move with Θ
    filt = ssjax.kalman_filter(P_TRUE, data)
    fixed = S.forward_path_jacobian(P_TRUE, filt.filtered_means, data.ttm)
    np.testing.assert_allclose(fixed.F, jac.F, rtol=1e-12)
    assert np.max(np.abs(np.asarray(fixed.d_theta) - np.asarray(jac.d_theta))) > 1e-3


@pytest.mark.slow
def test_loglik_derivatives_and_identification(data: ssjax.MarketData):
    """Gradient and Hessian against finite differences; the identification diagnostic on a
    well-posed panel, on one where two parameters are unidentifiable by construction, and
    with a tenor that is never observed."""
    f = jax.jit(S.loglik_derivatives)
    d = f(P_RP, data)
    vec = np.asarray(flatten_params(P_RP))

    def ll(v):
        return float(ssjax.log_likelihood_data(unflatten_params(jnp.asarray(v), P_RP), data))

    def grad(v):
        return np.asarray(f(unflatten_params(jnp.asarray(v), P_RP), data).grad)

    np.testing.assert_allclose(d.loglik, ll(vec), rtol=1e-12)
    g_fd = _fd(lambda v: np.array(ll(v)), vec, 1e-5)
    np.testing.assert_allclose(d.grad, g_fd, rtol=1e-4, atol=1e-3)
    H_fd = _fd(grad, vec, 1e-6)
    np.testing.assert_allclose(d.hessian, 0.5 * (H_fd + H_fd.T), rtol=1e-4, atol=1e-2)

    names = param_names(P_RP)
    good = S.identification(d.hessian, names)
    assert good.weak == [] and good.flat == [] and good.at_maximum, good.summary()
    assert np.isfinite(good.condition_number)
    assert "all identified" in good.summary()

    # every tenor at one constant time to maturity Δ: lambda_x and mu_star enter ℓ only
    # through A(Δ) = mu_star·Δ − lambda_x·(1 − e^{−κΔ})/κ, so one combination of the two is
    # not identified at all: at the maximum, an exact null direction of the Hessian
    same = _panel([0.4, 0.4, 0.4], roll=False)
    at_true = S.identification(f(P_RP, same).hessian, names)
    assert not at_true.at_maximum and "negative curvature" in at_true.summary()
    # the volatility structure held at its true value, the rest estimated: at the
    # maximum the (mu_star, lambda_x) direction is exactly flat
    free = np.array([n not in ("kappa", "sigma_x", "sigma_y", "rho") for n in names])
    fit = ssjax.fit.mle.fit_mle(same, P_RP, free=jnp.asarray(free, float))
    assert bool(fit.converged)
    bad = S.identification(f(fit.params, same).hessian, names, free=free)
    assert bad.at_maximum, bad.summary()
    assert len(bad.weak) == 1, bad.summary()
    assert set(bad.weak[0]["dominant"]) == {"lambda_x", "mu_star"}, bad.summary()
    assert abs(bad.weak[0]["eigenvalue"]) < 1e-8
    assert bad.condition_number > 1e8
    assert "lambda_x" in bad.summary() and "mu_star" in bad.summary()

    # a tenor that is never observed: its noise s.d. has no curvature at all
    mask = np.ones((T, 3), bool)
    mask[:, 2] = False
    unseen = data._replace(mask=jnp.asarray(mask))  # (make_market_data refuses such a panel)
    flat = S.identification(f(P_RP, unseen).hessian, names)
    assert flat.flat == ["meas_sd[2]"]
    assert "meas_sd[2]" in flat.summary() and "meas_sd[2]" in flat.weakly_identified
    assert list(flat.to_frame().columns[1:]) == [n for n in names if n != "meas_sd[2]"]
    with pytest.raises(ValueError, match="hessian must be"):
        S.identification(np.eye(2), names)


def test_elasticity_table(data):
    filt = ssjax.kalman_filter(P_TRUE, data)
    states, ttm = np.asarray(filt.filtered_means[-3:]), np.asarray(data.ttm[-3:])
    df = S.elasticity_table(P_TRUE, states, ttm, tenor_names=["a", "b", "c"])
    n = len(param_names(P_TRUE)) + 2
    assert len(df) == 3 * 3 * n
    jac = S.forward_path_jacobian(P_TRUE, states, ttm)
    row = df[(df.date == 2) & (df.tenor == "b") & (df.parameter == "kappa")].iloc[0]
    np.testing.assert_allclose(row.dF_dtheta, jac.d_theta[2, 1, 0], rtol=1e-12)
    np.testing.assert_allclose(row.elasticity, 1.2 * jac.d_theta[2, 1, 0] / jac.F[2, 1])
    # ∂ln F/∂Y = 1 exactly
    np.testing.assert_allclose(df[df.parameter == "Y"].elasticity, 1.0, rtol=1e-12)
    tot = S.elasticity_table(P_TRUE, data=data, total=True)
    assert set(tot.parameter) == set(param_names(P_TRUE))
    with pytest.raises(ValueError, match="data"):
        S.elasticity_table(P_TRUE, total=True)


def test_vol_target_weights_match_the_trade_engine():
    rng = np.random.default_rng(3)
    eng = TradeEngine(vol_target=0.15)
    for case in range(6):
        M = 4
        A = rng.standard_normal((M, M))
        Sigma = A @ A.T * 0.05
        z = rng.standard_normal(M) * 2
        s = rng.choice([-1.0, 0.0, 1.0], M)
        per, gross = (0.3, 0.8) if case % 2 else (5.0, 50.0)  # binding and slack limits
        inp = type("I", (), {"z": z, "Sigma": Sigma, "limits": Limits(np.full(M, per), gross)})
        ref = eng._vol_target(s, inp)
        got = sizing.vol_target_weights(z, s, Sigma, 0.15, np.full(M, per), gross)
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-15)
    assert np.all(sizing.vol_target_weights(z, np.zeros(M), Sigma, 0.15, np.ones(M), 3.0) == 0)


def test_weights_jacobian_matches_finite_differences(data):
    M = 3
    Sigma = np.diag([0.1, 0.08, 0.06]) + 0.02
    sig = np.array([1.0, -1.0, 1.0])
    wj = sizing.weights_jacobian(P_TRUE, data, T - 1, sig, Sigma, vol_target=0.1, per_tenor=5.0)
    vec = np.asarray(flatten_params(P_TRUE))
    prior = ssjax.default_prior(data)

    @jax.jit
    def w_j(v):
        z = sizing.filtered_z_scores(unflatten_params(v, P_TRUE), data, prior, T - 1)
        return sizing.vol_target_weights(z, sig, Sigma, 0.1, jnp.full(M, 5.0), 3.0)

    def w(v):
        return w_j(jnp.asarray(v))

    np.testing.assert_allclose(wj.d_theta, _fd(w, vec, 1e-7), rtol=1e-4, atol=1e-6)
    assert np.all(np.isfinite(wj.dz_dtheta)) and np.any(np.asarray(wj.dz_dtheta) != 0)
    # z agrees with the trade module's default (filtered) basis
    filt = ssjax.kalman_filter(P_TRUE, data)
    _, filt_var = ssjax.trading.engine.residual_variances(P_TRUE, filt, data.ttm, data.mask)
    F_mod = ssjax.forward_curve(P_TRUE, filt.filtered_means[-1], data.ttm[-1])
    z_ref = (np.log(F_mod) - np.asarray(data.log_f[-1])) / np.sqrt(filt_var[-1])
    np.testing.assert_allclose(wj.z, z_ref, rtol=1e-10)


@pytest.mark.slow
def test_profile_likelihood(data):
    fit = ssjax.fit.mle.fit_mle(data, P_TRUE)
    p_hat = fit.params
    k_hat = float(p_hat.kappa)
    grid = k_hat + np.array([-0.6, -0.3, 0.0, 0.3, 0.6])
    pr = S.profile_likelihood(data, p_hat, "kappa", grid)
    assert pr.converged.all()
    np.testing.assert_allclose(pr.loglik[2], float(fit.loglik), atol=1e-6)
    assert np.all(pr.lr >= -1e-6) and pr.lr[0] > pr.lr[1] and pr.lr[4] > pr.lr[3]
    np.testing.assert_allclose(np.asarray(pr.params.kappa), grid, rtol=1e-12)  # held fixed
    lo, hi = pr.ci
    assert np.isnan(lo) or lo < k_hat
    assert np.isnan(hi) or hi > k_hat
    assert list(pr.to_frame().columns) == ["kappa", "loglik", "lr", "converged"]
    with pytest.raises(ValueError, match="not a parameter"):
        S.profile_likelihood(data, p_hat, "theta", grid)


def test_z_scores_floor_is_the_same_in_both_paths():
    """A tenor whose residual s.d. is at or below min_resid_sd gets z = 0 in the trade
    module's NumPy inputs and in the differentiable z alike (one implementation)."""
    alpha = np.array([0.01, -0.02, 0.005])
    var = np.array([1e-4, 1e-14, np.nan])  # usable, below the 1e-6 s.d. floor, unknown
    z = np.asarray(sizing.z_scores(alpha, var, np.ones(3, bool), 1e-6))
    np.testing.assert_allclose(z, [1.0, 0.0, 0.0])
    cfg = TradingConfig()
    inp = prepare_trading_inputs(np.array([50.0, 51.0, 52.0]), np.array([50.5, 50.0, 52.3]),
                                 np.array([0.1, 0.2, 0.3]), cfg=cfg, dt=7 / 365,
                                 F_mkt_hist=50.0 + np.arange(30.0)[:, None] % 3 + np.eye(30, 3),
                                 filtered_resid_var_t=var)  # fmt: skip
    expect = np.log(np.array([50.5, 50.0, 52.3]) / np.array([50.0, 51.0, 52.0]))
    np.testing.assert_allclose(inp.z, [expect[0] / 1e-2, 0.0, 0.0])
