"""Command line: ``ssjax`` (or ``python -m ssjax``).

The default run is the whole pipeline on the bundled weekly WTI data: KalmanEngine →
compute_model_forward → prepare_trading_inputs → TradeEngine at t*, then the walk-forward
backtest; it prints Θ, the mispricing table and ``orders_t`` and writes them and the backtest
report to an output folder (``ssjax_output/``). Settings come from ``--config FILE.toml``
(defaults in :mod:`ssjax.app.pipeline`), overridden by flags. ``--fit-only`` just calibrates and
prints the summary (with ``--csv``, ``--maturities``, ``--spot``, ``--output``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ssjax",
        description="Calibrate the Schwartz-Smith two-factor model to a futures panel "
        "(default: the bundled Schwartz-Smith 2000 weekly WTI panel).",
    )
    p.add_argument(
        "--maturities",
        choices=["act365", "bus262", "fixed"],
        default="act365",
        help="times to maturity of the bundled panel: ACT/365 to each contract's last trading "
        "day (default), the source's business days/262, or the paper's fixed 1,5,9,13,17 months",
    )
    p.add_argument("--csv", help="fit a wide CSV instead: a date column, price columns and "
                   "matching '<col>_ttm' columns in years")  # fmt: skip
    p.add_argument(
        "--data",
        help="fit a settlement file instead: a CME settlement CSV, a continuous-contract file "
        "(CL1..CLn) or a long per-contract CSV (layout detected from the header), or 'copper' "
        "for the bundled COMEX copper",
    )
    p.add_argument("--commodity", help="with --data: which commodity (e.g. CL, NG, HG)")
    p.add_argument(
        "--continuous",
        choices=["chris", "exchange"],
        help="with a continuous (rank) file: which contract is rank 1 on an expiry day: "
        "'chris' (Quandl/Nasdaq CHRIS: already the next one) or 'exchange' (still the "
        "expiring one)",
    )
    p.add_argument(
        "--ranks",
        default="6",
        help="with --data: nearby ranks, a count ('6') or a list ('1,5,9,13,17')",
    )
    p.add_argument("--resample", help="with --data: e.g. W-TUE for one date per week")
    p.add_argument("--t-star", help="last date used for the fit (YYYY-MM-DD or an index)")
    p.add_argument("--method", default="MLE", type=str.upper, choices=["MLE", "EM", "HYBRID"],
                   help="MLE (default), structured EM, or hybrid (EM, then MLE)")  # fmt: skip
    p.add_argument("--states", default="filtered", choices=["filtered", "smoothed"])
    p.add_argument("--risk-premium", action="store_true",
                   help="fit the 2000 paper's risk-premium form (lambda_x, mu_star)")  # fmt: skip
    p.add_argument("--shared-noise", action="store_true",
                   help="one measurement s.d. for all tenors")  # fmt: skip
    p.add_argument("--spot", action="store_true", help="use the spot series as an observable")
    p.add_argument("--n-starts", type=int, default=1, help="number of starting points")
    p.add_argument("--output", help="(--fit-only) write the state path and model forwards")
    g = p.add_argument_group("pipeline (the default run)")
    g.add_argument("--config", help="TOML settings file (see `ssjax --print-config`)")
    g.add_argument(
        "--print-config",
        action="store_true",
        help="check the settings, print them as TOML (--config reads it) and exit",
    )
    g.add_argument("--check-config", action="store_true",
                   help="check the settings (and that the data load) and exit")  # fmt: skip
    g.add_argument("--fit-only", action="store_true", help="calibrate and print the summary only")
    g.add_argument("--sizing", choices=["vol_target", "qp"])
    g.add_argument("--z-in", type=float)
    g.add_argument("--z-out", type=float)
    g.add_argument("--vol-target", type=float)
    g.add_argument("--top-k", type=int)
    g.add_argument("--no-backtest", action="store_true", help="skip the walk-forward backtest")
    g.add_argument("--recalibrate-every", type=int)
    g.add_argument("--output-dir", help="output folder (default ssjax_output)")
    g.add_argument("--quiet", action="store_true", help="no progress messages")
    return p


def _pipeline_config(args: argparse.Namespace, argv_given: set[str]) -> dict:
    from ssjax.app.pipeline import load_config, merge_config

    cfg = load_config(args.config)
    over: dict[str, dict] = {}

    def put(section: str, key: str, value) -> None:
        over.setdefault(section, {})[key] = value

    if args.data:
        put("data", "source", args.data)
    if args.commodity:
        put("data", "commodity", args.commodity)
    if args.continuous:
        put("data", "continuous", args.continuous)
    if "--ranks" in argv_given:
        spec = args.ranks.strip()
        try:
            ranks = (
                list(range(1, int(spec) + 1))
                if "," not in spec
                else [int(x) for x in spec.split(",") if x]
            )
        except ValueError:
            raise SystemExit(
                f"--ranks: expected a count or a comma list, got {args.ranks!r}"
            ) from None
        put("data", "ranks", ranks)
    if args.resample:
        put("data", "resample", args.resample)
    if args.t_star is not None:
        put("data", "t_star", args.t_star)
    if "--method" in argv_given:
        put("model", "method", args.method)
    if args.risk_premium:
        put("model", "risk_premium", True)
    if args.shared_noise:
        put("model", "shared_noise", True)
    for flag, section, key in (
        ("sizing", "engine", "sizing"),
        ("vol_target", "engine", "vol_target"),
        ("top_k", "engine", "top_k"),
        ("z_in", "trading", "z_in"),
        ("z_out", "trading", "z_out"),
        ("recalibrate_every", "backtest", "recalibrate_every"),
        ("output_dir", "output", "folder"),
    ):
        v = getattr(args, flag)
        if v is not None:
            put(section, key, v)
    if args.no_backtest:
        put("backtest", "enabled", False)
    return merge_config(cfg, over, where="flags")


def _load_csv(path: str):
    df = pd.read_csv(path, parse_dates=[0])
    dates = pd.DatetimeIndex(df.iloc[:, 0])
    price_cols = [c for c in df.columns[1:] if not str(c).endswith("_ttm")]
    missing = [c for c in price_cols if f"{c}_ttm" not in df.columns]
    if missing:
        raise SystemExit(f"--csv: columns {missing} have no matching '<col>_ttm' column")
    F = df[price_cols].to_numpy(float)
    ttm = df[[f"{c}_ttm" for c in price_cols]].to_numpy(float)
    return dates, F, ttm, None, [str(c) for c in price_cols]


def _load_data(args: argparse.Namespace):
    """--data: any supported settlement layout (or the bundled copper) to a nearby panel."""
    from ssjax.data.panels import nearby_panel
    from ssjax.data.settlements import SettlementError, read_settlements
    from ssjax.datasets import load_copper_schwartz97

    spec = args.ranks.strip()
    try:
        ranks = int(spec) if "," not in spec else [int(x) for x in spec.split(",") if x]
    except ValueError:
        raise SystemExit(f"--ranks: expected a count or a comma list, got {args.ranks!r}") from None
    if args.data == "copper":
        settle = load_copper_schwartz97().settlements
        source = "bundled COMEX copper (schwartz97)"
    else:
        roll = None if args.continuous is None else args.continuous == "chris"
        try:
            settle = read_settlements(args.data, roll_on_last_trade_day=roll)
        except (SettlementError, FileNotFoundError) as e:
            raise SystemExit(f"--data: {e}") from None
        source = args.data
    try:
        panel = nearby_panel(settle, ranks, commodity=args.commodity, resample=args.resample)
    except ValueError as e:
        raise SystemExit(f"--data: {e}") from None
    source = f"{source}, {panel.commodity} nearby ranks {panel.tenor_names}"
    F = np.where(panel.mask, panel.F_mkt, np.nan)
    return panel.dates, F, panel.ttm, None, panel.tenor_names, source


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    if not (args.fit_only or args.csv or args.output or args.spot):
        from ssjax.app.pipeline import check_config, check_data, run_pipeline, to_toml

        try:
            cfg = _pipeline_config(args, given)
            if args.check_config:
                print(check_data(cfg))
                return 0
            if args.print_config:
                check_config(cfg)
                print(to_toml(cfg), end="")
                return 0
        except ValueError as e:
            raise SystemExit(f"ssjax: {e}") from None
        try:
            res = run_pipeline(cfg, quiet=args.quiet, say=print,
                               log=None if args.quiet else _progress)  # fmt: skip
        except ValueError as e:
            raise SystemExit(f"ssjax: {e}") from None
        return 0 if res.fit.optimum_reached else 1
    return _fit_only(args)


def _progress(msg: str) -> None:
    """The main job's progress lines go to stderr (stdout carries the report)."""
    print(msg, file=sys.stderr, flush=True)


