"""``RollingConfig``: the settings of a rolling recalibration, validated once; and the run
context (data, devices, folder) that the modes and the refinement share.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ssjax.checks import is_int, replace_settings
from ssjax.core.market import MarketData, padded_length
from ssjax.core.parallel_filter import choose_method
from ssjax.core.params import Params
from ssjax.data.panels import StackedPanels
from ssjax.fit.mle import check_fit_options
from ssjax.rolling.chunks import _ChunkStore, _digest
from ssjax.rolling.devices import _layout

__all__ = ["RollingConfig", "REFINE_MODES", "EXPLORE_STRIDE"]

REFINE_MODES = ("neighbours", "past", "none")
#: warm mode's default ``explore`` (with a refinement): seeds on every 16th window and the last
EXPLORE_STRIDE = 16


@dataclass(frozen=True)
class RollingConfig:
    """Settings of :func:`ssjax.rolling.recalibrate`, checked when the object is made.

    ``recalibrate(panels, window=52, warm_start=True)`` builds one from its keywords;
    ``recalibrate(panels, RollingConfig(window=52), warm_start=True)`` starts from a given
    one and replaces the keywords passed. Settings that depend on the data (``window`` against
    the number of dates) are checked by ``recalibrate``.

    Attributes:
        window: dates per window; step: dates between window ends.
        method: ``"MLE"`` (L-BFGS on the exact log-likelihood) or ``"EM"`` (structured
            EM, ECME; see :func:`ssjax.fit.em.fit_em`).
        warm_start: walk each commodity's windows in order from the previous optimum
            (``lax.scan``); otherwise all windows in parallel from data-derived starts.
        chunk_size: windows per vmapped chunk (cold mode) or window ends per chunk (warm
            mode); also the unit of the files in ``out_dir``. Rounded up to a multiple of
            the number of devices in cold mode.
        budget: first-pass step budget of cold mode; windows not converged within it are
            refitted from their start with ``max_steps`` (so every window follows the same
            path as a standalone :class:`ssjax.KalmanEngine` fit). In warm mode (MLE) the
            step budget of a window that starts from an earlier optimum: one that does not
            stop within it hands its end point to the next window and is refitted after
            its chunk, with ``max_steps``, from that end point and from its data-derived
            start, in a compacted batch (so a lane on a ridge of the likelihood does not
            hold its vmapped group for ``max_steps`` steps in every window).
        max_steps: the full step budget (default 1000 L-BFGS steps, 500 EM iterations).
        vector_width: lanes vmapped together on a device (cold mode: windows; warm mode:
            commodities, at most C). Each group of lanes runs until its slowest lane stops,
            and every lane's floating-point path depends only on this width, so results do
            not change with ``chunk_size`` or the number of devices. Larger widths use a
            GPU better; on a CPU 8-32 is about as fast as any.
        dtype: ``jnp.float64`` (default) or ``jnp.float32`` for throughput.
        gradient, filter_method: the MLE's gradient (``"autodiff"`` or ``"fisher"``) and
            filter (``"sequential"``, ``"parallel"`` or ``"auto"``); see
            :func:`ssjax.fit.mle.fit_mle`. Ignored by ``method="EM"``. The default ``"auto"`` is
            the sequential scan on a CPU and the parallel-in-time filter on a GPU/TPU (from
            ``PARALLEL_MIN_DATES`` = 64 dates; why: ``docs/design.md``). It is resolved
            before the run, so a
            resumed run on another backend refuses the other filter's chunks.
        standard_errors: compute each window's standard errors from the exact Hessian
            (default). ``False`` skips them (``std_err`` is NaN).
        warm_floor: every fit that starts from another optimum (window w−1's in warm mode,
            the refinement's starts) starts from it moved off the boundary: noise s.d.s and
            σ_X raised to at least ``warm_floor`` × the window's data-derived start where the
            window's log-likelihood grows with them there, |ρ| at most ``1 − warm_floor / 10``
            (:func:`escape_boundary`). Without it a tenor fitted exactly in window w−1
            (s.d. → 0, where the likelihood is flat in log s.d.) stays pinned in window w.
            ``0`` starts from the optimum as it is.
        refine: after the fits, look for better optima among the neighbouring windows'
            (the likelihood of a window is often multi-modal: which tenors end up fitted
            exactly). ``"neighbours"`` (default): each window's log-likelihood is evaluated
            at the optima of windows w−1 and w+1; where one is higher by more than 1e-3,
            or where it has another pattern of noise s.d.s at zero (another mode; once per
            window and pattern), the window is refitted from it (moved off the boundary) and
            the refit is kept if it ends higher; rounds repeat until no window improves (a
            better optimum travels one window per round; after the first, only the pairs with
            a window changed in the round before are scored again). First, every fit that
            started from its data-derived start (all of them in cold mode; in warm mode each
            commodity's first and, with ``explore``, the seeds kept) is restarted once from
            its own end point with every boundary s.d. raised (such a fit can stop on the
            flat boundary short of the optimum). A warm fit that keeps the previous window's
            exactly-priced tenor where this window prices another one exactly is found by the
            seeds and the neighbours' modes. ``"past"``: only
            window w−1's optimum is tried, so which optimum a window reports never depends
            on later data (the estimate is the window's MLE either way; use it for strictly
            causal backtests). ``"none"``: the fits as they end. Refined windows are flagged
            in ``refined``.
        max_refine_rounds: cap on the refinement rounds (``info["refine_rounds"]``).
        probe_steps: L-BFGS steps of each of ``explore``'s probes (default 40; EM probes run
            ``budget`` iterations). 40 instead of the former ``budget`` (100): the default
            warm path found the same optima in every window of
            ``experiments/bench_optimum.py``'s four series, of the 1,001-window WTI batch and
            of the C = 16 batch of ``bench_scale.py``, and the seeds' time on the latter fell
            from 17.0 to 6.2 s; ``explore=True`` misses one natural-gas window (0.87 nats)
            that it reached with 100 (``docs/design.md``).
        explore: warm mode only: also probe seed windows from their data-derived starts
            (``n_starts`` each, ``probe_steps`` L-BFGS steps); where a
            probe ends above the warm fit, the window is refitted from the probe's end point
            with the full budget and the refit kept if it stops higher, before the
            refinement, which then spreads it to the neighbours. A probe only shows that a
            better mode exists, so it is not run to convergence.
            An integer k seeds every k-th window and the last; ``True`` every window;
            ``False``/``0`` none. Default (``None``): 16 with a
            refinement, none with ``refine="none"`` (nothing would spread the seeds). A
            warm path follows one optimum from window to window and cannot find another that
            is better over a stretch of windows but reached from neither end; the seeds find
            it. (The measurements behind these defaults: ``docs/design.md``.)
        n_starts, seed: starting points per window of every fit from data-derived starts
            (cold mode, and ``explore``'s seeds; default 4): the window's data-derived start
            and ``n_starts − 1`` points spread around it (:func:`ssjax.fit.optimum.start_design`,
            shuffled by ``seed``), all fitted as lanes of the same vmapped batch; the best
            is kept. ``n_starts=1`` is one fit per window from its data-derived start (the
            path of a standalone ``KalmanEngine(n_starts=1)`` fit).
            Whatever the mode, a fit that ends at a degenerate point (κ, σ_X or σ_Y
            → 0, |ρ| → 1) is refitted from it moved inside (ρ at −0.5, 0 and 0.5) and the
            better result kept (``info["escaped"]``); in warm mode, of a commodity's run of
            consecutive degenerate windows every 8th and the last first, the others only if
            one of those escaped (``info["escapes_not_tried"]``).
    """

    window: int = 104
    step: int = 1
    method: str = "MLE"
    warm_start: bool = False
    chunk_size: int = 128
    budget: int = 100
    max_steps: int | None = None
    vector_width: int = 16
    dtype: Any = "float64"
    gradient: str = "autodiff"
    filter_method: str = "auto"
    standard_errors: bool = True
    warm_floor: float = 0.01
    refine: str = "neighbours"
    explore: bool | int | None = None
    max_refine_rounds: int = 100
    n_starts: int = 4
    seed: int = 0
    probe_steps: int = 40

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> ValueError:
            return ValueError(f"RollingConfig.{name} must be {want}, got {getattr(self, name)!r}")

        ints = ("window", "step", "chunk_size", "budget", "vector_width", "n_starts", "probe_steps")
        for name in ints:
            v = getattr(self, name)
            if not is_int(v):
                raise bad(name, "an integer")
        if self.window < 3:
            raise bad("window", ">= 3")
        for name in ints[1:]:
            if getattr(self, name) < 1:
                raise bad(name, ">= 1")
        if not isinstance(self.method, str) or self.method.upper() not in ("MLE", "EM"):
            raise bad("method", "'MLE' or 'EM'")
        if self.max_steps is not None and (
            isinstance(self.max_steps, bool)
            or not isinstance(self.max_steps, int | np.integer)
            or self.max_steps < 1
        ):
            raise bad("max_steps", "None or an integer >= 1")
        try:
            dt = jnp.dtype(self.dtype)
        except TypeError:
            raise bad("dtype", "float64 or float32") from None
        if dt not in (jnp.dtype(jnp.float64), jnp.dtype(jnp.float32)):
            raise bad("dtype", "float64 or float32")
        check_fit_options(self.gradient, self.filter_method)
        if not isinstance(self.warm_floor, int | float) or not (
            np.isfinite(self.warm_floor) and 0.0 <= self.warm_floor <= 1.0
        ):
            raise bad("warm_floor", "a number in [0, 1]")
        if self.refine not in REFINE_MODES:
            raise bad("refine", f"one of {REFINE_MODES}")
        e = self.explore
        if not (
            e is None
            or isinstance(e, bool | np.bool_)
            or (isinstance(e, int | np.integer) and e >= 0)
        ):
            raise bad("explore", "a bool or a window stride >= 0 (or None)")
        if (
            isinstance(self.max_refine_rounds, bool)
            or not isinstance(self.max_refine_rounds, int | np.integer)
            or self.max_refine_rounds < 0
        ):
            raise bad("max_refine_rounds", "an integer >= 0")
        if not is_int(self.seed):
            raise bad("seed", "an integer")

    def replace(self, **changes: Any) -> RollingConfig:
        """A copy with ``changes`` (checked like a new one); unknown names are refused."""
        return replace_settings(self, changes, "recalibrate")

    @property
    def mode(self) -> str:
        """``"warm"`` or ``"cold"``."""
        return "warm" if self.warm_start else "cold"

    @property
    def fit_method(self) -> str:
        """``"MLE"`` or ``"EM"``."""
        return self.method.upper()

    @property
    def steps(self) -> int:
        """The full step budget (``max_steps``, default 1000 L-BFGS steps, 500 EM iterations)."""
        if self.max_steps is not None:
            return int(self.max_steps)
        return 1000 if self.fit_method == "MLE" else 500

    @property
    def stride(self) -> int:
        """Warm mode's seed stride (0: no seeds); 0 in cold mode."""
        if not self.warm_start:
            return 0
        e = self.explore
        if e is None:
            return EXPLORE_STRIDE if self.refine != "none" else 0
        if isinstance(e, bool | np.bool_):
            return 1 if e else 0
        return int(e)

    @property
    def jnp_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    def resolved_filter(self) -> str:
        """The filter the fits run: ``"auto"`` resolved for this backend and window (it
        names the run's chunks in ``out_dir``, so a resumed run on another backend refuses the
        other filter's chunks)."""
        if self.filter_method != "auto":
            return self.filter_method
        padded = padded_length(self.window)
        return "sequential" if self.gradient == "fisher" else choose_method(padded)


@dataclass(frozen=True)
class _Run:
    """One call of ``recalibrate``: its settings and everything the stages share."""

    config: RollingConfig
    filter_method: str  # resolved
    stack: MarketData  # [C, T, M] on the host
    stack_dev: MarketData  # the same, replicated on the mesh
    template: Params
    ends: np.ndarray  # [W] window-end indices
    valid: np.ndarray  # [C, W]
    panels: StackedPanels  # the stacked panels the run was laid out from
    mesh: Mesh
    out_dir: str | os.PathLike | None
    progress: bool | None

    @property
    def commodities(self) -> list[str]:
        return list(self.panels.commodities)

    @property
    def n_dev(self) -> int:
        return int(self.mesh.devices.size)

    @property
    def dtype(self) -> Any:
        return self.stack.log_f.dtype

    @property
    def width(self) -> int:
        return self.config.vector_width

    @property
    def step_budget(self) -> int:
        """The budget of a budgeted fit (first passes, escapes, probes): ``budget`` steps, at
        most ``max_steps``."""
        return min(int(self.config.budget), self.config.steps)

    @property
    def probe_budget(self) -> int:
        """Steps of a seed probe: ``probe_steps``, at most ``max_steps`` (EM probes run the
        budgeted program's ``budget`` iterations)."""
        return min(int(self.config.probe_steps), self.config.steps)

    @property
    def warm_budget(self) -> int | None:
        """Warm mode's step budget for a window that starts from an earlier optimum
        (``budget``; ``None`` for EM fits, which run ``max_steps`` iterations)."""
        c = self.config
        return int(c.budget) if c.fit_method == "MLE" and c.budget < c.steps else None

    @property
    def unit(self) -> int:
        """Lanes per call are a multiple of this: whole groups on every device."""
        return self.width * self.n_dev

    @property
    def cap(self) -> int:
        """Lanes per call of the refits: ``chunk_size`` rounded up to whole groups."""
        return -(-self.config.chunk_size // self.unit) * self.unit

    def manifest(self) -> dict[str, Any]:
        """What names the run in ``out_dir`` (with the data's hash)."""
        c = self.config
        cold_budget = c.mode == "cold" or bool(c.stride) or self.warm_budget is not None
        return dict(
            window=c.window, ends=self.ends.tolist(), method=c.fit_method, mode=c.mode,
            chunk_size=c.chunk_size, budget=c.budget if cold_budget else None,
            max_steps=c.steps, dtype=str(c.jnp_dtype), vector_width=c.vector_width,
            commodities=self.commodities, gradient=c.gradient,
            filter_method=self.filter_method, standard_errors=bool(c.standard_errors),
            warm_floor=float(c.warm_floor), refine=c.refine,
            max_refine_rounds=int(c.max_refine_rounds), explore=c.stride,
            n_starts=int(c.n_starts), seed=int(c.seed),
            probe_steps=self.probe_budget if c.stride else None,
        )  # fmt: skip

    def store(self, n_chunks: int) -> _ChunkStore | None:
        """The run's chunk folder (``None`` without ``out_dir``)."""
        if self.out_dir is None:
            return None
        m = self.manifest()
        return _ChunkStore(self.out_dir, _digest(self.stack, m), m, n_chunks, _layout(self.mesh))

    def fit_kw(self, width: int) -> dict[str, Any]:
        """The static settings of a window-fit program."""
        c = self.config
        return dict(
            window=c.window, method=c.fit_method, width=width, gradient=c.gradient,
            filter_method=self.filter_method, floor=c.warm_floor,
        )  # fmt: skip
