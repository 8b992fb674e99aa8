"""``recalibrate`` on two processes under ``jax.distributed`` (localhost, CPU devices, gloo
collectives), every mode, against the one-process run; the run folder's device layout.

The processes run ``experiments/distributed_recalibrate.py`` (the script of
``docs/distributed.md``), so the documented localhost recipe is what is tested.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssjax.rolling.chunks import _ChunkStore

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "experiments" / "distributed_recalibrate.py"
MODES = ("cold", "warm", "refine", "warm-refine", "fits-only")
#: CI's mode: cold mode (lanes split over the devices of both processes) with the
#: neighbours' refinement and standard errors (every mode: the slow test; compiling the
#: window-fit programs in 3 processes at once is most of the time, so CI runs one mode)
CI_MODES = ("refine",)
# four windows of 40 weeks; budget = max_steps and one start per window, one vmapped lane per
# group and chunks of 4 windows: every call of a program has 4 lanes over the 4 devices, so
# each program compiles once (compiling is most of this test's time)
ARGS = [
    "--window", "40", "--step", "20", "--windows", "4",
    "--n-starts", "1", "--budget", "200", "--max-steps", "200", "--vector-width", "1",
    "--chunk-size", "4",
]  # fmt: skip
# XLA:CPU with its cheapest optimization (compiles ~2x faster); the same in every process, so
# the layouts run the same code
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _gloo() -> bool:
    try:
        from jax._src.lib import _jax
    except ImportError:  # pragma: no cover - another jaxlib layout
        return False
    return hasattr(_jax, "make_gloo_tcp_collectives")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(tmp: Path) -> dict:
    # no persistent compilation cache (nothing carries over between the layouts) and no
    # coverage hooks of pytest-cov in the children (they only slow the tracing down)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COV_CORE_")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_XLA, SSJAX_CACHE_DIR="")
    return env


def _start(
    tmp: Path, modes: tuple, processes: int, local: int, *extra: str
) -> list[subprocess.Popen]:
    """``processes`` copies of the script (``local`` CPU devices each) running ``modes``."""
    port = _free_port()
    procs = []
    for i in range(processes):
        cmd = [sys.executable, str(SCRIPT), *ARGS, "--modes", ",".join(modes),
               "--local-devices", str(local), *extra]  # fmt: skip
        if processes > 1:
            cmd += ["--coordinator", f"localhost:{port}", "--num-processes", str(processes),
                    "--process-id", str(i)]  # fmt: skip
        procs.append(
            subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_env(tmp),
                cwd=tmp,
            )  # fmt: skip
        )
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[tuple]:
    """(return code, JSON lines by mode, stderr) of each process; all killed on a timeout."""
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            lines = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
            out.append((p.returncode, {d["mode"]: d for d in lines}, stderr))
    finally:
        for p in procs:
            if p.poll() is None:  # pragma: no cover - a hung process group
                p.kill()
                p.communicate()
    return out


def _ok(runs: list[tuple]) -> list[dict]:
    for rc, _, err in runs:
        assert rc == 0, err[-3000:]
    return [lines for _, lines, _ in runs]


def _two_processes_equal_one_process(tmp_path: Path, modes: tuple) -> None:
    """2 processes x 2 CPU devices under jax.distributed against 1 process x 4 devices, in
    ``modes``: the same numbers (log-likelihoods to 1e-8, measured: equal to the bit) on
    every process; process 0 alone writes the run folders, which a rerun under either
    layout resumes, while a run on another number of devices is refused."""
    ref = _start(tmp_path, modes, 1, 4, "--out", str(tmp_path / "one"))
    two = _start(tmp_path, modes, 2, 2, "--out", str(tmp_path / "two"), "--run-dir",
                 str(tmp_path / "runs"))  # fmt: skip
    (one_lines,) = _ok(_finish(ref))
    p0, p1 = _ok(_finish(two))
    a = np.load(tmp_path / "one" / "results.npz")
    b = np.load(tmp_path / "two" / "results.npz")
    for mode in modes:
        assert p0[mode]["processes"] == p1[mode]["processes"] == 2
        assert p0[mode]["devices"] == one_lines[mode]["devices"] == 4
        assert p0[mode]["digest"] == p1[mode]["digest"], mode  # every process: the same result
        assert p0[mode]["chunks_computed"] > 0
        np.testing.assert_array_equal(b[f"{mode}.valid"], a[f"{mode}.valid"])
        assert a[f"{mode}.valid"].sum() == 4
        np.testing.assert_allclose(b[f"{mode}.loglik"], a[f"{mode}.loglik"], rtol=0, atol=1e-8)
        for f in ("params", "std_err", "state_t", "F_model_t", "innov_sd"):
            np.testing.assert_allclose(b[f"{mode}.{f}"], a[f"{mode}.{f}"], rtol=1e-8,
                                       atol=1e-12, err_msg=f"{mode}.{f}")  # fmt: skip
        for f in ("num_steps", "status", "refined", "optimum_reached"):
            np.testing.assert_array_equal(b[f"{mode}.{f}"], a[f"{mode}.{f}"], f"{mode}.{f}")
        want_se = mode != "fits-only"
        assert np.isfinite(a[f"{mode}.std_err"]).any() == want_se, mode
        assert np.isnan(a[f"{mode}.std_err"]).all() != want_se, mode
    # process 0 wrote every mode's folder; rerun on both layouts, they only read it
    runs = tmp_path / "runs"
    manifest = json.loads((runs / modes[0] / "manifest.json").read_text())
    assert manifest["layout"] == {"devices": 4, "platform": "cpu", "processes": 2,
                                  "devices_per_process": [2, 2]}  # fmt: skip
    again2 = _start(tmp_path, modes, 2, 2, "--run-dir", str(runs))
    again1 = _start(tmp_path, modes, 1, 4, "--run-dir", str(runs))
    other = _start(tmp_path, modes, 1, 1, "--run-dir", str(runs))
    q0, q1 = _ok(_finish(again2))
    (r0,) = _ok(_finish(again1))
    [(rc, _, err)] = _finish(other)
    for mode in modes:
        for lines in (q0, q1, r0):
            assert lines[mode]["chunks_computed"] == 0
            assert lines[mode]["digest"] == p0[mode]["digest"], mode
    assert rc != 0
    assert "was written on 4 cpu devices in 2 processes (2 + 2); this run is on 1 cpu " in err
    assert "device in 1 process" in err


@pytest.mark.skipif(not _gloo(), reason="this jaxlib has no gloo CPU collectives")
def test_two_processes_equal_one_process(tmp_path):
    """CI's case: cold mode with the refinement (``CI_MODES``), on both layouts."""
    _two_processes_equal_one_process(tmp_path, CI_MODES)


