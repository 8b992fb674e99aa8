"""Relative-value sizing: vol target with redistribution under caps, net-exposure limits and
neutrality to the model's factors, in the vol-target and the QP paths, against SciPy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from ssjax.trading.engine import TradeEngine, TradingConfig, prepare_trading_inputs
from ssjax.trading.sizing import vol_target_weights

RNG = np.random.default_rng(11)
M = 6
TTM = np.array([0.1, 0.3, 0.6, 0.9, 1.2, 2.0])
KAPPA = 1.4


def _sigma(rng=RNG, m=M):
    A = rng.standard_normal((m, m))
    return A @ A.T * 0.01 + np.eye(m) * 0.02


def _loadings(which):
    rows = {"X": np.exp(-KAPPA * TTM), "Y": np.ones(M)}
    return np.array([rows[f] for f in which])


def test_caps_redistribute_to_reach_the_vol_target():
    """A capped tenor stays at its cap, the others grow until the book is back at the vol
    target; without redistribution the book undershoots."""
    for seed in range(5):
        rng = np.random.default_rng(seed)
        Sigma = _sigma(rng)
        z = rng.normal(0, 2, M)
        z[0] = 8.0  # one large signal that will hit its cap
        s = np.sign(z)
        raw = s * np.abs(z)
        wu = raw * 0.10 / math.sqrt(raw @ Sigma @ raw)  # the uncapped vol-target weights
        cap = np.abs(wu) * 10.0 + 1e-3
        cap[0] = abs(wu[0]) * 0.7  # tenor 0 binds
        w = np.asarray(vol_target_weights(z, s, Sigma, 0.10, cap, 100.0))
        w0 = np.asarray(vol_target_weights(z, s, Sigma, 0.10, cap, 100.0, redistribute=False))
        assert np.all(np.abs(w) <= cap + 1e-12) and np.all(w * s >= 0)
        capped = np.isclose(np.abs(w), cap, rtol=1e-9)
        assert capped[0]
        free = ~capped & (s != 0)
        assert free.any()
        # the free tenors keep the signal's proportions (s·|z|)
        ratio = w[free] / (s[free] * np.abs(z[free]))
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)
        # every capped tenor would exceed its cap at the free tenors' scale
        assert np.all(ratio[0] * np.abs(z[capped]) >= cap[capped] * (1 - 1e-9))
        vol = math.sqrt(w @ Sigma @ w)
        if ratio[0] * np.abs(z[free]).max() < cap[0]:  # feasible without new caps
            assert vol == pytest.approx(0.10, rel=1e-9)
        assert math.sqrt(w0 @ Sigma @ w0) < vol  # without redistribution: undershoots


@pytest.mark.parametrize("which", [("Y",), ("X",), ("X", "Y")])
def test_neutral_direction_is_the_sign_consistent_projection(which):
    """Neutral to the factors exactly, never against a signal, and the closest such
    direction to s·|z| (SciPy's constrained least squares, up to the vol-target scale)."""
    L = _loadings(which)
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        Sigma = _sigma(rng)
        z = rng.normal(0, 2.5, M)
        s = np.sign(z) * (np.abs(z) > 0.3)
        raw = s * np.abs(z)
        w = np.asarray(vol_target_weights(z, s, Sigma, 0.10, np.full(M, 10.0), 100.0,
                                          neutral=L))  # fmt: skip
        np.testing.assert_allclose(L @ w, 0.0, atol=1e-12)
        assert np.all(w * s >= -1e-15) and np.all(w[s == 0] == 0)
        cons = [{"type": "eq", "fun": lambda u, L=L: L @ u}]
        bounds = [(0, None) if si > 0 else (None, 0) if si < 0 else (0, 0) for si in s]
        opts = {"ftol": 1e-14, "maxiter": 500}
        ref = minimize(lambda u: np.sum((u - raw) ** 2), np.zeros(M), method="SLSQP",
                       bounds=bounds, constraints=cons, options=opts)  # fmt: skip
        u = ref.x
        if np.sum(u**2) < 1e-10:  # no neutral book along the signals
            assert np.all(w == 0)
            continue
        # same direction: w is u scaled to the vol target (when the active sets agree)
        scale = 0.10 / math.sqrt(u @ Sigma @ u)
        np.testing.assert_allclose(w, u * scale, atol=2e-5)
        assert math.sqrt(w @ Sigma @ w) == pytest.approx(0.10, rel=1e-9)


def test_net_limit_and_gradient_through_neutral_sizing():
    Sigma = _sigma()
    z = np.array([3.0, -2.5, 2.2, 2.8, -0.5, 2.1])
    s = np.sign(z) * (np.abs(z) > 1)
    w = np.asarray(vol_target_weights(z, s, Sigma, 0.1, np.full(M, 10.0), 100.0, net=0.05))
    assert abs(w.sum()) == pytest.approx(0.05, rel=1e-12)
    # differentiable in z with the neutrality on (finite differences)
    L = jnp.asarray(_loadings(("X", "Y")))

    def f(zz):
        return vol_target_weights(zz, s, Sigma, 0.1, jnp.full(M, 10.0), 100.0, neutral=L)

    J = np.asarray(jax.jacfwd(f)(jnp.asarray(z)))
    eps = 1e-6
    fd = np.stack([(np.asarray(f(z + eps * e)) - np.asarray(f(z - eps * e))) / (2 * eps)
                   for e in np.eye(M)], axis=1)  # fmt: skip
    assert np.all(np.isfinite(J))
    np.testing.assert_allclose(J, fd, atol=1e-6)


def _inputs(cfg, alpha, z):
    F = np.full(M, 50.0)
    inp = prepare_trading_inputs(
        F, F * np.exp(alpha), TTM, cfg=cfg, filtered_resid_var_t=np.full(M, 1e-4),
        F_mkt_hist=F * np.exp(np.cumsum(RNG.normal(0, 0.01, (61, M)), 0)), kappa=KAPPA,
    )  # fmt: skip
    return inp._replace(z=np.asarray(z, float))


@pytest.mark.parametrize("sizing", ["vol_target", "qp"])
def test_engine_books_are_neutral_and_within_the_net_limit(sizing):
    alpha = np.array([0.03, -0.025, 0.025, 0.021, -0.03, 0.015])
    z = alpha / 0.01
    for neutral, net in [((), 0.1), (("Y",), None), (("X", "Y"), None)]:
        cfg = TradingConfig(neutral=neutral, net_exposure=net, periods_per_year=52,
                            max_weight=0.5)  # fmt: skip
        inp = _inputs(cfg, alpha, z)
        d = TradeEngine(sizing=sizing, check_frictions=False).decide(inp)
        w = d.target_w
        assert np.any(w != 0)
        if net is not None:
            assert abs(w.sum()) <= net + 1e-9
        for f in neutral:
            load = np.ones(M) if f == "Y" else np.exp(-KAPPA * TTM)
            assert abs(load @ w) < 1e-7, (f, load @ w)
        assert np.all(w * d.signals >= -1e-9)


def test_qp_with_neutrality_matches_scipy():
    """The QP's optimum under Y-neutrality and a net limit equals SciPy's (SLSQP)."""
    cfg = TradingConfig(neutral=("Y",), periods_per_year=52, max_weight=0.5)
    alpha = np.array([0.03, -0.025, 0.025, 0.021, -0.03, 0.015])
    inp = _inputs(cfg, alpha, alpha / 0.01)
    eng = TradeEngine(sizing="qp", gamma=2.0, alpha_horizon=0.5, check_frictions=False)
    d = eng.decide(inp)
    a, S, s = alpha / 0.5, inp.Sigma, d.signals

    def neg(w):
        return -(a @ w - 2.0 * w @ S @ w)

    bounds = [(0, 0.5) if si > 0 else (-0.5, 0) if si < 0 else (0, 0) for si in s]
    cons = [{"type": "eq", "fun": lambda w: np.sum(w)},
            {"type": "ineq", "fun": lambda w: 2.0 - np.sum(np.abs(w))}]  # fmt: skip
    ref = minimize(neg, np.zeros(M), method="SLSQP", bounds=bounds, constraints=cons,
                   options={"ftol": 1e-15, "maxiter": 1000})  # fmt: skip
    np.testing.assert_allclose(d.target_w, ref.x, atol=2e-5)
    assert -neg(d.target_w) >= -neg(ref.x) - 1e-8


def test_neutral_settings_are_checked():
    with pytest.raises(ValueError, match="neutral must be a tuple of factors"):
        TradingConfig(neutral=("Z",))
    with pytest.raises(ValueError, match="neutral must be a tuple of factors"):
        TradingConfig(neutral="Y")
    with pytest.raises(ValueError, match="net_exposure must be None or a number >= 0"):
        TradingConfig(net_exposure=-1.0)
    with pytest.raises(ValueError, match="give kappa"):
        F = np.full(M, 50.0)
        cfg = TradingConfig(neutral=("X",), periods_per_year=52)
        prepare_trading_inputs(F, F, TTM, cfg=cfg, filtered_resid_var_t=np.full(M, 1e-4),
                               F_mkt_hist=np.tile(F, (3, 1)))  # fmt: skip
    with pytest.raises(ValueError, match="alpha_horizon must be > 0"):
        TradeEngine(alpha_horizon=0.0)


def test_backtest_with_a_neutral_book(tmp_path):
    """On real data: every decided target of a Y-neutral backtest has Σw = 0, the book
    actually held stays neutral except where an execution rule (an expiring contract)
    closes a leg, and the metrics report the net exposure."""
    import ssjax
    from ssjax.trading.backtest import walk_forward

    b = ssjax.datasets.load_wti_ss2000_contracts()
    cfg = TradingConfig(neutral=("Y",), z_in=1.5, fee=0.0025, half_spread=0.005)
    bt = walk_forward(b.panel, b.settlements, trading=cfg, min_window=104, recalibrate_every=52)
    tgt = bt.targets.to_numpy()
    assert (np.abs(tgt).sum(1) > 0).sum() >= 5  # the book is invested on several dates
    np.testing.assert_allclose(tgt.sum(1), 0.0, atol=1e-9)
    assert abs(bt.metrics["net_exposure"]) < 0.2 * bt.metrics["gross_exposure"]
