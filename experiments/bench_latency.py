"""Time to first result: what a new Python process waits for, ssjax against statsmodels.

Every task runs in a fresh subprocess (``python experiments/bench_latency.py --child TASK``)
on the bundled weekly WTI panel (268 dates x 5 tenors); the time is the wall clock from
starting the process to the task's result, interpreter start-up and imports included. Each
ssjax task runs twice: with an empty persistent compilation cache (``SSJAX_CACHE_DIR`` = a
new temporary folder: what the very first process on a machine meets) and again with the
cache that run left (what every later process meets). statsmodels (the ``MLEModel`` of
``sm_model.py``, the same model, start and coordinates) runs in fresh processes too.

Tasks:

* ``import``: ``import ssjax`` (and ``import jax`` alone, for the difference);
* ``loglik``: the README's ``ssjax.log_likelihood(p, F, ttm, dt=...)``, first call; then the
  eager per-call cost: the median of 20 further calls, each with new parameter values;
* ``grad``: the same for ``jax.grad(ssjax.log_likelihood)(p, F, ttm, dt=...)``;
* ``fit``: ``ssjax.fit_mle`` from the data-derived start (the bare fit, no standard errors);
* ``engine``: ``KalmanEngine().fit`` (16 starts, exact-Hessian and robust standard errors,
  states, forwards); the compile table below comes from this task;
* ``rolling``, ``rolling_cold``: the README's ``ssjax.recalibrate(panel, window=104,
  ends=[200, 220, 240], warm_start=True)`` (refinement and exploration included), and the
  same windows in cold mode;
* ``main``: the main job, ``ssjax --output-dir DIR --quiet`` (``ssjax.app.cli.main`` in the
  child process); its compile table is given too.

statsmodels: ``fit(maxiter=1000, cov_type="none")`` (like ``fit``) and ``fit(maxiter=1000,
cov_type="approx")`` (numerical-Hessian standard errors, like ``engine``), from the same start;
its eager costs are ``loglike`` and ``score`` at new parameter values.

Usage::

    python experiments/bench_latency.py              # every task, cold and warm cache
    python experiments/bench_latency.py --quick      # no main job
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as bench_vs_statsmodels.py
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "bench_latency.md"
N_EAGER = 20
P0 = dict(kappa=1.5, sigma_x=0.3, sigma_y=0.16, rho=0.3, mu=0.01)
SD0 = [0.04, 0.005, 0.003, 0.001, 0.004]


# --------------------------------------------------------------------------------------
# Children: one task each, in a fresh process; print one JSON line
# --------------------------------------------------------------------------------------
def _params(i: int):
    import ssjax

    f = 1.0 + 0.01 * i
    return ssjax.make_params(**{k: v * f for k, v in P0.items()}, meas_sd=[s * f for s in SD0])


def _eager_ms(fn, n: int = N_EAGER) -> float:
    import numpy as np

    times = []
    for i in range(1, n + 1):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def child_ssjax(task: str) -> dict:
    out: dict = {}
    if task == "import_jax":
        import jax  # noqa: F401

        return out
    import jax

    import ssjax
    from ssjax.compile_cache import compile_log

    if task == "import":
        return out
    if task == "main":  # the main job, as `ssjax --output-dir DIR --quiet` runs it
        from ssjax.app.cli import main as cli_main

        with tempfile.TemporaryDirectory() as d, compile_log() as log:
            rc = cli_main(["--output-dir", d, "--quiet"])
        if rc != 0:
            raise RuntimeError(f"main job exited with {rc}")
        out.update(first_done=time.time(), compile_s=log.seconds, lowerings=len(log.lowerings),
                   xla_compiles=log.cache_misses, cache_hits=log.cache_hits,
                   by_function=list(log.by_function().items())[:12])  # fmt: skip
        return out
    panel = ssjax.datasets.load_wti_ss2000()
    F, ttm, dt = panel.F_mkt, panel.ttm, panel.dt
    with compile_log() as log:
        if task == "loglik":
            out["value"] = float(ssjax.log_likelihood(_params(0), F, ttm, dt=dt))
        elif task == "grad":
            g = jax.grad(ssjax.log_likelihood)(_params(0), F, ttm, dt=dt)
            out["value"] = float(jax.block_until_ready(g).kappa)
        elif task == "fit":
            data = ssjax.make_market_data(F, ttm, dt=dt)
            r = ssjax.fit_mle(data, ssjax.default_start(data))
            out["value"] = float(r.loglik)
        elif task == "engine":
            f = ssjax.KalmanEngine().fit(F, ttm, dates=panel.dates)
            _ = f.std_err  # the standard errors are computed on first use: part of this task
            out["value"] = float(f.loglik)
        elif task in ("rolling", "rolling_cold"):  # the README's rolling line
            roll = ssjax.recalibrate(panel, window=104, ends=[200, 220, 240],
                                     warm_start=task == "rolling", progress=False)  # fmt: skip
            out["value"] = float(roll.loglik.sum())
        else:
            raise ValueError(task)
    out["first_done"] = time.time()
    out["compile_s"] = log.seconds
    out["lowerings"] = len(log.lowerings)
    out["xla_compiles"] = log.cache_misses
    out["cache_hits"] = log.cache_hits
    out["by_function"] = list(log.by_function().items())[:12]
    if task == "loglik":
        out["eager_ms"] = _eager_ms(
            lambda i: float(ssjax.log_likelihood(_params(i), F, ttm, dt=dt))
        )
    elif task == "grad":
        out["eager_ms"] = _eager_ms(
            lambda i: jax.block_until_ready(
                jax.grad(ssjax.log_likelihood)(_params(i), F, ttm, dt=dt)
            )
        )
    return out


def child_statsmodels(task: str, npz: str) -> dict:
    import numpy as np

    sys.path.insert(0, str(HERE))
    from sm_model import SchwartzSmithSM

    z = np.load(npz, allow_pickle=False)
    mod = SchwartzSmithSM(z["log_f"], z["ttm"], z["dt"], [str(n) for n in z["names"]])
    p0 = mod.transform_params(z["v0"])
    cov = "none" if task == "sm_fit" else "approx"
    res = mod.fit(start_params=p0, maxiter=1000, disp=False, cov_type=cov)
    out = {"value": float(res.llf), "first_done": time.time()}
    if task == "sm_fit":
        rng = np.random.default_rng(0)
        out["eager_ms"] = _eager_ms(lambda i: mod.loglike(p0 * (1 + 0.01 * rng.random(p0.size))))
        out["eager_score_ms"] = _eager_ms(
            lambda i: mod.score(p0 * (1 + 0.01 * rng.random(p0.size))), n=5
        )
    return out


# --------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------
def run_child(args: list[str], env: dict[str, str]) -> tuple[float, dict]:
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("{")][-1]
    res = json.loads(line)
    if "first_done" in res:  # wall clock from process start to the first result
        res["to_first_s"] = res.pop("first_done") - t0
    return wall, res


def sm_inputs(path: Path) -> None:
    import jax
    import numpy as np

    import ssjax
    from ssjax.core.params import flatten_params, param_names

    panel = ssjax.datasets.load_wti_ss2000()
    data = ssjax.make_market_data(panel.F_mkt, panel.ttm, dt=panel.dt)
    start = jax.jit(ssjax.default_start)(data)
    v0 = np.asarray(flatten_params(ssjax.to_unconstrained(start)))
    log_f = np.where(np.asarray(data.mask), np.asarray(data.log_f), np.nan)
    np.savez(path, log_f=log_f, ttm=np.asarray(data.ttm), dt=np.asarray(data.dt), v0=v0,
             names=np.array(param_names(start)))  # fmt: skip


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--npz", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="skip the main job")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    if args.child:
        res = (
            child_statsmodels(args.child, args.npz)
            if args.child.startswith("sm_")
            else child_ssjax(args.child)
        )
        print(json.dumps(res))
        return 0

    cmd = "python experiments/bench_latency.py" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    t_script = time.perf_counter()
    base_env = dict(os.environ)
    tmp = Path(tempfile.mkdtemp(prefix="ssjax-latency-"))
    rows: list[list[str]] = []
    results: dict[tuple[str, str], tuple[float, dict]] = {}
    compile_table: list[list[str]] = []

    def env_for(cache: Path) -> dict[str, str]:
        return dict(base_env, SSJAX_CACHE_DIR=str(cache))

    # statsmodels first (no JAX in those processes)
    npz = tmp / "sm.npz"
    sm_inputs(npz)
    for task in ("sm_fit", "sm_fit_se"):
        results[("statsmodels", task)] = run_child(["--child", task, "--npz", str(npz)], base_env)
        print(f"statsmodels {task}: {results[('statsmodels', task)][1]}", flush=True)

    tasks = ["import_jax", "import", "loglik", "grad", "fit", "engine", "rolling", "rolling_cold"]
    for task in tasks:
        cache = tmp / f"cache-{task}"
        for label in ("cold", "warm"):
            wall, res = run_child(["--child", task], env_for(cache))
            results[(label, task)] = (wall, res)
            print(f"{task} ({label} cache): {wall:.2f} s {json.dumps(res)[:300]}", flush=True)
            if task == "engine" and label == "cold":
                compile_table = [
                    [f"`{name}`", f"{n}", f"{s:.2f}"] for name, (n, s) in res["by_function"]
                ]
    main_table: list[list[str]] = []
    if not args.quick:
        cache = tmp / "cache-main"
        for label in ("cold", "warm"):
            wall, res = run_child(["--child", "main"], env_for(cache))
            results[(label, "main")] = (wall, res)
            print(f"main job ({label} cache): {wall:.2f} s {json.dumps(res)[:300]}", flush=True)
            if label == "cold":
                main_table = [
                    [f"`{name}`", f"{n}", f"{s:.2f}"] for name, (n, s) in res["by_function"]
                ]

    def first(key: tuple[str, str]) -> float:
        wall, res = results[key]
        return res.get("to_first_s", wall)

    sm_fit, sm_se = first(("statsmodels", "sm_fit")), first(("statsmodels", "sm_fit_se"))
    sm_eager = results[("statsmodels", "sm_fit")][1]
    imp_jax = first(("warm", "import_jax"))
    spec = [
        ("import", "`import ssjax`", None, f"(`import jax` alone: {imp_jax:.2f} s)"),
        ("loglik", "first `log_likelihood`", None, ""),
        ("grad", "first `jax.grad(log_likelihood)`", None, ""),
        ("fit", "first fit (`fit_mle`, no s.e.)", sm_fit, "statsmodels `cov_type='none'`"),
        (
            "engine",
            "first `KalmanEngine().fit` (16 starts, s.e.)",
            sm_se,
            "statsmodels `cov_type='approx'` (one start)",
        ),  # fmt: skip
        ("rolling", "first `recalibrate`, warm (README: 3 windows)", None,
         "Σ log-likelihood of the 3 windows"),
        ("rolling_cold", "first `recalibrate`, cold (the same windows)", None,
         "Σ log-likelihood of the 3 windows"),
    ]  # fmt: skip
    if not args.quick:
        spec.append(("main", "main job `ssjax`", None, ""))
    for task, what, sm_s, note in spec:
        cold, warm = first(("cold", task)), first(("warm", task))
        ll = results[("warm", task)][1].get("value")
        rows.append(
            [
                what, f"{cold:.2f} s", f"{warm:.2f} s",
                "—" if sm_s is None else f"{sm_s:.2f} s",
                "—" if sm_s is None else f"{warm / sm_s:.2f}",
                "" if ll is None or task in ("grad",) else f"{ll:.4f}",
                note,
            ]
        )  # fmt: skip
    ll_sm = results[("statsmodels", "sm_fit")][1]["value"]
    ll_sm_se = results[("statsmodels", "sm_fit_se")][1]["value"]
    eager_rows = [
        ["`ssjax.log_likelihood(p, F, ttm, dt=...)`",
         f"{results[('warm', 'loglik')][1]['eager_ms']:.2f} ms",
         f"statsmodels `loglike`: {sm_eager['eager_ms']:.2f} ms"],
        ["`jax.grad(ssjax.log_likelihood)(p, F, ttm, dt=...)`",
         f"{results[('warm', 'grad')][1]['eager_ms']:.2f} ms",
         f"statsmodels `score` (numerical): {sm_eager['eager_score_ms']:.2f} ms"],
    ]  # fmt: skip
    wall = time.perf_counter() - t_script
    text = "\n".join(
        [
            "# Time to first result (new processes)",
            "",
            f"Command: `{cmd}` ({wall / 60:.1f} min; {platform.platform()}, "
            f"{os.cpu_count()} CPUs; Python {platform.python_version()}).",
            "",
            __doc__.split("\n\n", 1)[1].split("Usage::")[0].strip(),
            "",
            "## From process start to the first result",
            "",
            table(
                [
                    "task",
                    "ssjax, empty cache",
                    "ssjax, warm cache",
                    "statsmodels",
                    "ssjax warm / statsmodels",
                    "log-likelihood (ssjax)",
                    "note",
                ],
                rows,
            ),  # fmt: skip
            "",
            f"statsmodels' log-likelihoods: {ll_sm:.4f} (`cov_type='none'`), {ll_sm_se:.4f} "
            "(`cov_type='approx'`).",
            "",
            f"## Eager calls with new parameter values (median of {N_EAGER}, warm process)",
            "",
            table(["call", "ssjax", "peer"], eager_rows),
            "",
            "## Where the first `KalmanEngine().fit` spends its compile time (empty cache)",
            "",
            "Tracing, lowering and XLA compilation per JAX function (the largest 12): number "
            "of programs lowered and seconds.",
            "",
            table(["function", "programs", "seconds"], compile_table),
            "",
            *(
                [
                    "## Where the main job spends its compile time (empty cache)",
                    "",
                    table(["function", "programs", "seconds"], main_table),
                    "",
                ]
                if main_table
                else []
            ),
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
