"""The Schwartz-Smith two-factor model as a statsmodels ``MLEModel`` (the benchmarks' peer).

An independent implementation (state x = [X, Y]) with time-varying ``design`` and
``obs_intercept`` (time to maturity changes by date), a diagonal measurement covariance, the
exact transition over ``dt`` and statsmodels' "known" initialization x0 = [0, mean ln F at
date 0], P0 = I (ssjax's default prior). Its parameter transform is ssjax's unconstrained map
(log for positives, arctanh for rho), so both optimizers see the same problem in the same
coordinates. It imports numpy and statsmodels only (no JAX), so that a benchmark can time a
fresh statsmodels process.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import statsmodels.api as sm

#: the parameters that are positive (log-transformed to the unconstrained scale)
POSITIVE = ("kappa", "sigma_x", "sigma_y", "meas_sd")


class SchwartzSmithSM(sm.tsa.statespace.MLEModel):
    """Schwartz–Smith two-factor model as a statsmodels state-space model.

    Parameters (flat, in ssjax's ``flatten_params`` order): kappa, sigma_x, sigma_y, rho, mu,
    meas_sd[0..M-1]. ``log_f`` is [T, M] (NaN = missing), ``ttm`` [T, M] years, ``dt`` [T-1].
    """

    def __init__(
        self, log_f: np.ndarray, ttm: np.ndarray, dt: np.ndarray, names: Sequence[str]
    ) -> None:
        log_f = np.asarray(log_f, dtype=float)
        n_dates, n_tenors = log_f.shape
        x0 = np.array([0.0, np.nanmean(log_f[0])])
        super().__init__(
            log_f,
            k_states=2,
            k_posdef=2,
            initialization="known",
            initial_state=x0,
            initial_state_cov=np.eye(2),
        )
        self._names = list(names)
        if len(self._names) != 5 + n_tenors:
            raise ValueError(f"expected {5 + n_tenors} parameter names, got {len(self._names)}")
        self._pos = np.array(
            [i for i, n in enumerate(self._names) if n.split("[")[0] in POSITIVE], dtype=int
        )
        self._rho = self._names.index("rho")
        self._ttm = np.where(np.isfinite(log_f), np.asarray(ttm, dtype=float), 0.0).T  # [M, T]
        dt = np.asarray(dt, dtype=float)
        self._const_dt = bool(np.allclose(dt, dt[0], rtol=0.0, atol=1e-15))
        # time-varying transition arrays have length nobs; the last step is never used
        self._dt = float(dt[0]) if self._const_dt else np.concatenate([dt, dt[-1:]])
        self["selection"] = np.eye(2)

    @property
    def param_names(self) -> list[str]:
        return list(self._names)

    @property
    def start_params(self) -> np.ndarray:
        raise NotImplementedError("pass start_params explicitly (from ssjax.default_start)")

    def transform_params(self, unconstrained: np.ndarray) -> np.ndarray:
        """Unconstrained -> physical: exp for positives, tanh for rho, identity for mu."""
        out = np.array(unconstrained, copy=True)
        out[self._pos] = np.exp(out[self._pos])
        out[self._rho] = np.tanh(out[self._rho])
        return out

    def untransform_params(self, constrained: np.ndarray) -> np.ndarray:
        """Physical -> unconstrained: log for positives, arctanh for rho."""
        out = np.array(constrained, copy=True)
        out[self._pos] = np.log(out[self._pos])
        out[self._rho] = np.arctanh(out[self._rho])
        return out

    def update(
        self,
        params: np.ndarray,
        transformed: bool = True,
        includes_fixed: bool = False,
        complex_step: bool = False,
    ) -> np.ndarray:
        params = super().update(
            params,
            transformed=transformed,
            includes_fixed=includes_fixed,
            complex_step=complex_step,
        )
        kappa, sx, sy, rho, mu = params[:5]
        sd = params[5:]
        dtype = params.dtype  # complex under complex-step differentiation
        ttm = self._ttm

        # measurement: ln F = e^{-k ttm} X + Y + A(ttm) + eps
        g1 = -np.expm1(-kappa * ttm) / kappa  # (1 - e^{-k ttm}) / k
        g2 = -np.expm1(-2.0 * kappa * ttm) / (2.0 * kappa)  # (1 - e^{-2 k ttm}) / (2 k)
        design = np.empty((ttm.shape[0], 2, ttm.shape[1]), dtype=dtype)
        design[:, 0, :] = np.exp(-kappa * ttm)
        design[:, 1, :] = 1.0
        self["design"] = design
        self["obs_intercept"] = mu * ttm + 0.5 * (
            sx**2 * g2 + sy**2 * ttm + 2.0 * rho * sx * sy * g1
        )
        self["obs_cov"] = np.diag(sd**2)

        # exact transition over dt
        dt = self._dt
        phi = np.exp(-kappa * dt)
        q11 = sx**2 * (-np.expm1(-2.0 * kappa * dt)) / (2.0 * kappa)
        q12 = rho * sx * sy * (-np.expm1(-kappa * dt)) / kappa
        q22 = sy**2 * dt
        if self._const_dt:
            self["transition"] = np.array([[phi, 0.0], [0.0, 1.0]], dtype=dtype)
            self["state_intercept"] = np.array([0.0, mu * dt], dtype=dtype)
            self["state_cov"] = np.array([[q11, q12], [q12, q22]], dtype=dtype)
        else:
            n = len(dt)
            trans = np.zeros((2, 2, n), dtype=dtype)
            trans[0, 0], trans[1, 1] = phi, 1.0
            icpt = np.zeros((2, n), dtype=dtype)
            icpt[1] = mu * dt
            self["transition"] = trans
            self["state_intercept"] = icpt
            self["state_cov"] = np.array([[q11, q12], [q12, q22]], dtype=dtype)
        return params
