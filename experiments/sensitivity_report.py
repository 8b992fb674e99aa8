"""Sensitivity report on the bundled weekly WTI panel (Schwartz and Smith 2000).

Fits the theory document's model, then writes to a run folder:

* ``elasticities_t.csv`` / ``.md``: ∂F_t/∂θ and elasticities (θ/F)·∂F/∂θ at the last date,
  the state held fixed, and the total derivative with the states re-filtered;
* ``dF_dtheta_<param>.png``: heat maps of the total dF_model_path/dθ over tenor × date;
* ``identification.md``: eigenvalues of the scaled information and the weak directions;
* ``profile_<param>.csv`` / ``.png``: profile log-likelihoods with their likelihood-ratio
  intervals next to the Wald intervals;
* ``config.json``: the settings, the package version and the data's hash.

Usage::

    python experiments/sensitivity_report.py [--out experiments/results/sensitivity]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import ssjax  # noqa: E402
from ssjax.analysis import sensitivity as S  # noqa: E402
from ssjax.analysis.runs import markdown_table as md  # noqa: E402
from ssjax.analysis.runs import panel_hash  # noqa: E402
from ssjax.core.params import param_names  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "sensitivity"
PROFILE = ("kappa", "sigma_x", "rho")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--grid", type=int, default=9, help="profile grid points per parameter")
    args = ap.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    panel = ssjax.datasets.load_wti_ss2000()
    fit = ssjax.KalmanEngine().fit(panel.F_mkt, panel.ttm, dates=panel.dates)
    data, p = fit.extra["data"], fit.params
    names = param_names(p)
    tenors = list(panel.tenor_names)
    print(fit.summary())

    # ∂F_t/∂θ at the last date: state fixed, and total (states re-filtered)
    fixed = S.elasticity_table(p, fit.state_t, np.asarray(panel.ttm)[-1], tenor_names=tenors)
    total = S.elasticity_table(p, data=data, total=True, tenor_names=tenors)
    total_t = total[total.date == total.date.max()]
    tab = fixed.pivot(index="parameter", columns="tenor", values="elasticity")[tenors]
    tab_tot = total_t.pivot(index="parameter", columns="tenor", values="elasticity")[tenors]
    fixed.to_csv(out / "elasticities_t.csv", index=False)
    total.to_csv(out / "elasticities_total_path.csv", index=False)
    with open(out / "elasticities_t.md", "w") as f:
        f.write("Elasticities (θ/F)·∂F_t/∂θ at the last date, state held fixed ")
        f.write("(X, Y rows: ∂ln F/∂x)\n\n")
        f.write(md(tab) + "\n\n")
        f.write("Total elasticities at the last date, the filtered states moving with Θ\n\n")
        f.write(md(tab_tot) + "\n")
    print("\n" + tab.to_string(float_format=lambda x: f"{x:.4g}"))

    # heat maps of dF_path/dθ (total) over tenor × date
    jac = np.asarray(S.total_forward_jacobian(p, data).d_theta)  # [T, M, n]
    dates = pd.DatetimeIndex(panel.dates)
    for j, name in enumerate(names[:5]):
        fig, ax = plt.subplots(figsize=(9, 3.2))
        lim = np.nanmax(np.abs(jac[:, :, j])) or 1.0
        im = ax.imshow(jac[:, :, j].T, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim,
                       extent=(0, len(dates), len(tenors) - 0.5, -0.5))  # fmt: skip
        ax.set_yticks(range(len(tenors)), tenors)
        ticks = np.linspace(0, len(dates) - 1, 6).astype(int)
        ax.set_xticks(ticks, [str(dates[i].date()) for i in ticks])
        ax.set_title(f"dF_model/d{name} (total, states re-filtered), $ per unit of {name}")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(out / f"dF_dtheta_{name}.png", dpi=100)
        plt.close(fig)

    # identification at the estimate
    d = jax.jit(S.loglik_derivatives)(p, data)
    idn = S.identification(d.hessian, names)
    with open(out / "identification.md", "w") as f:
        f.write("```\n" + idn.summary() + "\n```\n\n")
        f.write(md(idn.to_frame(), ".3g", index=False) + "\n")
    print("\n" + idn.summary())

    # profile likelihoods next to the Wald intervals
    se = np.sqrt(np.diag(fit.cov))
    rows = []
    for name in PROFILE:
        k = names.index(name)
        v = float(np.asarray(ssjax.core.params.flatten_params(p))[k])
        grid = v + se[k] * np.linspace(-3, 3, args.grid)
        if name == "rho":
            grid = np.clip(grid, -0.99, 0.99)
        pr = S.profile_likelihood(data, p, name, grid)
        pr.to_frame().to_csv(out / f"profile_{name}.csv", index=False)
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(pr.grid, pr.lr, "o-")
        ax.axhline(3.841, color="grey", ls="--", label="χ²₁ 95%")
        ax.axvline(v, color="k", lw=0.8)
        ax.set_xlabel(name)
        ax.set_ylabel("2(ℓ̂ − ℓ_profile)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"profile_{name}.png", dpi=100)
        plt.close(fig)
        rows.append({"parameter": name, "estimate": v, "se": se[k],
                     "wald_lo": v - 1.96 * se[k], "wald_hi": v + 1.96 * se[k],
                     "lr_lo": pr.ci[0], "lr_hi": pr.ci[1],
                     "all_converged": bool(pr.converged.all())})  # fmt: skip
    prof = pd.DataFrame(rows)
    (out / "profiles.md").write_text(md(prof, index=False) + "\n")
    print("\n" + prof.to_string(index=False))

    cfg = {
        "script": Path(__file__).name,
        "ssjax_version": ssjax.__version__,
        "jax_version": jax.__version__,
        "data": "ssjax.datasets.load_wti_ss2000",
        "data_sha256_16": panel_hash(panel),
        "profile_parameters": list(PROFILE),
        "grid_points": args.grid,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    print(f"\nwrote {out} in {cfg['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
