"""prepare_trading_inputs and TradeEngine: the document's contracts and known answers."""

import cvxpy as cp
import jax
import numpy as np
import pytest
from cvxpy.reductions.chain import Chain
from cvxpy.reductions.solvers.solving_chain import SolvingChain

import ssjax
from ssjax.core.filter import kalman_filter
from ssjax.core.model import forward_curve
from ssjax.core.simulate import simulate
from ssjax.trading.engine import (
    Order,
    TradeEngine,
    TradingConfig,
    TradingInputs,
    prepare_trading_inputs,
    residual_variances,
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
        filtered_resid_var_t=np.full(m, 0.01**2),
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
        filtered_resid_var_t=np.full(M, 0.02**2),
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
        filtered_resid_var_t=np.full(3, 1e-4),
    )
    assert list(inp.tradable) == [False, False, True]
    assert inp.z[0] == 0 and inp.z[1] == 0 and inp.z[2] > 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(z_in=1.0, z_out=1.5), "z_out < z_in"),
        (dict(sigma_method="ewma"), "sigma_method"),
        (dict(z_method="x"), "z_method"),
        (dict(z_method="model"), "'filtered', 'innovation', 'residual'"),
        (dict(sigma_window=1), "sigma_window"),
        (dict(min_resid_sd=-1e-6), "min_resid_sd"),
        (dict(min_resid_sd=float("nan")), "min_resid_sd"),
        (dict(z_in="two"), "TradingConfig.z_in must be a number, got 'two'"),
        (dict(sigma_window=60.5), "TradingConfig.sigma_window must be an integer"),
        (dict(fee=-0.01), r"TradingConfig.fee must be >= 0 \(a cost\)"),
        (dict(half_spread=[0.01, -1.0]), "TradingConfig.half_spread must be >= 0"),
        (dict(slippage="a lot"), "TradingConfig.slippage must be a number or one"),
        (dict(max_weight=0.0), "TradingConfig.max_weight must be > 0"),
        (dict(execution_lag=-1), "TradingConfig.execution_lag must be >= 0"),
        (dict(execution_lag=True), "TradingConfig.execution_lag must be an integer"),
        (dict(carry_rolls="yes"), "TradingConfig.carry_rolls must be True or False"),
        (dict(periods_per_year=0), "TradingConfig.periods_per_year must be None or a number"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TradingConfig(**kwargs)


@pytest.mark.parametrize("z_method", ["filtered", "innovation", "residual"])
def test_a_tenor_fitted_exactly_has_no_signal(z_method):
    """Below min_resid_sd a tenor's z is 0, whatever rounding made of its tiny variance."""
    F = np.full(4, 50.0)
    alpha = np.array([0.02, 1e-11, 1e-11, 2e-5])
    # tenor 1: rounding noise of R - H P H' (positive), tenor 2: negative; tenor 3: s.d. 1e-5
    var = np.array([1e-4, 3e-18, -2e-15, 1e-10])
    resid = np.zeros((20, 4))
    resid[::2] = np.sqrt(var.clip(0)) * 1.0
    resid[1::2] = -np.sqrt(var.clip(0)) * 1.0
    cfg = TradingConfig(z_method=z_method, periods_per_year=52)
    inp = prepare_trading_inputs(
        F, F * np.exp(alpha), np.full(4, 0.5), cfg=cfg, F_mkt_hist=np.full((5, 4), 50.0),
        resid_hist=resid, filtered_resid_var_t=var, innovation_var_t=var,
    )  # fmt: skip
    assert inp.z[1] == 0 and inp.z[2] == 0
    assert inp.z[0] == pytest.approx(0.02 / 0.01, rel=0.03)
    assert inp.z[3] == pytest.approx(2e-5 / 1e-5, rel=0.03)  # above the floor: a signal
    off = prepare_trading_inputs(
        F, F * np.exp(alpha), np.full(4, 0.5), F_mkt_hist=np.full((5, 4), 50.0),
        cfg=TradingConfig(z_method=z_method, periods_per_year=52, min_resid_sd=1e-4),
        resid_hist=resid, filtered_resid_var_t=var, innovation_var_t=var,
    )  # fmt: skip
    assert off.z[3] == 0 and off.z[0] != 0


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
            F_mkt_hist=np.ones((5, 3)), filtered_resid_var_t=np.ones(3),
        )  # fmt: skip
    with pytest.raises(ValueError, match="sizing"):
        TradeEngine(sizing="kelly")
    with pytest.raises(ValueError, match="top_k"):
        TradeEngine(top_k=0)
    with pytest.raises(ValueError, match="solvers"):
        TradeEngine(sizing="qp", solvers="CLARABEL")
    # each model basis names the variance it needs
    for method, name in (("filtered", "filtered_resid_var_t"), ("innovation", "innovation_var_t")):
        with pytest.raises(ValueError, match=f"needs {name}"):
            prepare_trading_inputs(
                np.ones(3), np.ones(3), np.ones(3), cfg=TradingConfig(z_method=method),
                dt=0.1, F_mkt_hist=np.ones((5, 3)),
                # the other variance is given: it must not be used in its place
                **{("innovation_var_t" if method == "filtered" else "filtered_resid_var_t"):
                   np.ones(3)},
            )  # fmt: skip


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


