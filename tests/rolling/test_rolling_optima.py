"""Rolling recalibration at the optimum on real data: cold and warm equal, warm seeds, and the
refinement's neighbour refits (the engine-level checks are in tests/fit/test_optimum.py)."""

from __future__ import annotations

import numpy as np
import pytest

import ssjax


def _segment(p, lo: int, n: int):
    sl = slice(lo, lo + n)
    return p._replace(
        dates=p.dates[sl], F_mkt=p.F_mkt[sl], ttm=p.ttm[sl], contracts=p.contracts[sl],
        dt=p.dt[sl][:-1], mask=p.mask[sl],
    )  # fmt: skip


#: the default engine's optimum (``KalmanEngine().fit`` on each window; 95 s of fits, so stored)
#: of the natural-gas segment's windows ending at 103, 107, ..., 127
NG_SEGMENT_ENGINE = [939.9765351640418, 970.472636399427, 981.2684922537014, 994.9247904952246,
                     995.3266937897604, 1000.0912968167919, 997.796171768726]  # fmt: skip


def test_rolling_cold_and_warm_reach_the_same_optima_on_real_data():
    """A short natural-gas run where single starts end at degenerate points and warm paths
    keep pinned s.d.s: cold (4 starts per window) and warm (defaults, with the restart of
    pinned s.d.s) end at the default engine's optimum in every window."""
    from ssjax.rolling import recalibrate

    q = _segment(ssjax.datasets.load_natgas_rtl(), 60, 128)
    kw = dict(window=104, step=4, progress=False)
    cold = recalibrate(q, **kw)
    warm = recalibrate(q, warm_start=True, **kw)
    np.testing.assert_array_equal(cold.end_index, np.arange(103, 128, 4))
    ref = np.asarray(NG_SEGMENT_ENGINE)
    np.testing.assert_allclose(cold.loglik[0], ref, atol=1e-3, rtol=0)
    np.testing.assert_allclose(warm.loglik[0], ref, atol=1e-3, rtol=0)
    assert "escaped" in cold.info and "escaped" in warm.info
    assert cold.optimum_reached.all() and not (cold.converged & cold.at_bound.any(-1)).any()
    df = warm.to_frame()
    assert {"optimum_reached", "at_bound", "converged"} <= set(df.columns)
    assert (df["at_bound"] != "").sum() == int(warm.at_bound.any(-1).sum())
    with pytest.raises(ValueError, match="n_starts must be >= 1"):
        recalibrate(q, n_starts=0, **kw)


#: the best known optima (the best of the default engine, 32-start and 64-start engine fits; the
#: bundled panel with the NYMEX rule's last trading days) of WTI windows ending at 211, ..., 267
WTI_TAIL_BEST = [1862.1735148021999, 1844.8837047560132, 1807.1620289581592,
                 1768.3362310246182, 1741.9508151738505, 1746.3204506619736,
                 1746.3129235809442, 1759.4120365293784]  # fmt: skip
#: and of natural-gas windows ending at 227, 231, ..., 255
NG_BEST = [1035.5370701243928, 1045.9672260945215, 1056.163070801609, 1075.6229739101725,
           1135.034248660145, 1175.462258722117, 1188.677181528203, 1190.53406604138]  # fmt: skip


def test_warm_seeds_find_the_optimum_a_warm_path_misses(monkeypatch):
    """The WTI panel's last windows: a warm path that enters them in one mode stays there,
    5-9 nats below the best known optimum; the default seeds (the first and the last window
    here) find the better mode, in probes of ``probe_steps`` (40) L-BFGS steps, and the
    refinement spreads it to the rest."""
    import ssjax.rolling.refine as refine
    from ssjax.rolling import recalibrate

    limits = []
    offsets = refine._offsets

    def spy(design, idx, dtype, limit):
        limits.append(limit)
        return offsets(design, idx, dtype, limit)

    monkeypatch.setattr(refine, "_offsets", spy)
    targets = []
    refit_diff = refine._refit_diff

    def spy_refits(run, prog, tgt, *args, **kw):
        targets.append(sorted(np.asarray(tgt).tolist()))
        return refit_diff(run, prog, tgt, *args, **kw)

    wti = ssjax.datasets.load_wti_ss2000()
    kw = dict(window=104, ends=np.arange(211, 268, 8), warm_start=True, progress=False)
    plain = recalibrate(wti, explore=0, **kw)
    short = np.asarray(WTI_TAIL_BEST) - plain.loglik[0]
    assert short.max() > 1.0  # the failure the seeds exist for
    monkeypatch.setattr(refine, "_refit_diff", spy_refits)
    seeded = recalibrate(wti, **kw)
    assert seeded.info["explore_windows"] == 2
    assert limits == [40]  # the probes' step limit (not budget's 100)
    # the refinement's first round (after the seeds' refits) restarts the fits from
    # data-derived starts only: the first window and the seeds that won, not the warm fits
    # between them, although those end with a noise s.d. at its bound
    assert set(targets[1]) <= {0, 7} and targets[1]
    pinned = seeded.at_bound[0, 1:7, 5:].any(-1)
    assert pinned.any()
    np.testing.assert_allclose(seeded.loglik[0], WTI_TAIL_BEST, atol=1e-3, rtol=0)
    assert seeded.optimum_reached.all()
    with pytest.raises(ValueError, match="explore must be a bool or a window stride"):
        recalibrate(wti, explore=-1, **kw)
    with pytest.raises(ValueError, match="probe_steps must be >= 1"):
        recalibrate(wti, probe_steps=0, **kw)


@pytest.mark.slow  # two warm runs on natural gas (~70 s); the refinement's CI tests: rolling/
def test_refinement_tries_a_neighbours_other_mode(monkeypatch):
    """Natural gas, window ending at 239: the warm path ends at an interior optimum 3.96
    nats below the mode that prices the 24-month tenor exactly, which window 243 holds but
    whose optimum scores lower on 239's data. The refinement refits from a neighbour with
    another pattern of noise s.d.s at zero whatever its score; without that it misses."""
    import ssjax.rolling.refine as refine

    ng = ssjax.datasets.load_natgas_rtl()
    kw = dict(window=104, ends=np.arange(227, 256, 4), warm_start=True, explore=0,
              progress=False)  # fmt: skip
    r = ssjax.recalibrate(ng, **kw)
    np.testing.assert_allclose(r.loglik[0], NG_BEST, atol=1e-3, rtol=0)
    monkeypatch.setattr(refine, "_pin_keys", lambda vec, t: np.zeros(len(vec), np.int64))
    blind = ssjax.recalibrate(ng, **kw)
    assert NG_BEST[3] - blind.loglik[0][3] > 1.0
