"""prepare_trading_inputs and TradeEngine: the document's contracts and known answers."""

import numpy as np
import pytest

from ssjax.trading import (
    Order,
    TradeEngine,
    TradingConfig,
    TradingInputs,
    prepare_trading_inputs,
)

M = 4
RNG = np.random.default_rng(0)


def _inputs(alpha, Sigma=None, cap=10.0, gross=100.0, z=None, cost=0.0, z_in=2.0, z_out=0.5):
    """A TradingInputs built from known pieces (bypassing the estimation)."""
    alpha = np.asarray(alpha, float)
    m = alpha.size
    cfg = TradingConfig(
        max_weight=cap, gross_leverage=gross, fee=cost, z_in=z_in, z_out=z_out, periods_per_year=1
    )
    F = np.full(m, 50.0)
    base = prepare_trading_inputs(
        F,
        F * np.exp(alpha),
        np.full(m, 0.5),
        cfg=cfg,
        resid_hist=RNG.normal(0, 0.01, (30, m)),
        innovation_var_t=np.full(m, 0.01**2),
        F_mkt_hist=F * np.exp(np.cumsum(RNG.normal(0, 0.01, (61, m)), 0)),
    )
    return base._replace(
        Sigma=base.Sigma if Sigma is None else np.asarray(Sigma, float),
        z=base.z if z is None else np.asarray(z, float),
    )


def test_prepare_trading_inputs_contract():
    T = 80
    F_hist = 60 * np.exp(np.cumsum(RNG.normal(0, 0.02, (T, M)), 0))
    contracts = np.array([[f"C{(t // 20) + i}" for i in range(M)] for t in range(T)], object)
    F_model = F_hist[-1] * np.array([1.01, 0.99, 1.0, 1.02])
    cfg = TradingConfig(fee=0.02, half_spread=0.01, slippage=0.005)
    inp = prepare_trading_inputs(
        F_hist[-1],
        F_model,
        np.array([0.1, 0.3, 0.5, 0.7]),
        np.full(M, 0.01),
        cfg,
        F_mkt_hist=F_hist,
        contracts_hist=contracts,
        innovation_var_t=np.full(M, 0.02**2),
        dt=np.full(T - 1, 1 / 52),
    )
    assert isinstance(inp, TradingInputs)
    for name in ("mispricing", "alpha", "z", "cost_per_weight", "tradable"):
        assert getattr(inp, name).shape == (M,), name
    assert inp.Sigma.shape == (M, M) and np.allclose(inp.Sigma, inp.Sigma.T)
    assert np.all(np.linalg.eigvalsh(inp.Sigma) > 0)
    np.testing.assert_allclose(inp.mispricing, F_model - F_hist[-1])
    np.testing.assert_allclose(inp.z, np.log(F_model / F_hist[-1]) / 0.02)
    assert inp.z_basis.startswith("model") and "same contract" in inp.sigma_basis
    np.testing.assert_allclose(inp.frictions.per_contract, 0.02 + 0.01 + 0.01 + 0.005)
    np.testing.assert_allclose(inp.cost_per_weight, 0.045 / F_hist[-1])
    assert inp.limits.per_tenor.shape == (M,) and inp.thresh.z_in.shape == (M,)
    # returns across a roll are not used: Sigma from contract-consistent returns only
    r = np.diff(np.log(F_hist[-61:]), axis=0)
    same = contracts[-60:] == contracts[-61:-1]
    want = np.nanvar(np.where(same, r, np.nan)[:, 0], ddof=1) * 52
    assert inp.Sigma[0, 0] == pytest.approx(want, rel=1e-12)
    # the other bases are named in the output
    alt = prepare_trading_inputs(
        F_hist[-1],
        F_model,
        np.full(M, 0.5),
        cfg=TradingConfig(sigma_method="residuals", z_method="residual", periods_per_year=52),
        resid_hist=RNG.normal(0, 0.01, (60, M)),
    )
    assert alt.z_basis.startswith("rolling residual") and alt.sigma_basis.startswith("covariance")


