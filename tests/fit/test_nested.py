"""One-factor restrictions of the two-factor model (ssjax.fit.nested)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

import ssjax
from ssjax.fit.nested import NESTED_MODELS, SWITCHED_OFF, compare_nested, fit_nested, nested_setup
from tests.reference import np_tiny_panel


def _gbm_dense_loglik(sigma, mu, sd, log_f, ttm, mask, dt, y0, p0_yy):
    """GBM written from scratch: ln F_ti = Y_t + (mu + sigma^2/2) ttm_ti + e_ti,
    Y_t = Y_0 + mu e_t + sigma W(e_t), e_t the elapsed time; joint Gaussian of all prices."""
    el = np.concatenate([[0.0], np.cumsum(dt)])
    t_idx, i_idx = np.nonzero(mask)
    e = el[t_idx]
    mean = y0 + mu * e + (mu + 0.5 * sigma**2) * ttm[t_idx, i_idx]
    cov = p0_yy + sigma**2 * np.minimum.outer(e, e)
    cov = cov + np.diag(np.asarray(sd)[i_idx] ** 2)
    return multivariate_normal(mean, cov).logpdf(log_f[t_idx, i_idx])


def test_gbm_restriction_is_exactly_gbm():
    theta = dict(kappa=1.2, sigma_x=0.3, sigma_y=0.2, rho=0.3, mu=0.05,
                 meas_sd=np.array([0.02, 0.01, 0.015]))  # fmt: skip
    F, ttm, mask, dt = np_tiny_panel(theta, seed=3, T=7)
    held, fixed = nested_setup("gbm")
    assert fixed == {"sigma_x": True, "kappa": True, "rho": True}
    p = ssjax.make_params(
        kappa=held["kappa"], sigma_x=held["sigma_x"], sigma_y=0.25, rho=0.0, mu=0.04,
        meas_sd=[0.02, 0.01, 0.015],
    )  # fmt: skip
    log_f = np.log(F)
    y0 = float(np.mean(log_f[0][mask[0]]))
    P0 = np.diag([0.0, 1.0])
    got = float(ssjax.log_likelihood(p, F, ttm, mask=mask, dt=dt, x0=[0.0, y0], P0=P0))
    want = _gbm_dense_loglik(0.25, 0.04, [0.02, 0.01, 0.015], log_f, ttm, mask, dt, y0, 1.0)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-8)


@pytest.fixture(scope="module")
def sim_panel():
    p = ssjax.make_params(1.3, 0.3, 0.18, 0.35, 0.02, [0.02, 0.006, 0.004, 0.008])
    import jax

    T = 120
    ttm = np.array([0.1, 0.4, 0.8, 1.5]) + np.zeros((T, 1))
    sim = ssjax.simulate(p, jax.random.PRNGKey(7), ttm, 7 / 365)
    return np.asarray(sim.F), ttm


@pytest.fixture(scope="module")
def nested_fits(sim_panel):
    F, ttm = sim_panel
    opts = {"mean_reverting": {"states": "smoothed"}}
    return {m: fit_nested(m, F, ttm, dt=7 / 365, engine_options=opts.get(m)) for m in NESTED_MODELS}


def test_nested_fits_hold_what_they_restrict(nested_fits):
    gbm, mr, two = nested_fits["gbm"], nested_fits["mean_reverting"], nested_fits["two_factor"]
    M = 4
    assert two.n_params == 5 + M
    assert gbm.n_params == 2 + M and mr.n_params == 2 + M
    assert float(gbm.params.sigma_x) == pytest.approx(SWITCHED_OFF)
    assert float(gbm.params.kappa) == 1.0 and float(gbm.params.rho) == 0.0
    np.testing.assert_allclose(gbm.state_path[:, 0], 0.0, atol=1e-12)  # X switched off
    assert float(mr.params.sigma_y) == pytest.approx(SWITCHED_OFF)
    assert float(mr.params.mu) == 0.0
    # the Y level of the mean-reverting model is a constant: its smoothed path is flat
    assert np.ptp(mr.state_path[:, 1]) < 1e-6
    assert all(f.optimum_reached for f in nested_fits.values())
    # a restriction held at its switched-off value is not a bound the fit ended at
    assert not any(n.startswith(("sigma_x", "sigma_y")) for n in gbm.at_bound + mr.at_bound)
    for f in (gbm, mr):
        assert f.extra["nested_model"] in NESTED_MODELS
        assert f.loglik < two.loglik


def test_compare_nested_table(nested_fits):
    tab = compare_nested(nested_fits)
    assert list(tab.index) == ["gbm", "mean_reverting", "two_factor"]
    two = tab.loc["two_factor"]
    assert np.isnan(two.lr)
    for m in ("gbm", "mean_reverting"):
        r = tab.loc[m]
        assert r.df == 3
        assert r.lr == pytest.approx(2 * (two.loglik - r.loglik))
        assert 0 <= r.p_value < 1e-10  # simulated from the two-factor model
        assert r.aic == pytest.approx(2 * r.n_params - 2 * r.loglik)
    n = nested_fits["two_factor"].nobs
    assert two.bic == pytest.approx(two.n_params * np.log(n) - 2 * two.loglik)
    by_dates = compare_nested(nested_fits, n_obs="dates")
    assert by_dates.loc["two_factor", "bic"] == pytest.approx(
        two.n_params * np.log(120) - 2 * two.loglik
    )


def test_compare_nested_errors(nested_fits, sim_panel):
    with pytest.raises(ValueError, match="no 'two_factor'"):
        compare_nested({"gbm": nested_fits["gbm"]})
    with pytest.raises(ValueError, match="n_obs"):
        compare_nested(nested_fits, n_obs="weeks")
    F, ttm = sim_panel
    short = fit_nested("gbm", F[:100], ttm[:100], dt=7 / 365)
    with pytest.raises(ValueError, match="same data"):
        compare_nested({"gbm": short, "two_factor": nested_fits["two_factor"]})
    with pytest.raises(ValueError, match="not a restriction"):
        compare_nested({"x": nested_fits["two_factor"], "two_factor": nested_fits["gbm"]})


def test_fit_nested_argument_errors(sim_panel):
    F, ttm = sim_panel
    with pytest.raises(ValueError, match="model must be one of"):
        fit_nested("ar1", F, ttm, dt=7 / 365)
    with pytest.raises(ValueError, match="holds fixed"):
        fit_nested("gbm", F, ttm, dt=7 / 365, theta0={"sigma_x": 0.2})


def test_risk_premium_restrictions():
    held, fixed = nested_setup("gbm", risk_premium=True)
    assert held["lambda_x"] == 0.0 and fixed["lambda_x"]
    held, _ = nested_setup("mean_reverting", risk_premium=True)
    assert held["mu_star"] == 0.0 and "lambda_x" not in held
    assert nested_setup("two_factor", risk_premium=True) == ({}, {})
