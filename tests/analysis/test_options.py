"""Options on futures: model variance, Black-76, Greeks and implied volatility."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import np_transition
from scipy.stats import norm

import ssjax
from ssjax.analysis.options import (
    IV_STATUS,
    black76,
    futures_option_price,
    futures_option_price_from_state,
    greeks,
    greeks_from_state,
    implied_vol,
    implied_vol_checked,
    model_implied_vol,
    model_log_variance,
)

P = ssjax.make_params(1.5, 0.29, 0.16, 0.39, 0.0086, 0.01)
STATE = jnp.array([0.12, 3.9])
F0 = 55.0
RATE = 0.03

# one compile per function: batched, jitted once at module level
GREEKS = jax.jit(greeks)
GREEKS_STATE = jax.jit(greeks_from_state)
PRICE_B = jax.jit(jax.vmap(futures_option_price))  # params batched too
PRICE_STATE_B = jax.jit(jax.vmap(futures_option_price_from_state))
BLACK_B = jax.jit(jax.vmap(black76, in_axes=(None, 0, 0, 0, None, 0)))
IV_B = jax.jit(jax.vmap(implied_vol, in_axes=(0, None, 0, 0, None, 0)))
VAR = jax.jit(model_log_variance)
IVOL = jax.jit(model_implied_vol)
PRICE = jax.jit(futures_option_price)
PRICE_STATE = jax.jit(futures_option_price_from_state)
IV = jax.jit(implied_vol)
LOGF = jax.jit(ssjax.log_forward)

# a grid of option points (strike, futures ttm, option ttm, call?) for the Greeks
K_G = np.array([40.0, 50.0, 55.0, 60.0, 75.0, 55.0])
TF_G = np.array([0.5, 1.0, 1.5, 2.0, 1.0, 0.3])
TO_G = np.array([0.25, 1.0, 0.75, 1.5, 0.5, 0.3])
C_G = np.array([True, False, True, False, True, True])


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _kappa(k):
    """P with kappa = k (a strongly typed float64, so jitted functions are not retraced)."""
    return P._replace(kappa=jnp.asarray(k, P.kappa.dtype))


def _bump(p, name, h):
    return p._replace(**{name: getattr(p, name) + h})


def test_variance_is_the_transition_covariance_and_ignores_drifts():
    tf = np.array([0.3, 1.0, 2.0, 2.0, 5.0, 2.0, 2.0])
    to = np.array([0.3, 0.25, 1.0, 0.01, 3.0, 0.0, 1e-9])
    v = np.asarray(VAR(P, tf, to))
    theta = dict(kappa=1.5, sigma_x=0.29, sigma_y=0.16, rho=0.39, mu=0.0086)
    Q = np.array([np_transition(theta, t)[2] for t in to])  # the document's covariance terms
    b = np.exp(-1.5 * (tf - to))
    ref = b**2 * Q[:, 0, 0] + Q[:, 1, 1] + 2 * b * Q[:, 0, 1]
    np.testing.assert_allclose(v[:6], ref[:6], rtol=1e-13)
    np.testing.assert_allclose(v[6], ref[6], rtol=1e-8)  # the naive reference loses digits
    p_rp = P._replace(mu=jnp.asarray(0.3), lambda_x=jnp.asarray(0.2), mu_star=jnp.asarray(-0.1))
    np.testing.assert_array_equal(VAR(p_rp, tf, to), v)
    iv = np.asarray(IVOL(P, tf, to))
    np.testing.assert_allclose(iv[:5], np.sqrt(v[:5] / to[:5]), rtol=1e-13)
    # τ → 0: the instantaneous vol of ln F(t, T), continuously
    b = np.exp(-1.5 * 2.0)
    inst = np.sqrt(0.29**2 * b**2 + 0.16**2 + 2 * 0.39 * 0.29 * 0.16 * b)
    np.testing.assert_allclose(iv[5], inst, rtol=1e-14)
    np.testing.assert_allclose(iv[6], inst, rtol=1e-8)


def test_variance_matches_monte_carlo_and_futures_are_martingales():
    """One exact path of ssjax.simulate; step i runs from date i over τ_i (dt[i] = τ_i).

    Given the state at date i, ln F(t+τ, T) − ln F(t, T) = b (X_{i+1} − e^{−κτ} X_i)
    + (Y_{i+1} − Y_i) + const (b = e^{−κ(Δ−τ)}): i.i.d. N(−V/2, V) across steps, so each
    step is one draw of the option-expiry distribution from a fixed state. ttm[i, 1] = Δ_i
    (leaving date i), ttm[i + 1, 0] = Δ_i − τ_i (arriving at date i + 1).
    """
    n = 20_000
    pairs = np.array([[1.0, 0.5], [2.0, 2.0], [0.5, 0.1]])  # (Δ, τ)
    delta, tau = np.repeat(pairs[:, 0], n), np.repeat(pairs[:, 1], n)
    ttm = np.ones((3 * n + 1, 2))
    ttm[:-1, 1] = delta
    ttm[1:, 0] = delta - tau
    # (ttm, dt as arguments: closed-over arrays would be constant-folded at compile time)
    sim = jax.jit(lambda key, ttm, dt: ssjax.simulate(P, key, ttm, dt, STATE, noise=False).log_f)
    log_f = np.asarray(sim(jax.random.key(7, impl="rbg"), ttm, tau))  # rbg: quicker compile
    r = (log_f[1:, 0] - log_f[:-1, 1]).reshape(3, n)  # ln F(t+τ, T) − ln F(t, T)
    var_model = np.asarray(VAR(P, pairs[:, 0], pairs[:, 1]))
    var_mc = r.var(axis=1, ddof=1)
    se = var_model * np.sqrt(2.0 / (n - 1))
    assert np.all(np.abs(var_mc - var_model) < 3 * se), (var_mc, var_model)
    # the futures price is a martingale: E[F(t+τ, T) / F(t, T)] = 1 (document model, μ* = μ)
    ratio = np.exp(r)
    se_mean = ratio.std(axis=1, ddof=1) / np.sqrt(n)
    assert np.all(np.abs(ratio.mean(axis=1) - 1.0) < 3 * se_mean)


def test_black76_matches_scipy_at_model_variance():
    K = np.array([30.0, 45.0, 55.0, 65.0, 100.0, 55.0])
    tf = np.array([1.0, 2.0, 0.5, 1.5, 3.0, 0.2])
    to = np.array([0.5, 1.0, 0.5, 0.1, 3.0, 0.2])
    is_call = np.array([True, False, True, False, True, False])
    got = PRICE_B(_stack([P] * len(K)), np.full(6, F0), K, tf, to, np.full(6, RATE), is_call)
    # independent NumPy/SciPy Black-76 at V = the module-docstring formula
    k, sx, sy, r = 1.5, 0.29, 0.16, 0.39
    b = np.exp(-k * (tf - to))
    V = sx**2 * b**2 * (1 - np.exp(-2 * k * to)) / (2 * k) + sy**2 * to
    V += 2 * r * sx * sy * b * (1 - np.exp(-k * to)) / k
    sd = np.sqrt(V)
    d1 = (np.log(F0 / K) + V / 2) / sd
    d2 = d1 - sd
    D = np.exp(-RATE * to)
    call = D * (F0 * norm.cdf(d1) - K * norm.cdf(d2))
    put = D * (K * norm.cdf(-d2) - F0 * norm.cdf(-d1))
    np.testing.assert_allclose(got, np.where(is_call, call, put), rtol=1e-12)
    vol = IVOL(P, tf, to)
    np.testing.assert_allclose(BLACK_B(F0, K, to, vol, RATE, is_call), got, rtol=1e-12)


def test_put_call_parity():
    K = np.tile(F0 * np.geomspace(0.3, 3.0, 7), 2)
    calls = np.repeat([True, False], 7)
    D = np.exp(-RATE * 1.2)
    pr = np.asarray(PRICE(P, F0, K, np.full(14, 2.0), np.full(14, 1.2), RATE, calls))
    np.testing.assert_allclose(pr[:7] - pr[7:], D * (F0 - K[:7]), rtol=0, atol=1e-10)
    prs = np.asarray(PRICE_STATE(P, STATE, K, 2.0, 1.2, RATE, calls))
    F = np.exp(float(LOGF(P, STATE, 2.0)))
    np.testing.assert_allclose(prs[:7] - prs[7:], D * (F - K[:7]), rtol=0, atol=1e-10)


def _fd_check(name, got, plus, minus, h, rtol=1e-6, atol=1e-8):
    np.testing.assert_allclose(got, (plus - minus) / (2 * h), rtol=rtol, atol=atol, err_msg=name)


def test_greeks_match_central_finite_differences():
    n = len(K_G)
    g = GREEKS(P, F0, K_G, TF_G, TO_G, RATE, C_G)
    hF, h = 1e-4 * F0, 1e-5
    bumps = [("base", {})]
    bumps += [(f"F{s:+d}", {"F": s * hF}) for s in (1, -1)]
    bumps += [(f"t{s:+d}", {"tf": -s * h, "to": -s * h}) for s in (1, -1)]
    bumps += [(f"r{s:+d}", {"r": s * h}) for s in (1, -1)]
    names = ("kappa", "sigma_x", "sigma_y", "rho")
    bumps += [(f"{q}{s:+d}", {q: s * h}) for q in names for s in (1, -1)]
    ps, Fs, Ks, tfs, tos, rs, cs = [], [], [], [], [], [], []
    for _, d in bumps:
        for i in range(n):
            p = P
            for q in names:
                if q in d:
                    p = _bump(p, q, d[q])
            ps.append(p)
            Fs.append(F0 + d.get("F", 0.0))
            Ks.append(K_G[i])
            tfs.append(TF_G[i] + d.get("tf", 0.0))
            tos.append(TO_G[i] + d.get("to", 0.0))
            rs.append(RATE + d.get("r", 0.0))
            cs.append(C_G[i])
    out = PRICE_B(_stack(ps), *map(np.array, (Fs, Ks, tfs, tos, rs, cs)))
    pr = {b[0]: np.asarray(out[j * n : (j + 1) * n]) for j, b in enumerate(bumps)}
    np.testing.assert_allclose(g.price, pr["base"], rtol=1e-12)
    _fd_check("delta", g.delta, pr["F+1"], pr["F-1"], hF)
    gamma_fd = (pr["F+1"] - 2 * pr["base"] + pr["F-1"]) / hF**2
    np.testing.assert_allclose(g.gamma, gamma_fd, rtol=1e-5, atol=1e-9)
    _fd_check("theta", g.theta, pr["t+1"], pr["t-1"], h)
    _fd_check("rho_rate", g.rho_rate, pr["r+1"], pr["r-1"], h)
    for q in names:
        _fd_check(q, getattr(g.dparams, q), pr[q + "+1"], pr[q + "-1"], h)
    np.testing.assert_array_equal(g.dparams.mu, 0.0)
    # vega: central difference of Black-76 in σ at the model implied vol
    vol = np.asarray(IVOL(P, TF_G, TO_G))
    hv = 1e-5
    up = BLACK_B(F0, K_G, TO_G, vol + hv, RATE, C_G)
    down = BLACK_B(F0, K_G, TO_G, vol - hv, RATE, C_G)
    _fd_check("vega", g.vega, up, down, hv)


def test_state_greeks_match_central_finite_differences():
    n = len(K_G)
    g = GREEKS_STATE(P, STATE, K_G, TF_G, TO_G, RATE, C_G)
    h = 1e-5
    names = ("kappa", "sigma_x", "sigma_y", "rho", "mu")
    bumps = [("base", {})]
    bumps += [(f"x{j}{s:+d}", {"x": (j, s * h)}) for j in (0, 1) for s in (1, -1)]
    bumps += [(f"t{s:+d}", {"t": -s * h}) for s in (1, -1)]
    bumps += [(f"r{s:+d}", {"r": s * h}) for s in (1, -1)]
    bumps += [(f"{q}{s:+d}", {q: s * h}) for q in names for s in (1, -1)]
    ps, xs, Ks, tfs, tos, rs, cs = [], [], [], [], [], [], []
    for _, d in bumps:
        for i in range(n):
            p = P
            for q in names:
                if q in d:
                    p = _bump(p, q, d[q])
            x = np.array(STATE)
            if "x" in d:
                x[d["x"][0]] += d["x"][1]
            ps.append(p)
            xs.append(x)
            Ks.append(K_G[i])
            tfs.append(TF_G[i] + d.get("t", 0.0))
            tos.append(TO_G[i] + d.get("t", 0.0))
            rs.append(RATE + d.get("r", 0.0))
            cs.append(C_G[i])
    out = PRICE_STATE_B(_stack(ps), *map(np.array, (xs, Ks, tfs, tos, rs, cs)))
    pr = {b[0]: np.asarray(out[j * n : (j + 1) * n]) for j, b in enumerate(bumps)}
    np.testing.assert_allclose(g.price, pr["base"], rtol=1e-12)
    for j in (0, 1):
        _fd_check(f"dstate[{j}]", g.dstate[:, j], pr[f"x{j}+1"], pr[f"x{j}-1"], h)
    _fd_check("theta", g.theta, pr["t+1"], pr["t-1"], h)
    _fd_check("rho_rate", g.rho_rate, pr["r+1"], pr["r-1"], h)
    for q in names:
        _fd_check(q, getattr(g.dparams, q), pr[q + "+1"], pr[q + "-1"], h)
    # delta/gamma/vega are those of the F version at the model forward
    F = np.exp(np.asarray(LOGF(P, STATE, TF_G)))
    np.testing.assert_allclose(g.delta * F, g.dstate[:, 1], rtol=1e-12)  # ∂/∂Y = F ∂/∂F
    np.testing.assert_allclose(g.dstate[:, 0], np.exp(-1.5 * TF_G) * g.dstate[:, 1], rtol=1e-12)


def test_kappa_to_zero_is_finite_and_continuous():
    p0 = _kappa(0.0)
    tf, to = np.array([0.5, 2.0, 3.0]), np.array([0.5, 1.0, 0.05])
    v0 = np.asarray(VAR(p0, tf, to))
    np.testing.assert_allclose(v0, (0.29**2 + 0.16**2 + 2 * 0.39 * 0.29 * 0.16) * to, rtol=1e-14)
    prev = None
    for k in (1e-3, 1e-5, 1e-8, 1e-12):
        vk = np.asarray(VAR(_kappa(k), tf, to))
        err = np.max(np.abs(vk - v0) / v0)
        assert err < 10 * k
        if prev is not None:
            assert err <= prev
        prev = err
    g0 = GREEKS(p0, F0, K_G, TF_G, TO_G, RATE, C_G)
    gk = GREEKS(_kappa(1e-9), F0, K_G, TF_G, TO_G, RATE, C_G)
    for name, a, b in zip(g0._fields[:6], g0[:6], gk[:6], strict=True):
        assert np.all(np.isfinite(a)), name
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10, err_msg=name)
    for q in ("kappa", "sigma_x", "sigma_y", "rho"):
        a, b = getattr(g0.dparams, q), getattr(gk.dparams, q)
        assert np.all(np.isfinite(a)), q
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-10, err_msg=q)


def test_zero_variance_gives_intrinsic_with_finite_gradients():
    F = np.array([60.0, 40.0, 40.0, 60.0, 40.0, 40.0])
    tau = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    sig = np.array([0.3, 0.3, 0.3, 0.0, 0.0, 0.0])
    call = np.array([True, False, True, True, False, True])
    D = np.exp(-RATE * tau) * np.array([1.0, 1.0, 1.0, 0.9, 0.9, 0.9])
    val = jax.jit(black76)(F, 50.0, tau, sig, 5.0, call, D)  # discount= overrides rate
    np.testing.assert_allclose(val, D * np.array([10.0, 10.0, 0.0] * 2), rtol=1e-15, atol=1e-15)
    # gradients at zero total variance (τ = 0, or σ_X = σ_Y = 0) through the Greeks batch
    intrinsic = np.maximum(np.where(C_G, F0 - K_G, K_G - F0), 0.0)
    zero_vol = P._replace(sigma_x=P.sigma_x * 0, sigma_y=P.sigma_y * 0)
    for p, to in [(P, np.zeros(6)), (zero_vol, TO_G)]:
        g = GREEKS(p, F0, K_G, TF_G, to, RATE, C_G)
        np.testing.assert_allclose(g.price, np.exp(-RATE * to) * intrinsic, rtol=1e-15)
        assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(g))
        np.testing.assert_allclose(g.delta, np.exp(-RATE * to) * np.sign(intrinsic) * (2 * C_G - 1))


def test_implied_vol_round_trip_over_strikes_and_expiries():
    K = F0 * np.geomspace(0.5, 2.0, 11)
    tau = np.array([0.05, 0.25, 1.0, 3.0])
    vol = np.array([0.08, 0.3, 0.9])
    KK, TT, VV, CC = (a.ravel() for a in np.meshgrid(K, tau, vol, [True, False], indexing="ij"))
    price = np.asarray(BLACK_B(F0, KK, TT, VV, RATE, CC))
    res = jax.tree.map(np.asarray, IV_B(price, F0, KK, TT, RATE, CC))
    # time value lost to rounding (deep in the money at low vol): status 5, NaN, not converged
    lower = np.exp(-RATE * TT) * np.maximum(np.where(CC, F0 - KK, KK - F0), 0)
    tv = price - lower
    lost = tv <= 8 * np.finfo(float).eps * lower
    assert 0 < lost.sum() < 0.1 * len(price)
    np.testing.assert_array_equal(res.status, np.where(lost, 5, 0))
    np.testing.assert_array_equal(res.converged, ~lost)
    assert np.all(np.isnan(res.vol[lost])) and np.all(np.isfinite(res.vol[~lost]))
    assert res.iterations.max() <= 12
    back = np.asarray(BLACK_B(F0, KK, TT, np.where(lost, 0.0, res.vol), RATE, CC))
    np.testing.assert_allclose(back, price, rtol=1e-10, atol=1e-10)
    # the vol itself where the price carries it (time value not lost to rounding)
    ok = (tv > 1e-6 * price) & (price > 1e-200)
    assert ok.sum() > 0.8 * len(price)
    np.testing.assert_allclose(res.vol[ok], VV[ok], rtol=1e-10)


def test_implied_vol_says_when_the_time_value_is_lost_to_rounding():
    """Random options, many deep in the money: none comes back "converged" with vol 0; those
    whose time value is below rounding get status 5 (NaN), every other one its vol back."""
    rng = np.random.default_rng(7)
    n = 4000
    F = rng.uniform(20.0, 120.0, n)
    K = F * np.exp(rng.uniform(-1.5, 1.5, n))
    tau = rng.uniform(0.01, 2.0, n)
    vol = rng.uniform(0.03, 0.8, n)
    call = rng.random(n) < 0.5
    price = np.asarray(jax.jit(black76)(F, K, tau, vol, RATE, call))
    res = jax.tree.map(np.asarray, IV(price, F, K, tau, RATE, call))
    lower = np.exp(-RATE * tau) * np.maximum(np.where(call, F - K, K - F), 0)
    tv = price - lower
    eps = np.finfo(float).eps
    lost = tv <= 8 * eps * lower
    assert lost.sum() > 10  # the case exists in this sample
    # exactly these (up to the rounding of the threshold itself)
    assert np.all(np.isin(res.status, (0, 5)))
    assert np.all(res.status[tv <= 4 * eps * lower] == 5)
    assert np.all(res.status[tv > 16 * eps * lower] == 0)
    assert not np.any(res.converged & (res.vol == 0))
    five = res.status == 5
    assert np.all(np.isnan(res.vol[five])) and not np.any(res.converged[five])
    assert np.all(np.isfinite(res.vol[~five])) and np.all(res.converged[~five])
    assert IV_STATUS[5].startswith("price at the lower bound to within rounding")
    ok = tv > 1e-6 * price
    np.testing.assert_allclose(res.vol[ok], vol[ok], rtol=1e-9)


def test_implied_vol_rejects_arbitrage_violations():
    D = np.exp(-RATE * 1.0)
    # fine, < intrinsic (call), >= D·F (call), < 0, >= D·K (put), tau = 0, = intrinsic
    price = np.array([5.0, 0.9 * D * 5.0, D * F0, -1.0, D * 60.0, 5.0, D * 5.0])
    K = np.array([55.0, 50.0, 55.0, 55.0, 60.0, 55.0, 50.0])
    tau = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    call = np.array([True, True, True, False, False, True, True])
    res = jax.tree.map(np.asarray, IV(price, F0, K, tau, RATE, call))
    np.testing.assert_array_equal(res.status, [0, 3, 4, 2, 4, 2, 5])
    bad = np.array([False, True, True, True, True, True, True])
    assert np.all(np.isnan(res.vol[bad])) and np.all(np.isfinite(res.vol[~bad]))
    np.testing.assert_array_equal(res.converged, ~bad)
    # a price at intrinsic (no time value) does not determine a vol: status 5, NaN
    with pytest.raises(ValueError, match=r"5 price\(s\) violate") as err:
        implied_vol_checked(price, F0, K, tau, RATE, call)
    msg = str(err.value)
    assert re.search(r"price\[1\]=.*below the lower bound D\*max\(F-K, 0\)", msg)
    assert re.search(r"price\[2\]=.*upper bound D\*F=", msg)
    assert re.search(r"price\[3\]: invalid input", msg)
    assert re.search(r"price\[4\]=.*upper bound D\*K=", msg)
    assert re.search(r"price\[5\]: invalid input.*tau=0\.0", msg)
    assert "price[0]" not in msg and "price[6]" not in msg
    fine = np.where(bad, 5.0, price)
    ok = implied_vol_checked(fine, F0, np.full(7, 55.0), 1.0 + 0 * tau, RATE, call)
    np.testing.assert_allclose(ok.vol[0], res.vol[0], rtol=1e-14)
    assert np.all(ok.status == 0)


def test_input_validation_names_the_argument():
    with pytest.raises(ValueError, match="ttm_option"):
        futures_option_price(P, F0, 50.0, 1.0, 1.5)
    with pytest.raises(ValueError, match="ttm_option"):
        model_log_variance(P, np.array([1.0, 2.0]), np.array([0.5, 2.5]))
    with pytest.raises(ValueError, match="ttm_option"):
        greeks(P, F0, 50.0, 1.0, -0.1)
    with pytest.raises(ValueError, match="^K "):
        futures_option_price(P, F0, -1.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="^F "):
        black76(0.0, 50.0, 1.0, 0.2)
    with pytest.raises(ValueError, match="sigma"):
        black76(50.0, 50.0, 1.0, -0.2)
    with pytest.raises(ValueError, match="state"):
        futures_option_price_from_state(P, jnp.ones(3), 50.0, 1.0, 0.5)
    # under a trace: NaN instead of an exception
    assert np.all(np.isnan(VAR(P, np.ones(3), np.full(3, 1.5))))


def test_float32_matches_float64():
    p32 = ssjax.make_params(1.5, 0.29, 0.16, 0.39, 0.0086, 0.01, dtype=jnp.float32)
    K = np.tile(F0 * np.geomspace(0.8, 1.25, 7), 2)
    tf = np.tile([0.5, 1.0, 2.0, 3.0, 1.0, 0.3, 2.0], 2)
    to = np.tile([0.25, 1.0, 0.5, 2.0, 0.1, 0.3, 0.0], 2)
    call = np.repeat([True, False], 7)
    K32, tf32, to32 = (np.asarray(a, np.float32) for a in (K, tf, to))
    v32 = VAR(p32, tf32, to32)
    pr32 = PRICE(p32, np.float32(F0), K32, tf32, to32, np.float32(RATE), call)
    assert v32.dtype == jnp.float32 and pr32.dtype == jnp.float32
    K64, tf64, to64 = (a.astype(float) for a in (K32, tf32, to32))  # the same rounded inputs
    np.testing.assert_allclose(v32, VAR(P, tf64, to64), rtol=1e-5)
    np.testing.assert_allclose(pr32, PRICE(P, F0, K64, tf64, to64, RATE, call), rtol=1e-5)
