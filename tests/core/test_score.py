"""The Fisher-identity gradient (ssjax.core.score) against plain autodiff and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssjax
from ssjax.core.filter import Prior, log_likelihood_data
from ssjax.core.params import flatten_params, from_unconstrained, to_unconstrained, unflatten_params
from ssjax.core.score import complete_data_objective, log_likelihood_fisher
from ssjax.fit.mle import fit_mle, negative_loglik, stopped

T, M = 40, 4


def _panel(p, seed=0, *, spot=False, holes=True):
    rng = np.random.default_rng(seed)
    ttm = np.linspace(0.25, 2.0, M)[None, :] - 0.004 * np.arange(T)[:, None]
    dt = 7.0 / 365.0 + 0.004 * rng.random(T - 1)  # uneven steps
    sim = ssjax.simulate(p, jax.random.PRNGKey(seed), ttm, dt)
    F = np.array(sim.F)
    if holes:
        F[rng.random((T, M)) < 0.2] = np.nan  # scattered missing entries
        F[7] = np.nan  # a date with nothing observed
    S = np.exp(np.asarray(sim.log_s)) if spot else None
    return ssjax.make_market_data(F, ttm, S=S, dt=dt)


CASES = {
    "per-tenor noise": dict(
        kappa=1.3, sigma_x=0.3, sigma_y=0.15, rho=0.3, mu=0.02,
        meas_sd=np.array([0.02, 0.01, 0.005, 0.015]),
    ),
    "shared noise": dict(kappa=0.8, sigma_x=0.4, sigma_y=0.2, rho=-0.4, mu=-0.05, meas_sd=0.01),
    "risk premium and spot": dict(
        kappa=1.3, sigma_x=0.3, sigma_y=0.15, rho=0.3, mu=0.02,
        meas_sd=np.array([0.02, 0.01, 0.005, 0.015]), lambda_x=0.1, mu_star=0.01, spot_sd=0.03,
    ),
    "small kappa, rho near 1": dict(
        kappa=1e-3, sigma_x=0.3, sigma_y=0.15, rho=0.995, mu=0.02, meas_sd=0.01
    ),
    "a tiny noise s.d.": dict(
        kappa=1.5, sigma_x=0.3, sigma_y=0.15, rho=0.3, mu=0.02,
        meas_sd=np.array([0.02, 1e-5, 0.005, 0.015]),
    ),
}  # fmt: skip


def _grads(p, data, prior=None):
    tmpl = to_unconstrained(p)
    v0 = flatten_params(tmpl)

    def via(fn):
        return jax.jit(
            jax.value_and_grad(lambda v: fn(from_unconstrained(unflatten_params(v, tmpl))))
        )(v0)

    a = via(lambda q: log_likelihood_data(q, data, prior, unroll=1))
    f = via(lambda q: log_likelihood_fisher(q, data, prior))
    return a, f, v0, tmpl


@pytest.mark.parametrize("case", list(CASES))
def test_fisher_gradient_equals_autodiff(case):
    theta = CASES[case]
    p = ssjax.make_params(**theta)
    data = _panel(p, spot="spot_sd" in theta)
    (va, ga), (vf, gf), _, _ = _grads(p, data)
    assert float(vf) == pytest.approx(float(va), rel=1e-14)
    scale = np.max(np.abs(np.asarray(ga)))
    # with a noise s.d. of 1e-5 the score's terms are E[residual]/s² ~ 1e5 per date and the
    # Fisher gradient keeps ~6 digits of the max-norm there (plain autodiff ~9: both were
    # checked against central differences of a 40-digit decimal filter); elsewhere ~9
    tol = 1e-5 if case == "a tiny noise s.d." else 1e-7
    np.testing.assert_allclose(np.asarray(gf), np.asarray(ga), rtol=1e-6, atol=tol * scale)


def test_fisher_gradient_on_the_bundled_panel(wti_data, theta_wti):
    p = ssjax.make_params(**theta_wti)
    (va, ga), (vf, gf), _, _ = _grads(p, wti_data)
    assert float(vf) == pytest.approx(float(va), rel=1e-14)
    np.testing.assert_allclose(np.asarray(gf), np.asarray(ga), rtol=1e-7, atol=1e-8)


def test_fisher_gradient_against_central_differences():
    p = ssjax.make_params(**CASES["per-tenor noise"])
    data = _panel(p, seed=3)
    _, (_, gf), v0, tmpl = _grads(p, data)
    f = jax.jit(lambda v: log_likelihood_data(from_unconstrained(unflatten_params(v, tmpl)), data))
    h = 1e-5
    eye = np.eye(v0.size)
    fd = np.array([(f(v0 + h * e) - f(v0 - h * e)) / (2 * h) for e in eye])
    np.testing.assert_allclose(np.asarray(gf), fd, rtol=1e-5, atol=1e-5)


def test_fisher_gradient_with_respect_to_data_and_prior():
    p = ssjax.make_params(**CASES["risk premium and spot"])
    data = _panel(p, seed=1, spot=True)
    prior = Prior(jnp.array([0.05, 3.0]), jnp.array([[0.3, 0.05], [0.05, 0.5]]))

    names = ("log_f", "ttm", "dt", "log_s")

    def both(fn):
        def of(arrays, pr):
            return fn(p, data._replace(**dict(zip(names, arrays, strict=True))), pr)

        return jax.jit(jax.grad(of, argnums=(0, 1)))(tuple(getattr(data, n) for n in names), prior)

    ga = both(lambda q, d, pr: log_likelihood_data(q, d, pr))
    gf = both(log_likelihood_fisher)
    for name, a, f in zip(names, ga[0], gf[0], strict=True):
        a, f = np.asarray(a), np.asarray(f)
        assert np.max(np.abs(a)) > 0, name
        np.testing.assert_allclose(f, a, rtol=1e-6, atol=1e-8 * np.max(np.abs(a)), err_msg=name)
    for a, f in zip(ga[1], gf[1], strict=True):
        np.testing.assert_allclose(np.asarray(f), np.asarray(a), rtol=1e-6, atol=1e-10)


def test_fisher_vmaps():
    p = ssjax.make_params(**CASES["shared noise"])
    data = _panel(p, seed=2)
    tmpl = to_unconstrained(p)
    v0 = flatten_params(tmpl)
    vs = v0 + 0.05 * jax.random.normal(jax.random.PRNGKey(0), (3, v0.size))

    def f(v):
        return log_likelihood_fisher(from_unconstrained(unflatten_params(v, tmpl)), data)

    def g(v):
        return log_likelihood_data(from_unconstrained(unflatten_params(v, tmpl)), data)

    batched = jax.jit(jax.vmap(jax.grad(f)))(vs)
    np.testing.assert_allclose(batched, jax.jit(jax.vmap(jax.grad(g)))(vs), rtol=1e-6, atol=1e-8)


@pytest.mark.slow
def test_fisher_gives_the_hessian():
    # forward-over-reverse differentiates the smoother in the backward pass (~100 s compile)
    p = ssjax.make_params(**CASES["shared noise"])
    data = _panel(p, seed=2)
    tmpl = to_unconstrained(p)
    v0 = flatten_params(tmpl)

    def f(v):
        return log_likelihood_fisher(from_unconstrained(unflatten_params(v, tmpl)), data)

    def g(v):
        return log_likelihood_data(from_unconstrained(unflatten_params(v, tmpl)), data)

    hf, hg = jax.jit(jax.hessian(f))(v0), jax.jit(jax.hessian(g))(v0)
    np.testing.assert_allclose(hf, hg, rtol=1e-6, atol=1e-6)


def test_complete_data_objective_is_not_the_loglik_but_has_its_gradient():
    # Q(θ; θ̄) differs from ℓ(θ) in value (the gap is the posterior entropy), not in slope
    p = ssjax.make_params(**CASES["per-tenor noise"])
    data = _panel(p, seed=4, holes=False)
    prior = ssjax.core.filter.default_prior(data)
    stats = ssjax.fit.em.e_step(p, data, prior)
    q = jax.jit(complete_data_objective)(p, data, prior, stats)
    assert abs(float(q) - float(stats.loglik)) > 1.0
    gq = jax.jit(jax.grad(complete_data_objective))(p, data, prior, stats)
    gl = jax.jit(jax.grad(log_likelihood_data))(p, data, prior)
    np.testing.assert_allclose(
        np.asarray(flatten_params(gq)), np.asarray(flatten_params(gl)), rtol=1e-6, atol=1e-8
    )


def test_fit_mle_reaches_the_same_optimum_with_either_gradient(wti_data):
    # a 120-date window where two noise s.d.s head to zero: the Fisher gradient alone stops
    # short there (0.02 nats; 9 nats when vmapped), the autodiff finishing phase gets it home
    w = jax.tree.map(lambda a: a[100:220] if a.ndim else a, wti_data)
    w = w._replace(dt=w.dt[:119])
    init = ssjax.default_start(w)
    a = fit_mle(w, init, max_steps=400, gradient="autodiff")
    f = fit_mle(w, init, max_steps=400, gradient="fisher")
    assert bool(stopped(a.status)) and bool(stopped(f.status))  # both at the boundary optimum
    assert float(f.loglik) == pytest.approx(float(a.loglik), abs=1e-4)
    fa, ff = (np.asarray(flatten_params(r.params))[:5] for r in (a, f))
    np.testing.assert_allclose(ff, fa, rtol=1e-3)


def test_unknown_gradient_is_an_error(wti_data, theta_wti):
    init = ssjax.make_params(**theta_wti)
    with pytest.raises(ValueError, match="gradient must be one of"):
        fit_mle(wti_data, init, gradient="numeric")
    with pytest.raises(ValueError, match="gradient must be one of"):
        ssjax.KalmanEngine(gradient="numeric")
    v = flatten_params(to_unconstrained(init))
    prior = ssjax.core.filter.default_prior(wti_data)
    with pytest.raises(ValueError, match="gradient must be one of"):
        negative_loglik(v, to_unconstrained(init), wti_data, prior, 1.0, "numeric")
