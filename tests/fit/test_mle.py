"""Maximum likelihood: against SciPy on the same objective, simulate-and-recover, stopping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import ssjax
from ssjax.core.params import flatten_params, to_unconstrained
from ssjax.fit.mle import (
    BOUNDARY,
    MAX_STEPS,
    default_start,
    fit_mle,
    free_mask,
    negative_loglik,
    status_message,
    stopped,
)
from ssjax.fit.optimum import BOUND_TOL

LOGLIK_ATOL = 2e-3  # two optimizers on the same smooth objective, one s.d. heading to 0


@pytest.fixture(scope="module")
def wti_fit(wti_data):
    init = default_start(wti_data)
    return init, fit_mle(wti_data, init)


def test_default_start_is_sane(wti_data):
    s = default_start(wti_data)
    ssjax.core.params.validate_params(s, n_tenors=5)
    assert 0.05 <= float(s.kappa) <= 20
    assert s.meas_sd.shape == (5,)
    assert s.lambda_x is None and s.spot_sd is None
    rp = default_start(wti_data, risk_premium=True)
    assert float(rp.lambda_x) == 0.0 and float(rp.mu_star) == float(rp.mu)


def test_fit_on_wti_stops_at_the_boundary_optimum(wti_fit):
    _, r = wti_fit
    # the paper-like optimum: kappa ~ 1.5, one tenor's s.d. at ~0: a boundary point, so the
    # stopping rule fired but the fit is not called converged
    assert 1.3 < float(r.params.kappa) < 1.7
    assert float(jnp.min(r.params.meas_sd)) < BOUND_TOL["scale"]
    assert int(r.status) == BOUNDARY and not bool(r.converged) and bool(stopped(r.status))
    assert "boundary" in status_message(int(r.status))


def test_fit_matches_scipy_on_same_objective(wti_data, wti_fit):
    init, r = wti_fit
    template = to_unconstrained(init)
    prior = ssjax.default_prior(wti_data)
    scale = jnp.asarray(float(wti_data.nobs))
    vg = jax.jit(jax.value_and_grad(lambda v: negative_loglik(v, template, wti_data, prior, scale)))

    def f(v):
        val, g = vg(jnp.asarray(v))
        return float(val), np.asarray(g, float)

    res = scipy.optimize.minimize(
        f, np.asarray(flatten_params(template)), jac=True, method="BFGS",
        options=dict(gtol=1e-7, maxiter=3000),
    )  # fmt: skip
    ll_scipy = -res.fun * float(wti_data.nobs)
    assert abs(float(r.loglik) - ll_scipy) < LOGLIK_ATOL
    assert float(r.loglik) > ll_scipy - 1e-4  # ours is not worse
    from ssjax.core.params import from_unconstrained, unflatten_params

    p_scipy = from_unconstrained(unflatten_params(jnp.asarray(res.x), template))
    for name in ("kappa", "sigma_x", "sigma_y", "rho"):
        np.testing.assert_allclose(getattr(r.params, name), getattr(p_scipy, name), rtol=5e-3)
    np.testing.assert_allclose(r.params.meas_sd, p_scipy.meas_sd, atol=5e-4)


def test_max_steps_reports_not_converged(wti_data):
    r = fit_mle(wti_data, default_start(wti_data), max_steps=3)
    assert not bool(r.converged)
    assert int(r.status) == MAX_STEPS and int(r.num_steps) == 3
    assert "not converged" in status_message(int(r.status))


def test_step_limit_is_a_traced_per_fit_cap(wti_data):
    """``step_limit`` caps each vmapped fit's steps on its own (warm rolling fits' budget)."""
    init = default_start(wti_data)
    batch = jax.tree.map(lambda a: jnp.stack([a, a]), init)
    fit = jax.vmap(lambda i, k: fit_mle(wti_data, i, max_steps=60, step_limit=k))
    r = fit(batch, jnp.array([4, 1000]))
    assert int(r.num_steps[0]) == 4 and int(r.status[0]) == MAX_STEPS
    assert int(r.num_steps[1]) > 4  # capped by max_steps=60 at most, not by the other lane
    alone = fit_mle(wti_data, init, max_steps=60)
    np.testing.assert_allclose(r.loglik[1], alone.loglik, rtol=1e-10)
    assert int(r.num_steps[1]) == int(alone.num_steps)


def test_fixed_parameters_stay_put(wti_data):
    init = default_start(wti_data)._replace(rho=jnp.asarray(0.0))
    free = free_mask(init, {"rho": True, "mu": True})
    r = fit_mle(wti_data, init, None, jnp.asarray(free))
    assert float(r.params.rho) == 0.0 and float(r.params.mu) == float(init.mu)
    assert float(r.params.kappa) != float(init.kappa)
    with pytest.raises(ValueError, match="unknown parameter"):
        free_mask(init, {"rhoo": True})
    with pytest.raises(ValueError, match="not part of this model"):
        free_mask(init, {"lambda_x": True})


def test_no_recompile_when_only_values_change(wti_data, wti_fit):
    init, _ = wti_fit
    n_before = fit_mle._cache_size()
    shifted = wti_data._replace(log_f=wti_data.log_f + 0.01)
    r = fit_mle(shifted, init._replace(kappa=init.kappa * 1.1))
    assert fit_mle._cache_size() == n_before
    # a level shift of all log prices moves Y only: the same dynamics are recovered
    assert abs(float(r.params.kappa) - 1.5) < 0.2


def test_fit_vmaps_over_panels(wti_data):
    """Two windows fitted in one vmapped call equal the separate fits."""
    T = 120
    windows = [
        jax.tree.map(lambda a, s=s: a[s : s + T] if a.ndim else a, wti_data) for s in (0, 100)
    ]
    windows = [w._replace(dt=w.dt[: T - 1]) for w in windows]
    batch = jax.tree.map(lambda *a: jnp.stack(a), *windows)
    init = jax.tree.map(lambda *a: jnp.stack(a), *[default_start(w) for w in windows])
    rb = jax.vmap(lambda d, i: fit_mle(d, i, max_steps=400))(batch, init)
    for k, w in enumerate(windows):
        r = fit_mle(w, jax.tree.map(lambda a, k=k: a[k], init), max_steps=400)
        np.testing.assert_allclose(rb.loglik[k], r.loglik, rtol=1e-9)


@pytest.mark.slow
def test_simulate_and_recover():
    """True parameters lie within 3 standard errors on a long simulated panel."""
    true = ssjax.make_params(
        kappa=1.2, sigma_x=0.3, sigma_y=0.18, rho=0.3, mu=0.03,
        meas_sd=[0.02, 0.006, 0.004, 0.003, 0.005],
    )  # fmt: skip
    T, dt = 1500, 7 / 365
    base = np.array([1, 5, 9, 13, 17]) / 12
    ttm = base[None, :] - (np.arange(T) % 4)[:, None] * dt  # rolling monthly contracts
    sim = ssjax.simulate(true, jax.random.key(42), jnp.asarray(ttm), dt, x0=(0.1, 3.0))
    F = np.array(sim.F)
    F[np.random.default_rng(0).random(F.shape) < 0.05] = np.nan  # 5% missing
    fit = ssjax.KalmanEngine().fit(F, ttm, dt=dt)
    assert fit.converged and not fit.at_bound  # an interior optimum
    est, se = fit.param_values, fit.std_err
    truth = np.asarray(flatten_params(true))
    z = (est.to_numpy() - truth) / se.to_numpy()
    assert np.all(np.abs(z) < 3.0), dict(zip(est.index, np.round(z, 2), strict=True))
