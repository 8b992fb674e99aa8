"""Rolling recalibration on several processes (``jax.distributed``): a cluster job, or localhost.

Every process runs this script with the same arguments on the same data. Each process owns
its local devices; ``recalibrate`` splits every chunk over the devices of all processes and
gathers the results to every process, so each one ends with the full result. Process 0 alone
writes files (``--out`` and the run folders of ``--run-dir``).

Where the process layout comes from (the first that applies):

* flags ``--coordinator HOST:PORT --num-processes N --process-id I`` (all three);
* ``SSJAX_COORDINATOR`` (``host:port`` of process 0), ``SSJAX_NUM_PROCESSES`` and
  ``SSJAX_PROCESS_ID`` or, in a Kubernetes indexed Job, ``JOB_COMPLETION_INDEX``;
* SLURM (one task per process, ``srun``): ``SLURM_PROCID``, ``SLURM_NTASKS`` and the first
  host of ``SLURM_STEP_NODELIST`` (or ``SLURM_JOB_NODELIST``), port ``SSJAX_COORDINATOR_PORT``
  or, as ``jax.distributed.initialize()`` picks it itself, 61440 + job id mod 4096;
* none of these: one process (no distributed runtime).

Modes (``--modes``, comma-separated; each one ``recalibrate`` call):

* ``cold``: every window from data-derived starts (``n_starts``), no refinement;
* ``warm``: each commodity's windows in order from the previous optimum, no refinement;
* ``refine``: cold mode with the neighbours' refinement (``recalibrate``'s defaults);
* ``warm-refine``: warm mode with the seeds (``explore``) and the neighbours' refinement;
* ``fits-only``: cold mode without standard errors (``standard_errors=False``).

Output: every process prints one JSON line per mode (process, layout, seconds, the sum of the
log-likelihoods and a SHA-256 digest of the result arrays: equal digests on every process mean
every process got the same result); with ``--out DIR`` process 0 writes ``DIR/results.npz``
(``{mode}.{field}`` arrays), ``DIR/{mode}.parquet`` (``RollingResult.to_frame``) and
``DIR/summary.json``.

Usage (see ``docs/distributed.md``)::

    # two processes on this machine, 2 CPU devices each (4 devices in the mesh)
    for i in 0 1; do
      python experiments/distributed_recalibrate.py --coordinator localhost:12355 \\
          --num-processes 2 --process-id $i --local-devices 2 --out results/dist &
    done; wait
    srun python experiments/distributed_recalibrate.py --data wti,natgas,brent --out out/
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

MODES: dict[str, dict] = {
    "cold": dict(warm_start=False, refine="none"),
    "warm": dict(warm_start=True, refine="none"),
    "refine": dict(warm_start=False, refine="neighbours"),
    "warm-refine": dict(warm_start=True, refine="neighbours"),
    "fits-only": dict(warm_start=False, refine="none", standard_errors=False),
}
DATASETS = ("wti", "natgas", "brent", "copper")
#: the result arrays compared across processes and layouts (and written to results.npz)
FIELDS = (
    "loglik", "params", "std_err", "std_err_robust", "state_t", "F_model_t", "mean_nis",
    "innov_mean", "innov_sd", "num_steps", "status", "converged", "optimum_reached",
    "refined", "valid",
)  # fmt: skip


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``node[001-004,007],gpu2`` → ``node001``)."""
    i = next((k for k, ch in enumerate(nodelist) if ch in ",["), len(nodelist))
    if i == len(nodelist) or nodelist[i] == ",":
        return nodelist[:i]
    rest = nodelist[i + 1 :]
    j = next((k for k, ch in enumerate(rest) if ch in ",-]"), len(rest))
    return nodelist[:i] + rest[:j]


def cluster_layout(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] = os.environ,
) -> dict:
    """Where this process stands: ``{"source", "coordinator", "num_processes", "process_id"}``
    from the flags, else the environment (``SSJAX_*`` / Kubernetes, then SLURM), else one
    process (``source="single"``)."""
    flags = (coordinator, num_processes, process_id)
    if any(v is not None for v in flags):
        if any(v is None for v in flags):
            raise SystemExit("give --coordinator, --num-processes and --process-id together")
        return dict(source="flags", coordinator=coordinator, num_processes=int(num_processes),
                    process_id=int(process_id))  # fmt: skip
    if "SSJAX_COORDINATOR" in env:
        pid = env.get("SSJAX_PROCESS_ID", env.get("JOB_COMPLETION_INDEX"))
        if pid is None or "SSJAX_NUM_PROCESSES" not in env:
            raise SystemExit(
                "SSJAX_COORDINATOR needs SSJAX_NUM_PROCESSES and SSJAX_PROCESS_ID (or a "
                "Kubernetes indexed Job's JOB_COMPLETION_INDEX)"
            )
        source = "kubernetes" if "JOB_COMPLETION_INDEX" in env else "env"
        return dict(source=source, coordinator=env["SSJAX_COORDINATOR"],
                    num_processes=int(env["SSJAX_NUM_PROCESSES"]), process_id=int(pid))  # fmt: skip
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
        if not nodes:
            raise SystemExit("SLURM_PROCID is set but neither SLURM_STEP_NODELIST nor "
                             "SLURM_JOB_NODELIST")  # fmt: skip
        port = env.get("SSJAX_COORDINATOR_PORT")
        if port is None:  # what jax.distributed.initialize() picks under SLURM
            port = str(int(env.get("SLURM_JOB_ID", "0")) % 2**12 + (65535 - 2**12 + 1))
        return dict(source="slurm", coordinator=f"{first_host(nodes)}:{port}",
                    num_processes=int(env["SLURM_NTASKS"]),
                    process_id=int(env["SLURM_PROCID"]))  # fmt: skip
    return dict(source="single", coordinator=None, num_processes=1, process_id=0)


