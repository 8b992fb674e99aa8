"""Tests of ssjax.fit.stats against hand computations, SciPy and statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from ssjax.fit.stats import (
    DieboldMarianoResult,
    diebold_mariano,
    information_criteria,
    likelihood_ratio_test,
    newey_west_lags,
    newey_west_variance,
)


# --------------------------------------------------------------------------------------
# Independent references (explicit loops, no vectorized shortcuts)
# --------------------------------------------------------------------------------------
def _loop_lrv(x, lags, uniform=False):
    """γ_0 + 2 Σ w_j γ_j with explicit loops; γ_j divided by n, about the mean."""
    n = len(x)
    mean = 0.0
    for v in x:
        mean += v
    mean /= n
    total = 0.0
    for j in range(lags + 1):
        g = 0.0
        for t in range(j, n):
            g += (x[t] - mean) * (x[t - j] - mean)
        g /= n
        w = 1.0 if uniform else 1.0 - j / (lags + 1.0)
        total += g if j == 0 else 2.0 * w * g
    return total


def _series(n, seed):
    rng = np.random.default_rng(seed)
    x = np.empty(n)
    x[0] = rng.standard_normal()
    for t in range(1, n):
        x[t] = 0.5 * x[t - 1] + rng.standard_normal()
    return x + 0.3


# --------------------------------------------------------------------------------------
# Newey–West
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("lags", [0, 1, 3, 7])
def test_newey_west_matches_loop(lags):
    x = _series(60, seed=1)
    assert newey_west_variance(x, lags) == pytest.approx(_loop_lrv(list(x), lags), rel=1e-12)


def test_newey_west_lag0_is_population_variance():
    x = _series(40, seed=2)
    assert newey_west_variance(x, 0) == pytest.approx(np.var(x), rel=1e-12)


@pytest.mark.parametrize("n", [1, 2, 10, 99, 100, 250, 500, 1000])
def test_newey_west_default_lags_rule(n):
    expected = min(int(math.floor(4 * (n / 100) ** (2 / 9))), n - 1)
    assert newey_west_lags(n) == expected
    x = _series(n, seed=n)
    assert newey_west_variance(x) == pytest.approx(newey_west_variance(x, expected), rel=1e-14)
    if n >= 100:  # the rule's values quoted in the docstring
        assert newey_west_lags(n) == {100: 4, 250: 4, 500: 5, 1000: 6}.get(n, expected)


@pytest.mark.parametrize("lags", [None, 0, 2, 5])
def test_newey_west_matches_statsmodels(lags):
    sw = pytest.importorskip("statsmodels.stats.sandwich_covariance")
    lm = pytest.importorskip("statsmodels.regression.linear_model")
    x = _series(150, seed=3)
    n = x.size
    ours = newey_west_variance(x, lags)
    # inner HAC matrix of the demeaned series (not divided by n; nlags=None: same rule)
    s = sw.S_hac_simple(x - x.mean(), nlags=lags)
    assert ours == pytest.approx(float(s[0, 0]) / n, rel=1e-12)
    # HAC standard error of the mean from an OLS on a constant: Var(x̄) = σ²_LR / n
    maxlags = newey_west_lags(n) if lags is None else lags
    fit = lm.OLS(x, np.ones(n)).fit(
        cov_type="HAC", cov_kwds={"maxlags": maxlags, "use_correction": False}
    )
    assert ours == pytest.approx(float(fit.bse[0]) ** 2 * n, rel=1e-10)


def test_newey_west_errors():
    with pytest.raises(ValueError, match=r"x contains 1 NaN"):
        newey_west_variance([1.0, np.nan, 2.0])
    with pytest.raises(ValueError, match="x must be 1-D"):
        newey_west_variance(np.ones((3, 2)))
    with pytest.raises(ValueError, match="x is empty"):
        newey_west_variance([])
    with pytest.raises(ValueError, match="lags must be >= 0"):
        newey_west_variance([1.0, 2.0, 3.0], -1)
    with pytest.raises(ValueError, match="lags must be < the number of observations"):
        newey_west_variance([1.0, 2.0, 3.0], 3)
    with pytest.raises(ValueError, match="lags must be an integer"):
        newey_west_variance([1.0, 2.0, 3.0], 1.5)
    with pytest.raises(ValueError, match="infinite"):
        newey_west_variance([1.0, np.inf, 3.0])


# --------------------------------------------------------------------------------------
# Diebold–Mariano
# --------------------------------------------------------------------------------------
E1 = np.array([0.8, -1.2, 0.3, 1.9, -0.4, 0.7, -1.5, 0.2, 1.1, -0.6, 0.9, -0.1])
E2 = np.array([0.5, -0.9, 0.6, 1.2, -0.8, 0.1, -1.0, 0.4, 0.7, -0.2, 0.3, -0.5])


def test_dm_tiny_series_by_hand():
    # d = e1² − e2² = [1, 3, 8, −1]; d̄ = 2.75; γ0 = (1.75² + .25² + 5.25² + 3.75²)/4
    e1 = np.array([1.0, 2.0, 3.0, 0.0])
    e2 = np.array([0.0, 1.0, 1.0, 1.0])
    gamma0 = (1.75**2 + 0.25**2 + 5.25**2 + 3.75**2) / 4
    assert gamma0 == pytest.approx(11.1875)
    dm = 2.75 / math.sqrt(gamma0 / 4)
    r = diebold_mariano(e1, e2, harvey=False)
    assert r.statistic == pytest.approx(dm, rel=1e-12)
    assert r.statistic == pytest.approx(1.6443572, rel=1e-7)
    assert r.mean_loss_diff == pytest.approx(2.75)
    assert r.pvalue == pytest.approx(2 * sps.norm.sf(dm), rel=1e-12)
    # HLN with h = 1: factor sqrt((n − 1)/n) = sqrt(3/4), t(3)
    r = diebold_mariano(e1, e2)
    assert r.statistic == pytest.approx(dm * math.sqrt(3 / 4), rel=1e-12)
    assert r.pvalue == pytest.approx(2 * sps.t.sf(dm * math.sqrt(0.75), 3), rel=1e-12)


@pytest.mark.parametrize("h", [1, 2, 3])
@pytest.mark.parametrize("harvey", [True, False])
def test_dm_matches_hand_loop(h, harvey):
    n = len(E1)
    d = []
    for t in range(n):
        d.append(E1[t] ** 2 - E2[t] ** 2)
    d_bar = sum(d) / n
    var = _loop_lrv(d, h - 1)  # default: Bartlett, h − 1 lags
    dm = d_bar / math.sqrt(var / n)
    if harvey:
        factor = math.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)
        stat = dm * factor
        lower, upper = sps.t.cdf(stat, n - 1), sps.t.sf(stat, n - 1)
    else:
        stat = dm
        lower, upper = sps.norm.cdf(stat), sps.norm.sf(stat)

    r = diebold_mariano(E1, E2, h=h, harvey=harvey)
    assert isinstance(r, DieboldMarianoResult)
    assert r.n == n and r.lags == h - 1
    assert r.mean_loss_diff == pytest.approx(d_bar, rel=1e-12)
    assert r.statistic == pytest.approx(stat, rel=1e-12)
    assert r.pvalue_model1_better == pytest.approx(lower, rel=1e-12)
    assert r.pvalue_model2_better == pytest.approx(upper, rel=1e-12)
    assert r.pvalue == pytest.approx(2 * min(lower, upper), rel=1e-12)
    assert r.pvalue_model1_better + r.pvalue_model2_better == pytest.approx(1.0)
    assert f"h={h}" in r.method and ("Student-t" in r.method) == harvey


def test_hln_factor_by_hand():
    # n = 12, h = 3: (12 + 1 − 6 + 3·2/12)/12 = 7.5/12
    r_hln = diebold_mariano(E1, E2, h=3)
    r_raw = diebold_mariano(E1, E2, h=3, harvey=False)
    assert r_hln.statistic / r_raw.statistic == pytest.approx(math.sqrt(7.5 / 12), rel=1e-12)


def test_dm_lags_kernel_and_losses():
    n = len(E1)
    d_abs = [abs(E1[t]) - abs(E2[t]) for t in range(n)]
    r = diebold_mariano(E1, E2, loss="absolute", lags=4, harvey=False)
    expected = (sum(d_abs) / n) / math.sqrt(_loop_lrv(d_abs, 4) / n)
    assert r.statistic == pytest.approx(expected, rel=1e-12)
    assert r.lags == 4
    # a callable loss equal to "absolute" gives the same result
    r2 = diebold_mariano(E1, E2, loss=np.abs, lags=4, harvey=False)
    assert r2.statistic == pytest.approx(r.statistic, rel=1e-14)
    # model 2 has the smaller squared errors here: d̄ > 0
    r3 = diebold_mariano(E1, E2)
    assert r3.mean_loss_diff > 0 and r3.pvalue_model2_better < r3.pvalue_model1_better
    # uniform kernel (original DM / HLN estimator), where it is positive
    a, b = _series(30, seed=4), _series(30, seed=5)
    m = len(a)
    d_sq = [a[t] ** 2 - b[t] ** 2 for t in range(m)]
    var_u = _loop_lrv(d_sq, 1, uniform=True)
    assert var_u > 0
    r4 = diebold_mariano(a, b, h=2, harvey=False, kernel="uniform")
    assert r4.statistic == pytest.approx((sum(d_sq) / m) / math.sqrt(var_u / m), rel=1e-12)
    assert "uniform kernel with 1 lags" in r4.method and "fell back" not in r4.method


def test_dm_uniform_fallback_to_bartlett():
    # d alternates around 0.1: γ1 ≈ −γ0, so the uniform estimate γ0 + 2γ1 is negative
    n = 40
    d = 0.1 + np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    assert _loop_lrv(list(d), 1, uniform=True) < 0
    r = diebold_mariano(d, np.zeros(n), h=2, loss=lambda e: e, kernel="uniform")
    fallback = max(2, newey_west_lags(n))
    assert "fell back to the Bartlett kernel" in r.method and r.lags == fallback
    stat = d.mean() / math.sqrt(_loop_lrv(list(d), fallback) / n)
    stat *= math.sqrt((n + 1 - 4 + 2 / n) / n)
    assert r.statistic == pytest.approx(stat, rel=1e-12)


def test_dm_uniform_fallback_on_real_series():
    # for E1, E2 and h = 2 the uniform estimate γ0 + 2γ1 of the squared-loss d is negative
    n = len(E1)
    d = [E1[t] ** 2 - E2[t] ** 2 for t in range(n)]
    assert _loop_lrv(d, 1, uniform=True) < 0
    r = diebold_mariano(E1, E2, h=2, kernel="uniform")
    assert "fell back to the Bartlett kernel with 2 lags" in r.method and r.lags == 2
    stat = (sum(d) / n) / math.sqrt(_loop_lrv(d, 2) / n) * math.sqrt((n - 2) * (n - 1) / n**2)
    assert r.statistic == pytest.approx(stat, rel=1e-12)


def test_dm_pairwise_nan():
    e1, e2 = E1.copy(), E2.copy()
    e1[2] = np.nan
    e2[7] = np.nan
    e2[2] = np.nan  # same date as e1: counted once
    keep = np.array([i not in (2, 7) for i in range(len(E1))])
    r = diebold_mariano(e1, e2, h=2)
    ref = diebold_mariano(E1[keep], E2[keep], h=2)
    assert r.n == len(E1) - 2
    assert r == ref


def test_dm_errors():
    with pytest.raises(ValueError, match="e1 must be 1-D"):
        diebold_mariano(np.ones((4, 2)), np.ones(4))
    with pytest.raises(ValueError, match="e2 must be 1-D"):
        diebold_mariano(np.ones(4), 1.0)
    with pytest.raises(ValueError, match=r"e1 and e2 must have the same shape.*\(5,\).*\(4,\)"):
        diebold_mariano(np.ones(5), np.ones(4))
    with pytest.raises(ValueError, match="h must be >= 1"):
        diebold_mariano(E1, E2, h=0)
    with pytest.raises(ValueError, match="loss must be"):
        diebold_mariano(E1, E2, loss="huber")
    with pytest.raises(ValueError, match="loss must map the errors elementwise"):
        diebold_mariano(E1, E2, loss=lambda e: e.sum())
    with pytest.raises(ValueError, match="kernel must be"):
        diebold_mariano(E1, E2, kernel="parzen")
    with pytest.raises(ValueError, match="lags must be < the number of usable dates"):
        diebold_mariano(E1, E2, lags=12)
    with pytest.raises(ValueError, match="at least 2 dates"):
        diebold_mariano([np.nan, 1.0, 2.0], [1.0, np.nan, 2.0])
    with pytest.raises(ValueError, match="zero variance"):
        diebold_mariano(E1, E1)
    with pytest.raises(ValueError, match="Harvey-Leybourne-Newbold"):
        diebold_mariano(E1[:4], E2[:4], h=4)  # factor (n − h)(n − h + 1)/n² = 0
    with pytest.raises(ValueError, match="non-finite"):
        diebold_mariano([1.0, np.inf, 2.0], [1.0, 2.0, 3.0])


def test_dm_size_simulation():
    """Two equally good forecasts (independent AR(1) errors, φ = 0.5): d = e1² − e2² has mean 0
    and autocorrelations φ^{2j} (AR(1)-shaped). With Newey–West lags the 5% test has size ≈ 5%;
    ignoring the autocorrelation (the h = 1 default, 0 lags) visibly over-rejects.
    """
    rng = np.random.default_rng(20240607)
    reps, n, phi = 2000, 200, 0.5
    shocks = rng.standard_normal((2, reps, n))
    e = np.empty_like(shocks)
    e[..., 0] = shocks[..., 0] / math.sqrt(1 - phi**2)  # stationary start
    for t in range(1, n):
        e[..., t] = phi * e[..., t - 1] + shocks[..., t]
    lags = newey_west_lags(n)
    rejections = naive = 0
    for i in range(reps):
        rejections += diebold_mariano(e[0, i], e[1, i], lags=lags).pvalue < 0.05
        naive += diebold_mariano(e[0, i], e[1, i]).pvalue < 0.05
    assert 0.02 <= rejections / reps <= 0.09, rejections / reps  # 0.0715 with this seed
    assert naive / reps > 0.10, naive / reps  # 0.12: long-run variance understated


# --------------------------------------------------------------------------------------
# Likelihood ratio
# --------------------------------------------------------------------------------------
def test_lr_against_chi2():
    r = likelihood_ratio_test(-1234.5, -1230.1, df=2)
    assert r.statistic == pytest.approx(8.8, rel=1e-9)
    assert r.pvalue == pytest.approx(sps.chi2.sf(8.8, 2), rel=1e-12)
    assert r.pvalue == pytest.approx(math.exp(-8.8 / 2), rel=1e-9)  # χ²(2) tail by hand
    assert r.df == 2 and not r.boundary


def test_lr_boundary_mixture_by_hand():
    # df = 1: ½ χ²(0) + ½ χ²(1); P(χ²(1) ≥ x) = erfc(√(x/2))
    r = likelihood_ratio_test(10.0, 11.5, df=1, boundary=True)
    assert r.statistic == pytest.approx(3.0)
    assert r.pvalue == pytest.approx(0.5 * math.erfc(math.sqrt(1.5)), rel=1e-12)
    assert r.pvalue == pytest.approx(0.5 * likelihood_ratio_test(10.0, 11.5, 1).pvalue)
    # df = 3: ½ χ²(2) + ½ χ²(3), χ²(2) tail = exp(−x/2)
    r = likelihood_ratio_test(-50.0, -46.0, df=3, boundary=True)
    x = 8.0
    assert r.pvalue == pytest.approx(0.5 * math.exp(-x / 2) + 0.5 * sps.chi2.sf(x, 3), rel=1e-12)
    assert "Self & Liang" in r.method
    # LR = 0: p = 1 with or without the boundary
    assert likelihood_ratio_test(-5.0, -5.0, df=1, boundary=True).pvalue == 1.0
    assert likelihood_ratio_test(-5.0, -5.0, df=2).pvalue == 1.0


def test_lr_tolerance_and_errors():
    # a shortfall within the tolerance counts as LR = 0
    r = likelihood_ratio_test(-1000.0, -1000.0 - 1e-7, df=1)
    assert r.statistic == 0.0 and r.pvalue == 1.0
    with pytest.raises(ValueError, match="did not converge"):
        likelihood_ratio_test(-1000.0, -1000.5, df=1)
    with pytest.raises(ValueError, match="df must be >= 1"):
        likelihood_ratio_test(-2.0, -1.0, df=0)
    with pytest.raises(ValueError, match="df must be an integer"):
        likelihood_ratio_test(-2.0, -1.0, df=1.5)
    with pytest.raises(ValueError, match="log-likelihoods must be finite"):
        likelihood_ratio_test(-np.inf, -1.0, df=1)


# --------------------------------------------------------------------------------------
# Information criteria
# --------------------------------------------------------------------------------------
def test_information_criteria_by_hand():
    ic = information_criteria(-120.0, 5, 60)
    assert ic.aic == pytest.approx(2 * 5 + 240.0)
    assert ic.bic == pytest.approx(5 * math.log(60) + 240.0)
    assert ic.aicc == pytest.approx(250.0 + 2 * 5 * 6 / (60 - 5 - 1))
    assert information_criteria(3.0, 0, 10).aicc == pytest.approx(-6.0)
    assert information_criteria(-1.0, 4, 5).aicc == math.inf  # n ≤ k + 1
    with pytest.raises(ValueError, match="n_obs must be >= 1"):
        information_criteria(-1.0, 2, 0)
    with pytest.raises(ValueError, match="n_params must be >= 0"):
        information_criteria(-1.0, -1, 10)
    with pytest.raises(ValueError, match="loglik must be finite"):
        information_criteria(np.nan, 1, 10)
