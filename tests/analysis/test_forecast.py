"""h-step forecasts and the out-of-sample walk forward (ssjax.analysis.forecast)."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest

import ssjax
from ssjax.analysis.forecast import (
    forecast_accuracy,
    forecast_dm_tests,
    forecast_log_futures,
    forecast_path,
    walk_forward_forecasts,
)
from ssjax.datasets import Panel
from tests.reference import np_measurement, np_transition

THETA = dict(kappa=1.4, sigma_x=0.3, sigma_y=0.17, rho=0.3, mu=0.03,
             meas_sd=np.array([0.02, 0.006, 0.004]))  # fmt: skip


def test_one_origin_matches_stepwise_numpy_propagation():
    p = ssjax.make_params(**THETA)
    m = np.array([0.1, 3.0])
    P = np.array([[0.02, 0.003], [0.003, 0.01]])
    steps = [7 / 365, 7 / 365, 8 / 365, 6 / 365]
    ttm = np.array([0.05, 0.5, 1.3])
    # NumPy: four one-step exact transitions in a row
    mm, PP = m.copy(), P.copy()
    for d in steps:
        Fm, c, Q = np_transition(THETA, d)
        mm, PP = Fm @ mm + c, Fm @ PP @ Fm.T + Q
    b, A = np_measurement(THETA, ttm)
    H = np.column_stack([b, np.ones(3)])
    want_m = H @ mm + A
    want_v = np.einsum("ij,jk,ik->i", H, PP, H)
    f, v = forecast_log_futures(p, m, P, sum(steps), ttm, include_noise=False)
    np.testing.assert_allclose(f, want_m, rtol=1e-12)
    np.testing.assert_allclose(v, want_v, rtol=1e-10)
    _, v2 = forecast_log_futures(p, m, P, sum(steps), ttm)
    np.testing.assert_allclose(np.asarray(v2) - np.asarray(v), THETA["meas_sd"] ** 2, rtol=1e-10)


def test_one_step_forecast_is_the_filters_prediction():
    """h = 1 from the filtered state at t is the filter's predicted observation at t+1."""
    p = ssjax.make_params(**THETA)
    T = 30
    ttm = np.array([0.1, 0.6, 1.2]) - np.arange(T)[:, None] * 0.002
    sim = ssjax.simulate(p, jax.random.PRNGKey(1), ttm, 7 / 365)
    F = np.asarray(sim.F)
    data = ssjax.make_market_data(F, ttm, dt=7 / 365)
    filt = ssjax.kalman_filter(p, data)
    m, v = forecast_path(p, filt.filtered_means, filt.filtered_covs, np.full(T - 1, 7 / 365),
                         ttm, 1)  # fmt: skip
    pred_obs = np.log(F) - np.asarray(filt.innovations)
    np.testing.assert_allclose(m[:-1], pred_obs[1:], rtol=1e-12)
    iv = np.asarray(filt.innovation_vars)
    iv = np.diagonal(iv, axis1=-2, axis2=-1) if iv.ndim == 3 else iv
    np.testing.assert_allclose(v[:-1], iv[1:], rtol=1e-9)
    assert np.isnan(m[-1]).all()


def test_forecast_path_argument_errors():
    p = ssjax.make_params(**THETA)
    means, covs = np.zeros((5, 2)), np.tile(np.eye(2), (5, 1, 1))
    with pytest.raises(ValueError, match="h must be"):
        forecast_path(p, means, covs, 0.02, np.ones((5, 3)), 0)
    with pytest.raises(ValueError, match="ttm must have shape"):
        forecast_path(p, means, covs, 0.02, np.ones((4, 3)), 1)
    m, _ = forecast_path(p, means, covs, 0.02, np.ones((5, 3)), 5)
    assert np.isnan(m).all()


def _panel(T=70, seed=5):
    p = ssjax.make_params(**THETA)
    dates = pd.date_range("2001-01-02", periods=T, freq="7D")
    ttm = np.array([0.08, 0.5, 1.1]) + np.zeros((T, 1))
    sim = ssjax.simulate(p, jax.random.PRNGKey(seed), ttm, 7 / 365)
    F = np.array(sim.F)
    F[10, 2] = np.nan  # a missing price
    return Panel(
        dates=dates, F_mkt=F, ttm=ttm, S=None, contracts=None, tenor_names=["A", "B", "C"],
        dt=np.full(T - 1, 7 / 365), mask=None, commodity="sim",
    )  # fmt: skip


@pytest.fixture(scope="module")
def wf():
    panel = _panel()
    fc = walk_forward_forecasts(panel, models=("random_walk", "two_factor"), horizons=(1, 4),
                                min_window=40, refit_every=10)  # fmt: skip
    return panel, fc


