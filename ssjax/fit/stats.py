r"""Statistics for model comparison: HAC variance, Diebold–Mariano, LR tests, AIC/BIC.

Pure NumPy/SciPy (no JAX), for comparing fitted models — e.g. GBM vs. the one-factor vs. the
two-factor Schwartz–Smith model — in and out of sample:

* :func:`newey_west_variance` — the Bartlett-kernel (Newey–West) long-run variance of a
  series, the building block of the tests below;
* :func:`diebold_mariano` — the Diebold–Mariano (1995) test of equal predictive accuracy of
  two forecasts, with the Harvey–Leybourne–Newbold (1997) small-sample correction;
* :func:`likelihood_ratio_test` — the LR test of nested models, including the 50:50
  χ² mixture for a parameter on the boundary of its space (Self & Liang 1987);
* :func:`information_criteria` — AIC, AICc and BIC.

References:
    Diebold, F. X. and Mariano, R. S. (1995). Comparing predictive accuracy. *Journal of
    Business & Economic Statistics* 13(3), 253–263.
    Harvey, D., Leybourne, S. and Newbold, P. (1997). Testing the equality of prediction mean
    squared errors. *International Journal of Forecasting* 13(2), 281–291.
    Newey, W. K. and West, K. D. (1987). A simple, positive semi-definite, heteroskedasticity
    and autocorrelation consistent covariance matrix. *Econometrica* 55(3), 703–708.
    Newey, W. K. and West, K. D. (1994). Automatic lag selection in covariance matrix
    estimation. *Review of Economic Studies* 61(4), 631–653.
    Self, S. G. and Liang, K.-Y. (1987). Asymptotic properties of maximum likelihood
    estimators and likelihood ratio tests under nonstandard conditions. *Journal of the
    American Statistical Association* 82(398), 605–610.
    Akaike, H. (1974). A new look at the statistical model identification. *IEEE Transactions
    on Automatic Control* 19(6), 716–723.
    Schwarz, G. (1978). Estimating the dimension of a model. *Annals of Statistics* 6(2),
    461–464.
    Hurvich, C. M. and Tsai, C.-L. (1989). Regression and time series model selection in small
    samples. *Biometrika* 76(2), 297–307.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from ssjax._lazy import scipy_stats as stats

__all__ = [
    "DieboldMarianoResult",
    "LikelihoodRatioResult",
    "InformationCriteria",
    "newey_west_lags",
    "newey_west_variance",
    "diebold_mariano",
    "likelihood_ratio_test",
    "information_criteria",
]

LossName = Literal["squared", "absolute"]
Kernel = Literal["bartlett", "uniform"]


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def _as_int(value: object, name: str, minimum: int) -> int:
    """``value`` as a Python int ≥ ``minimum`` (bools and non-integral floats rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    out = int(value)
    if out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {out}")
    return out


def _as_1d(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` as a 1-D float array, with a ValueError naming ``name`` otherwise."""
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {arr.shape}")
    return arr


def _kernel_weights(lags: int, kernel: Kernel) -> np.ndarray:
    """Weights w_0..w_L: Bartlett 1 − j/(L+1), or uniform (all 1)."""
    j = np.arange(lags + 1, dtype=float)
    if kernel == "bartlett":
        return 1.0 - j / (lags + 1.0)
    if kernel == "uniform":
        return np.ones_like(j)
    raise ValueError(f"kernel must be 'bartlett' or 'uniform', got {kernel!r}")


def _long_run_variance(x: np.ndarray, lags: int, kernel: Kernel) -> float:
    """γ̂_0 + 2 Σ_{j=1}^{L} w_j γ̂_j, γ̂_j = (1/n) Σ_{t=j}^{n−1} u_t u_{t−j}, u = x − x̄."""
    n = x.size
    u = x - x.mean()
    w = _kernel_weights(lags, kernel)
    gamma = np.array([u[j:] @ u[: n - j] for j in range(lags + 1)]) / n
    return float(gamma[0] + 2.0 * np.sum(w[1:] * gamma[1:]))


def newey_west_lags(n: int) -> int:
    r"""The Newey–West (1994) rule-of-thumb bandwidth for the Bartlett kernel.

    .. math:: L = \lfloor 4\,(n/100)^{2/9} \rfloor,

    capped at n − 1 (no autocovariance exists beyond it). This is the non-adaptive rule
    for the Bartlett kernel from Newey and West (1994), L ∝ n^{2/9} being the
    MSE-optimal growth rate for that kernel; it is also what ``statsmodels`` uses
    (``S_hac_simple``, ``cov_hac`` with ``nlags=None``). E.g. n = 100 → 4, n = 250 → 4,
    n = 500 → 5, n = 1000 → 6.
    """
    n = _as_int(n, "n", 1)
    return min(int(math.floor(4.0 * (n / 100.0) ** (2.0 / 9.0))), n - 1)


# --------------------------------------------------------------------------------------
# Newey–West
# --------------------------------------------------------------------------------------
def newey_west_variance(x: ArrayLike, lags: int | None = None) -> float:
    r"""HAC (Newey–West, Bartlett-kernel) long-run variance of a 1-D series about its mean.

    .. math::

        \hat\sigma^2_{LR} = \hat\gamma_0 + 2 \sum_{j=1}^{L} \Bigl(1 - \frac{j}{L+1}\Bigr)
        \hat\gamma_j, \qquad
        \hat\gamma_j = \frac{1}{n} \sum_{t=j+1}^{n} (x_t - \bar x)(x_{t-j} - \bar x),

    an estimate of the spectral density at frequency zero times 2π, i.e. of
    lim n·Var(x̄); Var(x̄) ≈ σ̂²_LR / n. The autocovariances are divided by n (not n − j),
    which with the Bartlett weights makes the estimate non-negative (Newey & West 1987).

    Args:
        x: 1-D series of n ≥ 1 finite values (NaN is an error: drop or impute first).
        lags: bandwidth L ≥ 0 (L = 0 gives the plain variance γ̂_0 with divisor n). Default
            ``None``: the Newey–West (1994) rule L = ⌊4 (n/100)^{2/9}⌋ (see
            :func:`newey_west_lags`) — a fixed, data-independent choice that grows at the
            MSE-optimal rate n^{2/9} for the Bartlett kernel and matches ``statsmodels``.
            Must be < n.

    Returns:
        The long-run variance σ̂²_LR (a float).
    """
    arr = _as_1d(x, "x")
    n = arr.size
    if n == 0:
        raise ValueError("x is empty: need at least one observation")
    if np.isnan(arr).any():
        raise ValueError(
            f"x contains {int(np.isnan(arr).sum())} NaN value(s); drop or impute them before "
            "computing the Newey-West variance"
        )
    if not np.isfinite(arr).all():
        raise ValueError("x contains infinite values")
    if lags is None:
        lags = newey_west_lags(n)
    else:
        lags = _as_int(lags, "lags", 0)
        if lags >= n:
            raise ValueError(f"lags must be < the number of observations ({n}), got {lags}")
    return _long_run_variance(arr, lags, "bartlett")


# --------------------------------------------------------------------------------------
# Diebold–Mariano
# --------------------------------------------------------------------------------------
class DieboldMarianoResult(NamedTuple):
    """Diebold–Mariano test of equal predictive accuracy (d_t = L(e1_t) − L(e2_t))."""

    statistic: float  # DM (× the HLN factor when harvey=True)
    pvalue: float  # two-sided: H1 the expected losses differ
    mean_loss_diff: float  # d̄ = mean L(e1) − mean L(e2); negative ⇒ model 1 did better
    n: int  # dates used (both errors non-NaN)
    lags: int  # lags of the long-run variance actually used
    method: str  # test, reference distribution, kernel, lags (and any fallback)
    pvalue_model1_better: float  # one-sided: H1 E[d] < 0 (model 1 has the smaller loss)
    pvalue_model2_better: float  # one-sided: H1 E[d] > 0 (model 2 has the smaller loss)


def _loss_values(e: np.ndarray, loss: LossName | Callable[[np.ndarray], ArrayLike], name: str):
    if callable(loss):
        out = np.asarray(loss(e), dtype=float)
        if out.shape != e.shape:
            raise ValueError(
                f"loss must map the errors elementwise: loss({name}) has shape {out.shape}, "
                f"expected {e.shape}"
            )
        return out
    if loss == "squared":
        return e * e
    if loss == "absolute":
        return np.abs(e)
    raise ValueError(f"loss must be 'squared', 'absolute' or a callable, got {loss!r}")


def diebold_mariano(
    e1: ArrayLike,
    e2: ArrayLike,
    h: int = 1,
    loss: LossName | Callable[[np.ndarray], ArrayLike] = "squared",
    lags: int | None = None,
    harvey: bool = True,
    *,
    kernel: Kernel = "bartlett",
) -> DieboldMarianoResult:
    r"""Diebold–Mariano (1995) test of equal predictive accuracy of two forecasts.

    With forecast errors e1_t (model 1) and e2_t (model 2) of the same target at horizon h,
    the loss differential is d_t = L(e1_t) − L(e2_t) and H0: E[d_t] = 0. The statistic is

    .. math::

        DM = \frac{\bar d}{\sqrt{\hat\sigma^2_{LR} / n}}, \qquad
        \hat\sigma^2_{LR} = \hat\gamma_0 + 2 \sum_{j=1}^{L} w_j \hat\gamma_j,

    with γ̂_j the autocovariances of d (divisor n) and Bartlett weights w_j = 1 − j/(L+1)
    (Newey–West; ``kernel="uniform"`` gives w_j = 1, the estimator of the original DM and
    HLN papers). By default L = h − 1: optimal h-step errors are at most MA(h − 1), so d has
    no autocorrelation beyond lag h − 1 (the DM convention). If d is autocorrelated for
    other reasons (e.g. misspecified models, overlapping samples), pass ``lags`` — e.g.
    :func:`newey_west_lags` ``(n)``.

    If σ̂²_LR ≤ 0 (possible with the uniform kernel), the variance is recomputed with the
    Bartlett kernel and L' = max(L + 1, ⌊4(n/100)^{2/9}⌋) lags (capped at n − 1), which
    cannot be negative; ``method`` says so and ``lags`` reports L'. If it is still zero (d
    constant, e.g. identical forecasts) a ValueError is raised.

    With ``harvey=True`` (default) the Harvey–Leybourne–Newbold (1997) small-sample
    correction is applied and p-values come from Student-t(n − 1):

    .. math:: DM^* = DM \sqrt{\frac{n + 1 - 2h + h(h-1)/n}{n}};

    the factor equals (n − h)(n − h + 1)/n² under the root and needs n > h. With
    ``harvey=False``, DM is compared with N(0, 1).

    Args:
        e1, e2: 1-D forecast errors (actual − forecast, or the reverse: only the loss matters)
            of models 1 and 2 on the same dates. NaN in either drops that date (pairwise);
            ``n`` reports the dates used.
        h: forecast horizon in periods (≥ 1).
        loss: ``"squared"`` (e²), ``"absolute"`` (|e|) or a callable applied elementwise to
            each error array.
        lags: bandwidth L of the long-run variance; default h − 1. Must be < n.
        harvey: apply the HLN correction and use t(n − 1) (default) instead of N(0, 1).
        kernel: ``"bartlett"`` (Newey–West, default) or ``"uniform"`` (truncated, as in DM
            1995 / HLN 1997; can give a non-positive variance, see the fallback above).

    Returns:
        :class:`DieboldMarianoResult`. ``pvalue`` is two-sided; ``pvalue_model1_better``
        tests H1: E[d] < 0 (model 1 more accurate), ``pvalue_model2_better`` H1: E[d] > 0.
    """
    a = _as_1d(e1, "e1")
    b = _as_1d(e2, "e2")
    if a.shape != b.shape:
        raise ValueError(
            f"e1 and e2 must have the same shape (one error per date), got {a.shape} and {b.shape}"
        )
    h = _as_int(h, "h", 1)
    if kernel not in ("bartlett", "uniform"):
        raise ValueError(f"kernel must be 'bartlett' or 'uniform', got {kernel!r}")
    if not callable(loss) and loss not in ("squared", "absolute"):
        raise ValueError(f"loss must be 'squared', 'absolute' or a callable, got {loss!r}")

    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n < 2:
        raise ValueError(
            f"need at least 2 dates where both e1 and e2 are non-NaN, got {n} (of {keep.size})"
        )
    d = _loss_values(a, loss, "e1") - _loss_values(b, loss, "e2")
    if not np.isfinite(d).all():
        raise ValueError(
            "the loss differential has non-finite values: e1/e2 contain inf, or the loss "
            "returned NaN/inf for finite errors"
        )

    lags_used = h - 1 if lags is None else _as_int(lags, "lags", 0)
    if lags_used >= n:
        raise ValueError(
            f"lags must be < the number of usable dates n = {n}, got {lags_used}"
            + (" (default lags = h - 1)" if lags is None else "")
        )
    kernel_name = {"bartlett": "Bartlett (Newey-West)", "uniform": "uniform"}[kernel]
    var = _long_run_variance(d, lags_used, kernel)
    note = ""
    if not var > 0.0:
        fallback = min(max(lags_used + 1, newey_west_lags(n)), n - 1)
        note = (
            f"; {kernel} variance with {lags_used} lags was non-positive ({var:.3g}), fell "
            f"back to the Bartlett kernel with {fallback} lags"
        )
        lags_used, kernel_name = fallback, "Bartlett (Newey-West)"
        var = _long_run_variance(d, lags_used, "bartlett")
        if not var > 0.0:
            raise ValueError(
                "the loss differential d = L(e1) - L(e2) has zero variance (constant, e.g. "
                "identical forecasts): the Diebold-Mariano statistic is undefined"
            )

    d_bar = float(d.mean())
    stat = d_bar / math.sqrt(var / n)
    if harvey:
        k = (n + 1 - 2 * h + h * (h - 1) / n) / n
        if not k > 0.0:
            raise ValueError(
                f"Harvey-Leybourne-Newbold correction undefined: n + 1 - 2h + h(h-1)/n = "
                f"(n-h)(n-h+1)/n = 0 for n = {n}, h = {h} (need n > h usable dates)"
            )
        stat *= math.sqrt(k)
        dist = stats.t(df=n - 1)
        dist_name = f"HLN-corrected, Student-t({n - 1})"
    else:
        dist = stats.norm()
        dist_name = "N(0, 1)"
    p_lower = float(dist.cdf(stat))  # P(T ≤ stat): small when d̄ ≪ 0 (model 1 better)
    p_upper = float(dist.sf(stat))
    p_two = min(1.0, 2.0 * min(p_lower, p_upper))
    method = (
        f"Diebold-Mariano, h={h}, {dist_name}, {kernel_name} kernel with {lags_used} lags" + note
    )
    return DieboldMarianoResult(
        statistic=float(stat),
        pvalue=p_two,
        mean_loss_diff=d_bar,
        n=n,
        lags=lags_used,
        method=method,
        pvalue_model1_better=p_lower,
        pvalue_model2_better=p_upper,
    )


# --------------------------------------------------------------------------------------
# Likelihood-ratio test
# --------------------------------------------------------------------------------------
class LikelihoodRatioResult(NamedTuple):
    """Likelihood-ratio test of a restricted (nested) model against the full one."""

    statistic: float  # LR = 2 (ℓ_full − ℓ_restricted), ≥ 0
    pvalue: float
    df: int  # number of restrictions
    boundary: bool  # True: 50:50 mixture of χ²(df − 1) and χ²(df)
    method: str


def likelihood_ratio_test(
    loglik_restricted: float,
    loglik_full: float,
    df: int,
    boundary: bool = False,
    *,
    tol: float = 1e-6,
) -> LikelihoodRatioResult:
    r"""Likelihood-ratio test of a nested (restricted) model against the full model.

    .. math:: LR = 2\,(\ell_{full} - \ell_{restricted}) \;\sim\; \chi^2(df) \text{ under } H_0,

    df = the number of restrictions (free parameters of the full model minus those of the
    restricted one); p = P(χ²(df) ≥ LR).

    **Boundary** (``boundary=True``): when H0 puts one parameter on the boundary of its
    space — e.g. a variance σ² = 0, or a mean-reversion / loading switched off at a bound —
    the χ²(df) limit is wrong (the estimate is at the boundary about half the time, giving
    LR = 0). For one boundary parameter and df − 1 further interior restrictions, Self &
    Liang (1987) give the 50:50 mixture

    .. math:: p = \tfrac12 P(\chi^2(df-1) \ge LR) + \tfrac12 P(\chi^2(df) \ge LR),

    with χ²(0) the point mass at 0 (so for df = 1 the p-value is half the χ²(1) one for LR >
    0, and 1 at LR = 0). Using χ²(df) instead is conservative. With several parameters on the
    boundary the weights are different (a chi-bar-squared mixture) and this is not exact.

    Args:
        loglik_restricted: maximized log-likelihood ℓ_restricted of the restricted model.
        loglik_full: maximized log-likelihood ℓ_full of the full model (same data).
        df: number of restrictions, ≥ 1.
        boundary: use the Self–Liang 50:50 mixture (see above).
        tol: relative tolerance: ℓ_full may fall short of ℓ_restricted by up to
            tol · max(1, |ℓ_full|, |ℓ_restricted|) (optimizer noise; LR is then set to 0).
            A larger shortfall means the full fit did not reach its maximum (it can always
            do at least as well as the nested model) and raises a ValueError.

    Returns:
        :class:`LikelihoodRatioResult`.
    """
    lr_r = float(loglik_restricted)
    lr_f = float(loglik_full)
    if not (math.isfinite(lr_r) and math.isfinite(lr_f)):
        raise ValueError(
            f"log-likelihoods must be finite, got loglik_restricted={lr_r}, loglik_full={lr_f}"
        )
    df = _as_int(df, "df", 1)
    if not (tol >= 0.0):
        raise ValueError(f"tol must be >= 0, got {tol}")
    slack = tol * max(1.0, abs(lr_f), abs(lr_r))
    if lr_f < lr_r - slack:
        raise ValueError(
            f"loglik_full ({lr_f:.6g}) < loglik_restricted ({lr_r:.6g}) by {lr_r - lr_f:.3g}: "
            "the full model nests the restricted one, so its maximized log-likelihood cannot "
            "be lower — the full fit did not converge to its maximum (refit it, e.g. starting "
            "from the restricted estimate), or the models are not nested / not on the same data"
        )
    stat = max(0.0, 2.0 * (lr_f - lr_r))
    if boundary:
        p_low = (1.0 if stat <= 0.0 else 0.0) if df == 1 else float(stats.chi2.sf(stat, df - 1))
        pvalue = 0.5 * p_low + 0.5 * float(stats.chi2.sf(stat, df))
        method = (
            f"likelihood ratio, boundary: 0.5 chi2({df - 1}) + 0.5 chi2({df}) (Self & Liang 1987)"
        )
    else:
        pvalue = float(stats.chi2.sf(stat, df))
        method = f"likelihood ratio, chi2({df})"
    return LikelihoodRatioResult(
        statistic=stat, pvalue=min(1.0, pvalue), df=df, boundary=bool(boundary), method=method
    )


# --------------------------------------------------------------------------------------
# Information criteria
# --------------------------------------------------------------------------------------
class InformationCriteria(NamedTuple):
    """Information criteria (smaller is better)."""

    aic: float  # 2k − 2ℓ
    bic: float  # k ln n − 2ℓ
    aicc: float  # AIC + 2k(k+1)/(n − k − 1); inf if n ≤ k + 1


def information_criteria(loglik: float, n_params: int, n_obs: int) -> InformationCriteria:
    r"""AIC (Akaike 1974), BIC (Schwarz 1978) and AICc (Hurvich & Tsai 1989).

    .. math::

        AIC = 2k - 2\ell, \qquad BIC = k \ln n - 2\ell, \qquad
        AICc = AIC + \frac{2k(k+1)}{n - k - 1},

    with ℓ the maximized log-likelihood, k = ``n_params`` the number of estimated parameters
    and n = ``n_obs`` the number of observations. AICc is returned as +inf when n ≤ k + 1
    (undefined; such a model should not be selected).

    For a Kalman-filter likelihood of a futures panel, n is a convention: the number of
    dates, or the number of scalar prices observed. BIC's ranking of models depends on it,
    so use the same convention for every model compared (AIC does not depend on n).
    """
    ll = float(loglik)
    if not math.isfinite(ll):
        raise ValueError(f"loglik must be finite, got {ll}")
    k = _as_int(n_params, "n_params", 0)
    n = _as_int(n_obs, "n_obs", 1)
    aic = 2.0 * k - 2.0 * ll
    bic = k * math.log(n) - 2.0 * ll
    aicc = aic + 2.0 * k * (k + 1) / (n - k - 1) if n - k - 1 > 0 else math.inf
    return InformationCriteria(aic=aic, bic=bic, aicc=aicc)
