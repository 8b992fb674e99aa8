"""Drift alerts: the array cores on synthetic series, the alert table on a hand-built rolling
result, and the issue's check on rolling recalibrations of simulated panels with and without
a structural break in kappa (one ``recalibrate`` call for both panels: one compilation)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import ssjax
from ssjax.analysis import drift
from ssjax.core.params import Params
from ssjax.datasets import Panel
from ssjax.rolling import RollingResult, recalibrate


# ---- parameter jumps -------------------------------------------------------------------
def test_parameter_jump_fires_at_the_injected_index():
    rng = np.random.default_rng(0)
    W, P = 40, 3
    se = np.full((W, P), 0.1)
    v = 1.0 + 0.02 * rng.normal(size=(W, P))
    v[25:, 1] += 0.8  # a jump of 0.8 = 5.7 pooled s.e. in parameter 1 at window 25
    r = drift.parameter_jumps(v, se, k=3.0)
    assert np.argwhere(r.alert).tolist() == [[25, 1]]
    assert r.z[25, 1] == pytest.approx((v[25, 1] - v[24, 1]) / np.sqrt(0.02))
    assert np.all(np.isnan(r.z[0])) and np.all(r.previous[0] == -1)
    # no jump, no alert
    assert not drift.parameter_jumps(v[:25], se[:25], k=3.0).alert.any()
    # the current s.e. scale: z larger by sqrt(2)
    rc = drift.parameter_jumps(v, se, k=3.0, scale="current")
    assert rc.z[25, 1] == pytest.approx(r.z[25, 1] * np.sqrt(2))


def test_parameter_jumps_skip_unusable_windows_and_scale_for_overlap():
    v = np.array([1.0, 1.0, 5.0, 1.2, 1.3])
    se = np.array([0.1, np.nan, 0.1, 0.1, 0.1])
    usable = np.array([True, True, False, True, True])
    r = drift.parameter_jumps(v, se, k=3.0, usable=usable)
    # window 1 (no s.e.) and window 2 (unusable) are skipped: window 3 compares with window 0
    assert r.previous[3] == 0 and np.isnan(r.z[1]) and np.isnan(r.z[2])
    assert r.z[3] == pytest.approx(0.2 / np.sqrt(0.02))
    assert not r.alert.any()
    ends = np.array([99, 109, 119, 129, 139])
    ro = drift.parameter_jumps(v, se, k=3.0, usable=usable, scale="overlap", ends=ends, window=100)
    # 30 dates apart in windows of 100: the pooled s.d. times sqrt(0.3)
    assert ro.z[3] == pytest.approx(r.z[3] / np.sqrt(0.3))
    assert ro.z[4] == pytest.approx(0.1 / np.sqrt(0.02 * 0.1))
    assert not ro.alert.any()
    ro2 = drift.parameter_jumps(v, se, 2.0, usable=usable, scale="overlap", ends=ends, window=100)
    assert ro2.alert[3:].all() and not drift.parameter_jumps(v, se, 2.0, usable=usable).alert.any()
    with pytest.raises(ValueError, match="ends and window"):
        drift.parameter_jumps(v, se, scale="overlap")
    with pytest.raises(ValueError, match="se must"):
        drift.parameter_jumps(v, se[:3])
    with pytest.raises(ValueError, match="scale"):
        drift.parameter_jumps(v, se, scale="x")
    with pytest.raises(ValueError, match="k must"):
        drift.parameter_jumps(v, se, k=0)


# ---- CUSUM ---------------------------------------------------------------------------
def test_cusum_crosses_after_a_shift_and_not_before():
    rng = np.random.default_rng(1)
    z = rng.normal(size=80)
    z[50:] += 2.0  # a shift of 2 s.d. at index 50
    r = drift.cusum(z, k=0.5, h=5.0)
    hits = np.flatnonzero(r.alarm)
    assert hits.size and hits[0] >= 50 and hits[0] <= 56
    assert 48 <= r.start[hits[0]] <= hits[0]
    assert np.all(r.side[hits] == 1)
    # the in-control part alone: no alarm
    assert not drift.cusum(z[:50], k=0.5, h=5.0).alarm.any()
    # reset: after an alarm the chart restarts, a persistent shift signals again
    assert hits.size >= 2
    nr = drift.cusum(z, k=0.5, h=5.0, reset=False)
    assert np.all(nr.alarm[hits[0] :])
    # the lower side catches a downward shift; the upper does not
    assert drift.cusum(-z, side="lower").alarm[hits[0]]
    assert not drift.cusum(-z, side="upper").alarm.any()
    assert drift.cusum(-z, side="both").side[hits[0]] == -1
    # NaN leaves the statistic unchanged
    zn = np.array([1.0, 3.0, np.nan, 3.0])
    rn = drift.cusum(zn, k=0.5, h=10.0)
    np.testing.assert_allclose(rn.upper, [0.5, 3.0, 3.0, 5.5])
    with pytest.raises(ValueError, match="h must"):
        drift.cusum(z, h=0)
    with pytest.raises(ValueError, match="side"):
        drift.cusum(z, side="up")


def test_cusum_false_alarm_rate_matches_its_run_length():
    # h = 5, k = 0.5: an in-control run length of ~930 per side, so ~2% of 20-window runs alarm
    z = np.random.default_rng(2).normal(size=(500, 20))
    rate = np.mean([drift.cusum(row).alarm.any() for row in z])
    assert rate < 0.06


def test_wilson_hilferty_scores_are_standard_normal():
    rng = np.random.default_rng(3)
    for n in (5, 30):
        z = drift.wilson_hilferty(rng.chisquare(n, size=20000), n)
        assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03
    q = stats.chi2.ppf(0.975, 30)
    assert drift.wilson_hilferty(q, 30) == pytest.approx(1.96, abs=0.01)
    assert np.isnan(drift.wilson_hilferty(1.0, 0))


# ---- the alert table on a hand-built rolling result -----------------------------------
def _fake_result(kappa: np.ndarray, se_kappa: float = 0.05) -> RollingResult:
    C, W = kappa.shape
    M = 2
    full = lambda v: np.full((C, W), v)  # noqa: E731
    params = Params(
        jnp.asarray(kappa), jnp.asarray(full(0.3)), jnp.asarray(full(0.2)),
        jnp.asarray(full(0.1)), jnp.asarray(full(0.01)), jnp.asarray(np.full((C, W, M), 0.01)),
    )  # fmt: skip
    se = np.full((C, W, 5 + M), 0.05)
    se[..., 0] = se_kappa
    dates = pd.date_range("2001-01-02", periods=100 + 10 * W, freq="7D")
    return RollingResult(
        commodities=[f"C{c}" for c in range(C)], window=100, step=10, method="MLE",
        dates=dates, end_index=np.arange(99, 99 + 10 * W, 10), params=params, std_err=se,
        loglik=full(0.0), converged=full(True).astype(bool), num_steps=full(1).astype(int),
        status=full(1).astype(int), state_t=np.zeros((C, W, 2)), F_model_t=np.ones((C, W, M)),
        F_mkt_t=np.ones((C, W, M)), mean_nis=full(1.0), innov_mean=np.zeros((C, W, M)),
        innov_sd=np.ones((C, W, M)), nobs=np.full((C, W, M), 100), valid=full(True).astype(bool),
        mode="warm", seconds=0.0,
    )  # fmt: skip


def test_drift_alert_table_from_a_rolling_result():
    kappa = np.full((2, 8), 1.0)
    kappa[0, 5:] = 1.4  # 0.4 / (sqrt(2 * 0.05^2) * sqrt(10 / 100)) = 17.9 s.e.
    res = _fake_result(kappa)
    al = drift.drift_alerts(res)
    assert len(al) == 1
    row = al.iloc[0]
    assert (row.commodity, row.kind, row["name"], row.window) == ("C0", "parameter", "kappa", 5)
    assert row.window_end == res.end_dates[5] and row.since == res.end_dates[4]
    assert (row.value, row.previous) == pytest.approx((1.4, 1.0))
    assert row.z == pytest.approx(0.4 / (np.sqrt(2) * 0.05 * np.sqrt(0.1)))
    assert row.reason.startswith("kappa moved +17.9 s.e. (1 -> 1.4)")
    assert list(al.columns) == drift._COLUMNS
    # pooled scale, the same jump is 5.7 s.e.: below k = 6
    assert drift.drift_alerts(res, scale="pooled", k=6.0).empty
    # a non-converged window is skipped: the jump is then seen one window later
    res.optimum_reached[0, 5] = False
    al2 = drift.drift_alerts(res)
    assert al2.window.tolist() == [6] and al2.since.iloc[0] == res.end_dates[4]
    with pytest.raises(ValueError, match="params: unknown"):
        drift.drift_alerts(res, params=["theta"])


# ---- the check: a kappa break in a rolling recalibration -----------------------
T, T_BREAK, WINDOW, STEP = 300, 150, 100, 10
TTM = np.array([0.1, 0.5, 1.0])
_simulate = jax.jit(ssjax.simulate, static_argnames="noise")


def _sim_panel(seed: int, kappa_after: float, name: str) -> Panel:
    """Weekly, 3 tenors; kappa 0.5 up to date T_BREAK, then ``kappa_after`` (the same shocks
    before the break for the same seed)."""
    p1 = ssjax.make_params(0.5, 0.3, 0.18, 0.3, 0.02, np.array([0.01, 0.006, 0.008]))
    p2 = p1._replace(kappa=jnp.asarray(kappa_after))
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    ttm = np.tile(TTM, (T_BREAK + 1, 1))  # one shape for both segments: one compilation
    s1 = _simulate(p1, k1, ttm, 1 / 52)
    s2 = _simulate(p2, k2, ttm, 1 / 52, x0=s1.states[T_BREAK - 1])
    F = np.exp(np.concatenate([np.asarray(s1.log_f)[:T_BREAK], np.asarray(s2.log_f)[1:]]))
    dates = pd.date_range("2000-01-04", periods=T, freq="7D")
    return Panel(dates, F, np.tile(TTM, (T, 1)), None, np.full(F.shape, "", object),
                 ["F1", "F6", "F12"], np.full(T - 1, 7 / 365), np.isfinite(F), name)  # fmt: skip


@pytest.fixture(scope="module")
def rolling_break():
    # seeds 0, 1, 2, 4, 5 were checked by hand with these settings: every break panel alerts
    # within 0-2 windows of the break (the CUSUM), no no-break panel alerts. Seed 0 is the
    # slowest of them to alert. (Seed 3's first window converges to a degenerate optimum,
    # kappa ~ 0.001 with sigma_x ~ sigma_y ~ 95 and rho = -1, that warm starts then carry.)
    panels = {"break": _sim_panel(0, 3.0, "break"), "stable": _sim_panel(0, 0.5, "stable")}
    t0 = time.perf_counter()
    res = recalibrate(panels, window=WINDOW, step=STEP, warm_start=True, chunk_size=32)
    return panels, res, time.perf_counter() - t0


@pytest.mark.slow
def test_drift_alert_fires_near_a_kappa_break_and_not_without_one(rolling_break):
    panels, res, _ = rolling_break
    assert res.converged.all()
    al = drift.drift_alerts(res, panels)
    assert not (al.commodity == "stable").any(), al.to_string()
    brk = al[al.commodity == "break"]
    # the first window whose new dates include the break
    w_break = int(np.flatnonzero(res.end_index >= T_BREAK)[0])
    assert brk.window.min() >= w_break  # nothing before the break
    assert brk.window.min() <= w_break + 3  # within a few windows of it
    first = brk[brk.window == brk.window.min()]
    assert (first.kind == "cusum").any()
    cu = first[first.kind == "cusum"].iloc[0]
    assert cu["name"] == "all" and cu.value > 5.0 and cu.since >= res.dates[T_BREAK - STEP]
    # kappa's estimate moves up through the windows that fill with post-break data
    kap = brk[(brk.kind == "parameter") & (brk["name"] == "kappa")]
    assert len(kap) and (kap.value > kap.previous).all()
    assert kap.window.min() <= w_break + 10
    assert "kappa moved +" in kap.reason.iloc[0]


@pytest.mark.slow
def test_innovation_scores_are_standard_normal_without_a_break(rolling_break):
    panels, res, _ = rolling_break
    sc = drift.innovation_scores(res, panels)
    assert set(sc["name"]) == {"F1", "F6", "F12", "all"}
    st = sc[sc.commodity == "stable"]
    assert len(st) == 4 * (len(res.end_index) - 1)
    assert (st.n[st["name"] != "all"] == STEP).all() and (
        st.n[st["name"] == "all"] == 3 * STEP
    ).all()
    assert abs(st.z.mean()) < 0.5 and 0.6 < st.z.std() < 1.5
    with pytest.raises(ValueError, match="panels"):
        drift.innovation_scores(res, {"other": panels["break"]})
    with pytest.raises(ValueError, match="cusum_on"):
        drift.drift_alerts(res, panels, cusum_on=("nope",))


@pytest.mark.slow
def test_recalibrate_run_time(rolling_break):
    # the rolling fit's compilation dominates (its post-fit program alone takes ~45 s to
    # compile on a busy 2-core CPU); the run itself takes about 2 s
    _, res, seconds = rolling_break
    assert res.seconds < 240 and seconds < 240


def _calibrations(kappa, oos_z, se=0.05):
    n = len(kappa)
    idx = pd.date_range("2001-01-02", periods=n, freq="91D")
    return pd.DataFrame(
        {
            "n_dates": 104 + 13 * np.arange(n),
            "kappa": kappa,
            "se_kappa": np.full(n, se),
            "rho": np.full(n, 0.3),
            "se_rho": np.full(n, 0.05),
            "converged": True,
            "used": "fit",
            "oos_z": oos_z,
            "oos_from": idx - pd.Timedelta(days=91),
        },
        index=pd.Index(idx, name="date"),
    )


def test_walk_forward_alerts_by_hand():
    # kappa jumps by 0.2 at calibration 4: pooled s = 0.05·√2 = 0.0707, overlap factor
    # √(13 / 156) = 0.2887, so z = 0.2 / (0.0707 · 0.2887) = 9.80 > 5; the others move 0
    kappa = np.array([1.0, 1.0, 1.0, 1.0, 1.2, 1.2, 1.2])
    oos = np.array([0.1, -0.3, 2.0, 2.5, 2.1, 0.0, -0.5])  # CUSUM: 0, 0, 1.5, 3.5, 5.1 (alarm)
    al = drift.walk_forward_alerts(_calibrations(kappa, oos))
    par = al[al.kind == "parameter"]
    assert list(par["name"]) == ["kappa"] and list(par["window"]) == [4]
    assert par["z"].iloc[0] == pytest.approx(0.2 / (0.05 * np.sqrt(2) * np.sqrt(13 / 156)))
    assert "kappa moved +9.8 s.e." in par["reason"].iloc[0]
    cu = al[al.kind == "cusum"]
    assert list(cu["window"]) == [4] and cu["value"].iloc[0] == pytest.approx(5.1)
    # dated when the block became known; the run began with the Θ of calibration 1
    cal = _calibrations(kappa, oos)
    assert cu["window_end"].iloc[0] == cal.index[4]
    assert cu["since"].iloc[0] == cal["oos_from"].iloc[2] == cal.index[1]
    # nothing moves, nothing predicts badly: no alert; a failed calibration is skipped over
    quiet = _calibrations(np.ones(7), np.zeros(7))
    assert len(drift.walk_forward_alerts(quiet)) == 0
    bad = _calibrations(kappa, oos)
    bad.loc[bad.index[4], "converged"] = False
    par = drift.walk_forward_alerts(bad, k=5.0).query("kind == 'parameter'")
    assert list(par["window"]) == [5]  # compared with calibration 3 across the failed one