SIGMA3 = np.array([[0.04, 0.01, 0.0], [0.01, 0.09, 0.02], [0.0, 0.02, 0.05]])
W_STAR = np.array([0.5, -0.3, 0.2])
GAMMA = 2.0
H = 0.5  # alpha_horizon: α/H is a return per year, like Σ
ALPHA3 = 2 * GAMMA * H * SIGMA3 @ W_STAR  # so that Σ⁻¹(α/H)/(2γ) = W_STAR
Z3 = np.array([3.0, -3.0, 3.0])


def _count_compilations(monkeypatch) -> list:
    """Record every full cvxpy compilation (the reduction chain applied to a problem)."""
    calls = []

    def apply(self, problem, verbose=False):
        calls.append((id(problem), self.solver.name()))
        return Chain.apply(self, problem, verbose)

    monkeypatch.setattr(SolvingChain, "apply", apply)
    return calls


def test_qp_unconstrained_equals_closed_form_and_is_built_once(monkeypatch):
    compiled = _count_compilations(monkeypatch)
    eng = TradeEngine(sizing="qp", gamma=GAMMA, alpha_horizon=H)
    seen = []
    for k, scale in enumerate((1.0, 0.5, 2.0, -1.0)):
        Sigma = SIGMA3 * (1 + 0.1 * k)  # new parameter values on every date
        inp = _inputs(ALPHA3 * scale, Sigma=Sigma, z=Z3 * np.sign(scale))
        d = eng.decide(inp, W_STAR * 0.1 * k)
        assert d.status == "CLARABEL: optimal"
        np.testing.assert_allclose(
            d.target_w, np.linalg.solve(Sigma, ALPHA3 * scale) / (2 * GAMMA * H), atol=1e-6
        )
        qp = eng._qp[3]
        prob = qp.problems["CLARABEL"]
        cache = prob._cache
        assert cache.param_prog is not None and cache.key[0] == "CLARABEL"
        seen.append((id(qp), id(prob), id(cache.param_prog), id(cache.solving_chain)))
    # one Python build, one cvxpy problem, one compiled parameter program and solving chain,
    # and the reduction chain ran once: the later solves only refreshed the parameters
    assert eng.n_builds == 1
    assert len(set(seen)) == 1
    assert compiled == [(seen[0][1], "CLARABEL")]
    assert prob is qp.problem and prob.is_dcp(dpp=True)


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
    w_prev = np.array([0.1, 0.0, -0.2])
    # every tenor has an entry signal (|z| > z_in), but nothing may be traded on a failed solve
    d = eng.decide(_inputs([0.05, 0.05, 0.05], Sigma=np.eye(3) * 0.04, z=[3, 3, 3]), w_prev)
    assert d.orders == []
    assert d.status.startswith("NOT_A_SOLVER: error") and "; ALSO_NOT: error" in d.status
    np.testing.assert_array_equal(d.target_w, w_prev)
    # the signals are the position actually kept, not the ±1 the failed solve was asked for
    np.testing.assert_array_equal(d.signals, [1.0, 0.0, -1.0])
    assert d.signals.dtype == float and not d.blocked.any()


