"""Options report on the bundled weekly WTI panel: model-implied volatility and Greeks.

Fits the theory document's model, then, from the filtered state at the last date, writes:

* ``implied_vol_term_structure.csv`` / ``.png``: the model's Black-76 implied volatility of
  options on futures maturing in Δ years, by option expiry τ ≤ Δ (the Samuelson effect: short
  options on near futures carry the short-term factor's volatility);
* ``greeks_atm.csv`` / ``.md``: price, delta, gamma, vega, theta, rate rho, ∂price/∂Θ and
  ∂price/∂(X, Y) by autodiff for at-the-money calls;
* ``smile_roundtrip.csv``: price → implied vol → price over strikes and expiries (the solver's
  worst round-trip error is printed);
* ``config.json``: the settings, the package version and the data's hash.

Usage::

    python experiments/options_report.py [--out experiments/results/options]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import ssjax  # noqa: E402
from ssjax.analysis import options as O  # noqa: E402
from ssjax.analysis.runs import markdown_table as md  # noqa: E402
from ssjax.analysis.runs import panel_hash  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "options"
FUTURES = (0.25, 0.5, 1.0, 2.0, 3.0)  # futures times to maturity Δ (years)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--rate", type=float, default=0.05, help="continuously compounded rate")
    args = ap.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    panel = ssjax.datasets.load_wti_ss2000()
    fit = ssjax.KalmanEngine().fit(panel.F_mkt, panel.ttm, dates=panel.dates)
    p, state = fit.params, jnp.asarray(fit.state_t)

    # implied-vol term structure: for each futures maturity, options expiring at τ ≤ Δ
    rows = []
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for delta in FUTURES:
        tau = np.linspace(0.02, delta, 40)
        iv = np.asarray(O.model_implied_vol(p, jnp.full_like(tau, delta), jnp.asarray(tau)))
        ax.plot(tau, iv, label=f"futures Δ = {delta:g} y")
        rows += [
            {"futures_ttm": delta, "option_ttm": t, "implied_vol": v}
            for t, v in zip(tau, iv, strict=True)
        ]
    ax.set_xlabel("option expiry τ (years)")
    ax.set_ylabel("model implied vol")
    ax.set_title("Schwartz–Smith implied volatility of options on futures")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "implied_vol_term_structure.png", dpi=100)
    plt.close(fig)
    pd.DataFrame(rows).to_csv(out / "implied_vol_term_structure.csv", index=False)

    # at-the-money call Greeks, options expiring a month before their futures
    tf = jnp.asarray(FUTURES)
    to = tf - 1.0 / 12.0
    F = jnp.exp(ssjax.log_forward(p, state, tf))
    g = O.greeks_from_state(p, state, F, tf, to, args.rate, True)
    tab = pd.DataFrame(
        {
            "futures_ttm": np.asarray(tf),
            "option_ttm": np.asarray(to),
            "F": np.asarray(F),
            "implied_vol": np.asarray(O.model_implied_vol(p, tf, to)),
            "price": np.asarray(g.price),
            "delta": np.asarray(g.delta),
            "gamma": np.asarray(g.gamma),
            "vega": np.asarray(g.vega),
            "theta": np.asarray(g.theta),
            "rho_rate": np.asarray(g.rho_rate),
            **{
                f"d_{n}": np.asarray(getattr(g.dparams, n))
                for n in ("kappa", "sigma_x", "sigma_y", "rho", "mu")
            },
            "d_X": np.asarray(g.dstate)[:, 0],
            "d_Y": np.asarray(g.dstate)[:, 1],
        }
    ).set_index("futures_ttm")
    tab.to_csv(out / "greeks_atm.csv")
    (out / "greeks_atm.md").write_text(md(tab) + "\n")
    print(tab.T.to_string(float_format=lambda x: f"{x:.5g}"))

    # smile round trip through the implied-vol solver
    Fs = float(F[2])
    K = Fs * np.linspace(0.5, 2.0, 31)
    taus = np.array([0.05, 0.25, 0.5, 1.0])
    KK, TT = np.meshgrid(K, taus)
    vol = np.asarray(O.model_implied_vol(p, jnp.asarray(TT + 0.0), jnp.asarray(TT)))
    price = np.asarray(O.black76(Fs, jnp.asarray(KK), jnp.asarray(TT), jnp.asarray(vol), args.rate))
    iv = O.implied_vol(jnp.asarray(price), Fs, jnp.asarray(KK), jnp.asarray(TT), args.rate)
    back = np.asarray(O.black76(Fs, jnp.asarray(KK), jnp.asarray(TT), iv.vol, args.rate))
    err = np.max(np.abs(back - price))
    pd.DataFrame(
        {"K": KK.ravel(), "tau": TT.ravel(), "price": price.ravel(),
         "implied_vol": np.asarray(iv.vol).ravel(), "status": np.asarray(iv.status).ravel(),
         "repriced": back.ravel()}
    ).to_csv(out / "smile_roundtrip.csv", index=False)  # fmt: skip
    print(f"\nimplied-vol round trip over {price.size} options: max |price error| {err:.2e}")

    cfg = {
        "script": Path(__file__).name,
        "ssjax_version": ssjax.__version__,
        "jax_version": jax.__version__,
        "data": "ssjax.datasets.load_wti_ss2000",
        "data_sha256_16": panel_hash(panel),
        "rate": args.rate,
        "futures_ttm": list(FUTURES),
        "roundtrip_max_abs_error": float(err),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    print(f"wrote {out} in {cfg['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
