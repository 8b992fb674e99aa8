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

#: clear JAX's caches between two test files once the process holds more memory maps than
#: this fraction of the kernel's limit, and between two tests of one file past the second
#: (see pytest_runtest_teardown)
_MAPS_FRACTION = 0.5
_MAPS_FRACTION_IN_FILE = 0.8


def _memory_maps() -> tuple[int, int] | None:
    """(memory maps this process holds, the kernel's limit), or None where unknown."""
    try:
        with open("/proc/self/maps", "rb") as f:
            n = f.read().count(b"\n")
        with open("/proc/sys/vm/max_map_count") as f:
            return n, int(f.read())
    except (OSError, ValueError):
        return None


#: the test files that take longest (worker-seconds in a CI run, measured with a per-test
#: compile log; the suite is mostly compiling), heaviest first. xdist (``--dist loadfile``)
#: hands files to its workers in collection order as they free up; its default order (files
#: with the most tests first) left the single-test documentation pages and the two-process
#: test for the end, where one worker ran them while the other idled. Heaviest first, the
#: light files fill the end (longest processing time first). Files not listed keep their
#: order, after these.
HEAVY_FIRST = (
    "fit/test_em.py", "test_no_recompile.py", "app/test_pipeline.py", "fit/test_engine.py",
    "fit/test_optimum.py", "test_docs.py", "core/test_score.py", "rolling/test_rolling_optima.py",
    "test_docs_analysis.py", "app/test_cli.py", "core/test_parallel_filter.py",
    "rolling/test_distributed.py", "test_docs_rolling.py", "core/test_filter.py",
    "fit/test_mle.py", "fit/test_nested.py", "fit/test_coordinates.py",
    "analysis/test_forecast.py", "fit/test_linesearch.py", "test_peer_statsmodels.py",
)  # fmt: skip


def pytest_collection_modifyitems(config, items):
    """Run the heaviest test files first (see ``HEAVY_FIRST``); a stable sort."""
    rank = {f"tests/{name}": i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


def pytest_runtest_teardown(item, nextitem):
    """Drop JAX's compiled programs after a test when they hold many memory maps.

    Every XLA CPU executable keeps its own mapped code pages; a worker that runs many files
    accumulated enough of them to reach the kernel's limit on memory maps (vm.max_map_count),
    and LLVM then crashed the worker inside a compile. Clearing after every file cost each
    later file the tracing and lowering of the programs it shares with earlier ones (the same
    fits of the bundled panel in many files), so the caches are cleared only once the maps
    pass a fraction of the limit (always at the end of a file where the count cannot be
    read); later tests reload what they need from the run's persistent cache.

    Inside a file the bar is higher: its tests may rely on what an earlier test or a
    file-scoped fixture compiled (a recompile check that compares cache sizes failed in CI
    when a clear fell between its fixture's fit and the test), so a clear there is only the
    guard for a file of long tests that adds many maps by itself (a worker of the slow suite
    crashed while JAX wrote a compiled program to its cache inside
    ``tests/rolling/test_rolling.py``; the maps are the likely cause, not a confirmed one).
    """
    same_file = nextitem is not None and nextitem.path == item.path
    maps = _memory_maps()
    if maps is None:
        clear = not same_file
    else:
        clear = maps[0] > (_MAPS_FRACTION_IN_FILE if same_file else _MAPS_FRACTION) * maps[1]
    if clear:
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