@pytest.mark.slow
@pytest.mark.skipif(not _gloo(), reason="this jaxlib has no gloo CPU collectives")
def test_two_processes_equal_one_process_in_every_mode(tmp_path):
    """Every mode of the script (cold, warm, each with the refinement, fits only)."""
    _two_processes_equal_one_process(tmp_path, MODES)


LAYOUT = {"devices": 4, "platform": "cpu", "processes": 2, "devices_per_process": [2, 2]}


def test_a_run_folder_resumes_under_its_device_count_only(tmp_path):
    config = {"window": 52}
    _ChunkStore(tmp_path, "k", config, 3, LAYOUT)
    # the same devices spread over other processes: the same numbers (measured), resumed
    one_process = {**LAYOUT, "processes": 1, "devices_per_process": [4]}
    _ChunkStore(tmp_path, "k", config, 3, one_process)
    for other, text in (
        ({**LAYOUT, "devices": 2, "devices_per_process": [1, 1]}, "2 cpu devices in 2 processes"),
        ({**one_process, "platform": "gpu"}, "4 gpu devices in 1 process"),
    ):
        with pytest.raises(ValueError, match="written on 4 cpu devices in 2 processes") as e:
            _ChunkStore(tmp_path, "k", config, 3, other)
        assert f"this run is on {text}" in str(e.value)
    with pytest.raises(ValueError, match="different run"):
        _ChunkStore(tmp_path, "other key", config, 3, LAYOUT)
    m = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**m, "format": 5}))
    with pytest.raises(ValueError, match="another version of ssjax .*format 5"):
        _ChunkStore(tmp_path, "k", config, 3, LAYOUT)


def _script():
    spec = importlib.util.spec_from_file_location("distributed_recalibrate", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_script_reads_the_layout_from_flags_slurm_and_kubernetes():
    s = _script()
    assert s.first_host("node[003-005,9],gpu1") == "node003"
    assert s.first_host("gpu1,gpu2") == "gpu1" and s.first_host("solo") == "solo"
    assert s.cluster_layout(env={})["num_processes"] == 1
    flags = s.cluster_layout("h:1", 2, 1, env={"SLURM_PROCID": "5"})
    assert flags == dict(source="flags", coordinator="h:1", num_processes=2, process_id=1)
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "4097",
             "SLURM_JOB_NODELIST": "cn[07-10]"}  # fmt: skip
    assert s.cluster_layout(env=slurm) == dict(
        source="slurm", coordinator="cn07:61441", num_processes=8, process_id=3
    )
    assert s.cluster_layout(env={**slurm, "SSJAX_COORDINATOR_PORT": "1234"})["coordinator"] == (
        "cn07:1234"
    )
    k8s = {"SSJAX_COORDINATOR": "job-0.svc:1234", "SSJAX_NUM_PROCESSES": "4",
           "JOB_COMPLETION_INDEX": "2"}  # fmt: skip
    assert s.cluster_layout(env=k8s) == dict(
        source="kubernetes", coordinator="job-0.svc:1234", num_processes=4, process_id=2
    )
    with pytest.raises(SystemExit, match="together"):
        s.cluster_layout("h:1", 2, None, env={})
    with pytest.raises(SystemExit, match="SSJAX_NUM_PROCESSES"):
        s.cluster_layout(env={"SSJAX_COORDINATOR": "h:1"})