def _fit_only(args: argparse.Namespace) -> int:
    import ssjax

    if args.csv and args.data:
        raise SystemExit("give either --csv or --data, not both")
    if args.csv:
        dates, F, ttm, S, names = _load_csv(args.csv)
        source = args.csv
    elif args.data:
        dates, F, ttm, S, names, source = _load_data(args)
    else:
        panel = ssjax.datasets.load_wti_ss2000(args.maturities)
        dates, F, ttm, S, names = panel.dates, panel.F_mkt, panel.ttm, panel.S, panel.tenor_names
        source = f"bundled Schwartz-Smith (2000) weekly WTI panel, maturities={args.maturities}"
    if args.spot and S is None:
        raise SystemExit("--spot: this data set has no spot series")
    t_star = None
    if args.t_star is not None:
        t_star = int(args.t_star) if args.t_star.lstrip("-").isdigit() else args.t_star
    engine = ssjax.KalmanEngine(
        args.method,
        risk_premium=args.risk_premium,
        shared_noise=args.shared_noise,
        states=args.states,
        n_starts=args.n_starts,
    )
    print(f"data: {source}: {F.shape[0]} dates x {F.shape[1]} tenors")
    t0 = time.perf_counter()
    fit = engine.fit(
        F, ttm, S=S if args.spot else None, dates=dates, t_star=t_star, tenor_names=names
    )
    elapsed = time.perf_counter() - t0
    print(fit.summary())
    print(f"fit wall time (including JIT compilation): {elapsed:.1f} s")
    if args.output:
        out = pd.DataFrame(
            np.column_stack([fit.state_path, fit.F_model_path]),
            index=fit.dates,
            columns=["X", "Y"] + [f"F_model_{n}" for n in names],
        )
        out.index.name = "date"
        out.to_csv(args.output)
        print(f"wrote {args.output}")
    return 0 if fit.optimum_reached else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