def _panels(names: list[str]) -> dict:
    from ssjax import datasets

    load = {
        "wti": datasets.load_wti_ss2000,
        "natgas": datasets.load_natgas_rtl,
        "brent": datasets.load_brent_rtl,
        "copper": lambda: datasets.load_copper_schwartz97().panel,
    }
    out = {}
    for n in names:
        if n not in load:
            raise SystemExit(f"--data: unknown data set {n!r}; choose from {DATASETS}")
        out[n] = load[n]()
    return out


def _arrays(res) -> dict:
    """The result arrays of FIELDS (parameters flattened to [C, W, n])."""
    import numpy as np

    C, W = res.loglik.shape
    out = {}
    for f in FIELDS:
        v = getattr(res, f)
        if f == "params":
            v = np.concatenate(
                [np.asarray(a, float).reshape(C, W, -1) for a in v if a is not None], axis=-1
            )
        out[f] = np.ascontiguousarray(np.asarray(v))
    return out


def digest(arrays: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = arrays[k]
        h.update(f"{k}{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--coordinator", help="host:port of process 0's coordinator service")
    ap.add_argument("--num-processes", type=int)
    ap.add_argument("--process-id", type=int)
    ap.add_argument(
        "--local-devices",
        type=int,
        default=None,
        help="CPU devices of this process (jax_num_cpu_devices; CPU runs only)",
    )
    ap.add_argument("--data", default="wti", help=f"bundled panels, comma-separated {DATASETS}")
    ap.add_argument("--modes", default="cold", help=f"comma-separated of {tuple(MODES)}")
    ap.add_argument("--window", type=int, default=104)
    ap.add_argument("--step", type=int, default=26)
    ap.add_argument("--windows", type=int, default=None, help="only the last N window ends")
    ap.add_argument("--n-starts", type=int, default=4)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--chunk-size", type=int, default=128)
    ap.add_argument("--vector-width", type=int, default=16)
    ap.add_argument("--out", help="folder for process 0's results (npz, parquet, summary)")
    ap.add_argument("--run-dir", help="recalibrate's out_dir (one sub-folder per mode): a "
                    "rerun resumes from the chunks there")  # fmt: skip
    a = ap.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"--modes: unknown mode {m!r}; choose from {tuple(MODES)}")
    lay = cluster_layout(a.coordinator, a.num_processes, a.process_id)

    import jax

    if a.local_devices is not None:
        jax.config.update("jax_num_cpu_devices", a.local_devices)
    if lay["num_processes"] > 1:
        # CPU devices talk over gloo (TCP); GPUs use NCCL whatever this says
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=lay["coordinator"],
            num_processes=lay["num_processes"],
            process_id=lay["process_id"],
            cluster_detection_method="deactivate",  # the layout above is the whole truth
        )
    import numpy as np

    from ssjax.rolling import recalibrate

    pid, nproc = jax.process_index(), jax.process_count()
    panels = _panels([d for d in a.data.split(",") if d])
    ends = None
    if a.windows is not None:
        from ssjax.data.panels import as_stacked

        T = len(as_stacked(panels).dates)
        ends = np.arange(a.window - 1, T, a.step)[-a.windows :]
    out = Path(a.out) if a.out else None
    if out is not None and pid == 0:
        out.mkdir(parents=True, exist_ok=True)
    saved, summary = {}, []
    for mode in modes:
        kw = dict(MODES[mode], window=a.window, step=a.step, n_starts=a.n_starts,
                  budget=a.budget, max_steps=a.max_steps, chunk_size=a.chunk_size,
                  vector_width=a.vector_width)  # fmt: skip
        run_dir = str(Path(a.run_dir) / mode) if a.run_dir else None
        t0 = time.perf_counter()
        res = recalibrate(panels, ends=ends, out_dir=run_dir, progress=False, **kw)
        seconds = time.perf_counter() - t0
        arrs = _arrays(res)
        line = dict(
            mode=mode, process=pid, processes=nproc, devices=jax.device_count(),
            local_devices=jax.local_device_count(), source=lay["source"],
            windows=int(res.valid.sum()), loglik_sum=float(np.nansum(res.loglik)),
            chunks_computed=res.info.get("chunks_computed"), seconds=round(seconds, 2),
            digest=digest(arrs),
        )  # fmt: skip
        print(json.dumps(line), flush=True)
        summary.append(line)
        if out is not None and pid == 0:
            saved.update({f"{mode}.{k}": v for k, v in arrs.items()})
            res.to_parquet(out / f"{mode}.parquet")
    if out is not None and pid == 0:
        np.savez(out / "results.npz", **saved)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
