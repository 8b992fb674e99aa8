"""Bounds, degenerate end points, multi-start designs and the fits that use them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssjax
from ssjax.core.params import flatten_params
from ssjax.fit.optimum import (
    BOUND_TOL,
    at_bounds,
    bound_names,
    bound_vector,
    degenerate,
    describe_bounds,
    move_inside,
    multi_start,
    offset_start,
    start_design,
)
from tests.reference import np_kalman_filter

P = ssjax.make_params(1.2, 0.3, 0.18, 0.3, 0.03, [0.02, 0.006, 0.004])


def test_at_bounds_flags_each_kind_of_bound():
    assert not bool(jnp.any(bound_vector(P)))
    cases = {
        "kappa": P._replace(kappa=jnp.asarray(5e-5)),
        "sigma_x": P._replace(sigma_x=jnp.asarray(1e-9)),
        "sigma_y": P._replace(sigma_y=jnp.asarray(1e-9)),
        "rho": P._replace(rho=jnp.asarray(-1.0 + 1e-8)),
        "meas_sd[1]": P._replace(meas_sd=jnp.asarray([0.02, 1e-7, 0.004])),
    }
    for name, p in cases.items():
        assert bound_names(p) == [name], name
        assert bool(degenerate(p)) == (not name.startswith("meas_sd")), name
    big = P._replace(kappa=jnp.asarray(2 * BOUND_TOL["kappa_max"]))
    assert bound_names(big) == ["kappa"] and "∞" in describe_bounds(big)
    assert "priced exactly" in describe_bounds(cases["meas_sd[1]"])
    assert describe_bounds(cases["rho"]).startswith("rho → -1")
    # just inside the thresholds is not a bound
    inside = P._replace(rho=jnp.asarray(0.9999), sigma_x=jnp.asarray(2e-4))
    assert bound_names(inside) == []
    # a parameter held fixed at a bound (a nested restriction) never counts
    free = np.ones(8)
    free[1] = 0.0
    assert bound_names(cases["sigma_x"], free) == []
    assert not bool(degenerate(cases["sigma_x"], free))
    # NumPy leaves work too (the shell calls it on host arrays)
    b = at_bounds(jax.tree.map(np.asarray, cases["rho"]))
    assert bool(b.rho) and not bool(b.kappa)


def test_move_inside_moves_only_the_degenerate_coordinates():
    ref = P._replace(kappa=jnp.asarray(0.9), sigma_x=jnp.asarray(0.25))
    bad = P._replace(
        kappa=jnp.asarray(1e-6), rho=jnp.asarray(1.0 - 1e-9), meas_sd=jnp.asarray([0.02, 0, 0.004])
    )
    m = move_inside(bad, ref, rho=-0.5)
    assert float(m.kappa) == 0.9 and float(m.rho) == -0.5
    assert float(m.sigma_x) == float(bad.sigma_x)  # not at a bound: kept
    np.testing.assert_array_equal(m.meas_sd, bad.meas_sd)  # noise s.d.s are not degenerate
    # held parameters stay where they are
    free = np.ones(8)
    free[0] = 0.0
    m2 = move_inside(bad, ref, rho=-0.5, free=free)
    assert float(m2.kappa) == float(bad.kappa) and float(m2.rho) == -0.5


def test_start_design_spreads_over_every_range_and_both_signs():
    d = start_design(16, seed=3)
    assert d.log_scale.shape == (16, 4) and d.keep_rho[0] and not d.keep_rho[1:].any()
    np.testing.assert_array_equal(d.log_scale[0], 0.0)
    half = np.array([1.5, 1.0, 0.7, 1.0])
    assert np.all(np.abs(d.log_scale) <= half)
    # stratified: each offset has one value in each of the 15 strata
    for j in range(4):
        strata = np.floor((d.log_scale[1:, j] / half[j] + 1.0) / 2.0 * 15).astype(int)
        assert sorted(strata) == list(range(15))
    rho = d.rho[1:]
    assert (rho > 0).sum() == 7 and (rho < 0).sum() == 8
    assert np.all((np.abs(rho) >= 0.1) & (np.abs(rho) <= 0.85))
    assert not np.array_equal(start_design(16, seed=4).log_scale, d.log_scale)
    assert start_design(1).log_scale.shape == (1, 4)
    with pytest.raises(ValueError, match="starts must be >= 1"):
        start_design(0)


def test_multi_start_applies_the_design_around_a_start():
    d = start_design(5, seed=0)
    b = multi_start(P, d)
    assert b.kappa.shape == (5,) and b.meas_sd.shape == (5, 3)
    first = jax.tree.map(lambda a: a[0], b)
    np.testing.assert_allclose(flatten_params(first), flatten_params(P))
    k = 3
    one = offset_start(P, d.log_scale[k], d.rho[k], d.keep_rho[k])
    np.testing.assert_allclose(flatten_params(jax.tree.map(lambda a: a[k], b)), flatten_params(one))
    np.testing.assert_allclose(float(one.kappa), 1.2 * np.exp(d.log_scale[k, 0]))
    np.testing.assert_allclose(one.meas_sd, np.asarray(P.meas_sd) * np.exp(d.log_scale[k, 3]))
    assert float(one.rho) == pytest.approx(d.rho[k]) and float(one.mu) == float(P.mu)


@pytest.fixture(scope="module")
def sim_panel():
    true = ssjax.make_params(1.2, 0.3, 0.18, 0.3, 0.03, [0.02, 0.006, 0.004, 0.003, 0.005])
    T, dt = 200, 7 / 365
    base = np.array([1, 5, 9, 13, 17]) / 12
    ttm = base[None, :] - (np.arange(T) % 4)[:, None] * dt
    sim = ssjax.simulate(true, jax.random.key(7), jnp.asarray(ttm), dt, x0=(0.1, 3.0))
    F = np.array(sim.F)
    ref = ssjax.KalmanEngine(n_starts=1).fit(F, ttm, dt=dt, theta0=true)
    return F, ttm, dt, ref


def test_degenerate_start_is_escaped_not_accepted(sim_panel):
    F, ttm, dt, ref = sim_panel
    assert ref.converged and not ref.at_bound  # the panel has an interior optimum
    bad = dict(rho=-0.9999999, sigma_x=5e-5)  # |ρ| at 1 and X switched off
    one = ssjax.KalmanEngine(n_starts=1).fit(F, ttm, dt=dt, theta0=bad)
    # the single fit from there stops at a degenerate point; the engine restarts from it
    # moved inside and reports an end point that is not degenerate
    assert one.extra["escape_rounds"] >= 1 and one.n_starts == 1 and one.extra["fits"] >= 2
    assert not set(one.at_bound) & {"kappa", "sigma_x", "sigma_y", "rho"}
    # with a large κ as well (X nearly white noise): restoring σ_X and ρ alone leads back to
    # the same point (2423.45, 554 nats below); the second round restores κ and the σs too
    for worse in (dict(bad, kappa=490.0), dict(kappa=30.0, rho=0.9999999, sigma_x=5e-5)):
        one = ssjax.KalmanEngine(n_starts=1).fit(F, ttm, dt=dt, theta0=worse)
        assert one.extra["escape_rounds"] == 2 and not one.at_bound, worse
        assert one.loglik >= ref.loglik - 1e-3, worse
    # with the default multi-start the same degenerate theta0 still ends at the optimum
    full = ssjax.KalmanEngine().fit(F, ttm, dt=dt, theta0=bad)
    assert full.loglik >= ref.loglik - 1e-3 and full.converged and not full.at_bound
    assert full.n_starts >= 16 and full.starts_at_best >= 2
    assert np.asarray(full.extra["start_logliks"])[0] < ref.loglik - 1.0  # theta0's lane


def test_kappa_to_infinity_start_is_escaped(sim_panel):
    F, ttm, dt, ref = sim_panel
    f = ssjax.KalmanEngine(n_starts=4).fit(F, ttm, dt=dt, theta0=dict(kappa=5e-5, rho=0.9999999))
    assert not set(f.at_bound) & {"kappa", "sigma_x", "sigma_y", "rho"}
    assert f.loglik >= ref.loglik - 1e-3


# reference optima of real 104-week windows (Tuesdays, ranks 1/3/6/9/12/24) where a single
# L-BFGS start ends at a degenerate point or a lower local maximum: the best of 32 starts
# (seed 1) and of every path in `python experiments/bench_optimum.py` (results/bench_optimum)
REAL_WINDOWS = [
    ("natgas", 80, 1000.0913),  # one start, no escape: κ 7.6, σ_X 5e-9, ρ = −1, loglik 590.3
    ("brent", 120, 2479.7278),  # one start: 1724.16, 756 nats below
    # 16 and 32 starts all end at 3276.93 (the 7th tenor priced exactly); the optimum prices
    # the 8th exactly: only the engine's switch round (or a neighbouring window) reaches it
    ("copper", 356, 3284.1520),
]


def _copper_weekly():
    from ssjax.data.panels import nearby_panel

    return nearby_panel(
        ssjax.datasets.load_copper_schwartz97().settlements, ranks=8, resample="W-TUE"
    )


@pytest.mark.parametrize(("series", "first", "known"), REAL_WINDOWS)
def test_default_fit_reaches_the_reference_on_real_windows(series, first, known):
    load = {"natgas": ssjax.datasets.load_natgas_rtl, "brent": ssjax.datasets.load_brent_rtl,
            "copper": _copper_weekly}  # fmt: skip
    p = load[series]()
    sl = slice(first, first + 104)
    F, ttm, dates, mask = p.F_mkt[sl], p.ttm[sl], p.dates[sl], p.mask[sl]
    fit = ssjax.KalmanEngine().fit(F, ttm, mask=mask, dates=dates)
    single = ssjax.KalmanEngine(n_starts=1).fit(F, ttm, mask=mask, dates=dates)
    assert fit.optimum_reached and fit.converged == (not fit.at_bound)
    assert not set(fit.at_bound) & {"kappa", "sigma_x", "sigma_y", "rho"}
    assert fit.loglik > single.loglik - 1e-6
    assert fit.loglik >= known - 1e-3
    # the reported value is the exact likelihood (an independent NumPy filter)
    th = {k: np.asarray(v) for k, v in fit.params._asdict().items() if v is not None}
    data = fit.extra["data"]
    prior = fit.extra["prior"]
    ll = np_kalman_filter(
        th, np.asarray(data.log_f), np.asarray(data.ttm), np.asarray(data.mask),
        np.asarray(data.dt), np.asarray(prior.mean), np.asarray(prior.cov),
    )["loglik"]  # fmt: skip
    assert ll == pytest.approx(fit.loglik, abs=1e-6)
