"""ssjax against statsmodels, the peer the benchmarks compare with (runs in CI: statsmodels is
in the ``test`` extra).

The peer is an independent implementation of the same model as a statsmodels ``MLEModel``
(``experiments/sm_model.py``: time-varying design and intercept, the exact transition, the same
prior and unconstrained coordinates). Checked here: the log-likelihood at many parameter sets,
with and without missing cells, and that the default fit ends at least as high as statsmodels'
own optimizer from the same start.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

import ssjax
from ssjax.core.params import flatten_params, param_names, unflatten_params

pytest.importorskip("statsmodels")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from sm_model import SchwartzSmithSM  # noqa: E402


def _problem(F, ttm, dates=None, dt=None):
    data = ssjax.make_market_data(F, ttm, dates=dates, dt=dt)
    start = jax.jit(ssjax.default_start)(data)
    template = ssjax.to_unconstrained(start)
    v0 = np.asarray(flatten_params(template))
    log_f = np.where(np.asarray(data.mask), np.asarray(data.log_f), np.nan)
    mod = SchwartzSmithSM(log_f, np.asarray(data.ttm), np.asarray(data.dt), param_names(start))
    return data, template, v0, mod


@pytest.fixture(scope="module")
def natgas_window():
    p = ssjax.datasets.load_natgas_rtl()
    sl = slice(80, 184)  # 104 weeks ending 2010-07-20 (a window with a noise s.d. at its bound)
    return p.F_mkt[sl], p.ttm[sl], p.dates[sl]


def test_loglik_equals_statsmodels_at_many_parameter_sets(wti, natgas_window):
    """Same value to ~1e-10 relative at the start and 20 sets around it (unconstrained
    perturbations of s.d. 0.2), on the bundled WTI panel and on a natural-gas window with
    missing cells."""
    rng = np.random.default_rng(3)
    cases = [(wti.F_mkt, wti.ttm, None, wti.dt), (*natgas_window, None)]
    for F, ttm, dates, dt in cases:
        data, template, v0, mod = _problem(F, ttm, dates=dates, dt=dt)
        V = v0 + np.vstack([np.zeros_like(v0), 0.2 * rng.standard_normal((20, v0.size))])
        loglik = jax.jit(
            lambda v, t=template, d=data: ssjax.log_likelihood_data(
                ssjax.from_unconstrained(unflatten_params(v, t)), d
            )
        )
        for v in V:
            ours = float(loglik(v))
            theirs = float(mod.loglike(v, transformed=False))
            assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-8)


@pytest.mark.parametrize("case", ["wti", "natgas"])
def test_default_fit_ends_at_least_as_high_as_statsmodels(case, wti, natgas_window):
    """statsmodels' own optimizer (BFGS with numerical gradients, ``maxiter=1000``) from the
    same data-derived start never ends above ``KalmanEngine().fit``."""
    if case == "wti":
        F, ttm, dates, dt = wti.F_mkt, wti.ttm, None, wti.dt
    else:
        (F, ttm, dates), dt = natgas_window, None
    data, template, v0, mod = _problem(F, ttm, dates=dates, dt=dt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mod.fit(start_params=mod.transform_params(v0), maxiter=1000, disp=False,
                      cov_type="none")  # fmt: skip
    fit = ssjax.KalmanEngine().fit(F, ttm, dates=dates, dt=dt)
    assert fit.loglik >= float(res.llf) - 1e-6
    # and ssjax's value at statsmodels' end point is statsmodels' value there
    v_s = mod.untransform_params(np.asarray(res.params))
    p_s = ssjax.from_unconstrained(unflatten_params(v_s, template))
    assert float(ssjax.log_likelihood_data(p_s, data)) == pytest.approx(res.llf, rel=1e-10)