def _closed_form(scale=1.0):
    return np.linalg.solve(SIGMA3, ALPHA3 * scale) / (2 * GAMMA * H)


def test_qp_falls_back_to_the_second_solver_when_the_first_is_unavailable():
    eng = TradeEngine(
        sizing="qp", gamma=GAMMA, alpha_horizon=H, solvers=("NOT_A_SOLVER", "CLARABEL")
    )
    w_prev = np.array([0.1, 0.0, 0.0])
    d = eng.decide(_inputs(ALPHA3, Sigma=SIGMA3, z=Z3), w_prev)
    first, second = d.status.split("; ")
    assert first.startswith("NOT_A_SOLVER: error") and second == "CLARABEL: optimal"
    np.testing.assert_allclose(d.target_w, _closed_form(), atol=1e-6)
    dw = d.target_w - w_prev
    assert [(o.tenor_id, o.side) for o in d.orders] == [
        (i, "BUY" if dw[i] > 0 else "SELL") for i in range(3)
    ]
    np.testing.assert_allclose([o.size for o in d.orders], np.abs(dw))


def test_qp_fallback_after_a_failed_or_non_optimal_solve(monkeypatch):
    """The first solver raises on one date and returns a non-optimal status (with a garbage
    point) on another: the fallback's solution is used and its status reported; when the
    first solver works again it reuses its compiled program."""
    compiled = _count_compilations(monkeypatch)
    real_solve = cp.Problem.solve
    mode = {"clarabel": "ok"}

    def solve(self, *args, **kwargs):
        if kwargs.get("solver") == "CLARABEL" and mode["clarabel"] != "ok":
            if mode["clarabel"] == "raise":
                raise cp.error.SolverError("forced failure")
            out = real_solve(self, *args, **kwargs)
            self._status = cp.INFEASIBLE
            self.variables()[0].value = np.full(3, 0.123)
            return out
        return real_solve(self, *args, **kwargs)

    monkeypatch.setattr(cp.Problem, "solve", solve)
    eng = TradeEngine(sizing="qp", gamma=GAMMA, alpha_horizon=H, solvers=("CLARABEL", "OSQP"))
    inp = _inputs(ALPHA3, Sigma=SIGMA3, z=Z3)
    d0 = eng.decide(inp)
    assert d0.status == "CLARABEL: optimal"
    for failure, first in (("raise", "CLARABEL: error forced failure"),
                           ("status", "CLARABEL: infeasible")):  # fmt: skip
        mode["clarabel"] = failure
        d = eng.decide(inp)
        assert d.status.split("; ")[0] == first
        assert d.status.split("; ")[1] in ("OSQP: optimal",), d.status
        np.testing.assert_allclose(d.target_w, _closed_form(), atol=1e-3)
        assert not np.allclose(d.target_w, 0.123)
        assert [o.size for o in d.orders] == pytest.approx(np.abs(d.target_w))
    mode["clarabel"] = "ok"
    d = eng.decide(_inputs(ALPHA3 * 0.5, Sigma=SIGMA3, z=Z3))
    assert d.status == "CLARABEL: optimal"
    np.testing.assert_allclose(d.target_w, _closed_form(0.5), atol=1e-6)
    # one compilation per solver over all dates (each solver keeps its own problem object)
    assert sorted(name for _, name in compiled) == ["CLARABEL", "OSQP"]
    assert eng.n_builds == 1


