"""The persistent compilation cache (on by default, in its own folder for the tests) and the
progress bars."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import ssjax
from ssjax import compile_cache, progress


def test_the_tests_use_their_own_cache_folder():
    d = compile_cache.cache_dir()
    if os.environ.get("SSJAX_TEST_SHARED_CACHE", "1") != "1":
        assert d is None
        return
    assert d is not None and d == Path(os.environ["SSJAX_CACHE_DIR"])
    assert "ssjax-xla-" in d.name and d != compile_cache.default_cache_dir().parent / "nope"
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0


def test_default_folder_follows_the_platform_and_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SSJAX_CACHE_DIR", str(tmp_path / "c"))
    assert compile_cache.default_cache_dir() == tmp_path / "c"
    for off in ("", "0", "off", "None"):
        monkeypatch.setenv("SSJAX_CACHE_DIR", off)
        assert compile_cache.default_cache_dir() is None
    monkeypatch.delenv("SSJAX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert compile_cache.default_cache_dir() == tmp_path / "xdg" / "ssjax" / "xla"


def test_enable_and_disable_move_and_stop_the_cache(tmp_path):
    before = compile_cache.cache_dir()
    try:
        p = compile_cache.enable(tmp_path / "moved")
        assert p.is_dir() and compile_cache.cache_dir() == p
        f = jax.jit(lambda x: jnp.sin(x) * 3.0 + x**2)
        assert float(f(jnp.float64(0.5))) == pytest.approx(jnp.sin(0.5) * 3 + 0.25)
        assert any(p.iterdir()), "the compiled program was not written to the cache"
        compile_cache.disable()
        assert compile_cache.cache_dir() is None
    finally:
        if before is not None:
            compile_cache.enable(before)


def test_a_later_process_reads_the_cache_and_gets_the_same_numbers(tmp_path):
    """Two fresh processes on one cache folder: the second compiles nothing (every program is
    read from the cache) and its log-likelihood is bit-identical."""
    code = (
        "import ssjax, jax\n"
        "from ssjax.compile_cache import compile_log\n"
        "p = ssjax.make_params(1.5, 0.3, 0.16, 0.3, 0.01, [0.04, 0.005, 0.003, 0.001, 0.004])\n"
        "w = ssjax.datasets.load_wti_ss2000()\n"
        "with compile_log() as log:\n"
        "    v = ssjax.log_likelihood(p, w.F_mkt, w.ttm, dt=w.dt)\n"
        "print(repr(float(v)), log.cache_misses, log.cache_hits, len(log.lowerings))\n"
    )
    env = dict(os.environ, SSJAX_CACHE_DIR=str(tmp_path / "cache"))
    outs = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append(r.stdout.split())
    (v1, m1, h1, l1), (v2, m2, h2, l2) = outs
    assert v1 == v2
    assert int(m1) >= 1 and int(l1) >= 1
    assert int(m2) == 0 and int(h2) == int(m1) and int(l2) == int(l1)


def test_a_users_own_jax_cache_is_left_alone(tmp_path):
    code = "import jax, ssjax; print(jax.config.jax_compilation_cache_dir)"
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "mine"))
    env.pop("SSJAX_CACHE_DIR", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == str(tmp_path / "mine")
    env = dict(os.environ, SSJAX_CACHE_DIR="off")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.stdout.strip() == "None"


def test_compile_log_counts_what_compiles():
    f = jax.jit(lambda x: jnp.cos(x) + 2.0 * x)
    a, b = jnp.ones(7), jnp.zeros(7)
    with compile_cache.compile_log() as log:
        f(a)
        f(b)
    assert len(log.lowerings) == 1 and log.seconds > 0
    name, (n, secs) = next(iter(log.by_function().items()))
    assert n == 1 and secs > 0 and "lambda" in name
    with compile_cache.compile_log() as log:
        f(a)
    assert log.lowerings == []


def test_import_does_not_pull_in_the_heavy_optional_modules():
    code = (
        "import sys, ssjax\n"
        "print(' '.join(m for m in ('scipy.stats', 'matplotlib', 'cvxpy', 'tqdm') "
        "if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == ""
    assert ssjax.fit.results.stats.norm.ppf(0.975) == pytest.approx(1.959963985)


def test_progress_bars_show_only_when_asked_or_watched(monkeypatch):
    assert isinstance(progress.progress_bar(3, "x", False), progress._Null)
    monkeypatch.setattr(progress, "watching", lambda: False)
    bar = progress.progress_bar(3, "x", None)
    with bar:
        bar.update(2)
    assert bar.n == 2
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    bar = progress.progress_bar(3, "fits", True, unit="fit")
    bar.update(3)
    bar.set_postfix_str("done")
    bar.close()
    assert "fits" in buf.getvalue() and "3/3" in buf.getvalue()
    assert progress.watching() in (True, False)
