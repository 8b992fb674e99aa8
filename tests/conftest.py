import os
import tempfile

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

# The tests never use the user's persistent XLA cache (ssjax turns one on at import, see
# ssjax.compile_cache): they get their own, shared by the xdist workers of ONE run (many test
# files fit the bundled panel with the same programs, and each worker would otherwise compile
# them again). The folder is keyed by the run's id (a fresh one per run: nothing carries over
# from an earlier run); tracing still happens, so the trace-count tests are unaffected.
_run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
if os.environ.get("SSJAX_TEST_SHARED_CACHE", "1") == "1":
    os.environ["SSJAX_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"ssjax-xla-{_run_id}")
else:
    os.environ["SSJAX_CACHE_DIR"] = ""

import ssjax  # noqa: E402

#: seconds each of the slowest test files takes (2 xdist workers on 2 cores, coverage on;
#: ``pytest --durations=0`` summed by file, 2026-12-07). The files run longest first: xdist
#: hands each worker the next file when it finishes one, so a long file started last would
#: leave the other worker idle at the end of the run (only the order changes, not what runs).
_FILE_SECONDS = {
    "tests/fit/test_em.py": 323, "tests/test_no_recompile.py": 240,
    "tests/app/test_pipeline.py": 222, "tests/rolling/test_rolling_optima.py": 215,
    "tests/fit/test_engine.py": 180, "tests/rolling/test_distributed.py": 171,
    "tests/test_docs.py": 160, "tests/test_docs_analysis.py": 157,
    "tests/fit/test_optimum.py": 151, "tests/core/test_score.py": 128,
    "tests/app/test_cli.py": 116, "tests/test_experiments.py": 110,
    "tests/core/test_parallel_filter.py": 109, "tests/core/test_filter.py": 68,
    "tests/fit/test_mle.py": 67, "tests/test_docs_rolling.py": 60,
    "tests/fit/test_coordinates.py": 56, "tests/fit/test_nested.py": 56,
    "tests/analysis/test_forecast.py": 47, "tests/fit/test_linesearch.py": 45,
    "tests/test_peer_statsmodels.py": 40, "tests/data/test_validation.py": 32,
}  # fmt: skip


#: end-to-end files (the documentation's examples, the command line and the main job, the
#: rolling paths on real data, the trace-count checks, the benchmark scripts): coverage is
#: paused while their tests run (pytest-cov's ``no_cover``). Its line tracer costs ~15% of a
#: test's time here (JAX's tracing is many small Python calls). The coverage figure counts
#: the other tests only (the modules' own tests).
_NO_COVER_FILES = {
    "tests/test_docs.py", "tests/test_docs_analysis.py", "tests/test_docs_rolling.py",
    "tests/app/test_pipeline.py", "tests/app/test_cli.py", "tests/test_no_recompile.py",
    "tests/rolling/test_rolling_optima.py", "tests/rolling/test_distributed.py",
    "tests/test_experiments.py",
}  # fmt: skip


def pytest_collection_modifyitems(config, items):
    """The slowest files first (see ``_FILE_SECONDS``; with ``--no-loadscope-reorder`` xdist
    keeps this order), the rest in their collection order; ``no_cover`` on the end-to-end
    files (``_NO_COVER_FILES``)."""
    rank = {id(it): -_FILE_SECONDS.get(it.nodeid.split("::")[0], 0) for it in items}
    items.sort(key=lambda it: rank[id(it)])  # stable: a file's tests keep their order
    for it in items:
        if it.nodeid.split("::")[0] in _NO_COVER_FILES:
            it.add_marker(pytest.mark.no_cover)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    Every XLA CPU executable keeps its own mapped code pages; a worker that runs many modules
    accumulated enough of them to reach the kernel's limit on memory maps (vm.max_map_count),
    and LLVM then crashed the worker inside a compile. Later modules reload what they need
    from the run's persistent cache (above), so this costs little time.
    """
    yield
    jax.clear_caches()


@pytest.fixture(scope="session")
def wti():
    """The bundled weekly WTI panel (ACT/365 maturities)."""
    return ssjax.datasets.load_wti_ss2000()


@pytest.fixture(scope="session")
def wti_data(wti):
    return ssjax.make_market_data(wti.F_mkt, wti.ttm, dt=wti.dt)


@pytest.fixture(scope="session")
def theta_wti():
    """Parameters near the WTI optimum, as a plain dict (for the NumPy references)."""
    return dict(
        kappa=1.5,
        sigma_x=0.29,
        sigma_y=0.16,
        rho=0.39,
        mu=0.0086,
        meas_sd=np.array([0.042, 0.005, 0.0034, 0.0008, 0.004]),
    )


@pytest.fixture(scope="session")
def params_wti(theta_wti):
    return ssjax.make_params(**theta_wti)