def test_expired_or_missing_tenors_are_not_tradable():
    inp = prepare_trading_inputs(
        np.array([50.0, np.nan, 51.0]),
        np.array([55.0, 52.0, 56.0]),
        np.array([0.0, 0.2, 0.4]),  # the first contract is in its last session
        cfg=TradingConfig(sigma_method="residuals", periods_per_year=52),
        resid_hist=RNG.normal(0, 0.01, (20, 3)),
        innovation_var_t=np.full(3, 1e-4),
    )
    assert list(inp.tradable) == [False, False, True]
    assert inp.z[0] == 0 and inp.z[1] == 0 and inp.z[2] > 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(z_in=1.0, z_out=1.5), "z_out < z_in"),
        (dict(sigma_method="ewma"), "sigma_method"),
        (dict(z_method="x"), "z_method"),
        (dict(sigma_window=1), "sigma_window"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TradingConfig(**kwargs)


def test_input_validation():
    with pytest.raises(ValueError, match="F_model_t must have shape"):
        prepare_trading_inputs(np.ones(3), np.ones(2), np.ones(3), cfg=TradingConfig())
    with pytest.raises(ValueError, match="needs F_mkt_hist"):
        prepare_trading_inputs(np.ones(3), np.ones(3), np.ones(3), dt=0.1)
    with pytest.raises(ValueError, match="annualize"):
        prepare_trading_inputs(np.ones(3), np.ones(3), np.ones(3), F_mkt_hist=np.ones((5, 3)))
    with pytest.raises(ValueError, match="fee must be"):
        prepare_trading_inputs(
            np.ones(3), np.ones(3), np.ones(3), cfg=TradingConfig(fee=[1, 2]), dt=0.1,
            F_mkt_hist=np.ones((5, 3)), innovation_var_t=np.ones(3),
        )  # fmt: skip
    with pytest.raises(ValueError, match="sizing"):
        TradeEngine(sizing="kelly")
    with pytest.raises(ValueError, match="top_k"):
        TradeEngine(top_k=0)


def test_hysteresis_opens_holds_closes():
    """z crosses z_in, stays between z_out and z_in, then falls below z_out."""
    eng = TradeEngine()
    path = [0.0, 2.5, 1.5, 0.8, 0.3, 1.5, -2.6, -1.0, 0.7]
    want = [0, 1, 1, 1, 0, 0, -1, -1, 0]
    w = np.zeros(1)
    got = []
    for z in path:
        inp = _inputs([0.05 * np.sign(z) if z else 0.0], Sigma=[[0.04]], z=[z])
        d = eng.decide(inp, w)
        got.append(int(d.signals[0]))
        w = d.target_w
    assert got == want


def test_sign_flip_closes_and_reverses_only_beyond_z_in():
    eng = TradeEngine()
    inp = _inputs([0.05], Sigma=[[0.04]], z=[-1.0])
    assert eng.decide(inp, np.array([0.3])).signals[0] == 0  # closed, not reversed
    inp = _inputs([-0.05], Sigma=[[0.04]], z=[-2.5])
    assert eng.decide(inp, np.array([0.3])).signals[0] == -1


def test_top_k_keeps_the_largest_z():
    z = np.array([2.5, -4.0, 3.0, 2.1])
    inp = _inputs(0.01 * np.sign(z), Sigma=np.eye(4) * 0.04, z=z)
    d = TradeEngine(top_k=2).decide(inp)
    assert list(d.signals) == [0, -1, 1, 0]
    assert np.count_nonzero(d.target_w) == 2


def test_vol_target_hits_target_and_caps_bind():
    A = RNG.normal(size=(M, M))
    Sigma = A @ A.T * 0.01 + np.eye(M) * 0.01
    z = np.array([3.0, -2.5, 4.0, 2.2])
    inp = _inputs(0.02 * np.sign(z), Sigma=Sigma, z=z)
    d = TradeEngine(vol_target=0.15).decide(inp)
    assert np.sqrt(d.target_w @ Sigma @ d.target_w) == pytest.approx(0.15, abs=1e-8)
    np.testing.assert_array_equal(np.sign(d.target_w), np.sign(z))
    # a per-tenor cap binds exactly
    capped = inp._replace(limits=inp.limits._replace(per_tenor=np.full(M, 0.05)))
    dc = TradeEngine(vol_target=5.0).decide(capped)
    np.testing.assert_allclose(np.abs(dc.target_w), 0.05, rtol=0, atol=1e-15)
    # the gross leverage binds exactly
    lev = inp._replace(limits=inp.limits._replace(gross=0.3))
    dl = TradeEngine(vol_target=5.0).decide(lev)
    assert np.sum(np.abs(dl.target_w)) == pytest.approx(0.3, rel=1e-12)


def test_qp_unconstrained_equals_closed_form_and_is_built_once():
    Sigma = np.array([[0.04, 0.01, 0.0], [0.01, 0.09, 0.02], [0.0, 0.02, 0.05]])
    w_star = np.array([0.5, -0.3, 0.2])
    gamma = 2.0
    alpha = 2 * gamma * Sigma @ w_star  # so that Σ⁻¹α/(2γ) = w_star
    eng = TradeEngine(sizing="qp", gamma=gamma)
    for scale in (1.0, 0.5, 2.0):
        inp = _inputs(alpha * scale, Sigma=Sigma, z=np.array([3.0, -3.0, 3.0]))
        d = eng.decide(inp)
        assert d.status.endswith("optimal")
        np.testing.assert_allclose(
            d.target_w, np.linalg.solve(Sigma, alpha * scale) / (2 * gamma), atol=1e-6
        )
    assert eng.n_builds == 1


def test_qp_caps_and_leverage_bind():
    Sigma = np.eye(3) * 0.04
    alpha = np.array([0.05, -0.04, 0.03])
    z = np.array([3.0, -3.0, 3.0])
    eng = TradeEngine(sizing="qp", gamma=0.1)
    d = eng.decide(_inputs(alpha, Sigma=Sigma, z=z, cap=0.2))
    np.testing.assert_allclose(np.abs(d.target_w), 0.2, atol=1e-7)
    d = eng.decide(_inputs(alpha, Sigma=Sigma, z=z, gross=0.25))
    assert np.sum(np.abs(d.target_w)) == pytest.approx(0.25, abs=1e-7)
    # a tenor without a signal stays flat; weights follow the signals' signs
    d = eng.decide(_inputs(alpha, Sigma=Sigma, z=np.array([3.0, -1.0, 3.0])))
    assert abs(d.target_w[1]) < 1e-9 and d.target_w[0] > 0
    # the trading-cost term pulls towards w_prev
    w_prev = np.array([0.1, -0.1, 0.1])
    far = TradeEngine(sizing="qp", gamma=0.5).decide(_inputs(alpha, Sigma=Sigma, z=z), w_prev)
    near = TradeEngine(sizing="qp", gamma=0.5, lambda2=50.0).decide(
        _inputs(alpha, Sigma=Sigma, z=z), w_prev
    )
    assert np.abs(near.target_w - w_prev).sum() < np.abs(far.target_w - w_prev).sum()


def test_failed_solve_sends_no_orders():
    eng = TradeEngine(sizing="qp", gamma=1.0, solvers=("NOT_A_SOLVER", "ALSO_NOT"))
    w_prev = np.array([0.1, 0.0, 0.0])
    d = eng.decide(_inputs([0.05, 0.05, 0.05], Sigma=np.eye(3) * 0.04, z=[3, 3, 3]), w_prev)
    assert d.orders == [] and "error" in d.status
    np.testing.assert_array_equal(d.target_w, w_prev)


def test_frictions_block_unprofitable_entries_but_not_exits():
    # alpha 0.1% but costs 1 price unit on a 50 price: 2% per unit weight
    inp = _inputs([0.001, 0.001], Sigma=np.eye(2) * 0.04, z=[3.0, 3.0], cost=1.0)
    d = TradeEngine().decide(inp)
    assert d.orders == [] and d.blocked.all() and list(d.signals) == [0, 0]
    cheap = _inputs([0.05, 0.05], Sigma=np.eye(2) * 0.04, z=[3.0, 3.0], cost=0.01)
    assert len(TradeEngine().decide(cheap).orders) == 2
    # an exit is sent whatever it costs
    exit_ = _inputs([0.001, 0.001], Sigma=np.eye(2) * 0.04, z=[0.1, 0.1], cost=1.0)
    d = TradeEngine().decide(exit_, np.array([0.2, -0.1]))
    assert d.orders == [Order(0, "SELL", 0.2), Order(1, "BUY", 0.1)]


def test_orders_are_the_weight_changes():
    inp = _inputs([0.03, -0.02, 0.0, 0.04], Sigma=np.eye(4) * 0.04, z=[3.0, -3.0, 0.0, 2.5])
    w_prev = np.array([0.05, 0.0, 0.1, 0.0])
    d = TradeEngine().decide(inp, w_prev)
    dw = d.target_w - w_prev
    assert [o.tenor_id for o in d.orders] == [i for i in range(4) if abs(dw[i]) > 1e-8]
    for o in d.orders:
        assert o.side == ("BUY" if dw[o.tenor_id] > 0 else "SELL")
        assert o.size == pytest.approx(abs(dw[o.tenor_id]))
        assert isinstance(o.tenor_id, int) and isinstance(o.size, float)
    assert d.signals.dtype == float and set(np.unique(d.signals)) <= {-1.0, 0.0, 1.0}


def test_blocked_reversal_exits_instead_of_keeping_the_old_side():
    inp = _inputs([-0.001], Sigma=[[0.04]], z=[-10.0], cost=1.0)
    d = TradeEngine().decide(inp, np.array([0.5]))
    assert d.target_w[0] == 0.0 and d.orders == [Order(0, "SELL", 0.5)]
    assert d.signals[0] == 0 and d.blocked[0]


def test_empty_history_columns_do_not_warn():
    hist = np.full((61, 2), np.nan)
    hist[:, 0] = 50 * np.exp(np.cumsum(RNG.normal(0, 0.01, 61)))
    inp = prepare_trading_inputs(
        np.array([50.0, 51.0]), np.array([52.0, 50.0]), np.array([0.2, 0.4]),
        cfg=TradingConfig(z_method="residual", periods_per_year=52),
        F_mkt_hist=hist, resid_hist=np.c_[RNG.normal(0, 0.01, 30), np.full(30, np.nan)],
    )  # fmt: skip
    assert inp.Sigma[1, 1] == 0 and inp.z[1] == 0 and inp.z[0] != 0
