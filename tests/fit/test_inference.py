"""Standard errors: the autodiff Hessian against finite differences; scores add up."""

import jax
import numpy as np

import ssjax
from ssjax.core.params import flatten_params, unflatten_params
from ssjax.fit.inference import parameter_uncertainty


def test_hessian_matches_finite_differences(params_wti, wti_data):
    unc = parameter_uncertainty(params_wti, wti_data)
    vec = np.asarray(flatten_params(params_wti))
    ll = jax.jit(lambda v: ssjax.log_likelihood_data(unflatten_params(v, params_wti), wti_data))
    n = vec.size
    H_fd = np.zeros((n, n))
    h = 1e-4 * np.maximum(np.abs(vec), 1e-2)
    for i in range(n):
        for j in range(i, n):
            ei, ej = np.eye(n)[i] * h[i], np.eye(n)[j] * h[j]
            val = (
                ll(vec + ei + ej) - ll(vec + ei - ej) - ll(vec - ei + ej) + ll(vec - ei - ej)
            ) / (4 * h[i] * h[j])
            H_fd[i, j] = H_fd[j, i] = float(val)
    H = np.asarray(unc.hessian)
    np.testing.assert_allclose(H, H_fd, rtol=2e-4, atol=1e-3 * np.abs(H).max())
    # the per-date scores add up to the gradient
    g = jax.grad(lambda v: ssjax.log_likelihood_data(unflatten_params(v, params_wti), wti_data))(
        flatten_params(params_wti)
    )
    np.testing.assert_allclose(np.asarray(unc.scores).sum(0), g, rtol=1e-8, atol=1e-8)
    assert bool(unc.hessian_pd)
    cov = np.asarray(unc.cov)
    np.testing.assert_allclose(cov @ -H, np.eye(n), atol=1e-6)
    B = np.asarray(unc.scores).T @ np.asarray(unc.scores)
    np.testing.assert_allclose(unc.cov_robust, cov @ B @ cov, rtol=1e-8)


def test_fixed_parameters_are_blanked(params_wti, wti_data):
    free = np.ones(10)
    free[3] = 0
    unc = parameter_uncertainty(params_wti, wti_data, free=free)
    cov = np.asarray(unc.cov)
    assert np.all(np.isnan(cov[3])) and np.all(np.isnan(cov[:, 3]))
    assert np.all(np.isfinite(np.delete(np.delete(cov, 3, 0), 3, 1)))
