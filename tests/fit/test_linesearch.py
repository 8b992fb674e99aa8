"""The one-evaluation zoom line search: optax's steps, and half the evaluations under vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ssjax
from ssjax.core.params import flatten_params, from_unconstrained, to_unconstrained, unflatten_params
from ssjax.fit.linesearch import scale_by_zoom_linesearch


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def wti_objective():
    p = ssjax.datasets.load_wti_ss2000()
    data = ssjax.make_market_data(p.F_mkt[:60], p.ttm[:60], dt=p.dt[:59])
    start = ssjax.default_start(data)
    template = to_unconstrained(start)

    def fun(v):
        par = from_unconstrained(unflatten_params(v, template))
        return -ssjax.log_likelihood_data(par, data) / data.nobs

    return fun, flatten_params(template)


def lbfgs_path(linesearch, fun, x0, steps, counter=None):
    """``steps`` L-BFGS iterates from ``x0`` (jitted loop), and the line-search counts."""
    solver = optax.lbfgs(memory_size=10, linesearch=linesearch)

    def counted(x):
        if counter is not None:
            jax.debug.callback(counter)
        return fun(x)

    def body(carry, _):
        x, s = carry
        v, g = optax.tree.get(s, "value"), optax.tree.get(s, "grad")
        u, s = solver.update(g, s, x, value=v, grad=g, value_fn=counted)
        x = optax.apply_updates(x, u)
        return (x, s), (x, optax.tree.get(s, "num_linesearch_steps"))

    def run(x0):
        v0, g0 = jax.value_and_grad(fun)(x0)
        s0 = optax.tree.set(solver.init(x0), value=v0, grad=g0)
        return jax.lax.scan(body, (x0, s0), None, length=steps)[1]

    return run


def ours():
    return scale_by_zoom_linesearch(30, initial_guess_strategy="one")


def optax_zoom():
    return optax.scale_by_zoom_linesearch(30, initial_guess_strategy="one")


# (the WTI objective's two L-BFGS programs take ~35 s to compile: the slow suite)
@pytest.mark.parametrize("problem", ["rosenbrock", pytest.param("wti", marks=pytest.mark.slow)])
def test_same_iterates_as_optax(problem):
    if problem == "rosenbrock":
        fun, x0 = rosenbrock, jnp.array([-1.2, 1.0, -0.5, 0.8, 1.3])
    else:
        fun, x0 = wti_objective()
    xs_a, n_a = jax.jit(lbfgs_path(optax_zoom(), fun, x0, 40))(x0)
    xs_b, n_b = jax.jit(lbfgs_path(ours(), fun, x0, 40))(x0)
    np.testing.assert_array_equal(np.asarray(n_a), np.asarray(n_b))
    # some steps needed more than one line-search iteration (the zoom branch is exercised)
    assert np.asarray(n_b).max() > 1
    np.testing.assert_allclose(np.asarray(xs_b), np.asarray(xs_a), rtol=1e-9, atol=1e-12)


def test_vmap_evaluates_once_per_iteration():
    """Under vmap with different lanes optax pays two evaluations per iteration; this one."""
    x0 = jnp.array([[-1.2, 1.0, -0.5, 0.8, 1.3], [0.5, 0.5, 0.5, 0.5, 0.5], [2.0, -1.0, 0, 1, 2]])
    counts = {}
    out = {}
    for name, ls in (("optax", optax_zoom()), ("ours", ours())):
        n = [0]

        def tick(n=n):
            n[0] += 1

        out[name] = jax.jit(jax.vmap(lbfgs_path(ls, rosenbrock, x0[0], 25, tick)))(x0)
        jax.block_until_ready(out[name])
        counts[name] = n[0]
    np.testing.assert_allclose(np.asarray(out["ours"][0]), np.asarray(out["optax"][0]), rtol=1e-9)
    # one evaluation per loop iteration; the loop runs until the lane needing most is done
    loops = int(np.asarray(out["ours"][1]).max(axis=0).sum())
    assert counts["ours"] == loops
    assert counts["optax"] == 2 * loops
    # and each vmapped lane equals its own un-vmapped run
    for i in range(x0.shape[0]):
        xs, _ = jax.jit(lbfgs_path(ours(), rosenbrock, x0[i], 25))(x0[i])
        np.testing.assert_allclose(np.asarray(out["ours"][0][i]), np.asarray(xs), rtol=1e-12)


def test_bad_guess_strategy():
    with pytest.raises(ValueError, match="initial_guess_strategy"):
        scale_by_zoom_linesearch(10, initial_guess_strategy="bogus")


def test_a_fresh_state_takes_its_first_trial_as_the_evaluation_of_the_start():
    """fit_mle's first loop pass: no value yet, a zero step; the line search evaluates the
    start once and accepts it (so the fit compiles the objective's gradient only there)."""
    x0 = jnp.array([-1.2, 1.0, 0.5])
    ls = scale_by_zoom_linesearch(30)
    state = ls.init(x0)
    assert not np.isfinite(float(state.value))
    upd, new = ls.update(
        jnp.zeros(3), state, x0, value=state.value, grad=state.grad, value_fn=rosenbrock
    )
    f0, g0 = jax.value_and_grad(rosenbrock)(x0)
    np.testing.assert_array_equal(np.asarray(upd), 0.0)
    assert float(new.value) == pytest.approx(float(f0), rel=1e-14)  # (jitted vs eager)
    np.testing.assert_allclose(np.asarray(new.grad), np.asarray(g0), rtol=1e-14)
    assert int(new.info.num_linesearch_steps) == 1
    # a state with a value searches as before: a descent step lowers the objective
    upd, new = ls.update(-g0, new, x0, value=f0, grad=g0, value_fn=rosenbrock)
    assert float(new.value) < float(f0)
    assert int(new.info.num_linesearch_steps) >= 1