def test_walk_forward_layout_and_random_walk(wf):
    panel, fc = wf
    assert set(fc.model) == {"random_walk", "two_factor"} and set(fc.h) == {1, 4}
    assert list(fc.tenor.cat.categories) == ["A", "B", "C"]
    assert fc.origin.min() == panel.dates[39]
    assert (fc.target - fc.origin).isin([pd.Timedelta(7, "D"), pd.Timedelta(28, "D")]).all()
    np.testing.assert_allclose(fc.error, fc.actual - fc.forecast)
    logF = pd.DataFrame(np.log(panel.F_mkt), index=panel.dates, columns=["A", "B", "C"])
    rw = fc[(fc.model == "random_walk") & (fc.h == 4)]
    want = [logF.loc[o, str(t)] for o, t in zip(rw.origin, rw.tenor, strict=True)]
    np.testing.assert_allclose(rw.forecast, want)
    two = fc[fc.model == "two_factor"]
    assert two.optimum_reached.all() and (two.sd > 0).all()
    # refits every 10 dates from date 39: the fit date is the last refit at or before the origin
    idx = panel.dates.get_indexer(two.origin)
    fit_idx = panel.dates.get_indexer(two.fit_date)
    np.testing.assert_array_equal(fit_idx, 39 + (idx - 39) // 10 * 10)
    # the missing price is never a target
    assert not ((fc.target == panel.dates[10]) & (fc.tenor == "C")).any()


def test_walk_forward_has_no_look_ahead(wf):
    panel, fc = wf
    k = 55
    F2 = panel.F_mkt.copy()
    F2[k:] *= np.exp(np.linspace(0.1, 0.5, panel.F_mkt.shape[0] - k))[:, None]
    fc2 = walk_forward_forecasts(panel._replace(F_mkt=F2), models=("two_factor",),
                                 horizons=(1, 4), min_window=40, refit_every=10)  # fmt: skip
    a = fc[(fc.model == "two_factor") & (fc.origin < panel.dates[k])]
    b = fc2[fc2.origin < panel.dates[k]]
    np.testing.assert_allclose(a.forecast.to_numpy(), b.forecast.to_numpy(), rtol=0, atol=0)
    later = fc2[fc2.origin >= panel.dates[k]].forecast.to_numpy()
    assert not np.allclose(
        later, fc[(fc.model == "two_factor") & (fc.origin >= panel.dates[k])].forecast.to_numpy()
    )


def test_rolling_window_uses_fixed_length_windows():
    panel = _panel(T=60)
    fc = walk_forward_forecasts(panel, models=("two_factor",), horizons=(1,), min_window=40,
                                refit_every=10, window="rolling", window_length=30)  # fmt: skip
    assert fc.optimum_reached.all() and np.isfinite(fc.forecast).all()
    assert fc.attrs["window"] == "rolling"


def test_accuracy_and_dm_by_hand():
    rng = np.random.default_rng(0)
    n = 60
    origins = pd.date_range("2000-01-04", periods=n, freq="7D")
    e_good = rng.normal(0, 0.01, n)
    e_bad = rng.normal(0, 0.03, n)
    rows = []
    for model, e in (("two_factor", e_good), ("gbm", e_bad)):
        rows.append(pd.DataFrame({"model": model, "h": 1, "origin": origins, "tenor": "A",
                                  "error": e}))  # fmt: skip
    fc = pd.concat(rows, ignore_index=True)
    fc.loc[len(fc)] = {
        "model": "gbm",
        "h": 1,
        "origin": origins[-1] + pd.Timedelta(7, "D"),
        "tenor": "A",
        "error": 5.0,
    }  # only one model: dropped by common=True
    acc = forecast_accuracy(fc)
    r = acc.loc[(1, "A", "gbm")]
    assert r.rmse == pytest.approx(np.sqrt(np.mean(e_bad**2)))
    assert r.mae == pytest.approx(np.mean(np.abs(e_bad)))
    assert r.n == n
    assert acc.loc[(1, "all", "two_factor")].rmse == pytest.approx(np.sqrt(np.mean(e_good**2)))
    assert forecast_accuracy(fc, common=False).loc[(1, "A", "gbm")].n == n + 1
    assert "coverage95" not in acc  # no predictive s.d. in this table
    sd = np.where(fc.model == "two_factor", 0.01, np.nan)
    cov = forecast_accuracy(fc.assign(sd=sd))["coverage95"]
    assert cov.loc[(1, "A", "two_factor")] == pytest.approx(np.mean(np.abs(e_good) <= 0.0196))
    assert np.isnan(cov.loc[(1, "A", "gbm")])
    dm = forecast_dm_tests(fc)
    row = dm.loc[(1, "A", "gbm")]
    assert row.dm_stat < -3 and row.p_value_model_better < 0.01
    assert row.n == n
    assert row.mean_loss_diff == pytest.approx(np.mean(e_good**2 - e_bad**2))
    with pytest.raises(ValueError, match="no forecasts of model"):
        forecast_dm_tests(fc, model="mean_reverting")


def test_walk_forward_argument_errors():
    panel = _panel(T=30)
    with pytest.raises(ValueError, match="unknown"):
        walk_forward_forecasts(panel, models=("arima",))
    with pytest.raises(ValueError, match="window must be"):
        walk_forward_forecasts(panel, window="sliding", min_window=20)
    with pytest.raises(ValueError, match="horizons"):
        walk_forward_forecasts(panel, horizons=(0,), min_window=20)
    with pytest.raises(ValueError, match="min_window"):
        walk_forward_forecasts(panel, min_window=30)
    with pytest.raises(ValueError, match="refit_every"):
        walk_forward_forecasts(panel, min_window=20, refit_every=0)
    with pytest.raises(ValueError, match="window_length"):
        walk_forward_forecasts(panel, min_window=20, window="rolling", window_length=25)
