r"""Rolling recalibration: batched fits over commodities × windows, on any devices.

``recalibrate(panels, window=W, step=s)`` fits Θ on every window of W dates ending at
W−1, W−1+s, … for every commodity, and returns Θ, standard errors, log-likelihood, convergence,
the filtered state and model forwards at each window end, and innovation diagnostics.

How the batch runs (jitted; one compiled program per window shape and chunk size):

* windows are cut with ``lax.dynamic_slice`` from ``[C, T, M]`` arrays; a commodity's dates
  without data are masked (ragged histories share one date index);
* **cold** mode (``warm_start=False``) fits every window in parallel from its own data-derived
  start: ``vmap`` of the jittable fit (L-BFGS MLE or structured EM) over a chunk of
  ``chunk_size`` windows. A vmapped ``while_loop`` runs every lane until the slowest converges,
  so each chunk first gets a small step budget (``budget``); the lanes that have not
  converged within it are gathered, padded to a power of two (a handful of compiled sizes) and
  refitted in a second vmapped pass with the full budget;
* **warm** mode walks each commodity's windows in order (``lax.scan``), starting window w from
  window w−1's optimum (few steps each), with ``vmap`` across commodities; the windows are cut
  into chunks of ``chunk_size`` window ends, the last optimum carried from chunk to chunk;
* **devices**: every chunk is split over a 1-D device mesh with ``jax.shard_map`` (lanes in
  cold mode, commodities in warm mode), so the same call uses every GPU of a machine and,
  after ``jax.distributed.initialize()``, every device of several machines. On each device
  the lanes run in vmapped groups of exactly ``vector_width`` (``lax.map`` over the groups),
  so a lane's floating-point path is the same whatever the device count and chunk size: the
  results equal a one-device run exactly;
* **starts and escapes**: cold mode (and ``explore``) can fit ``n_starts`` points per
  window as lanes of the same batch (:func:`ssjax.fit.optimum.start_design`) and keeps the best;
  in every mode a fit that ends at a degenerate point (κ, σ_X or σ_Y → 0, κ → ∞, |ρ| → 1) is
  refitted from it moved inside, and a warm start never starts from such a point;
* **refinement** (``refine``): a window's likelihood is often multi-modal (which tenors end
  up fitted exactly, s.d. → 0), and a fit stops at the optimum its path reaches. After the
  fits, each window is refitted from its neighbours' optima where those score higher on its
  data, or where they price other tenors exactly (another mode), in rounds until nothing
  improves; warm starts and these refits start from the other optimum moved off the boundary
  (:func:`escape_boundary`). Warm mode also fits seeds from data-derived starts on every
  ``explore``-th window and the last (default 16; ``explore=True``: every window), which the
  refinement spreads to their neighbours. How often each mode ends at the best known
  optimum: ``docs/rolling.md`` (``experiments/bench_optimum.py``);
* **resumable**: with ``out_dir`` each finished chunk is written to a Parquet file there
  (atomically: temporary file, then rename) beside a manifest naming the run; running the same
  call again skips the chunks already on disk, so a run killed mid-way and restarted ends with
  the same results as an uninterrupted one.

Modules, from the one-window fit up to the call:

* :mod:`~ssjax.rolling.kernels` — the one-window fit and its batched, sharded programs;
* :mod:`~ssjax.rolling.devices` — the device mesh;
* :mod:`~ssjax.rolling.batches` — lanes through the programs in padded groups, escapes;
* :mod:`~ssjax.rolling.modes` — cold and warm mode;
* :mod:`~ssjax.rolling.refine` — warm mode's seeds and the neighbours' refinement;
* :mod:`~ssjax.rolling.chunks` — resumable chunk files and progress;
* :mod:`~ssjax.rolling.result` — ``RollingResult``;
* :mod:`~ssjax.rolling.config` — ``RollingConfig``, the settings, checked once;
* :mod:`~ssjax.rolling.calibrate` — ``recalibrate``, which strings them together.

Depends on :mod:`ssjax.core`, :mod:`ssjax.data` and :mod:`ssjax.fit`.
"""

from __future__ import annotations

from ssjax.rolling.calibrate import recalibrate
from ssjax.rolling.config import EXPLORE_STRIDE, REFINE_MODES, RollingConfig
from ssjax.rolling.kernels import TRACE_COUNTS, WindowFit, escape_boundary
from ssjax.rolling.refine import REFINE_GATE
from ssjax.rolling.result import RollingResult

__all__ = [
    "recalibrate",
    "RollingConfig",
    "RollingResult",
    "WindowFit",
    "escape_boundary",
    "TRACE_COUNTS",
    "REFINE_MODES",
    "REFINE_GATE",
    "EXPLORE_STRIDE",
]