def test_qp_all_solvers_failing_keeps_the_book(monkeypatch):
    def fail(self, *args, **kwargs):
        raise cp.error.SolverError("down")

    monkeypatch.setattr(cp.Problem, "solve", fail)
    eng = TradeEngine(sizing="qp", gamma=GAMMA, alpha_horizon=H)
    w_prev = np.array([0.0, -0.3, 0.2])
    d = eng.decide(_inputs(ALPHA3, Sigma=SIGMA3, z=Z3), w_prev)
    assert d.status == "CLARABEL: error down; OSQP: error down"
    assert d.orders == []
    np.testing.assert_array_equal(d.target_w, w_prev)
    np.testing.assert_array_equal(d.signals, [0.0, -1.0, 1.0])


def test_entries_must_cover_the_round_trip():
    """Cost 0.5 on a price of 50: 1% per unit weight each way, 2% for the round trip."""
    one_way = 0.5 / 50
    Sigma = np.eye(3) * 0.04
    z = [3.0, 3.0, 3.0]
    alpha = [1.5 * one_way, 2.5 * one_way, -1.5 * one_way]  # covers one way only / round trip
    d = TradeEngine().decide(_inputs(alpha, Sigma=Sigma, z=[3.0, 3.0, -3.0], cost=0.5))
    assert list(d.blocked) == [True, False, True]
    assert [o.tenor_id for o in d.orders] == [1] and d.orders[0].side == "BUY"
    assert list(d.signals) == [0, 1, 0] and d.target_w[0] == 0 and d.target_w[2] == 0
    # the same gains under half the cost: both now cover their round trip
    d = TradeEngine().decide(_inputs(alpha, Sigma=Sigma, z=[3.0, 3.0, -3.0], cost=0.25))
    assert not d.blocked.any() and len(d.orders) == 3
    # adding to a held position: the addition must cover its round trip too (kept as held)
    w_prev = np.array([0.01, 0.0, 0.0])
    d = TradeEngine().decide(_inputs(alpha, Sigma=Sigma, z=z, cost=0.5), w_prev)
    assert d.blocked[0] and d.target_w[0] == 0.01 and d.signals[0] == 1
    assert 0 not in [o.tenor_id for o in d.orders]
    # exits are sent whatever they cost, even when the gain covers only one way
    d = TradeEngine().decide(
        _inputs(alpha, Sigma=Sigma, z=[0.1, 0.1, -0.1], cost=0.5), np.array([0.2, -0.1, 0.0])
    )
    assert d.orders == [Order(0, "SELL", 0.2), Order(1, "BUY", 0.1)]


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


# ---- the z-score bases against a filter run -----------------------------------------------------
def _filter_run():
    p = ssjax.make_params(1.5, 0.3, 0.15, 0.4, 0.01, np.array([0.02, 0.006, 0.01]))
    T, taus = 400, np.array([0.1, 0.5, 1.0])
    ttm = np.tile(taus, (T, 1)) - 0.002 * (np.arange(T) % 10)[:, None]
    sim = simulate(p, jax.random.PRNGKey(3), ttm, 1 / 52)
    F = np.asarray(sim.F).copy()
    mask = np.ones(F.shape, bool)
    mask[200, 1] = False  # one missing cell: its residual is not filtered by its own price
    F[200, 1] = np.nan
    data = ssjax.make_market_data(F, ttm, mask=mask, dt=1 / 52)
    return p, F, ttm, mask, kalman_filter(p, data)


