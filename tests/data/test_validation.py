"""One validation for every path: Panel, stack_panels (recalibrate), walk_forward and
KalmanEngine.fit refuse the same bad inputs with errors naming the field."""

import numpy as np
import pandas as pd
import pytest

import ssjax
from ssjax.data.panels import stack_panels, validate_panel
from ssjax.trading.backtest import walk_forward


@pytest.fixture(scope="module")
def wti():
    return ssjax.datasets.load_wti_ss2000_contracts().panel


def _bad_panels(p):
    F = p.F_mkt.copy()
    F[5, 2] = np.inf
    ttm_nan = p.ttm.copy()
    ttm_nan[7, 1] = np.nan
    ttm_neg = p.ttm.copy()
    ttm_neg[3, 0] = -0.01
    swapped = p.ttm.copy()
    swapped[:, [1, 2]] = swapped[:, [2, 1]]
    dup = p.dates.tolist()
    dup[10] = dup[9]
    return [
        (p._replace(F_mkt=F), "F_mkt is NaN or infinite where mask says observed"),
        (p._replace(ttm=ttm_nan), "ttm is NaN or infinite where observed"),
        (p._replace(ttm=ttm_neg), "ttm must be >= 0 where observed"),
        (p._replace(ttm=swapped), "ttm must increase across tenors"),
        (p._replace(dates=pd.DatetimeIndex(dup)), "duplicated dates"),
        (p._replace(dates=p.dates[::-1]), "not in increasing order"),
        (p._replace(ttm=p.ttm[:, :3]), r"ttm must have shape \[268, 5\]"),
        (p._replace(dt=p.dt[:-1]), r"dt must have shape \[267\]"),
        (p._replace(tenor_names=["a"]), "tenor_names has 1 names for 5 tenors"),
    ]


def test_every_path_refuses_the_same_bad_panels(wti):
    for bad, msg in _bad_panels(wti):
        with pytest.raises(ValueError, match=msg):
            validate_panel(bad)
        with pytest.raises(ValueError, match="panel 'CL': .*" + msg):
            stack_panels({"CL": bad})  # the entry of recalibrate
        with pytest.raises(ValueError, match=msg):
            walk_forward(bad, min_window=104)
    validate_panel(wti)  # the bundled panel passes


def test_recalibrate_refuses_nan_ttm_where_observed(wti):
    ttm = wti.ttm.copy()
    ttm[20, 3] = np.nan
    with pytest.raises(ValueError, match="ttm is NaN or infinite where observed"):
        ssjax.recalibrate(wti._replace(ttm=ttm), window=52, step=52)


def test_engine_aligns_data_frames_by_label_and_checks_t_star(wti):
    n = 120
    F = pd.DataFrame(wti.F_mkt[:n], index=wti.dates[:n], columns=wti.tenor_names)
    ttm = pd.DataFrame(wti.ttm[:n], index=wti.dates[:n], columns=wti.tenor_names)
    eng = ssjax.KalmanEngine(n_starts=1)
    ref = eng.fit(F, ttm)
    shuffled = ttm[list(reversed(wti.tenor_names))].iloc[::-1]
    got = eng.fit(F, shuffled)
    assert got.loglik == pytest.approx(ref.loglik, rel=1e-12)
    with pytest.raises(ValueError, match="ttm's columns .* are not F_mkt's"):
        eng.fit(F, ttm.rename(columns={"CL1": "F1"}))
    with pytest.raises(ValueError, match="ttm's index"):
        eng.fit(F, ttm.iloc[1:])
    with pytest.raises(ValueError, match="ttm is a DataFrame but F_mkt is not"):
        eng.fit(F.to_numpy(), ttm)
    # t_star as a whole float is an index; a fraction or a date after the data is refused
    assert eng.fit(F, ttm, t_star=100.0).t_star == 100
    with pytest.raises(ValueError, match="whole date index"):
        eng.fit(F, ttm, t_star=100.5)
    with pytest.raises(ValueError, match="after the last date"):
        eng.fit(F, ttm, t_star="2030-01-01")
    # all tenors at one maturity: refused, not fitted to a degenerate "optimum"
    same = np.repeat(wti.ttm[:n, :1], 5, axis=1)
    with pytest.raises(ValueError, match="ttm must increase across tenors"):
        eng.fit(wti.F_mkt[:n], same, dt=wti.dt[: n - 1])
