"""The RTS smoother against a NumPy RTS smoother and the dense joint-Gaussian posterior."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import dense_joint_posterior, np_kalman_filter, np_rts_smoother, np_tiny_panel

import ssjax

# ---- tolerances ------------------------------------------------------------------------------
# Tiny panels: the dense posterior conditions a 12-dimensional state on <= 18 observations with
# one linear solve (condition number ~1e5) while the smoother runs a backward recursion; both are
# exact, so they differ by rounding only. Measured against the smoother: <= 3e-14 in the means,
# <= 1e-15 in the covariances (dense); <= 1e-12 and 3e-14 (NumPy RTS, which inherits the
# covariance-form filter's loss of digits under a wide prior).
DENSE_MEAN_ATOL = 1e-10  # smoothed means (O(3))
DENSE_COV_ATOL = 1e-12  # smoothed and lag-one covariances (entries <= 0.04)
# WTI panel versus the NumPy RTS recursion on the NumPy filter's moments: with a prior s.d. of
# 0.1 the filter moments agree to ~1e-14 (see test_filter.py); measured 6e-15 in the means,
# 4e-17 in the covariances.
WTI_MEAN_ATOL = 1e-10
WTI_COV_ATOL = 1e-12  # entries <= 1e-3
# Gains J = P^f Fᵀ (P^p)⁻¹ are O(1) ratios of covariances of size 1e-4..1e-2: (P^p)⁻¹ magnifies
# the covariances' rounding (measured <= 3e-11 on the tiny panels, 7e-14 on WTI).
GAIN_ATOL = 1e-9
# Smoothing may only reduce uncertainty: P^f - P^s is PSD, and both are symmetric, up to the
# rounding of entries <= 0.04 (eps * 0.04 ~ 1e-17).
LOEWNER_ATOL = 1e-15
SYM_ATOL = 1e-17
PRIOR_SD = 0.1  # prior s.d. of X and Y for the WTI comparison (keeps the float64 reference exact)

SM = jax.jit(ssjax.rts_smoother)
KF = jax.jit(ssjax.kalman_filter)

TINY_T, TINY_M = 6, 3
TINY_X0 = np.array([0.1, 3.0])
TINY_P0 = np.array([[0.2, 0.05], [0.05, 0.1]])
TINY_THETAS = {
    "base": dict(kappa=1.2, sigma_x=0.3, sigma_y=0.15, rho=0.4, mu=0.02,
                 meas_sd=np.array([0.02, 0.01, 0.03])),
    "risk_premium": dict(kappa=2.0, sigma_x=0.4, sigma_y=0.2, rho=-0.3, mu=0.05,
                         meas_sd=np.array([0.015, 0.02, 0.01]), mu_star=-0.01, lambda_x=0.12),
    "slow_anticorrelated": dict(kappa=0.05, sigma_x=0.25, sigma_y=0.1, rho=-0.7, mu=-0.03,
                                meas_sd=np.array([0.03, 0.02, 0.05])),
}  # fmt: skip
SMOOTH_FIELDS = ("smoothed_means", "smoothed_covs", "lag_one_covs")


def check_smoother_invariants(sm: ssjax.SmootherResult):
    fm = np.asarray(sm.filter.filtered_means)
    fP = np.asarray(sm.filter.filtered_covs)
    sP = np.asarray(sm.smoothed_covs)
    T = fm.shape[0]
    assert np.asarray(sm.smoothed_means).shape == (T, 2)
    assert sP.shape == (T, 2, 2)
    assert np.asarray(sm.lag_one_covs).shape == (T - 1, 2, 2)
    assert np.asarray(sm.gains).shape == (T - 1, 2, 2)
    # at the last date smoothing has nothing to add
    np.testing.assert_array_equal(np.asarray(sm.smoothed_means[-1]), fm[-1])
    np.testing.assert_array_equal(sP[-1], fP[-1])
    # symmetric positive definite
    np.testing.assert_allclose(sP, np.swapaxes(sP, 1, 2), rtol=0, atol=SYM_ATOL)
    assert np.linalg.eigvalsh(sP).min() > 0.0
    # no larger than the filtered covariances, in trace and in the Loewner order
    assert np.all(np.trace(sP, axis1=1, axis2=2) <= np.trace(fP, axis1=1, axis2=2) + LOEWNER_ATOL)
    assert np.linalg.eigvalsh(fP - sP).min() >= -LOEWNER_ATOL
    # and strictly smaller on all but the last date (the future is informative)
    assert np.all(np.trace(sP[:-1], axis1=1, axis2=2) < np.trace(fP[:-1], axis1=1, axis2=2))


@pytest.mark.parametrize("name", list(TINY_THETAS))
@pytest.mark.parametrize("seed", [0, 1])
def test_tiny_panel_matches_dense_posterior_and_numpy_rts(name, seed):
    theta = TINY_THETAS[name]
    F, ttm, mask, dt = np_tiny_panel(theta, seed, TINY_T, TINY_M, TINY_X0)
    data = ssjax.make_market_data(np.where(mask, F, np.nan), ttm, mask=mask, dt=dt)
    prior = ssjax.Prior(jnp.asarray(TINY_X0), jnp.asarray(TINY_P0))
    sm = SM(ssjax.make_params(**theta), data, prior)
    log_f = np.log(F)
    dense = dense_joint_posterior(theta, log_f, ttm, mask, dt, TINY_X0, TINY_P0)
    filt = np_kalman_filter(theta, log_f, ttm, mask, dt, TINY_X0, TINY_P0)
    rts = np_rts_smoother(theta, filt, dt)
    for ref in (dense, rts):
        np.testing.assert_allclose(np.asarray(sm.smoothed_means), ref["smoothed_means"],
                                   rtol=0, atol=DENSE_MEAN_ATOL)  # fmt: skip
        for field in ("smoothed_covs", "lag_one_covs"):
            np.testing.assert_allclose(np.asarray(getattr(sm, field)), ref[field],
                                       rtol=0, atol=DENSE_COV_ATOL, err_msg=field)  # fmt: skip
    np.testing.assert_allclose(np.asarray(sm.gains), rts["gains"], rtol=0, atol=GAIN_ATOL)
    # the two references agree with each other (guards the references themselves)
    np.testing.assert_allclose(rts["lag_one_covs"], dense["lag_one_covs"], atol=DENSE_COV_ATOL)
    check_smoother_invariants(sm)
    # the fully missing date 2 is still smoothed: its mean moves from the filtered one
    assert np.abs(np.asarray(sm.smoothed_means[2] - sm.filter.filtered_means[2])).max() > 1e-6


@pytest.fixture(scope="module")
def wti_problem(wti, theta_wti):
    rng = np.random.default_rng(0)
    mask = rng.random(wti.F_mkt.shape) > 0.2
    mask[10] = False
    mask[20] = False
    mask[20, 3] = True
    data = ssjax.make_market_data(np.where(mask, wti.F_mkt, np.nan), wti.ttm, dt=wti.dt)
    d = ssjax.default_prior(data)
    prior = ssjax.Prior(d.mean, PRIOR_SD**2 * jnp.eye(2))
    return data, prior, mask


def test_wti_matches_numpy_rts(wti, theta_wti, params_wti, wti_problem):
    data, prior, mask = wti_problem
    sm = SM(params_wti, data, prior)
    filt = np_kalman_filter(
        theta_wti, np.asarray(data.log_f), wti.ttm, mask, wti.dt,
        np.asarray(prior.mean), np.asarray(prior.cov),
    )  # fmt: skip
    rts = np_rts_smoother(theta_wti, filt, wti.dt)
    np.testing.assert_allclose(np.asarray(sm.smoothed_means), rts["smoothed_means"],
                               rtol=0, atol=WTI_MEAN_ATOL)  # fmt: skip
    for field in ("smoothed_covs", "lag_one_covs"):
        np.testing.assert_allclose(np.asarray(getattr(sm, field)), rts[field],
                                   rtol=0, atol=WTI_COV_ATOL, err_msg=field)  # fmt: skip
    np.testing.assert_allclose(np.asarray(sm.gains), rts["gains"], rtol=0, atol=GAIN_ATOL)
    check_smoother_invariants(sm)


def test_given_filter_result_is_used(params_wti, wti_problem):
    data, prior, _ = wti_problem
    filt = KF(params_wti, data, prior)
    a = SM(params_wti, data, prior)
    b = SM(params_wti, data, prior, filt)
    for field in SMOOTH_FIELDS + ("gains",):
        np.testing.assert_array_equal(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)))
    np.testing.assert_array_equal(np.asarray(b.filter.loglik), np.asarray(filt.loglik))
