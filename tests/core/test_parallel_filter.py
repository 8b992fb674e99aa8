"""The parallel-in-time (associative-scan) filter against the sequential filter.

Compiles dominate this file: every jitted program below is built once at module level and fed
panels of two structures only, (a) the WTI panel (268 dates, no spot, plain parameters) and
(b) 5,000 daily dates with a spot series and risk-premium parameters (the WTI panel padded
with missing dates, and simulated panels). The associative scan's value-and-gradient program
is compiled for (a) only (~20 s on a 2-core CPU; ~35 s at 5,000 dates); the long panels check
its value and filtered moments, and the gradient through the recursive-doubling scan, which
evaluates the same elements and operator.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssjax
from ssjax.core.market import pad_dates
from ssjax.core.parallel_filter import (
    PARALLEL_MIN_DATES,
    choose_method,
    kalman_filter_parallel,
    log_likelihood_auto,
    log_likelihood_parallel,
)
from ssjax.fit.optimum import BOUNDARY

# ---- tolerances ------------------------------------------------------------------------------
# Both filters use the same collapsed observations and the same update formula for the
# likelihood terms; they differ only in the order of the roundings of the filtered moments (a
# tree of 2x2 combinations against a chain of updates). Measured on the WTI panel: 7e-16
# relative in loglik, 1e-11 in the gradient, 6e-15 absolute in the means (O(3)), 6e-18 in the
# covariances (entries <= 1e-2); at 5,000 daily dates 1e-14 / 5e-12. The task's bound is 1e-8.
LL_RTOL = 1e-8  # total log-likelihood, relative
GRAD_RTOL = 1e-8  # each gradient entry, relative ...
GRAD_ATOL_FRAC = 1e-12  # ... plus this fraction of the largest |entry| (entries near zero)
STATE_FRAC = 1e-8  # moments and innovations: absolute, as a fraction of the field's max |value|
# A measurement s.d. of 1e-7 makes U ~ 1e7 on that tenor: the loglik and moments still agree
# to rounding (measured 2e-15 / 1e-14), but the gradient entry of that s.d. (29, against
# entries up to 1.5e5) is a difference of terms ~1e7 apart in scale: it agrees to 3e-6 of
# itself, 5e-10 of the largest entry.
HARD_GRAD_ATOL_FRAC = 1e-8
# float32 on the WTI panel: 1340 observations with roundings of 6e-8 each (measured 1.1e-6).
F32_RTOL = 1e-4

FILTER_FIELDS = (
    "loglik_t",
    "filtered_means",
    "filtered_covs",
    "predicted_means",
    "predicted_covs",
    "innovations",
    "innovation_vars",
    "spot_innovations",
    "spot_innovation_vars",
)

T_LONG = 5000
DT_DAILY = 1.0 / 252.0


# ---- jitted programs (one compile per input structure) ----------------------------------------
def _with_grad(filter_fn, p, data, prior):
    """(FilterResult, gradient of its loglik with respect to p) from one trace."""

    def f(q):
        res = filter_fn(q, data, prior)
        return res.loglik, res

    (_, res), g = jax.value_and_grad(f, has_aux=True)(p)
    return res, g


SEQ = jax.jit(lambda p, d, pr: _with_grad(ssjax.kalman_filter, p, d, pr))
PAR_ASSOC = jax.jit(lambda p, d, pr: _with_grad(kalman_filter_parallel, p, d, pr))
PAR_DOUBLING = jax.jit(
    lambda p, d, pr: _with_grad(
        lambda q, dd, ppr: kalman_filter_parallel(q, dd, ppr, scan="doubling"), p, d, pr
    )
)
KF_ASSOC = jax.jit(kalman_filter_parallel)
LL_ASSOC_VMAP = jax.jit(jax.vmap(log_likelihood_parallel, in_axes=(0, None, None)))
LL_DOUBLING = jax.jit(lambda p, d, pr: log_likelihood_parallel(p, d, pr, scan="doubling"))
LL_AUTO = jax.jit(log_likelihood_auto)


# ---- helpers ---------------------------------------------------------------------------------
def assert_same_filter(res, ref, err=""):
    ll, ll_ref = float(res.loglik), float(ref.loglik)
    assert abs(ll - ll_ref) <= LL_RTOL * abs(ll_ref), f"{err} loglik {ll} vs {ll_ref}"
    for name in FILTER_FIELDS:
        a, b = getattr(res, name), getattr(ref, name)
        if b is None:
            assert a is None, name
            continue
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, name
        atol = STATE_FRAC * max(np.abs(b).max(), 1e-300)
        np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=f"{err} {name}")


def assert_same_grad(g, g_ref, atol_frac=GRAD_ATOL_FRAC, err=""):
    leaves = [np.asarray(x) for x in jax.tree.leaves(g_ref)]
    scale = max(np.abs(x).max() for x in leaves)
    assert jax.tree.structure(g) == jax.tree.structure(g_ref)
    for name, a, b in zip(g_ref._fields, g, g_ref, strict=True):
        if b is None:
            continue
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), rtol=GRAD_RTOL, atol=atol_frac * scale,
            err_msg=f"{err} d loglik / d {name}",
        )  # fmt: skip


def random_mask(shape, seed, p_missing=0.2, n_empty=5):
    """Random missing entries, ``n_empty`` fully-missing dates (date 0 among them), a run of
    three missing dates, and a date with a single observation."""
    rng = np.random.default_rng(seed)
    T, M = shape
    mask = rng.random(shape) > p_missing
    empty = np.concatenate([[0], rng.choice(np.arange(5, T - 5), n_empty - 1, replace=False)])
    mask[empty] = False
    mask[[2, 3, 4]] = False
    mask[1] = False
    mask[1, M // 2] = True
    return mask


def tight_prior(data, sd=0.1):
    d = ssjax.default_prior(data)
    return ssjax.Prior(d.mean, sd**2 * jnp.eye(2, dtype=data.log_f.dtype))


# ---- fixtures ----------------------------------------------------------------------------------
THETA_RP = dict(
    kappa=1.2, sigma_x=0.3, sigma_y=0.17, rho=0.35, mu=0.02, lambda_x=0.08, mu_star=-0.01,
    meas_sd=np.array([0.03, 0.006, 0.004, 0.002, 0.005]), spot_sd=0.02,
)  # fmt: skip


@pytest.fixture(scope="module")
def params_rp():
    return ssjax.make_params(**THETA_RP)


@pytest.fixture(scope="module")
def long_panel(params_rp):
    """5,000 daily dates x 5 rolling tenors simulated under the risk-premium parameters."""
    t = np.arange(T_LONG)
    base = np.array([1.0, 3.0, 6.0, 12.0, 24.0]) / 12.0
    ttm = base[None, :] - (t[:, None] % 21) / 252.0  # roll every 21 trading days
    sim = ssjax.simulate(params_rp, jax.random.PRNGKey(7), jnp.asarray(ttm), DT_DAILY)
    return ttm, np.asarray(sim.log_f), np.asarray(sim.log_s)


def long_data(long_panel, seed):
    ttm, log_f, log_s = long_panel
    mask = random_mask(log_f.shape, seed, n_empty=40)
    S = np.exp(log_s)
    S[np.random.default_rng(seed + 100).random(T_LONG) < 0.3] = np.nan
    return ssjax.make_market_data(np.where(mask, np.exp(log_f), np.nan), ttm, S=S, dt=DT_DAILY)


# ---- (a) the WTI panel: value, gradient and every filter output -------------------------------
def test_wti_default_prior(wti_data, params_wti):
    prior = ssjax.default_prior(wti_data)
    res, g = PAR_ASSOC(params_wti, wti_data, prior)
    ref, g_ref = SEQ(params_wti, wti_data, prior)
    assert_same_filter(res, ref)
    assert_same_grad(g, g_ref)
    # the gradient is not trivially small: every parameter moves the likelihood
    assert all(np.all(np.asarray(x) != 0.0) for x in jax.tree.leaves(g))


@pytest.mark.parametrize("seed", [0, 1])
def test_wti_random_mask_with_missing_dates(wti, params_wti, seed):
    mask = random_mask(wti.F_mkt.shape, seed)
    data = ssjax.make_market_data(np.where(mask, wti.F_mkt, np.nan), wti.ttm, dt=wti.dt)
    prior = tight_prior(data) if seed else ssjax.default_prior(data)
    res, g = PAR_ASSOC(params_wti, data, prior)
    ref, g_ref = SEQ(params_wti, data, prior)
    assert_same_filter(res, ref)
    assert_same_grad(g, g_ref)
    # a date without data is a pure prediction step: no likelihood, filtered = predicted
    empty = np.flatnonzero(~mask.any(axis=1))
    assert 0 in empty and len(empty) >= 5
    np.testing.assert_array_equal(np.asarray(res.loglik_t)[empty], 0.0)
    for f, q in (("filtered_means", "predicted_means"), ("filtered_covs", "predicted_covs")):
        a, b = np.asarray(getattr(res, f))[empty], np.asarray(getattr(res, q))[empty]
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-14 * np.abs(b).max(), err_msg=f)


def test_near_singular_measurement(wti_data, theta_wti):
    """A measurement s.d. of 1e-7 (U ~ 1e7): no element is large, nothing ill-conditioned is
    inverted, and both filters agree; covariances stay symmetric positive definite."""
    theta = dict(theta_wti, meas_sd=np.array([0.042, 0.005, 1e-7, 0.0008, 0.004]))
    params = ssjax.make_params(**theta)
    prior = tight_prior(wti_data)
    res, g = PAR_ASSOC(params, wti_data, prior)
    ref, g_ref = SEQ(params, wti_data, prior)
    assert np.isfinite(float(res.loglik))
    assert_same_filter(res, ref)
    assert_same_grad(g, g_ref, atol_frac=HARD_GRAD_ATOL_FRAC)
    covs = np.asarray(res.filtered_covs)
    np.testing.assert_array_equal(covs, np.swapaxes(covs, 1, 2))
    assert np.linalg.eigvalsh(covs).min() > 0.0


def test_vmap_over_parameter_sets(wti_data, theta_wti):
    prior = ssjax.default_prior(wti_data)
    rng = np.random.default_rng(3)
    sets = [
        ssjax.make_params(**dict(theta_wti, kappa=k, rho=r, sigma_x=s))
        for k, r, s in zip(rng.uniform(0.5, 3.0, 4), rng.uniform(-0.5, 0.8, 4),
                           rng.uniform(0.15, 0.5, 4), strict=True)
    ]  # fmt: skip
    batch = jax.tree.map(lambda *x: jnp.stack(x), *sets)
    lls = np.asarray(LL_ASSOC_VMAP(batch, wti_data, prior))
    ref = np.array([float(SEQ(q, wti_data, prior)[0].loglik) for q in sets])
    np.testing.assert_allclose(lls, ref, rtol=LL_RTOL)
    assert np.unique(lls).size == len(sets)


def test_float32_agrees_with_float64(wti_data, params_wti):
    def f32(tree):
        return jax.tree.map(
            lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
        )

    prior = ssjax.default_prior(wti_data)
    ll32 = LL_DOUBLING(f32(params_wti), f32(wti_data), f32(prior))
    assert ll32.dtype == jnp.float32
    ll64 = float(SEQ(params_wti, wti_data, prior)[0].loglik)
    assert np.isfinite(float(ll32))
    np.testing.assert_allclose(float(ll32), ll64, rtol=F32_RTOL)


# ---- (b) 5,000 daily dates, spot series, risk-premium form ------------------------------------
@pytest.mark.parametrize("seed", [11, pytest.param(12, marks=pytest.mark.slow)])
def test_long_simulated_panel_with_spot_risk_premium(long_panel, params_rp, seed):
    data = long_data(long_panel, seed)
    assert data.log_s is not None and not bool(jnp.all(data.mask_s))
    prior = ssjax.default_prior(data)
    ref, g_ref = SEQ(params_rp, data, prior)
    # the associative scan: value and every filter output (prior=None: the default prior)
    assert_same_filter(KF_ASSOC(params_rp, data, None), ref, err="associative")
    # the doubling scan: value, outputs and the gradient (lambda_x, mu_star, spot_sd included)
    res, g = PAR_DOUBLING(params_rp, data, None)
    assert_same_filter(res, ref, err="doubling")
    assert_same_grad(g, g_ref, err="doubling")
    assert float(g.lambda_x) != 0.0 and float(g.mu_star) != 0.0 and float(g.spot_sd) != 0.0


def test_wti_with_spot_padded_to_long_panel(wti, params_rp):
    """The WTI panel with its spot series, padded with 4,732 missing dates to the long
    structure: the padded tail (pure prediction steps) changes nothing."""
    S = wti.S.copy()
    S[[5, 77, 200]] = np.nan
    mask = random_mask(wti.F_mkt.shape, 5)
    data = ssjax.make_market_data(np.where(mask, wti.F_mkt, np.nan), wti.ttm, S=S, dt=wti.dt)
    padded = pad_dates(data, T_LONG)
    prior = ssjax.default_prior(data)
    np.testing.assert_array_equal(ssjax.default_prior(padded).mean, prior.mean)
    ref, g_ref = SEQ(params_rp, padded, prior)
    res_a = KF_ASSOC(params_rp, padded, None)  # None: the same structure as the test above
    res_d, g = PAR_DOUBLING(params_rp, padded, None)
    for res in (res_a, res_d):
        assert_same_filter(res, ref)
    assert_same_grad(g, g_ref)
    T = wti.F_mkt.shape[0]
    np.testing.assert_array_equal(np.asarray(res_a.loglik_t)[T:], 0.0)
    # the padded tail's predictive variance of Y grows by sigma_y^2 dt per step
    pc = np.asarray(res_a.predicted_covs)[T:, 1, 1]
    np.testing.assert_allclose(np.diff(pc), params_rp.sigma_y**2 * float(wti.dt[-1]), rtol=1e-6)


# ---- log_likelihood_auto -----------------------------------------------------------------------
def test_choose_method():
    assert jax.default_backend() == "cpu"  # this suite runs on CPU
    assert choose_method(10**6) == "sequential"
    assert choose_method(PARALLEL_MIN_DATES, "gpu") == "parallel"
    assert choose_method(PARALLEL_MIN_DATES - 1, "gpu") == "sequential"
    assert choose_method(5000, "tpu") == "parallel"
    assert choose_method(5000, "cpu") == "sequential"


def test_log_likelihood_auto_routes(wti_data, params_wti):
    """``method`` picks the function (compared as traced programs: nothing is compiled)."""
    prior = ssjax.default_prior(wti_data)

    def jaxpr(fn, **kw):
        return str(jax.make_jaxpr(lambda p: fn(p, wti_data, prior, **kw))(params_wti))

    seq, par = jaxpr(ssjax.log_likelihood_data), jaxpr(log_likelihood_parallel)
    assert jaxpr(log_likelihood_auto) == seq  # on a CPU, whatever the length
    assert jaxpr(log_likelihood_auto, method="sequential") == seq
    assert jaxpr(log_likelihood_auto, method="parallel") == par != seq
    with pytest.raises(ValueError, match="method"):
        log_likelihood_auto(params_wti, wti_data, prior, method="fastest")
    with pytest.raises(ValueError, match="scan"):
        log_likelihood_parallel(params_wti, wti_data, prior, scan="blelloch")


@pytest.mark.slow  # the associative scan's value and gradient take ~1-3 min to compile here
def test_fit_mle_with_the_parallel_filter(wti_data):
    # the same MLE with the parallel-in-time filter inside the objective (a 64-date slice:
    # its compile grows with log T)
    w = jax.tree.map(lambda a: a[:64] if a.ndim else a, wti_data)
    w = w._replace(dt=w.dt[:63])
    init = ssjax.default_start(w)
    seq = ssjax.fit_mle(w, init)
    par = ssjax.fit_mle(w, init, filter_method="parallel")
    # this slice's optimum prices the fourth tenor exactly (its s.d. ~5e-8): a boundary
    # point, which both fits reach and report as such (not "converged")
    assert int(seq.status) == int(par.status) == BOUNDARY
    assert float(par.loglik) == pytest.approx(float(seq.loglik), abs=1e-5)
    # "auto" is the sequential filter on a CPU: the same program, the same numbers
    auto = ssjax.fit_mle(w, init, filter_method="auto")
    assert float(auto.loglik) == float(seq.loglik)


def test_fit_option_errors(wti_data):
    init = ssjax.default_start(wti_data)
    with pytest.raises(ValueError, match="filter_method must be one of"):
        ssjax.fit_mle(wti_data, init, filter_method="fast")
    with pytest.raises(ValueError, match="gradient='fisher' runs the sequential filter"):
        ssjax.fit_mle(wti_data, init, gradient="fisher", filter_method="parallel")
    with pytest.raises(ValueError, match="filter_method must be one of"):
        ssjax.KalmanEngine(filter_method="fast")
