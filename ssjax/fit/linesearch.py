r"""A zoom (strong-Wolfe) line search that evaluates the objective once per iteration.

This is optax's ``scale_by_zoom_linesearch`` (optax 0.2, Apache-2.0; the algorithm of
Nocedal & Wright, *Numerical Optimization*, Algorithms 3.5-3.6, with the approximate-Wolfe
decrease test of Hager & Zhang) with one change of structure. Each of optax's line-search
iterations is ``lax.cond(interval_found, zoom_into_interval, search_interval)``, and both
branches evaluate the objective at their trial step. Under ``vmap`` with lanes that differ,
a ``cond`` on a batched predicate becomes a ``select`` that runs both branches, so every
iteration of every lane paid **two** value-and-gradient evaluations (one of them thrown
away): a vmapped fit cost about twice its evaluations. Here an iteration

1. computes both branches' trial step sizes (scalar arithmetic) and picks one,
2. evaluates the value and gradient once, at the picked step,
3. updates the bracket with both branches' rules and keeps the picked branch's result.

The decisions are optax's, so a single (un-vmapped) fit takes the same steps; the tests
compare the two line searches on the same problems.

Flat-vector parameters only (what :func:`ssjax.fit.mle.fit_mle` optimizes). The state stores the
value and gradient at the accepted point under the names optax's L-BFGS looks up
(``optax.tree.get(state, "value")``), so it plugs into ``optax.lbfgs(linesearch=...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array, lax

__all__ = ["scale_by_zoom_linesearch", "ZoomState"]


class ZoomState(NamedTuple):
    """Inner state of one line search (all scalars but the gradients)."""

    count: Array
    stepsize: Array
    value: Array
    grad: Array
    slope: Array
    decrease_error: Array
    curvature_error: Array
    interval_found: Array
    done: Array
    failed: Array
    low: Array
    value_low: Array
    slope_low: Array
    high: Array
    value_high: Array
    slope_high: Array
    cubic_ref: Array
    value_cubic_ref: Array
    safe_stepsize: Array
    safe_value: Array
    safe_grad: Array


def _cubicmin(a, fa, fpa, b, fb, c, fc):
    """Critical point of the cubic through (a, fa), (b, fb), (c, fc) with slope fpa at a."""
    C = fpa
    db = b - a
    dc = c - a
    denom = (db * dc) ** 2 * (db - dc)
    r1 = fb - fa - C * db
    r2 = fc - fa - C * dc
    A = (dc**2 * r1 - db**2 * r2) / denom
    B = (-(dc**3) * r1 + db**3 * r2) / denom
    radical = B * B - 3.0 * A * C
    return a + (-B + jnp.sqrt(radical)) / (3.0 * A)


def _quadmin(a, fa, fpa, b, fb):
    """Critical point of the quadratic through (a, fa), (b, fb) with slope fpa at a."""
    db = b - a
    B = (fb - fa - fpa * db) / (db**2)
    return a - fpa / (2.0 * B)


def scale_by_zoom_linesearch(
    max_linesearch_steps: int,
    *,
    tol: float = 0.0,
    increase_factor: float = 2.0,
    slope_rtol: float = 1e-4,
    curv_rtol: float = 0.9,
    approx_dec_rtol: float | None = 1e-6,
    stepsize_precision: float = 1e-5,
    initial_guess_strategy: str = "one",
) -> optax.GradientTransformationExtraArgs:
    """Zoom line search with one evaluation per iteration (see the module docstring).

    The arguments are optax's ``scale_by_zoom_linesearch``'s (no ``max_learning_rate``).
    ``value_fn`` takes the parameters only (extra update arguments are not passed on).
    """
    if initial_guess_strategy not in ("one", "keep"):
        raise ValueError(
            f"initial_guess_strategy must be 'one' or 'keep', got {initial_guess_strategy!r}"
        )

    def decrease_err(stepsize, value_step, slope_step, value_init, slope_init):
        err = value_step - value_init - slope_rtol * stepsize * slope_init
        if approx_dec_rtol is not None:
            approx = slope_step - (2 * slope_rtol - 1.0) * slope_init
            delta = value_step - value_init - approx_dec_rtol * jnp.abs(value_init)
            err = jnp.minimum(jnp.maximum(approx, delta), err)
        err = jnp.maximum(err, 0.0)
        return jnp.where(jnp.isnan(err), jnp.inf, err)

    def curvature_err(slope_step, slope_init):
        err = jnp.maximum(jnp.abs(slope_step) - curv_rtol * jnp.abs(slope_init), 0.0)
        return jnp.where(jnp.isnan(err), jnp.inf, err)

    def zoom_trial(s: ZoomState):
        delta = jnp.abs(s.high - s.low)
        left = jnp.minimum(s.high, s.low)
        right = jnp.maximum(s.high, s.low)
        cubic = _cubicmin(
            s.low, s.value_low, s.slope_low, s.high, s.value_high, s.cubic_ref, s.value_cubic_ref
        )
        use_cubic = (cubic > left + 0.2 * delta) & (cubic < right - 0.2 * delta)
        quad = _quadmin(s.low, s.value_low, s.slope_low, s.high, s.value_high)
        use_quad = ~use_cubic & (quad > left + 0.1 * delta) & (quad < right - 0.1 * delta)
        middle = jnp.where(use_cubic, cubic, s.cubic_ref)
        middle = jnp.where(use_quad, quad, middle)
        return jnp.where(~use_cubic & ~use_quad, (s.low + s.high) / 2.0, middle)

    def search_update(s: ZoomState, new, value, grad, slope, value_init, slope_init):
        """optax's ``_search_interval`` after its evaluation at ``new``."""
        dec = decrease_err(new, value, slope, value_init, slope_init)
        curv = curvature_err(slope, slope_init)
        err = jnp.maximum(dec, curv)
        safe = dec <= tol
        high_to_new = (dec > 0.0) | ((value >= s.value) & (s.count > 0))
        low_to_new = (slope >= 0.0) & ~high_to_new
        pick = lambda a, b: jnp.where(low_to_new, a, b)  # noqa: E731
        found = high_to_new | low_to_new | (err <= tol)
        done = err <= tol
        return s._replace(
            count=s.count + 1,
            stepsize=new,
            value=value,
            grad=grad,
            slope=slope,
            decrease_error=dec,
            curvature_error=curv,
            interval_found=found,
            done=done,
            failed=(s.count + 1 >= max_linesearch_steps) & ~done,
            low=pick(new, s.stepsize),
            value_low=pick(value, s.value),
            slope_low=pick(slope, s.slope),
            high=pick(s.stepsize, new),
            value_high=pick(s.value, value),
            slope_high=pick(s.slope, slope),
            cubic_ref=pick(new, s.stepsize),
            value_cubic_ref=pick(value, s.value),
            safe_stepsize=jnp.where(safe, new, s.safe_stepsize),
            safe_value=jnp.where(safe, value, s.safe_value),
            safe_grad=jnp.where(safe, grad, s.safe_grad),
        )

    def zoom_update(s: ZoomState, mid, value, grad, slope, value_init, slope_init):
        """optax's ``_zoom_into_interval`` after its evaluation at ``mid``."""
        too_small = jnp.abs(s.high - s.low) <= stepsize_precision
        dec = decrease_err(mid, value, slope, value_init, slope_init)
        curv = curvature_err(slope, slope_init)
        err = jnp.maximum(dec, curv)
        upd_safe = (dec <= tol) & (value < s.safe_value)
        new_safe = jnp.where(upd_safe, mid, s.safe_stepsize)
        done = err <= tol
        high_to_mid = (dec > 0.0) | (value >= s.value_low)
        high_to_low = (slope * (s.high - s.low) >= 0.0) & ~high_to_mid
        low_to_mid = ~high_to_mid
        h = jnp.where(high_to_mid, mid, s.high)
        vh = jnp.where(high_to_mid, value, s.value_high)
        sh = jnp.where(high_to_mid, slope, s.slope_high)
        ref_high = high_to_mid | high_to_low
        failed = ((s.count + 1 >= max_linesearch_steps) | (too_small & (new_safe > 0.0))) & ~done
        return s._replace(
            count=s.count + 1,
            stepsize=mid,
            value=value,
            grad=grad,
            slope=slope,
            decrease_error=dec,
            curvature_error=curv,
            done=done,
            failed=failed,
            low=jnp.where(low_to_mid, mid, s.low),
            value_low=jnp.where(low_to_mid, value, s.value_low),
            slope_low=jnp.where(low_to_mid, slope, s.slope_low),
            high=jnp.where(high_to_low, s.low, h),
            value_high=jnp.where(high_to_low, s.value_low, vh),
            slope_high=jnp.where(high_to_low, s.slope_low, sh),
            cubic_ref=jnp.where(ref_high, s.high, s.low),
            value_cubic_ref=jnp.where(ref_high, s.value_high, s.value_low),
            safe_stepsize=new_safe,
            safe_value=jnp.where(upd_safe, value, s.safe_value),
            safe_grad=jnp.where(upd_safe, grad, s.safe_grad),
        )

    def try_safe_step(s: ZoomState) -> ZoomState:
        use = (s.safe_stepsize > 0.0) | jnp.isinf(s.decrease_error)
        return s._replace(
            stepsize=jnp.where(use, s.safe_stepsize, s.stepsize),
            value=jnp.where(use, s.safe_value, s.value),
            grad=jnp.where(use, s.safe_grad, s.grad),
        )

    def init_fn(params: Array) -> optax.ScaleByZoomLinesearchState:
        dtype = jnp.real(jnp.empty((), params.dtype)).dtype
        return optax.ScaleByZoomLinesearchState(
            learning_rate=jnp.asarray(1.0, dtype),
            value=jnp.asarray(jnp.inf, dtype),
            grad=jnp.zeros_like(params),
            info=optax.ZoomLinesearchInfo(
                num_linesearch_steps=jnp.asarray(0),
                decrease_error=jnp.asarray(jnp.inf, dtype),
                curvature_error=jnp.asarray(jnp.inf, dtype),
            ),
        )

    def update_fn(
        updates: Array,
        state: optax.ScaleByZoomLinesearchState,
        params: Array,
        *,
        value: Array,
        grad: Array,
        value_fn: Callable[..., Array],
        **extra_args: Any,
    ) -> tuple[Array, optax.ScaleByZoomLinesearchState]:
        dtype = state.value.dtype
        value_and_grad = jax.value_and_grad(value_fn)
        value_init = jnp.asarray(value, dtype)
        slope_init = jnp.real(jnp.vdot(updates, grad)).astype(dtype)
        guess = jnp.asarray(1.0, dtype) if initial_guess_strategy == "one" else state.learning_rate
        # no value at the current point yet (a fresh state, as ssjax's fit_mle starts with a
        # zero step): the first trial is that evaluation and is accepted whatever it gives
        boot = ~jnp.isfinite(value_init)
        zero = jnp.zeros((), dtype)
        s0 = ZoomState(
            count=jnp.asarray(0),
            stepsize=zero,
            value=value_init,
            grad=grad,
            slope=slope_init,
            decrease_error=jnp.asarray(jnp.inf, dtype),
            curvature_error=jnp.asarray(jnp.inf, dtype),
            interval_found=jnp.asarray(False),
            done=jnp.asarray(False),
            failed=jnp.asarray(False),
            low=zero,
            value_low=value_init,
            slope_low=slope_init,
            high=zero,
            value_high=value_init,
            slope_high=slope_init,
            cubic_ref=zero,
            value_cubic_ref=value_init,
            safe_stepsize=zero,
            safe_value=value_init,
            safe_grad=grad,
        )

        def body(s: ZoomState) -> ZoomState:
            search_step = jnp.where(s.count == 0, guess, increase_factor * s.stepsize)
            step = jnp.where(s.interval_found, zoom_trial(s), search_step).astype(dtype)
            v, g = value_and_grad(params + step * updates)
            v = jnp.asarray(v, dtype)
            slope = jnp.real(jnp.vdot(g, updates)).astype(dtype)
            a = zoom_update(s, step, v, g, slope, value_init, slope_init)
            b = search_update(s, step, v, g, slope, value_init, slope_init)
            new = jax.tree.map(lambda x, y: jnp.where(s.interval_found, x, y), a, b)
            new = new._replace(done=new.done | boot, failed=new.failed & ~boot)
            # (zoom_update leaves interval_found as it was: it is only set by the search)
            new = lax.cond(new.failed, try_safe_step, lambda x: x, new)
            return jax.tree.map(lambda x, ref: x.astype(ref.dtype), new, s)

        final = lax.while_loop(lambda s: ~(s.done | s.failed), body, s0)
        new_state = optax.ScaleByZoomLinesearchState(
            learning_rate=final.stepsize,
            value=final.value,
            grad=final.grad,
            info=optax.ZoomLinesearchInfo(
                num_linesearch_steps=final.count,
                decrease_error=final.decrease_error,
                curvature_error=final.curvature_error,
            ),
        )
        new_state = jax.tree.map(lambda x, ref: jnp.asarray(x).astype(ref.dtype), new_state, state)
        return (final.stepsize * updates).astype(updates.dtype), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