def test_residual_variances_by_hand_from_a_filter_run():
    p, F, ttm, mask, filt = _filter_run()
    innov, fvar = residual_variances(p, filt, ttm, mask)
    assert innov.shape == fvar.shape == F.shape
    k, R = float(p.kappa), np.diag(np.asarray(p.meas_sd) ** 2)
    for t in (0, 1, 57, 200, 399):
        H = np.column_stack([np.exp(-k * ttm[t]), np.ones(3)])
        Pp = np.asarray(filt.predicted_covs[t])
        Ft = H @ Pp @ H.T + R  # the one-step innovation covariance
        np.testing.assert_allclose(innov[t], np.diag(Ft), rtol=1e-12)
        obs = mask[t]
        # the filter's own innovation variances where observed
        np.testing.assert_allclose(innov[t][obs], np.asarray(filt.innovation_vars[t])[obs])
        # the Kalman update by hand from the observed rows
        Ho, Fo = H[obs], Ft[np.ix_(obs, obs)]
        Pf = Pp - Pp @ Ho.T @ np.linalg.solve(Fo, Ho @ Pp)
        np.testing.assert_allclose(np.asarray(filt.filtered_covs[t]), Pf, rtol=1e-9, atol=1e-14)
        hpf = np.diag(H @ Pf @ H.T)
        want = np.where(obs, np.diag(R) - hpf, np.diag(R) + hpf)
        np.testing.assert_allclose(fvar[t], want, rtol=1e-9)
        # observed: R − H P_t|t Hᵀ = R F⁻¹ R, the covariance of the filtered residual
        Ro = R[np.ix_(obs, obs)]
        np.testing.assert_allclose(fvar[t][obs], np.diag(Ro @ np.linalg.solve(Fo, Ro)), rtol=1e-8)
        assert np.all(fvar[t] > 0) and np.all(fvar[t][obs] < innov[t][obs])
    with pytest.raises(ValueError, match="ttm must be"):
        residual_variances(p, filt, ttm[:10])


def test_each_z_basis_against_a_hand_computation():
    p, F, ttm, mask, filt = _filter_run()
    T = F.shape[0]
    xf = np.asarray(filt.filtered_means)
    F_model = np.stack([np.asarray(forward_curve(p, xf[t], ttm[t])) for t in range(T)])
    alpha_all = np.log(F_model / F)
    k, r = float(p.kappa), np.asarray(p.meas_sd) ** 2
    t, W = 350, 60

    def call(method):
        innov, fvar = residual_variances(p, filt, ttm, mask)
        return prepare_trading_inputs(
            F[t], F_model[t], ttm[t],
            cfg=TradingConfig(z_method=method, sigma_window=W, periods_per_year=52),
            F_mkt_hist=F[t - W : t + 1], resid_hist=-alpha_all[t - W : t],
            filtered_resid_var_t=fvar[t], innovation_var_t=innov[t],
        )  # fmt: skip

    b = np.exp(-k * ttm[t])
    Pp, Pf = np.asarray(filt.predicted_covs[t]), np.asarray(filt.filtered_covs[t])
    hph_p = b * b * Pp[0, 0] + 2 * b * Pp[0, 1] + Pp[1, 1]
    hph_f = b * b * Pf[0, 0] + 2 * b * Pf[0, 1] + Pf[1, 1]
    past = -alpha_all[t - W : t]
    rolling_sd = np.sqrt(((past - past.mean(0)) ** 2).sum(0) / (W - 1))
    want = {
        "filtered": (r - hph_f, "model filtered-residual s.d."),
        "innovation": (hph_p + r, "model one-step innovation s.d."),
        "residual": (rolling_sd**2, f"rolling residual s.d., {W} dates"),
    }
    zs = {}
    for method, (var, label) in want.items():
        inp = call(method)
        np.testing.assert_allclose(inp.alpha, alpha_all[t], rtol=1e-12)
        np.testing.assert_allclose(inp.z, alpha_all[t] / np.sqrt(var), rtol=1e-9)
        assert inp.z_basis.startswith(label), inp.z_basis
        zs[method] = inp.z
    # the innovation s.d. is the larger one: its |z| are smaller on every tenor
    assert np.all(np.abs(zs["innovation"]) < np.abs(zs["filtered"]))

    # why "filtered" is the default: under the model it makes z a unit-variance score of
    # alpha; the innovation basis does not (it standardizes another quantity)
    innov, fvar = residual_variances(p, filt, ttm, mask)
    ok = mask[50:]
    z_f = (alpha_all[50:] / np.sqrt(fvar[50:]))[ok]
    z_i = (alpha_all[50:] / np.sqrt(innov[50:]))[ok]
    assert 0.85 < np.std(z_f) < 1.15  # 0.95 with this seed (s.d. about 0.03 over seeds)
    assert np.std(z_i) < 0.5  # 0.23
