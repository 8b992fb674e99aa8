"""``RollingResult``: the numbers of every window of a rolling recalibration, and its frames."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
import pandas as pd

from ssjax.core.params import Params, param_names
from ssjax.fit.em import EM_STATUS_MESSAGES
from ssjax.fit.mle import STATUS_MESSAGES

__all__ = ["RollingResult"]


# --------------------------------------------------------------------------------------
# The result and its on-disk chunks
# --------------------------------------------------------------------------------------
@dataclass
class RollingResult:
    """Per commodity and window end: Θ, s.e., loglik, convergence, states, forwards."""

    commodities: list[str]
    window: int
    step: int
    method: str
    dates: pd.DatetimeIndex  # common date index of the stacked panel
    end_index: np.ndarray  # [W] window-end indices into ``dates``
    params: Params  # leaves [C, W] (meas_sd [C, W, M])
    std_err: np.ndarray  # [C, W, n_params] (flat physical order, NaN where not available)
    loglik: np.ndarray  # [C, W]
    converged: np.ndarray  # [C, W] an interior optimum (stopping rule met, no bound active)
    num_steps: np.ndarray  # [C, W] optimizer steps (MLE) or EM iterations
    status: np.ndarray  # [C, W] the method's status code (see ``status_text``)
    state_t: np.ndarray  # [C, W, 2] filtered (X, Y) at the window end
    F_model_t: np.ndarray  # [C, W, M]
    F_mkt_t: np.ndarray  # [C, W, M]
    mean_nis: np.ndarray  # [C, W] mean squared standardized innovation (≈1 when well fit)
    innov_mean: np.ndarray  # [C, W, M] mean standardized innovation per tenor (≈0)
    innov_sd: np.ndarray  # [C, W, M] s.d. of the standardized innovations per tenor (≈1)
    nobs: np.ndarray  # [C, W, M] observations per tenor in the window
    valid: np.ndarray  # [C, W] window has data
    mode: str
    seconds: float
    info: dict = field(default_factory=dict)
    refined: np.ndarray | None = None  # [C, W] result from a refinement refit (``refine``)
    #: [C, W] the stopping rule fired: an interior optimum or a boundary end point
    optimum_reached: np.ndarray | None = None
    #: [C, W, n_params] free parameters at a bound of their domain (ssjax.fit.optimum.at_bounds)
    at_bound: np.ndarray | None = None
    #: [C, W, n_params] robust (sandwich) standard errors, like ``std_err``; well above
    #: ``std_err`` where the Gaussian model is misspecified for the window's data
    std_err_robust: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.refined is None:
            self.refined = np.zeros(np.shape(self.valid), bool)
        if self.optimum_reached is None:
            self.optimum_reached = np.asarray(self.converged, bool).copy()
        if self.at_bound is None:
            self.at_bound = np.zeros(np.shape(self.std_err), bool)
        if self.std_err_robust is None:
            self.std_err_robust = np.full(np.shape(self.std_err), np.nan)

    def bound_text(self, c: int, w: int) -> str:
        """The parameters of window ``w`` of commodity ``c`` that ended at a bound."""
        names = self.param_names
        return ", ".join(n for n, f in zip(names, self.at_bound[c, w], strict=True) if f)

    @property
    def end_dates(self) -> pd.DatetimeIndex:
        return self.dates[self.end_index]

    @property
    def param_names(self) -> list[str]:
        return param_names(jax.tree.map(lambda a: a[0, 0], self.params))

    def status_text(self, c: int, w: int) -> str:
        """The stopping reason of window ``w`` of commodity ``c``."""
        if not self.valid[c, w]:
            return "no data in the window"
        table = STATUS_MESSAGES if self.method == "MLE" else EM_STATUS_MESSAGES
        return table.get(int(self.status[c, w]), f"status {int(self.status[c, w])}")

    def to_frame(self) -> pd.DataFrame:
        """A tidy table: one row per (commodity, window end) with Θ, s.e. and diagnostics."""
        names = self.param_names
        C, W = self.loglik.shape
        flat = np.concatenate(
            [np.asarray(v, float).reshape(C, W, -1) for v in self.params if v is not None],
            axis=-1,
        )
        rows = []
        for c in range(C):
            for w in range(W):
                if not self.valid[c, w]:
                    continue
                r = {"commodity": self.commodities[c], "window_end": self.end_dates[w]}
                r.update(dict(zip(names, flat[c, w], strict=True)))
                r.update({f"se_{n}": s for n, s in zip(names, self.std_err[c, w], strict=True)})
                r.update(
                    {
                        f"se_robust_{n}": s
                        for n, s in zip(names, self.std_err_robust[c, w], strict=True)
                    }
                )
                r.update(
                    loglik=self.loglik[c, w],
                    converged=bool(self.converged[c, w]),
                    optimum_reached=bool(self.optimum_reached[c, w]),
                    at_bound=self.bound_text(c, w),
                    refined=bool(self.refined[c, w]),
                    num_steps=int(self.num_steps[c, w]),
                    status=self.status_text(c, w),
                    X_t=self.state_t[c, w, 0],
                    Y_t=self.state_t[c, w, 1],
                    mean_nis=self.mean_nis[c, w],
                )
                for m in range(self.F_model_t.shape[-1]):
                    r[f"F_model_t[{m}]"] = self.F_model_t[c, w, m]
                    r[f"F_mkt_t[{m}]"] = self.F_mkt_t[c, w, m]
                    r[f"innov_sd[{m}]"] = self.innov_sd[c, w, m]
                rows.append(r)
        return pd.DataFrame(rows)

    def to_parquet(self, path: str | os.PathLike) -> None:
        """Write the tidy table to Parquet (pyarrow)."""
        self.to_frame().to_parquet(path, index=False)

    def to_xarray(self) -> Any:
        """An ``xarray.Dataset`` (commodity × window_end [× tenor]); needs xarray installed."""
        try:
            import xarray as xr
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ImportError("to_xarray needs xarray: pip install 'ssjax[xarray]'") from e
        cw = ("commodity", "window_end")
        cwm = cw + ("tenor",)
        coords = {"commodity": self.commodities, "window_end": self.end_dates}
        data: dict[str, Any] = {}
        for k, v in self.params._asdict().items():
            if v is None:
                continue
            data[k] = (cw if np.ndim(v) == 2 else cwm, np.asarray(v))
        data.update(
            loglik=(cw, self.loglik),
            converged=(cw, self.converged),
            optimum_reached=(cw, self.optimum_reached),
            refined=(cw, self.refined),
            num_steps=(cw, self.num_steps),
            mean_nis=(cw, self.mean_nis),
            X_t=(cw, self.state_t[..., 0]),
            Y_t=(cw, self.state_t[..., 1]),
            F_model_t=(cwm, self.F_model_t),
            F_mkt_t=(cwm, self.F_mkt_t),
            innov_sd=(cwm, self.innov_sd),
        )
        return xr.Dataset(data, coords=coords, attrs={"method": self.method, "mode": self.mode})
