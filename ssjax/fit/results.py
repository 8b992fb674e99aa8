"""Thin shell: the fit result people read (pandas tables, summary text)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from ssjax._lazy import scipy_stats as stats
from ssjax.core.filter import FilterResult
from ssjax.core.params import Params, param_names
from ssjax.core.smoother import SmootherResult

#: ``summary()`` notes misspecification when a robust s.e. exceeds the Hessian's by this factor
ROBUST_RATIO_NOTE = 1.5

__all__ = ["KalmanFit"]


def _theta_dict(p: Params, tenor_names) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, v in p._asdict().items():
        if v is None:
            continue
        a = np.asarray(v, dtype=float)
        if name == "meas_sd":
            out[name] = float(a) if a.ndim == 0 else pd.Series(a, index=tenor_names, name=name)
        else:
            out[name] = float(a)
    return out


@dataclass(eq=False)
class KalmanFit:
    """Result of :meth:`ssjax.KalmanEngine.fit`.

    The document's outputs: ``theta``, ``state_t [2]``, ``state_path [T, 2]``,
    ``F_model_t [M]`` and ``F_model_path [T, M]``; plus convergence information, standard
    errors (Hessian and robust sandwich), information criteria and ``summary()``.
    """

    params: Params
    method: str
    loglik: float
    nobs: int
    converged: bool
    status: str
    num_steps: int
    grad_norm: float
    state_t: np.ndarray
    state_path: np.ndarray
    F_model_t: np.ndarray
    F_model_path: np.ndarray
    t_star: int
    #: ``() -> (cov, cov_robust)``: computes the covariances on first use (see :attr:`cov`)
    covariances: Callable[[], tuple[np.ndarray, np.ndarray]] = field(repr=False)
    free: np.ndarray
    filter_result: FilterResult
    smoother_result: SmootherResult | None
    tenor_names: list[str]
    dates: pd.DatetimeIndex | None = None
    states: str = "filtered"
    at_bound: list[str] = field(default_factory=list)  # free parameters at a bound
    bound_text: str = ""  # the same in words
    n_starts: int = 1  # starting points fitted
    starts_at_best: int = 1  # of those, how many ended within 1e-3 of the best log-likelihood
    #: the stopping rule fired: an interior optimum (``converged``) or a boundary end point
    #: (False when the optimizer ran out of steps or met a non-finite value)
    optimum_reached: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def at_boundary(self) -> bool:
        """True when the end point has a free parameter at a bound (status ``BOUNDARY``)."""
        return bool(self.at_bound)

    # ---- parameters -------------------------------------------------------------------
    @cached_property
    def theta(self) -> dict[str, Any]:
        """Θ as a dict in the document's notation (``meas_sd`` as a Series per tenor)."""
        return _theta_dict(self.params, self.tenor_names)

    @cached_property
    def names(self) -> list[str]:
        return param_names(self.params, self.tenor_names)

    @cached_property
    def param_values(self) -> pd.Series:
        vals = np.concatenate(
            [np.ravel(np.asarray(v, float)) for v in self.params if v is not None]
        )
        return pd.Series(vals, index=self.names, name="coef")

    @property
    def n_params(self) -> int:
        return int(np.sum(self.free))

    @cached_property
    def _covs(self) -> tuple[np.ndarray, np.ndarray]:
        cov, robust = self.covariances()
        return np.asarray(cov, float), np.asarray(robust, float)

    @property
    def cov(self) -> np.ndarray:
        """[n, n] covariance of the parameters from the exact Hessian at the end point
        (NaN on fixed parameters, and everywhere when the Hessian is not negative
        definite there). Computed on first use (and kept): the Hessian is a program of
        its own, which a fit whose standard errors are never read does not compile."""
        return self._covs[0]

    @property
    def cov_robust(self) -> np.ndarray:
        """[n, n] robust (sandwich) covariance H⁻¹BH⁻¹, B the outer product of the per-date
        scores; computed with :attr:`cov`."""
        return self._covs[1]

    @cached_property
    def std_err(self) -> pd.Series:
        """Standard errors from the exact Hessian (NaN for fixed parameters)."""
        return pd.Series(np.sqrt(np.diag(self.cov)), index=self.names, name="std_err")

    @cached_property
    def std_err_robust(self) -> pd.Series:
        """Robust (sandwich) standard errors from per-date scores."""
        return pd.Series(np.sqrt(np.diag(self.cov_robust)), index=self.names, name="std_err_robust")

    @cached_property
    def tvalues(self) -> pd.Series:
        return (self.param_values / self.std_err).rename("z")

    @cached_property
    def pvalues(self) -> pd.Series:
        return pd.Series(2 * stats.norm.sf(np.abs(self.tvalues)), index=self.names, name="P>|z|")

    def conf_int(self, alpha: float = 0.05, robust: bool = False) -> pd.DataFrame:
        """Wald confidence intervals at level 1 − alpha."""
        q = stats.norm.ppf(1 - alpha / 2)
        se = self.std_err_robust if robust else self.std_err
        lo, hi = self.param_values - q * se, self.param_values + q * se
        return pd.DataFrame({f"[{alpha / 2:g}": lo, f"{1 - alpha / 2:g}]": hi})

    @property
    def aic(self) -> float:
        return -2 * self.loglik + 2 * self.n_params

    @property
    def bic(self) -> float:
        return -2 * self.loglik + math.log(self.nobs) * self.n_params

    @cached_property
    def near_bound(self) -> list[str]:
        """Free parameters not at a bound whose 95% Wald interval (Hessian or robust s.e.,
        the wider) reaches past the edge of their domain (κ, σ_X, σ_Y or a noise s.d. below
        0, |ρ| above 1): the normal approximation behind their s.e. is poor there."""
        vals = self.param_values
        se = np.fmax(self.std_err.to_numpy(), self.std_err_robust.to_numpy())
        free = np.asarray(self.free) > 0
        out = []
        for i, name in enumerate(self.names):
            if not free[i] or name in self.at_bound or not np.isfinite(se[i]):
                continue
            v, half = float(vals.iloc[i]), 1.959964 * float(se[i])
            positive = name in ("kappa", "sigma_x", "sigma_y", "spot_sd") or name.startswith(
                "meas_sd"
            )
            if (positive and v - half <= 0.0) or (name == "rho" and abs(v) + half >= 1.0):
                out.append(name)
        return out

    @cached_property
    def robust_ratio(self) -> pd.Series:
        """Robust over Hessian standard error per free parameter (about 1 when the model is
        well specified; well above 1 says the information-matrix equality fails)."""
        r = self.std_err_robust / self.std_err
        return r[np.asarray(self.free) > 0].rename("robust/hessian")

    # ---- tables -----------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """Parameters with standard errors, z, p-values, 95% intervals, robust s.e.,
        ``at_bound`` (True where the estimate sits at a bound of its domain: its Wald numbers
        do not hold there) and ``near_bound`` (its Wald interval reaches past the bound:
        see :attr:`near_bound`)."""
        df = pd.concat(
            [self.param_values, self.std_err, self.tvalues, self.pvalues, self.conf_int(),
             self.std_err_robust],
            axis=1,
        )  # fmt: skip
        df["at_bound"] = [n in self.at_bound for n in df.index]
        df["near_bound"] = [n in self.near_bound for n in df.index]
        return df

    def summary(self) -> str:
        """A readable report like statsmodels' or arch's."""
        df = self.to_frame()
        width = 86
        first = self.dates[0].date() if self.dates is not None else 0
        last = self.dates[self.t_star].date() if self.dates is not None else self.t_star
        head = [
            ("Model:", "Schwartz-Smith two-factor"),
            ("Method:", self.method),
            ("Sample:", f"{first} - {last}"),
            ("Dates:", str(self.t_star + 1)),
            ("Tenors:", str(len(self.tenor_names))),
            ("No. observations:", str(self.nobs)),
            ("Log-likelihood:", f"{self.loglik:.4f}"),
            ("AIC:", f"{self.aic:.4f}"),
            ("BIC:", f"{self.bic:.4f}"),
            ("Converged:", "yes" if self.converged else "no"),
            ("Iterations:", str(self.num_steps)),
            ("Max |gradient|/nobs:", f"{self.grad_norm:.2e}"),
            ("Starts at best:", f"{self.starts_at_best} of {self.n_starts}"),
        ]
        if "em_iterations" in self.extra:
            x = self.extra
            head.append(("EM iterations:", f"{x['em_iterations']} ({x['em_steps']} E+M)"))
            head.append(("EM variant:", f"{x['em_variant']}, {x['em_rollbacks']} undone CM"))
            if "mle_steps" in x:
                head.append(("MLE steps after EM:", str(x["mle_steps"])))
        lines = ["=" * width, "Schwartz-Smith two-factor model results".center(width), "=" * width]
        for i in range(0, len(head), 2):
            l1, v1 = head[i]
            l2, v2 = head[i + 1] if i + 1 < len(head) else ("", "")
            lines.append(f"{l1:<20}{v1:>22}   {l2:<20}{v2:>21}")
        lines.append(f"{'Status:':<20}{self.status}")
        rounds = [
            f"{self.extra[k]} {label}"
            for k, label in (("escape_rounds", "from a degenerate point"),
                             ("ridge_rounds", "along the κ → 0, ρ → −1 ridge"),
                             ("polish_rounds", "with boundary s.d.s raised"),
                             ("switch_rounds", "pricing another tenor exactly"))
            if self.extra.get(k)
        ]  # fmt: skip
        if rounds:
            lines.append(f"{'Restart rounds:':<20}{'; '.join(rounds)}")
        if self.at_bound:
            lines.append(f"{'At a bound:':<20}{self.bound_text}")
        lines.append("-" * width)
        lines.append(
            f"{'':<16}{'coef':>11}{'std err':>11}{'z':>9}{'P>|z|':>8}{'[0.025':>11}{'0.975]':>11}"
            f"{'robust se':>11}"
        )
        lines.append("-" * width)
        for name, row in df.iterrows():
            vals = row.to_numpy()
            label = f"{name} *" if row["at_bound"] else f"{name} †" if row["near_bound"] else name
            lines.append(
                f"{label:<16}{vals[0]:>11.5f}{vals[1]:>11.5f}{vals[2]:>9.2f}{vals[3]:>8.3f}"
                f"{vals[4]:>11.5f}{vals[5]:>11.5f}{vals[6]:>11.5f}"
            )
        lines.append("=" * width)
        st = self.state_t
        lines.append(f"state_t (filtered X, Y at t*): [{st[0]:.5f}, {st[1]:.5f}]")
        f_mkt = self.extra.get("F_mkt_t")

        def row(values) -> str:
            return "  ".join(f"{n}={v:.4f}" for n, v in zip(self.tenor_names, values, strict=True))

        lines.append(f"F_model_t: {row(self.F_model_t)}")
        if f_mkt is not None:
            lines.append(f"F_mkt_t:   {row(f_mkt)}")
        n_head = len(lines)
        if not self.optimum_reached:
            lines.append("WARNING: the optimizer did not converge; estimates are unreliable.")
        elif self.at_bound:
            lines.append(
                "NOTE: the end point is on the boundary of the parameter space, not an interior "
                "optimum: the Wald standard errors, z and intervals of the parameters at a bound "
                "(marked *: "
                + ", ".join(self.at_bound)
                + ") are not valid there, and a likelihood-ratio test of such a parameter needs "
                "the boundary mixture (ssjax.fit.stats)."
            )
        if self.near_bound:
            lines.append(
                "NOTE: near a bound (marked †: "
                + ", ".join(self.near_bound)
                + "): the 95% Wald interval reaches past the edge of the parameter's domain, "
                "so its standard error and interval are rough; a likelihood-ratio (profile) "
                "interval is safer."
            )
        ratio = self.robust_ratio.drop(index=self.at_bound, errors="ignore").dropna()
        if len(ratio) and ratio.max() > ROBUST_RATIO_NOTE:
            lines.append(
                f"NOTE: the robust standard errors are up to {ratio.max():.1f}x the Hessian "
                f"ones ({ratio.idxmax()}): the information-matrix equality fails, a sign that "
                "the Gaussian model is misspecified for these data (fat tails, changing "
                "volatility); read the robust column."
            )
        if self.n_starts > 1 and self.starts_at_best < 2:
            lines.append(
                f"NOTE: only {self.starts_at_best} of {self.n_starts} starts reached the best "
                "log-likelihood; the likelihood is multi-modal here, more starts (n_starts=) "
                "may find a higher optimum."
            )
        if np.isnan(np.diag(self.cov)[np.asarray(self.free) > 0]).any():
            lines.append("WARNING: the Hessian is not negative definite at the end point.")
        notes = [textwrap.fill(x, width, subsequent_indent="  ") for x in lines[n_head:]]
        return "\n".join(lines[:n_head] + notes)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        scalars = {k: round(v, 6) for k, v in self.theta.items() if k != "meas_sd"}
        return (
            f"KalmanFit(method={self.method!r}, loglik={self.loglik:.4f}, "
            f"converged={self.converged}, at_bound={self.at_bound}, theta={scalars})"
        )
