"""Every public entry point compiles once per input shape, never per call.

Each case calls an entry point once (it may compile), then again with other values of the
same shapes under :func:`ssjax.compile_cache.compile_log`: the second call must lower no new
XLA program (a lowering is what a re-trace of a jitted function or an eager ``lax.scan``
costs) and must give the value the function gives for those inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssjax
from ssjax.analysis import forecast, options, sensitivity
from ssjax.compile_cache import compile_log

P1 = dict(kappa=1.5, sigma_x=0.3, sigma_y=0.16, rho=0.3, mu=0.01)
P2 = dict(kappa=1.2, sigma_x=0.25, sigma_y=0.18, rho=0.1, mu=0.02)
SD1 = [0.04, 0.005, 0.003, 0.001, 0.004]
SD2 = [0.03, 0.006, 0.002, 0.002, 0.005]


@pytest.fixture(scope="module")
def small(wti):
    """A 60-week slice of the bundled panel (small programs: fast compiles)."""
    sl = slice(0, 60)
    return wti.F_mkt[sl], wti.ttm[sl], wti.dt[:59]


def _params(i: int) -> ssjax.Params:
    return ssjax.make_params(**(P1 if i == 1 else P2), meas_sd=SD1 if i == 1 else SD2)


def _second_call_lowers_nothing(fn):
    fn(_params(1))
    with compile_log() as log:
        out = fn(_params(2))
        jax.block_until_ready(out)
    assert log.lowerings == [], f"second call compiled {log.by_function()}"
    return out


def test_log_likelihood_and_its_gradient(small):
    F, ttm, dt = small
    v = _second_call_lowers_nothing(lambda p: ssjax.log_likelihood(p, F, ttm, dt=dt))
    data = ssjax.make_market_data(F, ttm, dt=dt)
    ref = ssjax.log_likelihood_data(_params(2), data)
    assert float(v) == pytest.approx(float(ref), rel=1e-13)
    g = _second_call_lowers_nothing(lambda p: jax.grad(ssjax.log_likelihood)(p, F, ttm, dt=dt))
    g_ref = jax.grad(ssjax.log_likelihood_data)(_params(2), data)
    np.testing.assert_allclose(np.asarray(g.kappa), np.asarray(g_ref.kappa), rtol=1e-10)
    # the user's own transformations on top still work
    jv = jax.jit(lambda p: ssjax.log_likelihood(p, F, ttm, dt=dt))(_params(2))
    assert float(jv) == pytest.approx(float(ref), rel=1e-12)


def test_filter_smoother_and_fisher(small):
    F, ttm, dt = small
    data = ssjax.make_market_data(F, ttm, dt=dt)
    _second_call_lowers_nothing(lambda p: ssjax.log_likelihood_data(p, data))
    _second_call_lowers_nothing(lambda p: ssjax.log_likelihood_terms(p, data))
    _second_call_lowers_nothing(lambda p: ssjax.kalman_filter(p, data).loglik)
    _second_call_lowers_nothing(lambda p: ssjax.rts_smoother(p, data).smoothed_means)
    _second_call_lowers_nothing(lambda p: ssjax.log_likelihood_fisher(p, data))
    _second_call_lowers_nothing(lambda p: jax.grad(ssjax.log_likelihood_fisher)(p, data))
    batch = jax.tree.map(lambda a, b: jnp.stack([a, b]), _params(1), _params(2))
    ssjax.log_likelihood_batch(batch, data)
    batch2 = jax.tree.map(lambda a: a * 1.01, batch)
    with compile_log() as log:
        ssjax.log_likelihood_batch(batch2, data)
    assert log.lowerings == []


def test_forwards_and_sensitivities(small):
    F, ttm, dt = small
    data = ssjax.make_market_data(F, ttm, dt=dt)
    states = np.stack([np.linspace(-0.1, 0.1, len(F)), np.log(F[:, 0])], -1)
    _second_call_lowers_nothing(lambda p: ssjax.model_forwards(p, states, ttm))
    _second_call_lowers_nothing(lambda p: sensitivity.forward_jacobian(p, states[-1], ttm[-1]))
    _second_call_lowers_nothing(lambda p: sensitivity.total_forward_jacobian(p, data).d_theta)
    _second_call_lowers_nothing(lambda p: sensitivity.loglik_derivatives(p, data)[0])
    mean, cov = jnp.zeros(2) + jnp.array([0.0, 3.0]), 0.01 * jnp.eye(2)
    _second_call_lowers_nothing(
        lambda p: forecast.forecast_log_futures(p, mean, cov, 0.25, ttm[-1])[0]
    )


def test_options(small):
    F, ttm, _ = small
    kw = dict(F=F[-1, 1], K=F[-1, 1] * 1.05, ttm_future=ttm[-1, 1], ttm_option=ttm[-1, 1] - 0.02,
              rate=0.03)  # fmt: skip
    _second_call_lowers_nothing(lambda p: options.futures_option_price(p, **kw))
    _second_call_lowers_nothing(lambda p: options.greeks(p, **kw).delta)
    _second_call_lowers_nothing(lambda p: options.model_implied_vol(p, 1.0, 0.9))


def test_fits(small):
    F, ttm, dt = small
    data = ssjax.make_market_data(F, ttm, dt=dt)
    _second_call_lowers_nothing(lambda p: ssjax.fit_mle(data, p, max_steps=20).loglik)
    from ssjax.fit.em import fit_em

    _second_call_lowers_nothing(lambda p: fit_em(data, p, max_iters=5).loglik)
    eng = ssjax.KalmanEngine(n_starts=2)
    _second_call_lowers_nothing(lambda p: eng.fit(F, ttm, dt=dt, theta0=p).loglik)
    # the standard errors (computed on first use: a program of their own) likewise
    _second_call_lowers_nothing(lambda p: eng.fit(F, ttm, dt=dt, theta0=p).std_err.to_numpy())
    # the data-derived start, called eagerly as the README does: its first call on a new shape
    # lowers one program (not one per array operation: 67 in a new process before it was
    # jitted), and a second call none
    data37 = ssjax.make_market_data(F[:37], ttm[:37], dt=dt[:36])
    with compile_log() as log:
        jax.block_until_ready(ssjax.default_start(data37))
    assert len(log.lowerings) == 1, log.by_function()
    _second_call_lowers_nothing(
        lambda p: ssjax.default_start(ssjax.make_market_data(F * p.kappa, ttm, dt=dt)).kappa
    )


def test_rolling_and_walk_forward(wti):
    """A second ``recalibrate`` and a second ``walk_forward`` of the same shapes (other
    prices) lower no program."""
    from ssjax.rolling import recalibrate
    from ssjax.trading.backtest import walk_forward

    def head(panel, n, wiggle=0.0):
        # other prices: a small multiplicative pattern over dates and tenors (a constant
        # factor would leave the log-likelihood unchanged: it shifts Y only)
        F = panel.F_mkt[:n] * (
            1.0 + wiggle * np.sin(np.arange(panel.F_mkt[:n].size)).reshape(panel.F_mkt[:n].shape)
        )
        return panel._replace(
            dates=panel.dates[:n], F_mkt=F, ttm=panel.ttm[:n],
            contracts=panel.contracts[:n], dt=panel.dt[: n - 1], mask=panel.mask[:n],
            S=None if panel.S is None else panel.S[:n],
        )  # fmt: skip

    kw = dict(window=60, step=20, n_starts=1, standard_errors=False, progress=False)
    a = recalibrate(head(wti, 120), **kw)
    with compile_log() as log:
        b = recalibrate(head(wti, 120, 0.002), **kw)
    assert log.lowerings == [], log.by_function()
    assert not np.allclose(a.loglik, b.loglik)
    wk = dict(min_window=80, recalibrate_every=20, progress=False)
    walk_forward(head(wti, 110), **wk)
    with compile_log() as log:
        r = walk_forward(head(wti, 110, 0.002), **wk)
    assert log.lowerings == [], log.by_function()
    assert r.info["fit_mle_compiles"] == 0
