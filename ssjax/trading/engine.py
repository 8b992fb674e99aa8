r"""From model-vs-market mispricing to orders: ``prepare_trading_inputs`` and ``TradeEngine``.

The theory document's last two blocks. Conventions (one date t, M tenors):

* mispricing Δ_i = F_model − F_mkt (price units); the expected convergence return of a long
  position is α_i = ln(F_model/F_mkt) (model above market: the contract is cheap, BUY);
* weights ``w`` are signed notional exposures per unit of capital (``w_i = 0.5``: long half the
  capital's worth of tenor i's contract); a portfolio's return variance is wᵀΣw, with Σ the
  covariance of log returns per tenor, annualized;
* z-scores standardize α by one of three s.d.s of ln F, chosen by ``TradingConfig.z_method``
  and named in ``TradingInputs.z_basis``: the model's filtered-residual s.d.
  (``"filtered"``, the default), the filter's one-step innovation s.d. (``"innovation"``), or
  the rolling s.d. of past residuals ln F_mkt − ln F_model (``"residual"``);
  :func:`residual_variances` gives the first two from a filter run;
* frictions (fee, half-spread, slippage) are in price units per contract; per unit of
  weight traded they cost (fee + half_spread + slippage)/F_mkt.

:class:`TradeEngine` applies hysteresis (enter when |z| > z_in, keep between z_out and z_in,
exit below z_out), keeps the ``top_k`` largest |z|, sizes by volatility target or by a
mean–variance QP (cvxpy, built once with parameters and re-solved), applies per-tenor caps and
a gross-leverage limit, drops position-increasing orders whose expected gain does not cover
the round trip's frictions (entry now, exit later), and returns ``signals``, ``target_w`` and
``orders`` (tenor_id, side, size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import numpy as np
from numpy.typing import ArrayLike

from ssjax.checks import is_int, is_number
from ssjax.trading.sizing import vol_target_weights, z_scores

__all__ = [
    "Z_METHODS",
    "TradingConfig",
    "Frictions",
    "Limits",
    "Thresholds",
    "TradingInputs",
    "Order",
    "TradeDecision",
    "prepare_trading_inputs",
    "residual_variances",
    "TradeEngine",
]

#: the bases of the z-scores (``TradingConfig.z_method``)
Z_METHODS = ("filtered", "innovation", "residual")


_vol_target_jit = jax.jit(vol_target_weights, static_argnames=("redistribute",))
_z_jit = jax.jit(z_scores)


@dataclass(frozen=True)
class TradingConfig:
    """Settings of the trading blocks (defaults are documented in docs/trading.md).

    Attributes:
        sigma_method: ``"returns"`` (rolling covariance of the futures' log returns per tenor,
            same contract on both dates) or ``"residuals"`` (covariance of the model
            residuals ln F_mkt − ln F_model).
        sigma_window: dates in the rolling window (default 60).
        z_method: what z = α / s.d. standardizes α by (see :func:`prepare_trading_inputs`):
            ``"filtered"`` (default: the model's s.d. of the filtered residual,
            diag(R − H P_{t|t} Hᵀ)), ``"innovation"`` (the filter's one-step innovation s.d.,
            diag(H P_{t|t−1} Hᵀ + R)) or ``"residual"`` (the rolling s.d. of past residuals).
        z_in, z_out: hysteresis thresholds (z_out < z_in).
        max_weight: per-tenor cap on |w| (a scalar or one per tenor).
        gross_leverage: cap on Σ|w|.
        fee, half_spread, slippage: frictions per contract in price units (scalar or [M]).
        periods_per_year: to annualize Σ (default: from the data's step lengths).
        execution_lag: dates between a decision and its fill in the backtest (default 1:
            decide on t's settlement, fill at the next one; 0 fills at the signal's own
            settlement, which no desk can do). See
            :func:`ssjax.trading.execution.simulate_execution`.
        net_exposure: cap on the net exposure |Σw| (default None: no cap). The P&L of a
            weight w_i is w_i·d ln F_i = w_i·(e^{−κΔ_i} dX + dY + …), so Σw is the book's
            exposure to the long-term factor Y (a parallel move of the curve).
        neutral: factors the book must be neutral to: ``()`` (default), ``("Y",)`` (Σw = 0),
            ``("X",)`` (Σ w_i e^{−κΔ_i} = 0) or both, with the loadings of the model in
            force (κ from the calibration; :func:`prepare_trading_inputs` needs ``kappa``).
            A relative-value book: without it the mispricing signal can be mostly one
            outright direction.
        carry_rolls: when a tenor's contract rolls, its position enters the decision with its
            pre-roll weight, so it moves to the new contract (both legs paying costs) if the
            new contract's z still passes z_out (default True); False closes it for good
            unless the new contract's |z| passes z_in.
        shrinkage: weight of the diagonal in Σ = (1−s) S + s diag(S) (stabilizes small windows).
        min_resid_sd: the smallest s.d. of ln F a z-score may be divided by (default 1e-6,
            about 0.0001% of the price). A tenor whose s.d. is below it carries no signal
            (z = 0): the model fits it exactly. This happens when the fit drives that
            tenor's noise s.d. to zero (the 2000 paper's 13-month contract); its filtered-
            residual variance R − H P Hᵀ is then a difference of two numbers that agree to
            rounding, and α is of the order of rounding too.
    """

    sigma_method: str = "returns"
    sigma_window: int = 60
    z_method: str = "filtered"
    z_in: float = 2.0
    z_out: float = 0.5
    max_weight: Any = 1.0
    gross_leverage: float = 2.0
    fee: Any = 0.0
    half_spread: Any = 0.0
    slippage: Any = 0.0
    periods_per_year: float | None = None
    shrinkage: float = 0.1
    min_resid_sd: float = 1e-6
    execution_lag: int = 1
    carry_rolls: bool = True
    net_exposure: float | None = None
    neutral: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> ValueError:
            return ValueError(f"TradingConfig.{name} must be {want}, got {getattr(self, name)!r}")

        for name in ("sigma_window", "execution_lag"):
            if not is_int(getattr(self, name)):
                raise bad(name, "an integer")
        if self.execution_lag < 0:
            raise bad("execution_lag", ">= 0")
        for name in ("z_in", "z_out", "gross_leverage", "shrinkage", "min_resid_sd"):
            if not is_number(getattr(self, name)):
                raise bad(name, "a number")
        if self.periods_per_year is not None and not (
            is_number(self.periods_per_year) and self.periods_per_year > 0
        ):
            raise bad("periods_per_year", "None or a number > 0")
        for name in ("max_weight", "fee", "half_spread", "slippage"):
            try:
                a = np.asarray(getattr(self, name), dtype=float)
            except (TypeError, ValueError):
                raise bad(name, "a number or one number per tenor") from None
            if a.ndim > 1 or not np.all(np.isfinite(a)):
                raise bad(name, "a finite number or one per tenor")
            if name == "max_weight" and np.any(a <= 0):
                raise bad(name, "> 0")
            if name != "max_weight" and np.any(a < 0):
                raise bad(name, ">= 0 (a cost)")
        if not isinstance(self.carry_rolls, bool | np.bool_):
            raise bad("carry_rolls", "True or False")
        if self.net_exposure is not None and not (
            is_number(self.net_exposure) and self.net_exposure >= 0
        ):
            raise bad("net_exposure", "None or a number >= 0")
        if isinstance(self.neutral, str) or not all(f in ("X", "Y") for f in self.neutral):
            raise bad("neutral", "a tuple of factors among 'X' and 'Y'")
        object.__setattr__(self, "neutral", tuple(dict.fromkeys(self.neutral)))
        if self.sigma_method not in ("returns", "residuals"):
            raise ValueError(
                f"sigma_method must be 'returns' or 'residuals', got {self.sigma_method!r}"
            )
        if self.z_method not in Z_METHODS:
            known = ", ".join(map(repr, Z_METHODS))
            raise ValueError(f"z_method must be one of {known}, got {self.z_method!r}")
        if not 0 <= self.z_out < self.z_in:
            raise ValueError(f"need 0 <= z_out < z_in, got z_out={self.z_out}, z_in={self.z_in}")
        if self.sigma_window < 2:
            raise ValueError(f"sigma_window must be >= 2, got {self.sigma_window}")
        if self.gross_leverage <= 0:
            raise ValueError(f"gross_leverage must be > 0, got {self.gross_leverage}")
        if not 0 <= self.shrinkage <= 1:
            raise ValueError(f"shrinkage must lie in [0, 1], got {self.shrinkage}")
        if not (np.isfinite(self.min_resid_sd) and self.min_resid_sd >= 0):
            raise ValueError(f"min_resid_sd must be finite and >= 0, got {self.min_resid_sd}")


class Frictions(NamedTuple):
    """Costs per contract in price units, [M] each."""

    fee: np.ndarray
    half_spread: np.ndarray
    slippage: np.ndarray

    @property
    def per_contract(self) -> np.ndarray:
        return self.fee + self.half_spread + self.slippage


class Limits(NamedTuple):
    per_tenor: np.ndarray  # [M] cap on |w_i|
    gross: float  # cap on Σ|w_i|
    net: float = math.inf  # cap on |Σ w_i|
    neutral: np.ndarray | None = None  # [k, M] factor loadings the book must be neutral to


class Thresholds(NamedTuple):
    z_in: np.ndarray  # [M]
    z_out: np.ndarray  # [M]


class TradingInputs(NamedTuple):
    """Output of :func:`prepare_trading_inputs` (one date)."""

    mispricing: np.ndarray  # [M] F_model − F_mkt
    alpha: np.ndarray  # [M] ln(F_model / F_mkt): expected convergence return of a long
    z: np.ndarray  # [M] alpha / its s.d.
    z_basis: str  # what standardized z (model filtered-residual / innovation s.d., or rolling)
    Sigma: np.ndarray  # [M, M] annualized covariance of log returns (or of residuals)
    sigma_basis: str
    limits: Limits
    thresh: Thresholds
    frictions: Frictions
    cost_per_weight: np.ndarray  # [M] frictions / F_mkt: return cost per unit weight traded
    tradable: np.ndarray  # [M] bool: price, model and ttm valid


class Order(NamedTuple):
    tenor_id: int
    side: str  # "BUY" or "SELL"
    size: float  # |Δw| > 0, in weight units


class TradeDecision(NamedTuple):
    signals: np.ndarray  # [M] in {-1, 0, +1}
    target_w: np.ndarray  # [M]
    orders: list[Order]
    z: np.ndarray  # [M]
    status: str  # "ok", or the QP solvers' statuses ("A: error ...; B: optimal")
    blocked: np.ndarray  # [M] bool: entry orders dropped because gain < frictions


def _vec(x: Any, M: int, name: str) -> np.ndarray:
    a = np.asarray(x, float)
    if a.ndim == 0:
        a = np.full(M, float(a))
    if a.shape != (M,):
        raise ValueError(f"{name} must be a scalar or have shape [{M}], got {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{name} must be finite and >= 0, got {a}")
    return a


def _cov(x: np.ndarray, shrinkage: float) -> np.ndarray:
    """Covariance of the rows of x [n, M] with NaNs (pairwise complete), shrunk to its diagonal.

    A column with fewer than two values gets zero variance (it is then not traded by size)."""
    ok = np.isfinite(x)
    cnt = ok.sum(axis=0)
    mean = np.where(cnt > 0, np.where(ok, x, 0.0).sum(axis=0) / np.maximum(cnt, 1), 0.0)
    xc = np.where(ok, x - mean, 0.0)
    n = ok.T.astype(float) @ ok.astype(float)
    S = (xc.T @ xc) / np.maximum(n - 1.0, 1.0)
    S = np.where(n >= 2, S, 0.0)
    d = np.diag(np.diag(S))
    return (1.0 - shrinkage) * S + shrinkage * d


def prepare_trading_inputs(
    F_mkt_t: ArrayLike,
    F_model_t: ArrayLike,
    ttm_t: ArrayLike,
    cost: ArrayLike | None = None,
    cfg: TradingConfig | None = None,
    *,
    F_mkt_hist: ArrayLike | None = None,
    contracts_hist: ArrayLike | None = None,
    resid_hist: ArrayLike | None = None,
    filtered_resid_var_t: ArrayLike | None = None,
    innovation_var_t: ArrayLike | None = None,
    dt: float | ArrayLike | None = None,
    kappa: float | None = None,
) -> TradingInputs:
    r"""The document's ``PrepareTradingInputs`` for one date t.

    **The z-score basis** (``cfg.z_method``; ``z_basis`` in the output names the one used).
    α = ln F_model − ln F_mkt is computed from the *filtered* state x_{t|t}, which has
    already seen t's prices. Three s.d.s are offered:

    * ``"filtered"`` (default): ``filtered_resid_var_t`` = diag(R − H P_{t|t} Hᵀ), the
      model's variance of the filtered residual e_t = ln F_mkt − H x_{t|t} − d, i.e. of −α
      itself (it equals diag(R F_t⁻¹ R)). z is then a standard-normal score, under the
      model, of exactly the quantity traded on: a |z| of 2 is a 2-s.d. mispricing. This is
      the default because it is the only model variance that matches α.
    * ``"innovation"``: ``innovation_var_t`` = diag(F_t), F_t = H P_{t|t−1} Hᵀ + R, the
      filter's one-step innovation variance (the s.d. of ln F_mkt around the *predicted*
      state, before t's prices). It belongs to another quantity, the innovation, and
      exceeds the filtered residual's variance (by a week of state uncertainty on a weekly
      panel, several times its s.d. on WTI), so z's from it are smaller and rarely reach
      a z_in of 2; it is offered because it is the model's uncertainty most often quoted.
    * ``"residual"``: the rolling sample s.d. of the past residuals ``resid_hist`` per
      tenor (no model variance needed; the model's own error history).

    Args:
        F_mkt_t, F_model_t, ttm_t: market and model forwards and times to maturity [M].
        cost: optional extra cost per contract [M] (added to the fee of ``cfg``).
        cfg: :class:`TradingConfig`.
        F_mkt_hist: prices up to and including t, [W+1, M] (for ``sigma_method="returns"``).
        contracts_hist: contract codes [W+1, M]; a return counts only when the tenor's
            contract is the same on both dates (no spliced returns across rolls).
        resid_hist: past residuals ln F_mkt − ln F_model [W, M] (dates before t) for
            ``sigma_method="residuals"`` and ``z_method="residual"``.
        filtered_resid_var_t: diag(R − H P_{t|t} Hᵀ) at t [M] (``z_method="filtered"``).
        innovation_var_t: diag(H P_{t|t−1} Hᵀ + R) at t [M] (``z_method="innovation"``).
            :func:`residual_variances` computes both from a filter run. A non-positive or
            non-finite variance gives z = 0 (the tenor does not trade on z).
        dt: step length(s) in years, to annualize Σ (default ``cfg.periods_per_year``).
        kappa: κ of the model in force, for the factor loadings of ``cfg.neutral``
            (e^{−κΔ} for X, 1 for Y; zero where a tenor is not tradable).
    """
    cfg = cfg or TradingConfig()
    F_mkt_t = np.asarray(F_mkt_t, float)
    F_model_t = np.asarray(F_model_t, float)
    ttm_t = np.asarray(ttm_t, float)
    if F_mkt_t.ndim != 1:
        raise ValueError(f"F_mkt_t must have shape [M], got {F_mkt_t.shape}")
    M = F_mkt_t.shape[0]
    for name, a in (("F_model_t", F_model_t), ("ttm_t", ttm_t)):
        if a.shape != (M,):
            raise ValueError(f"{name} must have shape [{M}] like F_mkt_t, got {a.shape}")
    tradable = (
        np.isfinite(F_mkt_t)
        & (F_mkt_t > 0)
        & np.isfinite(F_model_t)
        & (F_model_t > 0)
        & np.isfinite(ttm_t)
        & (ttm_t > 0)  # a contract in its last session is not opened
    )
    safe_mkt = np.where(tradable, F_mkt_t, 1.0)
    safe_mod = np.where(tradable, F_model_t, 1.0)
    mispricing = np.where(tradable, F_model_t - F_mkt_t, 0.0)
    alpha = np.where(tradable, np.log(safe_mod / safe_mkt), 0.0)

    if cfg.periods_per_year is not None:
        ppy = float(cfg.periods_per_year)
    elif dt is not None:
        ppy = 1.0 / float(np.mean(np.asarray(dt, float)))
    else:
        raise ValueError(
            "give dt (step lengths in years) or cfg.periods_per_year to annualize Sigma"
        )

    W = cfg.sigma_window
    if cfg.sigma_method == "returns":
        if F_mkt_hist is None:
            raise ValueError("sigma_method='returns' needs F_mkt_hist [W+1, M]")
        P = np.asarray(F_mkt_hist, float)[-(W + 1) :]
        if P.ndim != 2 or P.shape[1] != M:
            raise ValueError(f"F_mkt_hist must have shape [n, {M}], got {P.shape}")
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.log(P[1:]) - np.log(P[:-1])
        if contracts_hist is not None:
            C = np.asarray(contracts_hist, dtype=object)[-(W + 1) :]
            if C.shape != P.shape:
                raise ValueError(f"contracts_hist must match F_mkt_hist's shape {P.shape}")
            r = np.where(C[1:] == C[:-1], r, np.nan)
        Sigma = _cov(r, cfg.shrinkage) * ppy
        sigma_basis = f"rolling covariance of log returns, {r.shape[0]} returns, same contract"
    else:
        if resid_hist is None:
            raise ValueError("sigma_method='residuals' needs resid_hist [W, M]")
        R = np.asarray(resid_hist, float)[-W:]
        if R.ndim != 2 or R.shape[1] != M:
            raise ValueError(f"resid_hist must have shape [n, {M}], got {R.shape}")
        Sigma = _cov(R, cfg.shrinkage) * ppy
        sigma_basis = f"covariance of model residuals ln F_mkt - ln F_model, {R.shape[0]} dates"

    if cfg.z_method in ("filtered", "innovation"):
        name = "filtered_resid_var_t" if cfg.z_method == "filtered" else "innovation_var_t"
        v = filtered_resid_var_t if cfg.z_method == "filtered" else innovation_var_t
        if v is None:
            raise ValueError(
                f"z_method={cfg.z_method!r} needs {name} [M] from the filter "
                "(see ssjax.trading.engine.residual_variances)"
            )
        var = np.asarray(v, float)
        if var.shape != (M,):
            raise ValueError(f"{name} must have shape [{M}], got {var.shape}")
        z_basis = (
            "model filtered-residual s.d. of ln F, diag(R - H P_t|t H')"
            if cfg.z_method == "filtered"
            else "model one-step innovation s.d. of ln F, diag(H P_t|t-1 H' + R)"
        )
    else:
        if resid_hist is None:
            raise ValueError("z_method='residual' needs resid_hist [W, M]")
        R = np.asarray(resid_hist, float)[-W:]
        ok = np.isfinite(R)
        cnt = ok.sum(axis=0)
        mean = np.where(ok, R, 0.0).sum(axis=0) / np.maximum(cnt, 1)
        ss = np.where(ok, (R - mean) ** 2, 0.0).sum(axis=0)
        var = np.where(cnt >= 2, ss / np.maximum(cnt - 1, 1), np.nan)
        z_basis = f"rolling residual s.d., {R.shape[0]} dates"
    # the one z rule (ssjax.trading.sizing.z_scores): a usable s.d. above min_resid_sd, else 0
    z = np.array(_z_jit(alpha, var, tradable, cfg.min_resid_sd), float)

    fee = _vec(cfg.fee, M, "fee") + (0.0 if cost is None else _vec(cost, M, "cost"))
    fr = Frictions(fee, _vec(cfg.half_spread, M, "half_spread"), _vec(cfg.slippage, M, "slippage"))
    rows = []
    for f in cfg.neutral:
        if f == "Y":
            rows.append(np.ones(M))
        else:
            if kappa is None or not np.isfinite(kappa):
                raise ValueError("cfg.neutral includes 'X': give kappa (the model's κ)")
            rows.append(np.exp(-float(kappa) * np.where(tradable, ttm_t, 0.0)))
    neutral = np.where(tradable, np.array(rows), 0.0) if rows else None
    net = math.inf if cfg.net_exposure is None else float(cfg.net_exposure)
    limits = Limits(_vec(cfg.max_weight, M, "max_weight"), float(cfg.gross_leverage), net, neutral)
    thresh = Thresholds(np.full(M, cfg.z_in), np.full(M, cfg.z_out))
    return TradingInputs(
        mispricing=mispricing,
        alpha=alpha,
        z=z,
        z_basis=z_basis,
        Sigma=Sigma,
        sigma_basis=sigma_basis,
        limits=limits,
        thresh=thresh,
        frictions=fr,
        cost_per_weight=fr.per_contract / safe_mkt,
        tradable=tradable,
    )


def residual_variances(
    params: Any, filter_result: Any, ttm: ArrayLike, mask: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    r"""The model's variances of ln F per date and tenor from a filter run: the two z bases.

    With H_i = [e^{−κ τ_i}, 1] the loading of tenor i's ln F on the state and R = diag(s_i²)
    the measurement variance:

    * ``innovation`` [T, M] = diag(H P_{t|t−1} Hᵀ + R): the one-step innovation variance
      (equal to the filter's ``innovation_vars`` where the tenor is observed);
    * ``filtered`` [T, M] = diag(R − H P_{t|t} Hᵀ): the variance of the filtered residual
      ln F_mkt − H x_{t|t} − d where the tenor is observed at t (its observation entered
      P_{t|t}); diag(R + H P_{t|t} Hᵀ) where it is not (``mask`` False).

    Args:
        params: :class:`ssjax.core.params.Params` of the run (``kappa``, ``meas_sd``).
        filter_result: :class:`ssjax.core.filter.FilterResult` (``predicted_covs``,
            ``filtered_covs`` [T, 2, 2]).
        ttm: times to maturity [T, M] of the filtered dates (NaN treated as 0).
        mask: observed cells [T, M] (default: all observed).

    Returns:
        ``(innovation, filtered)``, NumPy float arrays [T, M].
    """
    Pp = np.asarray(filter_result.predicted_covs, float)
    Pf = np.asarray(filter_result.filtered_covs, float)
    tau = np.nan_to_num(np.asarray(ttm, float))
    if tau.ndim != 2 or Pp.shape != (tau.shape[0], 2, 2) or Pf.shape != Pp.shape:
        raise ValueError(
            f"ttm must be [T, M] for T = {Pp.shape[0]} filtered dates, got {tau.shape}"
        )
    b = np.exp(-float(np.asarray(params.kappa)) * tau)

    def hph(P: np.ndarray) -> np.ndarray:
        return b * b * P[:, None, 0, 0] + 2.0 * b * P[:, None, 0, 1] + P[:, None, 1, 1]

    r = np.broadcast_to(np.asarray(params.meas_sd, float) ** 2, tau.shape)
    obs = np.ones(tau.shape, bool) if mask is None else np.asarray(mask, bool)
    if obs.shape != tau.shape:
        raise ValueError(f"mask must have the shape of ttm {tau.shape}, got {obs.shape}")
    innovation = hph(Pp) + r
    filtered = np.where(obs, r - hph(Pf), r + hph(Pf))
    return innovation, filtered


class _QP:
    """The mean–variance problem, built once per M with cvxpy Parameters (DPP).

    One :class:`cvxpy.Problem` per solver over the same variable, parameters, objective and
    constraints (``problem_for``): cvxpy caches the compiled parameter program per problem
    and per solver, so a fallback to the second solver does not throw away the first
    solver's compilation. Every re-solve only refreshes the parameter values.
    """

    def __init__(self, M: int) -> None:
        import cvxpy as cp

        self.w = cp.Variable(M)
        self.alpha = cp.Parameter(M)
        # DPP: a product of two parameters is not allowed, so γ and λ₂ enter through
        # √γ·Lᵀ (Σ = L Lᵀ) and √λ₂, √λ₂·w_prev
        self.gL = cp.Parameter((M, M))
        self.s2 = cp.Parameter(nonneg=True)
        self.s2_wprev = cp.Parameter(M)
        self.cap = cp.Parameter(M, nonneg=True)
        self.sign = cp.Parameter(M)  # allowed direction per tenor (0: must be flat)
        self.gross = cp.Parameter(nonneg=True)
        self.net = cp.Parameter(nonneg=True)
        self.neutral = cp.Parameter((2, M))  # factor loadings (zero rows: no constraint)
        self.lam1 = cp.Parameter(nonneg=True)
        w = self.w
        objective = cp.Maximize(
            self.alpha @ w
            - cp.sum_squares(self.gL @ w)
            - self.lam1 * cp.norm1(w)
            - cp.sum_squares(self.s2 * w - self.s2_wprev)
        )
        cons = [
            cp.abs(w) <= self.cap,
            cp.multiply(self.sign, w) >= 0,
            cp.norm1(w) <= self.gross,
            cp.abs(cp.sum(w)) <= self.net,
            self.neutral @ w == 0,
        ]
        self.objective, self.constraints = objective, cons
        self.problem = cp.Problem(objective, cons)
        self.problems: dict[str, Any] = {}
        if not self.problem.is_dcp(dpp=True):  # pragma: no cover - a programming error
            raise RuntimeError("the trading QP is not DPP: it would be rebuilt on every solve")

    def problem_for(self, solver: str) -> Any:
        """The problem solved with ``solver`` (the first one asked for is ``self.problem``)."""
        import cvxpy as cp

        key = str(solver).upper()
        if key not in self.problems:
            self.problems[key] = (
                self.problem if not self.problems else cp.Problem(self.objective, self.constraints)
            )
        return self.problems[key]


@dataclass
class TradeEngine:
    """The document's ``TradeEngine``: signals, target weights and orders for one date.

    Args:
        sizing: ``"vol_target"`` or ``"qp"``.
        vol_target: annualized ex-ante volatility of the portfolio (``vol_target`` sizing).
        gamma, lambda1, lambda2: QP risk aversion (per year), L1 penalty, trading-cost
            penalty. The QP maximizes, over the weights w (signed notional per unit of
            capital),

                (α/h)·w − γ·wᵀΣw − λ₁·Σ|w_i| − λ₂·Σ(w_i − w_prev,i)²

            with α = ln(F_model/F_mkt) the convergence return of each tenor, h =
            ``alpha_horizon`` the years over which it is expected to close (so α/h is an
            expected return per year), Σ the annualized covariance of returns: both terms
            are per year and γ is the risk aversion of a mean–variance investor with that
            horizon (without other limits the optimum is w = Σ⁻¹(α/h)/(2γ)). Subject to the
            signals' signs, the per-tenor caps, the gross and net limits and the neutrality
            of :class:`TradingConfig`.
        alpha_horizon: h above, in years (default 0.25: a quarter).
        redistribute: vol-target sizing: weight cut by a per-tenor cap goes to the other
            tenors so that the book still reaches the vol target where it can (default True;
            :func:`ssjax.trading.sizing.vol_target_weights`).
        top_k: trade at most this many tenors (largest |z|); None: no limit.
        solvers: QP solvers, tried in order: when one raises or ends in any status but
            optimal, the next is tried; ``status`` lists every attempt (``"CLARABEL:
            optimal"``, or ``"X: error ...; OSQP: optimal"`` after a fallback). When all
            fail, no order is sent: ``target_w = w_prev`` and ``signals = sign(w_prev)``.
        min_trade: |Δw| below this sends no order.
        check_frictions: drop position-increasing orders whose expected gain does not cover
            the round trip: the new exposure's convergence gain α·|Δw| must exceed twice its
            one-way cost (paid now to enter, and again to exit, priced at today's cost per
            unit weight since the exit price is unknown). Exits and reductions are always
            sent; in a reversal only the new side's opening is checked (the close is sent).
            A book neutral to factors (``TradingConfig.neutral``) is checked as one package:
            its summed opening gain against its summed round-trip cost; a package that does
            not pay keeps the book as it is (dropping a leg would unhedge the others).
    """

    sizing: str = "vol_target"
    vol_target: float = 0.10
    gamma: float = 1.0
    alpha_horizon: float = 0.25
    lambda1: float = 0.0
    lambda2: float = 0.0
    top_k: int | None = None
    solvers: tuple[str, ...] = ("CLARABEL", "OSQP")
    min_trade: float = 1e-8
    check_frictions: bool = True
    redistribute: bool = True
    n_builds: int = field(default=0, init=False)
    _qp: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.sizing not in ("vol_target", "qp"):
            raise ValueError(f"sizing must be 'vol_target' or 'qp', got {self.sizing!r}")
        if self.vol_target <= 0:
            raise ValueError(f"vol_target must be > 0, got {self.vol_target}")
        if not self.alpha_horizon > 0:
            raise ValueError(f"alpha_horizon must be > 0 (years), got {self.alpha_horizon}")
        if min(self.gamma, self.lambda1, self.lambda2) < 0:
            raise ValueError("gamma, lambda1 and lambda2 must be >= 0")
        if self.sizing == "qp" and self.gamma == 0 and self.lambda2 == 0:
            raise ValueError("sizing='qp' needs gamma > 0 or lambda2 > 0 (a bounded problem)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if isinstance(self.solvers, str) or not self.solvers:
            raise ValueError(f"solvers must be a non-empty tuple of names, got {self.solvers!r}")
        self.solvers = tuple(str(x) for x in self.solvers)

    # ---- signals ----------------------------------------------------------------------
    def signals(
        self, z: np.ndarray, thresh: Thresholds, w_prev: np.ndarray, tradable: np.ndarray
    ) -> np.ndarray:
        """Hysteresis on z, then top-K by |z|.

        Enter (sign of z) when |z| > z_in; an open position in the direction of z is kept
        while |z| >= z_out; otherwise flat. A position whose z changed sign is closed (and
        reversed only if the new |z| > z_in).
        """
        held = np.sign(w_prev)
        enter = np.abs(z) > thresh.z_in
        keep = (held != 0) & (np.sign(z) == held) & (np.abs(z) >= thresh.z_out)
        s = np.where(enter, np.sign(z), np.where(keep, held, 0.0))
        s = np.where(tradable, s, 0.0)
        if self.top_k is not None and np.count_nonzero(s) > self.top_k:
            order = np.argsort(-np.abs(np.where(s != 0, z, 0.0)), kind="stable")
            drop = order[self.top_k :]
            s[drop] = 0.0
        return s.astype(float)

    # ---- sizing -----------------------------------------------------------------------
    def _vol_target(self, s: np.ndarray, inp: TradingInputs) -> np.ndarray:
        w = _vol_target_jit(
            np.asarray(inp.z, float), np.asarray(s, float), np.asarray(inp.Sigma, float),
            float(self.vol_target), np.asarray(inp.limits.per_tenor, float),
            float(inp.limits.gross), float(inp.limits.net),
            None if inp.limits.neutral is None else np.asarray(inp.limits.neutral, float),
            redistribute=self.redistribute,
        )  # fmt: skip
        return np.array(w, float)

    def _solve_qp(self, s: np.ndarray, inp: TradingInputs, w_prev: np.ndarray):
        import cvxpy as cp

        M = s.shape[0]
        qp = self._qp.get(M)
        if qp is None:
            qp = self._qp[M] = _QP(M)
            self.n_builds += 1
        S = 0.5 * (inp.Sigma + inp.Sigma.T)
        evals, evecs = np.linalg.eigh(S)
        L = evecs * np.sqrt(np.clip(evals, 0.0, None))  # Σ = L Lᵀ, also when singular
        qp.alpha.value = inp.alpha / self.alpha_horizon
        qp.gL.value = np.sqrt(self.gamma) * L.T
        qp.s2.value = np.sqrt(self.lambda2)
        qp.s2_wprev.value = np.sqrt(self.lambda2) * w_prev
        qp.cap.value = inp.limits.per_tenor * (s != 0)
        qp.sign.value = s
        qp.gross.value = inp.limits.gross
        # a large finite number stands for no net limit (a Parameter cannot be inf)
        qp.net.value = min(float(inp.limits.net), 1e6)
        L = np.zeros((2, M))
        if inp.limits.neutral is not None:
            L[: len(inp.limits.neutral)] = inp.limits.neutral
        qp.neutral.value = L
        qp.lam1.value = self.lambda1
        attempts: list[str] = []
        for solver in self.solvers:
            problem = qp.problem_for(solver)
            try:
                problem.solve(solver=solver)
            except (cp.error.SolverError, ValueError) as e:  # noqa: PERF203
                attempts.append(f"{solver}: error {e}")
                continue
            attempts.append(f"{solver}: {problem.status}")
            if problem.status == cp.OPTIMAL and qp.w.value is not None:
                w = np.asarray(qp.w.value, float)
                # clean solver noise against the bounds
                w = np.clip(w, -inp.limits.per_tenor, inp.limits.per_tenor) * (s != 0)
                for total, lim in ((np.sum(np.abs(w)), inp.limits.gross),
                                   (abs(np.sum(w)), inp.limits.net)):  # fmt: skip
                    if total > lim:
                        w = w * (lim / total)
                return w, "; ".join(attempts)
        return None, "; ".join(attempts) or "not solved"

    # ---- the block ----------------------------------------------------------------------
    def decide(self, inp: TradingInputs, w_prev: ArrayLike | None = None) -> TradeDecision:
        """Signals, target weights and orders at one date from :func:`prepare_trading_inputs`."""
        M = inp.alpha.shape[0]
        w_prev = np.zeros(M) if w_prev is None else np.asarray(w_prev, float)
        if w_prev.shape != (M,):
            raise ValueError(f"w_prev must have shape [{M}], got {w_prev.shape}")
        s = self.signals(inp.z, inp.thresh, w_prev, inp.tradable)
        status = "ok"
        if self.sizing == "vol_target":
            target = self._vol_target(s, inp)
        else:
            target, status = self._solve_qp(s, inp, w_prev)
            if target is None:  # never trade on a failed solve: keep what we hold
                kept = np.sign(w_prev).astype(float)
                return TradeDecision(kept, w_prev.copy(), [], inp.z, status, np.zeros(M, bool))
        # frictions: new exposure must pay for its round trip (entry now, exit later). The
        # opening part of a trade is the growth of a same-side position, or all of the new
        # side in a reversal; the closing part (exits, reductions) is always sent.
        same_side = np.sign(target) * np.sign(w_prev) > 0
        opening = np.where(same_side, np.abs(target) - np.abs(w_prev), np.abs(target))
        opens = opening > self.min_trade
        edge = np.sign(target) * inp.alpha  # expected return per unit of the new exposure
        blocked = np.zeros(M, bool)
        if self.check_frictions and inp.limits.neutral is not None:
            # a neutral book trades as one package: dropping one leg would leave the rest
            # unhedged, so the package's new exposure must pay for its round trip as a whole
            gain = float(np.sum(np.where(opens, edge * opening, 0.0)))
            cost = float(np.sum(np.where(opens, 2.0 * inp.cost_per_weight * opening, 0.0)))
            if opens.any() and gain <= cost:
                blocked = opens
                target = w_prev.copy()
        elif self.check_frictions:
            blocked = opens & (edge <= 2.0 * inp.cost_per_weight)
            target = np.where(blocked, np.where(same_side, w_prev, 0.0), target)
        s = np.where(blocked, np.sign(target), s)
        dw = target - w_prev
        orders = [
            Order(int(i), "BUY" if dw[i] > 0 else "SELL", float(abs(dw[i])))
            for i in np.flatnonzero(np.abs(dw) > self.min_trade)
        ]
        return TradeDecision(s, target, orders, inp.z, status, blocked)
