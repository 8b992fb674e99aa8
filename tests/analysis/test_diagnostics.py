"""Filter diagnostics: innovation tests against SciPy/statsmodels/hand values, NIS coverage on a
correctly specified simulated panel filtered with the true parameters, fit-error tables, plots.

One simulated panel (and one with a spot) is filtered once per module; nothing is fitted.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import ssjax
from ssjax.analysis import diagnostics as D
from ssjax.fit.results import KalmanFit

T = 400
# jitted: eager simulation and prior run op by op (~10 s of dispatch and small compilations)
_simulate = jax.jit(ssjax.simulate, static_argnames="noise")
_prior = jax.jit(ssjax.default_prior)
TTM = np.array([0.1, 0.5, 1.0])


@pytest.fixture(scope="module")
def true_params():
    return ssjax.make_params(1.2, 0.3, 0.18, 0.3, 0.02, np.array([0.01, 0.006, 0.008]))


@pytest.fixture(scope="module")
def panel(true_params):
    ttm = np.tile(TTM, (T, 1))
    sim = _simulate(true_params, jax.random.PRNGKey(0), ttm, 1 / 52)
    F = np.asarray(sim.F).copy()
    F[np.random.default_rng(0).random(F.shape) < 0.1] = np.nan  # 10% missing
    data = ssjax.make_market_data(F, ttm, dt=1 / 52)
    filt = D._filter_jit(true_params, data, _prior(data))
    return data, filt


@pytest.fixture(scope="module")
def report(true_params, panel):
    data, filt = panel
    dates = pd.date_range("2000-01-04", periods=T, freq="7D")
    return D.diagnostics_report(
        true_params, data, filter_result=filt, dates=dates, tenor_names=["F1", "F6", "F12"]
    )


# ---- innovations ---------------------------------------------------------------------
def test_standardized_innovations_are_standard_normal(panel):
    data, filt = panel
    u = D.standardized_innovations(filt, data.mask)
    mask = np.asarray(data.mask)
    assert u.shape == mask.shape
    assert np.all(np.isnan(u[~mask])) and np.all(np.isfinite(u[mask]))
    np.testing.assert_array_equal(np.isnan(D.standardized_innovations(filt)), ~mask)
    for i in range(u.shape[1]):
        x = u[1:, i][np.isfinite(u[1:, i])]  # date 0 is dominated by the prior
        assert abs(x.mean()) < 4 / math.sqrt(x.size)
        assert abs(x.std() - 1) < 0.1


def test_whitened_innovations_reproduce_the_loglik_and_are_white(true_params, panel):
    data, filt = panel
    j = D.whitened_innovations(true_params, data, filt)
    np.testing.assert_array_equal(j.nobs, np.asarray(data.mask).sum(axis=1))
    ll = -0.5 * (j.nobs * math.log(2 * math.pi) + j.logdet + j.nis)
    np.testing.assert_allclose(ll, np.asarray(filt.loglik_t), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(np.nansum(j.whitened**2, axis=1), j.nis, rtol=1e-12)
    # the first whitened component is the first observed tenor's marginal standardized one
    u = D.standardized_innovations(filt, data.mask)
    both = np.isfinite(u[:, 0])
    np.testing.assert_allclose(j.whitened[both, 0], u[both, 0], rtol=1e-10)
    e = j.whitened[1:][np.isfinite(j.whitened[1:])]
    assert abs(e.mean()) < 4 / math.sqrt(e.size) and abs(e.std() - 1) < 0.06
    # computed without a filter result: the same
    j2 = D.whitened_innovations(true_params, data)
    np.testing.assert_allclose(j2.nis, j.nis, rtol=1e-12)


def test_whitened_innovations_with_a_spot():
    # the identity with loglik_t holds for any data: reuse two simulated tenors, spot near F1
    p = ssjax.make_params(1.0, 0.3, 0.2, 0.2, 0.0, np.array([0.01, 0.01]), spot_sd=0.02)
    ttm = np.tile([0.2, 0.8], (60, 1))
    rng = np.random.default_rng(3)
    F = np.exp(3.0 + np.cumsum(0.03 * rng.normal(size=(60, 1)), axis=0) + [0.0, 0.02])
    S = F[:, 0] * np.exp(0.02 * rng.normal(size=60))
    S[[5, 17]] = np.nan
    data = ssjax.make_market_data(F, ttm, S=S, dt=1 / 52)
    filt = D._filter_jit(p, data, _prior(data))
    j = D.whitened_innovations(p, data, filt)
    assert j.whitened.shape == (60, 3)
    assert np.isnan(j.whitened[5, 2]) and j.nobs[5] == 2 and j.nobs[6] == 3
    ll = -0.5 * (j.nobs * math.log(2 * math.pi) + j.logdet + j.nis)
    np.testing.assert_allclose(ll, np.asarray(filt.loglik_t), rtol=1e-10, atol=1e-9)


# ---- tests against references ---------------------------------------------------------
def test_jarque_bera_matches_scipy():
    x = np.random.default_rng(1).standard_t(5, size=300)
    r = D.jarque_bera(x)
    ref = stats.jarque_bera(x)
    assert r.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert r.pvalue == pytest.approx(ref.pvalue, rel=1e-10)
    assert r.skew == pytest.approx(stats.skew(x), rel=1e-12)
    assert r.kurtosis == pytest.approx(stats.kurtosis(x, fisher=False), rel=1e-12)
    # NaN entries are ignored
    y = np.concatenate([x[:100], [np.nan], x[100:]])
    assert D.jarque_bera(y).statistic == pytest.approx(r.statistic, rel=1e-12)
    assert D.jarque_bera(y).nobs == 300


def test_ljung_box_hand_computation_and_gaps():
    x = np.array([0.3, -1.2, 0.8, 1.5, -0.4, 0.1, -0.9, 1.1, 0.6, -0.2, 0.4, -1.0])
    n, d = x.size, x - x.mean()
    r = [np.sum(d[:-k] * d[k:]) / np.sum(d * d) for k in (1, 2, 3)]
    q = n * (n + 2) * sum(rk**2 / (n - k) for k, rk in zip((1, 2, 3), r, strict=True))
    lb = D.ljung_box(x, 3)
    assert lb.statistic == pytest.approx(q, rel=1e-12)
    assert lb.pvalue == pytest.approx(stats.chi2.sf(q, 3), rel=1e-12)
    assert (lb.df, lb.nobs) == (3, 12)
    assert D.ljung_box(x, 3, model_dof=1).pvalue == pytest.approx(stats.chi2.sf(q, 2), rel=1e-12)
    # a gap keeps its place in time: lag-k pairs across it are dropped
    g = x.copy()
    g[5] = np.nan
    f = np.isfinite(g)
    dg = np.where(f, g - g[f].mean(), 0.0)
    r1 = np.sum(dg[:-1] * dg[1:]) / np.sum(dg * dg)
    assert D.autocorrelation(g, 1)[1] == pytest.approx(r1, rel=1e-12)
    assert D.ljung_box(g, 1).nobs == 11


def test_ljung_box_matches_statsmodels():
    sm = pytest.importorskip("statsmodels.stats.diagnostic")
    rng = np.random.default_rng(2)
    e = rng.normal(size=250)
    x = e.copy()
    x[1:] += 0.3 * e[:-1]  # MA(1): a real autocorrelation
    ref = sm.acorr_ljungbox(x, lags=[10], model_df=2)
    lb = D.ljung_box(x, 10, model_dof=2)
    assert lb.statistic == pytest.approx(float(ref["lb_stat"].iloc[0]), rel=1e-10)
    assert lb.pvalue == pytest.approx(float(ref["lb_pvalue"].iloc[0]), rel=1e-8)
    assert lb.pvalue < 0.01


def test_test_argument_errors():
    x = np.arange(20.0)
    with pytest.raises(ValueError, match="lags"):
        D.ljung_box(x, 0)
    with pytest.raises(ValueError, match="model_dof"):
        D.ljung_box(x, 3, model_dof=3)
    with pytest.raises(ValueError, match="x:"):
        D.ljung_box(x[:5], 10)
    with pytest.raises(ValueError, match="x must be one-dimensional"):
        D.ljung_box(np.ones((5, 2)), 1)
    with pytest.raises(ValueError, match="constant"):
        D.jarque_bera(np.ones(10))
    with pytest.raises(ValueError, match="level"):
        D.nis_bands([2, 3], level=1.5)
    with pytest.raises(ValueError, match="nobs_t"):
        D.nis_bands([-1])
    with pytest.raises(ValueError, match="nis and nobs_t"):
        D.nis_summary([1.0, 2.0], [2])


# ---- NIS ------------------------------------------------------------------------------
def test_nis_bands_are_chi2_quantiles():
    b = D.nis_bands([0, 1, 3], level=0.9)
    assert np.isnan(b.lower[0]) and np.isnan(b.upper[0])
    assert b.lower[2] == pytest.approx(stats.chi2.ppf(0.05, 3))
    assert b.upper[1] == pytest.approx(stats.chi2.ppf(0.95, 1))


def test_nis_outside_its_band_about_five_percent(report):
    s = report.nis.iloc[0]
    d = int(s["dates"])
    assert d == T - 1  # burn_in = 1
    # within a 3-sigma binomial tolerance of 5%, and not rejected by the binomial test
    assert abs(s["frac_outside"] - 0.05) < 3 * math.sqrt(0.05 * 0.95 / d)
    assert s["binom_pvalue"] > 0.01
    assert s["mean_nis_per_dof"] == pytest.approx(1.0, abs=0.1)
    assert s["total_pvalue"] > 0.01


# ---- fit errors -----------------------------------------------------------------------
def test_fit_error_table_hand_computation():
    F_mkt = np.array([[10.0, 20.0], [11.0, np.nan], [12.0, 21.0], [13.0, 22.0]])
    F_mod = np.array([[10.5, 19.0], [10.8, 20.5], [12.3, 21.5], [12.9, 22.4]])
    mask = np.array([[True, True], [True, True], [True, False], [True, True]])
    t = D.fit_error_table(F_mkt, F_mod, mask, tenor_names=["A", "B"])
    e_a = np.log(F_mod[:, 0]) - np.log(F_mkt[:, 0])
    e_b = (np.log(F_mod[:, 1]) - np.log(F_mkt[:, 1]))[[0, 3]]  # NaN and masked dropped
    for name, e in (("A", e_a), ("B", e_b)):
        assert t.loc[name, "mean_error"] == pytest.approx(e.mean(), rel=1e-12)
        assert t.loc[name, "sd_error"] == pytest.approx(e.std(ddof=1), rel=1e-12)
        assert t.loc[name, "mean_abs_error"] == pytest.approx(np.abs(e).mean(), rel=1e-12)
        assert t.loc[name, "rmse"] == pytest.approx(math.sqrt(np.mean(e * e)), rel=1e-12)
        assert t.loc[name, "n"] == e.size
    assert t.attrs["error"] == "ln F_model - ln F_mkt"
    lev = D.fit_error_table(F_mkt, F_mod, in_logs=False)
    assert lev.loc["T1", "mean_error"] == pytest.approx((F_mod[:, 0] - F_mkt[:, 0]).mean())
    with pytest.raises(ValueError, match="F_model"):
        D.fit_error_table(F_mkt, F_mod[:, :1])
    with pytest.raises(ValueError, match="tenor_names"):
        D.fit_error_table(F_mkt, F_mod, tenor_names=["A"])


# ---- the report and its plots ---------------------------------------------------------
def test_report_tables(report):
    for table in (report.innovations, report.whitened):
        assert list(table.index) == ["F1", "F6", "F12"]
        assert set(table.columns) >= {"mean", "sd", "lb_stat", "lb_pvalue", "jb_stat", "jb_pvalue"}
        assert np.all(table["lb_pvalue"] > 0.001) and np.all(table["jb_pvalue"] > 0.001)
        assert np.all(np.abs(table["sd"] - 1) < 0.1)
    assert list(report.fit_errors.index) == ["F1", "F6", "F12"]
    # the filtered fit errors are of the order of the measurement noise
    assert np.all(report.fit_errors["sd_error"] < 0.012)
    text = report.to_text()
    assert "NIS" in text and "Fit errors" in text and "F12" in text


def test_report_from_a_fit_object(true_params, panel, report):
    data, filt = panel
    F_model = np.exp(np.asarray(data.log_f)) * 1.01  # any model path: errors of ln 1.01
    fit = KalmanFit(
        params=true_params, method="MLE", loglik=float(filt.loglik), nobs=int(data.nobs),
        converged=True, status="", num_steps=0, grad_norm=0.0, state_t=np.zeros(2),
        state_path=np.asarray(filt.filtered_means), F_model_t=F_model[-1],
        F_model_path=F_model, t_star=T - 1, covariances=lambda: (np.eye(8), np.eye(8)),
        free=np.ones(8), filter_result=filt, smoother_result=None,
        tenor_names=["F1", "F6", "F12"], extra={"data": data, "prior": _prior(data)},
    )  # fmt: skip
    r = D.diagnostics_report(fit, lags=5)
    pd.testing.assert_frame_equal(r.nis, report.nis)
    assert r.innovations["lb_lags"].tolist() == [5, 5, 5]
    np.testing.assert_allclose(r.fit_errors["mean_error"], math.log(1.01), rtol=1e-10)
    np.testing.assert_allclose(r.fit_errors["sd_error"], 0.0, atol=1e-12)
    r2 = D.diagnostics_report((true_params, data), filter_result=filt)
    pd.testing.assert_frame_equal(r2.nis, report.nis)
    with pytest.raises(ValueError, match="data is required"):
        D.diagnostics_report(true_params)
    with pytest.raises(ValueError, match="source must be"):
        D.diagnostics_report("fit")
    with pytest.raises(ValueError, match="burn_in"):
        D.diagnostics_report(true_params, data, filter_result=filt, burn_in=-1)
    with pytest.raises(ValueError, match="dates"):
        D.diagnostics_report(true_params, data, filter_result=filt, dates=["2000-01-04"])


def test_plots_are_written(report, tmp_path):
    paths = D.plot_diagnostics(report, tmp_path / "plots", prefix="sim_", dpi=50)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        f"sim_{n}.png" for n in ("standardized_innovations", "acf", "qq", "nis", "fit_errors")
    )
    for p in paths:
        assert p.exists() and p.stat().st_size > 2000
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="already a DiagnosticsReport"):
        D.plot_diagnostics(report, tmp_path, lags=3)
