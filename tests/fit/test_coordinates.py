"""The spot–slope coordinates: an exact bijection, the same optimum inside, faster on the ridge."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssjax.core.filter import log_likelihood_data
from ssjax.core.market import make_market_data
from ssjax.core.params import make_params
from ssjax.fit.coordinates import (
    KAPPA_FLOOR,
    from_spot_slope,
    on_ridge,
    to_spot_slope,
    unconstrained_maps,
)
from ssjax.fit.mle import default_start, fit_mle, stopped
from ssjax.fit.optimum import BOUND_TOL


def _ridge_panel(seed: int, T: int = 80) -> object:
    """Weekly futures from the κ → 0 limit of the model: a random-walk spot Z and slope W
    (ln F = Z + (μ − W)Δ), whose two-factor likelihood rises towards κ → 0, ρ → −1."""
    rng = np.random.default_rng(seed)
    dt, tenors = 1 / 52, np.array([0.1, 0.5, 1.0, 2.0])
    s, v, c, mu = 0.3, 0.3, 0.3, 0.02
    Z, W = np.empty(T), np.empty(T)
    Z[0], W[0] = np.log(60.0), 0.05
    for t in range(1, T):
        e1, e2 = rng.standard_normal(2)
        W[t] = W[t - 1] + s * np.sqrt(dt) * e1
        shock = c * e1 + np.sqrt(1 - c * c) * e2
        Z[t] = Z[t - 1] + (mu - W[t - 1]) * dt + v * np.sqrt(dt) * shock
    log_f = Z[:, None] + (mu - W[:, None]) * tenors + 0.005 * rng.standard_normal((T, 4))
    return make_market_data(np.exp(log_f), np.broadcast_to(tenors, (T, 4)).copy(), dt=dt)


@pytest.mark.parametrize(
    "theta",
    [
        (1.5, 0.3, 0.2, 0.3),
        (0.2, 0.5, 0.4, -0.8),
        (1e-3, 300.0, 300.1, -0.999995),
        (8.0, 2.0, 0.1, 0.9),
    ],
)
def test_the_map_is_an_exact_bijection(theta):
    p = make_params(*theta, mu=0.03, meas_sd=[0.01, 0.02])
    q = to_spot_slope(p)
    # the spot's volatility and the slope's, by their definitions
    k, a, b, r = theta
    np.testing.assert_allclose(float(q.sigma_y) ** 2, a * a + b * b + 2 * r * a * b, rtol=1e-8)
    np.testing.assert_allclose(float(q.sigma_x), k * a, rtol=1e-14)
    back = from_spot_slope(q)
    for name in ("kappa", "sigma_x", "sigma_y"):
        np.testing.assert_allclose(getattr(back, name), getattr(p, name), rtol=1e-9)
    np.testing.assert_allclose(1.0 + back.rho, 1.0 + p.rho, rtol=1e-6)
    np.testing.assert_array_equal(back.meas_sd, p.meas_sd)
    assert bool(on_ridge(p)) == (k < 0.01 and 1 + r < 1e-3)


def test_a_per_lane_choice_selects_exactly(wti_data):
    """A traced flag picks one map per lane; False gives the factors' coordinates' values."""
    p = default_start(wti_data)
    for flag in (False, True):
        to_u, from_u = unconstrained_maps(jnp.asarray(flag))
        back = from_u(to_u(p))
        np.testing.assert_allclose(float(back.kappa), float(p.kappa), rtol=1e-12)
        np.testing.assert_allclose(float(back.rho), float(p.rho), rtol=1e-12)
    u_plain = unconstrained_maps(None)[0](p)
    u_false = unconstrained_maps(jnp.asarray(False))[0](p)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), u_plain, u_false)))


def test_inside_the_domain_both_coordinates_reach_one_optimum(wti_data):
    init = default_start(wti_data)
    a = fit_mle(wti_data, init)
    b = fit_mle(wti_data, init, spot_slope=True)
    # (the bundled panel prices one tenor exactly: a boundary optimum, reached both ways)
    assert bool(stopped(a.status)) and int(a.status) == int(b.status)
    assert abs(float(a.loglik) - float(b.loglik)) < 1e-4  # along the flat log-s.d. direction
    np.testing.assert_allclose(float(a.params.kappa), float(b.params.kappa), rtol=1e-3)


def test_on_the_ridge_the_spot_slope_fit_climbs_higher_and_reports_the_boundary():
    for seed in (0, 1):
        data = _ridge_panel(seed)
        init = default_start(data)
        plain = fit_mle(data, init)
        ridge = fit_mle(data, init, spot_slope=True)
        # the factors' coordinates stop on the way (hundreds of steps along a curved valley);
        # in the spot–slope ones the valley is the single direction log κ
        assert float(ridge.loglik) > float(plain.loglik) + 1.0, seed
        assert bool(on_ridge(ridge.params))
        assert float(ridge.params.kappa) >= KAPPA_FLOOR
        # κ at its floor is below the boundary threshold: not "converged"
        if float(ridge.params.kappa) < BOUND_TOL["scale"]:
            assert not bool(ridge.converged)
        # the reported log-likelihood is the filter's at the reported parameters (to the
        # digits the factors' variances, ~1e6 here, leave the filter)
        ll = log_likelihood_data(ridge.params, data)
        np.testing.assert_allclose(float(ll), float(ridge.loglik), atol=1e-4, rtol=0)


def test_the_engine_polishes_a_best_point_on_the_ridge_in_spot_slope_coordinates():
    """``KalmanEngine``'s ridge round: an end point the factors' coordinates left on the ridge
    (short of its top) is refitted from itself in the spot–slope ones and climbs; an end point
    off the ridge, a fixed ρ, or ``method="EM"`` get no such round."""
    import ssjax
    from ssjax.core.filter import default_prior
    from ssjax.core.params import flatten_params
    from ssjax.fit.optimum import stack_params

    data = _ridge_panel(1)
    st, prior = default_start(data), default_prior(data)
    free = jnp.ones(flatten_params(st).shape[0])
    eng = ssjax.KalmanEngine(n_starts=1)
    lanes = eng._run_lanes(data, stack_params([st]), prior, free)
    end = jax.tree.map(lambda a: a[0], lanes.params)
    assert bool(on_ridge(end))  # (the factors' fit from the data-derived start stops there)
    out, best, rounds = eng._ridge_polish(lanes, 0, 1, data, prior, free)
    assert rounds == 1 and best == 1
    assert float(out.loglik[1]) > float(lanes.loglik[0]) + 0.5
    assert float(out.params.kappa[1]) >= KAPPA_FLOOR
    # held fixed ρ: the spot–slope coordinates would move it, so no round; nor for EM
    fixed = free.at[3].set(0.0)
    assert eng._ridge_polish(lanes, 0, 1, data, prior, fixed)[2] == 0
    assert ssjax.KalmanEngine(method="EM")._ridge_polish(lanes, 0, 1, data, prior, free)[2] == 0
    # off the ridge: nothing to do
    inside = lanes._replace(params=lanes.params._replace(rho=jnp.asarray([0.2])))
    assert eng._ridge_polish(inside, 0, 1, data, prior, free)[2] == 0
