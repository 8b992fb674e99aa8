"""KalmanEngine / compute_model_forward / log_likelihood: the document's block end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from reference import np_measurement

import ssjax


@pytest.fixture(scope="module")
def fit(wti):
    return ssjax.KalmanEngine().fit(
        wti.F_mkt, wti.ttm, dates=wti.dates, tenor_names=wti.tenor_names
    )


def test_outputs_have_the_document_shapes(fit, wti):
    T, M = wti.F_mkt.shape
    assert set(fit.theta) == {"kappa", "sigma_x", "sigma_y", "rho", "mu", "meas_sd"}
    assert isinstance(fit.theta["meas_sd"], pd.Series)
    assert fit.state_t.shape == (2,) and fit.state_path.shape == (T, 2)
    assert fit.F_model_t.shape == (M,) and fit.F_model_path.shape == (T, M)
    # the MLE of the bundled panel prices F13 exactly: a boundary optimum, said so
    assert fit.optimum_reached and not fit.converged and fit.nobs == T * M
    assert fit.at_bound == ["meas_sd[F13]"] and "boundary" in fit.status
    assert fit.starts_at_best >= 2 and fit.n_starts >= 8
    assert fit.loglik > 4035.0  # the optimum of this panel (ACT/365 maturities)
    np.testing.assert_array_equal(fit.state_t, fit.state_path[-1])


def test_model_forwards_follow_the_closed_form(fit, wti):
    th = {k: (np.asarray(v) if k == "meas_sd" else v) for k, v in fit.theta.items()}
    b, A = np_measurement(th, wti.ttm)
    expected = np.exp(b * fit.state_path[:, :1] + fit.state_path[:, 1:] + A)
    np.testing.assert_allclose(fit.F_model_path, expected, rtol=1e-12)
    np.testing.assert_allclose(fit.F_model_t, expected[-1], rtol=1e-12)
    # the model prices the market closely (pricing errors of a few per cent at most)
    assert np.max(np.abs(np.log(fit.F_model_path / wti.F_mkt))) < 0.25
    assert np.median(np.abs(np.log(fit.F_model_path / wti.F_mkt))) < 0.01


def test_standard_errors_are_computed_on_first_use(wti):
    """The fit does not compute the covariances; the first read of ``cov``, ``std_err`` or
    ``summary()`` does, once, and they equal ``parameter_uncertainty`` at the end point. A
    fit pickles (the deferred computation is a partial of module functions)."""
    import pickle

    from ssjax.fit.inference import parameter_uncertainty

    eng = ssjax.KalmanEngine(n_starts=1)
    calls = []
    fit = eng.fit(wti.F_mkt, wti.ttm, dt=wti.dt)
    inner = fit.covariances
    fit.covariances = lambda: calls.append(1) or inner()
    assert "_covs" not in vars(fit)  # nothing computed yet
    cov = fit.cov
    assert calls == [1]
    np.testing.assert_array_equal(fit.cov_robust, fit.cov_robust)
    _ = fit.std_err, fit.std_err_robust, fit.summary()
    assert calls == [1]  # computed once
    ex = fit.extra
    unc = jax.jit(parameter_uncertainty)(fit.params, ex["data"], ex["prior"], fit.free)
    np.testing.assert_allclose(cov, np.asarray(unc.cov), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(fit.cov_robust, np.asarray(unc.cov_robust), rtol=1e-9, atol=1e-15)
    again = pickle.loads(pickle.dumps(eng.fit(wti.F_mkt, wti.ttm, dt=wti.dt)))
    np.testing.assert_allclose(again.std_err, fit.std_err, rtol=1e-12)


def test_standard_errors_and_summary(fit):
    se = fit.std_err
    assert se.index.tolist()[:5] == ["kappa", "sigma_x", "sigma_y", "rho", "mu"]
    assert np.all(np.isfinite(se)) and np.all(se > 0)
    assert np.all(np.isfinite(fit.std_err_robust))
    ci = fit.conf_int(0.05)
    assert np.all(ci.iloc[:, 0] < fit.param_values) and np.all(fit.param_values < ci.iloc[:, 1])
    assert fit.aic == pytest.approx(-2 * fit.loglik + 2 * 10)
    assert fit.bic == pytest.approx(-2 * fit.loglik + np.log(1340) * 10)
    text = fit.summary()
    for word in ("kappa", "sigma_x", "meas_sd[F1]", "Log-likelihood", "Converged", "F_model_t"):
        assert word in text
    assert str(fit) == text
    assert "KalmanFit(method='MLE'" in repr(fit)
    assert fit.to_frame().shape == (10, 9)
    assert fit.to_frame()["at_bound"].tolist() == [False] * 8 + [True, False]
    # at a bound (*) and near one (†: the 95% Wald interval, Hessian or robust, reaches
    # below zero) are marked, and the misspecification the robust s.e.s show is said
    frame = fit.to_frame()
    lo = frame["coef"] - 1.959964 * np.fmax(frame["std_err"], frame["std_err_robust"])
    near = (lo <= 0) & frame.index.str.startswith(("kappa", "sigma", "meas_sd")) & ~frame.at_bound
    assert frame["near_bound"].tolist() == near.tolist() and near.any()
    assert fit.near_bound == frame.index[near].tolist()
    for name in fit.near_bound:
        assert f"{name} †" in text
    assert "meas_sd[F13] *" in text and "marked *: meas_sd[F13]" in text.replace("\n  ", " ")
    ratio = fit.robust_ratio
    assert ratio.max() > 1.5 and f"up to {ratio.max():.1f}x the Hessian" in text
    assert "meas_sd[F13] *" in text and "At a bound:" in text and "not an interior" in text


def test_t_star_by_index_and_by_date(wti):
    eng = ssjax.KalmanEngine()
    by_idx = eng.fit(wti.F_mkt, wti.ttm, dates=wti.dates, t_star=199)
    by_date = eng.fit(
        wti.F_mkt, wti.ttm, dates=wti.dates, t_star=wti.dates[199] + pd.Timedelta("2D")
    )
    assert by_idx.t_star == by_date.t_star == 199
    assert by_idx.state_path.shape == (200, 2)
    assert by_idx.loglik == pytest.approx(by_date.loglik, rel=1e-12)
    # fitting on the truncated arrays directly gives the same answer
    direct = eng.fit(wti.F_mkt[:200], wti.ttm[:200], dt=wti.dt[:199])
    assert direct.loglik == pytest.approx(by_idx.loglik, rel=1e-10)
    with pytest.raises(ValueError, match="t_star"):
        eng.fit(wti.F_mkt, wti.ttm, dt=wti.dt, t_star=0)
    with pytest.raises(ValueError, match="needs dates"):
        eng.fit(wti.F_mkt, wti.ttm, dt=wti.dt, t_star="1992-01-01")


def test_missing_values_spot_and_smoothed_states(wti):
    F = wti.F_mkt.copy()
    rng = np.random.default_rng(3)
    F[rng.random(F.shape) < 0.1] = np.nan
    F[50] = np.nan  # a date with nothing observed
    fit = ssjax.KalmanEngine(states="smoothed").fit(F, wti.ttm, S=wti.S, dates=wti.dates)
    assert fit.optimum_reached
    assert "spot_sd" in fit.theta and fit.theta["spot_sd"] > 0
    assert fit.nobs == int(np.isfinite(F).sum() + np.isfinite(wti.S).sum())
    assert fit.smoother_result is not None
    np.testing.assert_allclose(fit.state_path, fit.smoother_result.smoothed_means)
    T = F.shape[0]
    assert fit.smoother_result.lag_one_covs.shape == (T - 1, 2, 2)
    assert fit.filter_result.loglik_t.shape == (T,)
    assert np.all(np.isfinite(fit.F_model_path))  # forwards exist where prices are missing


def test_risk_premium_nests_and_shared_noise(wti, fit):
    rp = ssjax.KalmanEngine(risk_premium=True).fit(wti.F_mkt, wti.ttm, dt=wti.dt)
    assert {"lambda_x", "mu_star"} <= set(rp.theta)
    assert rp.loglik >= fit.loglik - 1e-3  # the restricted model cannot fit better
    assert rp.n_params == 12
    shared = ssjax.KalmanEngine(shared_noise=True).fit(wti.F_mkt, wti.ttm, dt=wti.dt)
    assert isinstance(shared.theta["meas_sd"], float)
    assert shared.loglik < fit.loglik  # one s.d. for all tenors is a restriction


def test_theta0_and_fixed_and_starts(wti):
    eng = ssjax.KalmanEngine(fixed={"rho": True})
    f = eng.fit(wti.F_mkt, wti.ttm, dt=wti.dt, theta0={"rho": 0.0})
    assert f.theta["rho"] == 0.0 and np.isnan(f.std_err["rho"])
    assert f.n_params == 9
    with pytest.raises(ValueError, match="unknown parameter"):
        eng.fit(wti.F_mkt, wti.ttm, dt=wti.dt, theta0={"kapa": 1.0})
    with pytest.raises(ValueError, match="rho must lie"):
        eng.fit(wti.F_mkt, wti.ttm, dt=wti.dt, theta0={"rho": 1.5})
    multi = ssjax.KalmanEngine(n_starts=3, max_steps=300).fit(wti.F_mkt, wti.ttm, dt=wti.dt)
    assert multi.loglik > 4035.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(F_mkt=np.ones(10)), r"F_mkt must have shape \[T, M\]"),
        (dict(ttm=np.ones((5, 2))), "ttm must have the shape"),
        (dict(dt=None), "dt is required"),
        (dict(dt=np.ones(3)), r"dt must be a scalar or have shape \[T-1\]"),
        (dict(x0=[0.0]), r"x0 must have shape \[2\]"),
        (dict(P0=-np.eye(2)), "P0 must be positive semi-definite"),
        (dict(S=np.ones(3)), r"S must have shape \[T\]"),
    ],
)
def test_engine_validation(wti, kwargs, match):
    args = dict(F_mkt=wti.F_mkt[:20], ttm=wti.ttm[:20], dt=7 / 365)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ssjax.KalmanEngine().fit(**args)


def test_engine_options_validation():
    with pytest.raises(ValueError, match="method must be"):
        ssjax.KalmanEngine("OLS")
    with pytest.raises(ValueError, match="states must be"):
        ssjax.KalmanEngine(states="both")
    with pytest.raises(ValueError, match="n_starts"):
        ssjax.KalmanEngine(n_starts=0)


def test_dataframe_input_and_compute_model_forward(wti):
    df = pd.DataFrame(wti.F_mkt, index=wti.dates, columns=wti.tenor_names)
    out = ssjax.compute_model_forward(df, wti.ttm, t_star=150)
    assert out.F_model_t.shape == (5,) and out.state_path.shape == (151, 2)
    assert out.fit.tenor_names == wti.tenor_names
    assert out.fit.dates[-1] == wti.dates[150]
    assert set(out.Theta) >= {"kappa", "sigma_x", "sigma_y", "rho", "mu"}


def test_log_likelihood_is_pure_and_differentiable(wti, params_wti, wti_data):
    ll = ssjax.log_likelihood(params_wti, wti.F_mkt, wti.ttm, dt=wti.dt)
    assert float(ll) == pytest.approx(float(ssjax.log_likelihood_data(params_wti, wti_data)))
    g = jax.grad(ssjax.log_likelihood)(params_wti, wti.F_mkt, wti.ttm, dt=wti.dt)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g))
    # traced data (jit over the panel) takes the same path without validation
    jit_ll = jax.jit(lambda F: ssjax.log_likelihood(params_wti, F, wti.ttm, dt=wti.dt))
    assert float(jit_ll(jnp.asarray(wti.F_mkt))) == pytest.approx(float(ll), rel=1e-12)
    with pytest.raises(ValueError, match="rho must lie"):
        ssjax.log_likelihood(params_wti._replace(rho=jnp.asarray(1.0)), wti.F_mkt, wti.ttm, dt=0.02)
    with pytest.raises(ValueError, match="meas_sd has 5 entries"):
        ssjax.log_likelihood(params_wti, wti.F_mkt[:, :3], wti.ttm[:, :3], dt=0.02)
