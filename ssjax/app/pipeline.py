"""The main job: data → KalmanEngine → compute_model_forward → prepare_trading_inputs →
TradeEngine at t*, plus the walk-forward backtest, with settings from a TOML file.

Settings (all optional; a TOML file overrides these defaults, flags override the file)::

    [data]
    source = "wti"            # "wti" (bundled 2000-paper panel), "copper" (bundled COMEX HG),
                              # or a settlement file in any supported layout
    commodity = ""            # for files with several commodities
    ranks = [1, 5, 9, 13, 17] # nearby ranks (files and copper; wti uses its five tenors)
    resample = ""             # e.g. "W-TUE"
    t_star = ""               # last date used (YYYY-MM-DD or an index); default: last date
    roll_days = 0             # files and copper: roll this many trading days before expiry
    continuous = ""           # a continuous (rank) file: "chris" (rank 1 is already the next
                              # contract on an expiry day) or "exchange" (still the expiring)

    [model]
    method = "MLE"            # MLE, EM or hybrid
    risk_premium = false
    shared_noise = false

    [trading]                 # ssjax.trading.engine.TradingConfig
    sigma_method = "returns"  # or "residuals"
    sigma_window = 60
    z_method = "filtered"     # z = alpha / the model's filtered-residual s.d.,
                              # diag(R − H P_t|t Hᵀ): the variance of alpha itself;
                              # "innovation": the one-step innovation s.d.,
                              # diag(H P_t|t-1 Hᵀ + R); "residual": rolling residual s.d.
    z_in = 2.0
    z_out = 0.5
    max_weight = 1.0
    gross_leverage = 2.0
    fee = 0.0025              # price units per contract (WTI: USD/bbl)
    half_spread = 0.005
    slippage = 0.0025
    min_resid_sd = 1e-6       # below this s.d. of ln F a tenor is fitted exactly: z = 0
    net_exposure = -1.0       # cap on |sum w| (exposure to Y); negative: no cap
    neutral = []              # factors to be neutral to: ["Y"], ["X"] or ["X", "Y"]
    execution_lag = 1         # dates from a decision to its fill (0: at the signal's own
                              # settlement, which no desk can do)
    carry_rolls = true        # a position moves to the new contract at a roll if its z
                              # still passes z_out

    [engine]                  # ssjax.trading.engine.TradeEngine
    sizing = "vol_target"     # or "qp"
    vol_target = 0.10
    gamma = 1.0               # QP risk aversion per year: max (alpha/h).w - gamma w'Sigma w
    alpha_horizon = 0.25      # h: years over which a mispricing alpha is expected to close
    lambda1 = 0.0
    lambda2 = 0.0
    top_k = 0                 # 0: no limit

    [backtest]
    enabled = true
    min_window = 104
    recalibrate_every = 13
    warm_start = true

    [execution]               # ssjax.trading.execution.ExecutionModel (the backtest's fills)
    capital = 0.0             # account capital; > 0: whole lots (0: weights filled exactly)
    multiplier = 1.0          # units per contract (CL: 1000 bbl)
    lot = 1                   # contracts per lot
    fee_per_contract = 0.0    # commissions and fees, currency per contract
    spread = 0.0              # proportional half-spread per side (fraction of price)
    impact = 0.0              # square-root impact at 100% of the day's volume (needs capital)
    max_participation = 0.0   # most of the day's volume a fill may take (0: no cap)

    [output]
    folder = "ssjax_output"

``orders_t`` are the walk-forward backtest's own decision at t*: one rule, live and
backtested. The backtest's calibration schedule is anchored so that it recalibrates at t*
(on the data up to t*), and ``orders_t`` are its decision there (its Θ, trading inputs and
book), made executable by its rules (:func:`ssjax.trading.execution.executable_target`: a
contract on its last trading day or expiring before the next date, one median step after
t*, is neither opened nor kept; a tenor without a price keeps its position) and sent for
the fill ``execution_lag`` dates later (with a lag of 0, they are the fills booked at t*).
Contracts whose tenor rolled at t* are listed as ``roll_closes``. With the backtest
disabled (``--no-backtest``) they come from the full-sample fit at t*, from a flat book
(:func:`orders_at_t_star`). The full-sample fit (``theta.json``, the summary) is reported
either way.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

__all__ = [
    "DEFAULTS",
    "Settings",
    "check_config",
    "check_data",
    "to_toml",
    "load_config",
    "merge_config",
    "orders_at_t_star",
    "run_pipeline",
    "PipelineResult",
]

DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {"source": "wti", "commodity": "", "ranks": [1, 5, 9, 13, 17], "resample": "",
             "t_star": "", "roll_days": 0, "continuous": ""},
    "model": {"method": "MLE", "risk_premium": False, "shared_noise": False},
    "trading": {"sigma_method": "returns", "sigma_window": 60, "z_method": "filtered",
                "z_in": 2.0, "z_out": 0.5, "max_weight": 1.0, "gross_leverage": 2.0,
                "fee": 0.0025, "half_spread": 0.005, "slippage": 0.0025,
                "min_resid_sd": 1e-6, "execution_lag": 1, "carry_rolls": True,
                "net_exposure": -1.0, "neutral": []},
    "engine": {"sizing": "vol_target", "vol_target": 0.10, "gamma": 1.0,
               "alpha_horizon": 0.25, "lambda1": 0.0, "lambda2": 0.0, "top_k": 0},
    "backtest": {"enabled": True, "min_window": 104, "recalibrate_every": 13,
                 "warm_start": True},
    "execution": {"capital": 0.0, "multiplier": 1.0, "lot": 1, "fee_per_contract": 0.0,
                  "spread": 0.0, "impact": 0.0, "max_participation": 0.0},
    "output": {"folder": "ssjax_output"},
}  # fmt: skip


def merge_config(base: dict, override: dict, where: str = "config") -> dict:
    """``base`` updated by ``override``; unknown sections or keys raise naming them."""
    out = copy.deepcopy(base)
    for section, values in override.items():
        if section not in out:
            raise ValueError(f"{where}: unknown section [{section}] (known: {sorted(out)})")
        if not isinstance(values, dict):
            raise ValueError(f"{where}: [{section}] must be a table")
        for key, v in values.items():
            if key not in out[section]:
                raise ValueError(
                    f"{where}: unknown key {key!r} in [{section}] (known: {sorted(out[section])})"
                )
            out[section][key] = v
    return out


def load_config(path: str | Path | None) -> dict:
    """The defaults merged with a TOML file (if given)."""
    if path is None:
        return copy.deepcopy(DEFAULTS)
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            user = tomllib.load(fh)
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config file {path}: {e}") from None
    return merge_config(DEFAULTS, user, where=str(path))


class Settings(NamedTuple):
    """The main job's settings as checked objects (:func:`check_config`)."""

    trading: Any  # TradingConfig
    engine: Any  # TradeEngine
    walk: Any  # WalkForwardSettings
    run_backtest: bool
    execution: Any = None  # ExecutionModel or None


def _check_data(d: dict) -> None:
    def bad(key: str, msg: str) -> ValueError:
        return ValueError(f"[data] {key}: {msg}, got {d[key]!r}")

    src = d["source"]
    if not isinstance(src, str) or not src:
        raise bad("source", "must be 'wti', 'copper' or a settlement file")
    if src not in ("wti", "copper") and not Path(src).is_file():
        raise bad("source", "no such file (nor 'wti' or 'copper')")
    for key in ("commodity", "resample"):
        if not isinstance(d[key], str):
            raise bad(key, "must be a string ('' for none)")
    ranks = d["ranks"]
    if (
        not isinstance(ranks, list)
        or not ranks
        or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in ranks)
        or sorted(set(ranks)) != ranks
    ):
        raise bad("ranks", "must be a non-empty increasing list of nearby ranks >= 1")
    t_star = d["t_star"]
    if not isinstance(t_star, str | int) or isinstance(t_star, bool):
        raise bad("t_star", "must be '' (the last date), a date 'YYYY-MM-DD' or a date index")
    if isinstance(t_star, str) and t_star and not t_star.lstrip("-").isdigit():
        try:
            pd.Timestamp(t_star)
        except (TypeError, ValueError):
            raise bad("t_star", "is not a date") from None
    if d["continuous"] not in ("", "chris", "exchange"):
        raise bad("continuous", "must be '', 'chris' or 'exchange'")
    rd = d["roll_days"]
    if isinstance(rd, bool) or not isinstance(rd, int) or rd < 0:
        raise bad("roll_days", "must be an integer >= 0")


def check_config(cfg: dict) -> Settings:
    """Every setting of ``cfg`` checked before any work, each error one line naming its key
    (``[section] key: problem``): types, ranges, the cross-field rules (z_out < z_in, costs
    >= 0, a settlement file that exists, a backtest window shorter than the data is checked
    once the data are loaded). Returns the settings as the objects the job runs with."""
    from ssjax.trading.engine import TradeEngine, TradingConfig
    from ssjax.trading.execution import ExecutionModel
    from ssjax.trading.settings import WalkForwardSettings

    _check_data(cfg["data"])
    m = cfg["model"]
    if not isinstance(m["method"], str) or m["method"].upper() not in ("MLE", "EM", "HYBRID"):
        raise ValueError(f"[model] method: must be MLE, EM or hybrid, got {m['method']!r}")
    for key in ("risk_premium", "shared_noise"):
        if not isinstance(m[key], bool):
            raise ValueError(f"[model] {key}: must be true or false, got {m[key]!r}")
    b = cfg["backtest"]
    if not isinstance(b["enabled"], bool):
        raise ValueError(f"[backtest] enabled: must be true or false, got {b['enabled']!r}")
    if not isinstance(cfg["output"]["folder"], str) or not cfg["output"]["folder"]:
        raise ValueError(f"[output] folder: must be a path, got {cfg['output']['folder']!r}")

    def build(section: str, make: Callable[[], Any]) -> Any:
        try:
            return make()
        except (TypeError, ValueError) as e:
            raise ValueError(f"[{section}] {e}") from None

    t = dict(cfg["trading"])
    # TOML has no null: a negative net_exposure means no cap, neutral is a list
    if isinstance(t["net_exposure"], int | float) and not isinstance(t["net_exposure"], bool):
        t["net_exposure"] = None if t["net_exposure"] < 0 else t["net_exposure"]
    if isinstance(t["neutral"], list):
        t["neutral"] = tuple(t["neutral"])
    trading = build("trading", lambda: TradingConfig(**t))
    e = dict(cfg["engine"])
    if isinstance(e["top_k"], bool) or not isinstance(e["top_k"], int) or e["top_k"] < 0:
        raise ValueError(f"[engine] top_k: must be an integer >= 0 (0: no limit), got "
                         f"{e['top_k']!r}")  # fmt: skip
    e["top_k"] = e["top_k"] or None
    for key in ("vol_target", "gamma", "alpha_horizon", "lambda1", "lambda2"):
        v = e[key]
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"[engine] {key}: must be a number, got {v!r}")
    engine_fields = {f.name for f in fields(TradeEngine) if f.init}
    engine = build("engine", lambda: TradeEngine(**{k: v for k, v in e.items()
                                                    if k in engine_fields}))  # fmt: skip
    walk = build("backtest", lambda: WalkForwardSettings(
        min_window=b["min_window"], recalibrate_every=b["recalibrate_every"],
        warm_start=b["warm_start"], risk_premium=m["risk_premium"],
        shared_noise=m["shared_noise"], standard_errors=True,
    ))  # fmt: skip
    x = dict(cfg["execution"])
    for key in ("capital", "max_participation"):  # TOML has no null: 0 means none
        if isinstance(x[key], int | float) and not isinstance(x[key], bool) and x[key] == 0:
            x[key] = None
    execution = build("execution", lambda: ExecutionModel(**x))
    if execution == ExecutionModel():
        execution = None  # the default: weights filled exactly
    return Settings(trading, engine, walk, b["enabled"], execution)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string is a JSON string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def to_toml(cfg: dict) -> str:
    """The settings as a TOML document that :func:`load_config` reads back unchanged."""
    lines = []
    for section, values in cfg.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)


class PipelineResult(NamedTuple):
    fit: Any  # KalmanFit
    inputs: Any  # TradingInputs at t*
    decision: Any  # TradeDecision at t* (orders_t)
    table: pd.DataFrame  # the mispricing table at t*
    backtest: Any | None
    files: list[Path]
    w_prev: np.ndarray | None = None  # the book orders_t start from
    start_book: str = "flat"  # "backtest" or "flat"


def _load(cfg: dict):
    """(panel, settlements or None, description) from the [data] section."""
    from ssjax.data.panels import nearby_panel
    from ssjax.data.settlements import SettlementError, read_settlements
    from ssjax.datasets import load_copper_schwartz97, load_wti_ss2000_contracts

    d = cfg["data"]
    src = str(d["source"])
    resample = d["resample"] or None
    if src == "wti":
        b = load_wti_ss2000_contracts()
        return b.panel, b.settlements, "bundled Schwartz-Smith (2000) weekly WTI contracts"
    if src == "copper":
        settle = load_copper_schwartz97().settlements
        desc = "bundled COMEX copper (schwartz97)"
    else:
        try:
            roll = {"": None, "chris": True, "exchange": False}[d["continuous"]]
            settle = read_settlements(src, roll_on_last_trade_day=roll)
        except (SettlementError, OSError) as e:
            raise ValueError(f"[data] source: {e}") from None
        desc = src
    try:
        panel = nearby_panel(settle, list(d["ranks"]), commodity=d["commodity"] or None,
                             resample=resample, roll_days=d["roll_days"])  # fmt: skip
    except ValueError as e:
        raise ValueError(f"[data] {e}") from None
    return panel, settle, desc


def _resolve(cfg: dict, walk: Any, run_bt: bool):
    """The data, t* and the backtest schedule anchored at t* (checked against the data)."""
    from ssjax.core.market import t_star_index

    panel, settle, desc = _load(cfg)
    try:
        t_idx = t_star_index(cfg["data"]["t_star"], len(panel.dates), panel.dates)
    except ValueError as e:
        raise ValueError(f"[data] t_star: {e}") from None
    if run_bt:
        if t_idx < walk.min_window:
            raise ValueError(
                f"[backtest] min_window: {walk.min_window} leaves no trading date up to t* "
                f"(t* is date {t_idx} of the panel); lower it or move t_star"
            )
        # the schedule ends on t*: the Θ in force at t* is fitted on the data up to t*
        walk = walk.replace(
            start=walk.min_window + (t_idx - walk.min_window) % walk.recalibrate_every
        )
    return panel, settle, desc, t_idx, walk


def check_data(cfg: dict) -> str:
    """:func:`check_config`, then load the data and resolve t* and the backtest's schedule
    against them (what ``ssjax --check-config`` runs); no fit. Returns a one-line summary."""
    s = check_config(cfg)
    panel, _, desc, t_idx, walk = _resolve(cfg, s.walk, s.run_backtest)
    line = (f"settings OK: {desc}: {len(panel.dates)} dates x {len(panel.tenor_names)} tenors; "
            f"t* = {panel.dates[t_idx].date()}")  # fmt: skip
    if s.run_backtest:
        line += (f"; backtest trades from {panel.dates[walk.first].date()}, recalibrating "
                 f"every {walk.recalibrate_every} dates")  # fmt: skip
    return line


def orders_at_t_star(
    engine: Any,
    inputs: Any,
    w_prev: ArrayLike,
    price_t: ArrayLike,
    codes_t: ArrayLike,
    expiring_t: ArrayLike,
) -> Any:
    """``orders_t``: the engine's decision at t* from the book ``w_prev``, executed by the
    backtest's rules (:func:`ssjax.trading.execution.executable_target`).

    ``inputs`` should come from :func:`~ssjax.trading.engine.prepare_trading_inputs` with the ttm
    of expiring contracts set to 0 (as :func:`run_pipeline` does: the engine sees them as
    not tradable and opens nothing there). Expiring held positions are closed, a tenor
    without a price or contract keeps its position (no order); ``signals`` are the signs of
    the weights actually targeted where the rules overrode the engine, and the orders are
    recomputed from Δw = target_w − w_prev.
    """
    from ssjax.trading.engine import Order
    from ssjax.trading.execution import executable_target

    w_prev = np.asarray(w_prev, float)
    dec = engine.decide(inputs, w_prev)
    target = executable_target(dec.target_w, w_prev, price_t, codes_t, expiring_t)
    signals = np.where(target != dec.target_w, np.sign(target), dec.signals).astype(float)
    dw = target - w_prev
    orders = [
        Order(int(i), "BUY" if dw[i] > 0 else "SELL", float(abs(dw[i])))
        for i in np.flatnonzero(np.abs(dw) > engine.min_trade)
    ]
    return dec._replace(signals=signals, target_w=target, orders=orders)


def _silent(msg: str) -> None:
    """The default reporter: the library itself prints nothing (the CLI passes ``print``)."""


def _write_diagnostics(
    fit: Any, out_dir: Path, tenor_names: list[str], say: Callable[[str], None]
) -> list:
    """The fit's model diagnostics: a text report, the fit-error table and the PNG plots."""
    from ssjax.analysis.diagnostics import diagnostics_report, plot_diagnostics

    rep = diagnostics_report(fit, tenor_names=list(tenor_names))
    (out_dir / "diagnostics.txt").write_text(rep.to_text() + "\n")
    rep.fit_errors.to_csv(out_dir / "fit_errors.csv")
    files = [out_dir / "diagnostics.txt", out_dir / "fit_errors.csv"]
    files += [Path(f) for f in plot_diagnostics(rep, out_dir / "diagnostics")]
    say("\nmodel diagnostics (fit errors of ln F, model minus market):")
    say(rep.fit_errors.to_string())
    return files


def _write_drift(bt: Any, out_dir: Path, say: Callable[[str], None]) -> list:
    """Drift alerts over the backtest's recalibrations: ``drift_alerts.csv`` and a section
    appended to ``diagnostics.txt`` (:func:`ssjax.analysis.drift.walk_forward_alerts`)."""
    from ssjax.analysis.drift import walk_forward_alerts

    alerts = walk_forward_alerts(bt.params)
    alerts.to_csv(out_dir / "drift_alerts.csv", index=False)
    n_cal = len(bt.params)
    head = (
        f"Drift alerts over the {n_cal} walk-forward recalibrations (parameter: |Δθ| > 5 "
        "overlap-scaled s.e.; cusum: out-of-sample NIS CUSUM above h = 5)"
    )
    lines = [head, "-" * len(head)]
    if len(alerts):
        lines += [f"{r.window_end:%Y-%m-%d}  {r.kind:<9s}  {r.reason}" for r in alerts.itertuples()]
    else:
        lines.append("none")
    text = "\n".join(lines)
    with open(out_dir / "diagnostics.txt", "a") as fh:
        fh.write("\n" + text + "\n")
    say("\n" + text)
    return [out_dir / "drift_alerts.csv"]


def run_pipeline(
    cfg: dict,
    *,
    quiet: bool = False,
    say: Callable[[str], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> PipelineResult:
    """Run the whole chain at t* and (optionally) the backtest; write the output folder.

    The library prints nothing: ``say`` receives the report (Θ, the mispricing table,
    ``orders_t``, the metrics; the ``ssjax`` command passes ``print``) and ``log`` the
    progress of the long steps (the command sends it to stderr). ``quiet`` leaves out the
    diagnostics and drift tables from the report and the progress bars.

    Order of the steps: calibrate on the data up to t*; run the walk-forward backtest up to
    t* (when enabled); then ``orders_t`` at t* from the full calibration's trading inputs,
    starting from the backtest's book going into t* (flat without the backtest) and under
    the backtest's execution rules (:func:`orders_at_t_star`).
    """
    from ssjax.fit.engine import KalmanEngine

    trading_cfg, trade_engine, walk, run_bt, execution = check_config(cfg)
    m = cfg["model"]
    out_dir = Path(cfg["output"]["folder"])
    n_steps = 4 if run_bt else 3

    say = say or _silent
    log = log or _silent
    detail = _silent if quiet else say
    t0 = time.perf_counter()
    panel, settle, desc, t_idx, walk = _resolve(cfg, walk, run_bt)
    say(f"data: {desc}: {len(panel.dates)} dates x {len(panel.tenor_names)} tenors "
          f"{panel.tenor_names}; t* = {panel.dates[t_idx].date()}")  # fmt: skip
    mask = np.asarray(panel.mask, bool) if panel.mask is not None else np.isfinite(panel.F_mkt)
    F = np.where(mask, panel.F_mkt, np.nan)
    log(f"[1/{n_steps}] calibrating the model (the first call compiles, ~10-20 s)...")
    fit = KalmanEngine(
        m["method"], risk_premium=m["risk_premium"], shared_noise=m["shared_noise"]
    ).fit(F, panel.ttm, dates=panel.dates, t_star=t_idx, tenor_names=panel.tenor_names)
    log(f"      done in {time.perf_counter() - t0:.1f} s")
    say(fit.summary())

    bt = None
    if run_bt:
        log(f"[2/{n_steps}] walk-forward backtest up to t* (recalibrating every "
             f"{walk.recalibrate_every} dates)...")  # fmt: skip
        bt = _backtest_to(panel, settle, t_idx, walk, trading_cfg, trade_engine, execution,
                          quiet)  # fmt: skip

    log(f"[{n_steps - 1}/{n_steps}] trading inputs and orders at t*...")
    if bt is not None:
        at = _orders_from_backtest(panel, F, t_idx, bt, trade_engine)
    else:
        at = _orders_at(panel, F, mask, t_idx, fit, trading_cfg, trade_engine)
    say(_orders_text(panel, t_idx, at, bt is not None, trade_engine.sizing))

    log(f"[{n_steps}/{n_steps}] writing the outputs...")
    files = _write_outputs(out_dir, cfg, panel, t_idx, fit, at)
    files += _write_diagnostics(fit, out_dir, panel.tenor_names, detail)
    if bt is not None:
        files += list(bt.report(out_dir / "backtest"))
        say("\nbacktest metrics:\n" + bt.metrics.to_string())
        files += _write_drift(bt, out_dir, detail)
    say(f"\nwrote {len(files)} files to {out_dir}/ ({time.perf_counter() - t0:.1f} s)")
    return PipelineResult(
        fit, at.inputs, at.decision, at.table, bt, files, at.w_prev, at.start_book
    )


def _backtest_to(panel, settle, t_idx: int, walk, trading_cfg, trade_engine, execution,
                 quiet: bool):  # fmt: skip
    """The walk-forward backtest on the panel's dates up to and including t*."""
    from ssjax.trading.backtest import walk_forward

    sub = _head(panel, t_idx + 1)
    return walk_forward(
        sub,
        settle,
        walk,
        trading=trading_cfg,
        engine=trade_engine,
        progress=False if quiet else None,
        execution=execution,
    )


class _AtTStar(NamedTuple):
    """What the main job decides at t*."""

    inputs: Any
    decision: Any
    table: pd.DataFrame
    w_prev: np.ndarray
    start_book: str
    roll_closes: list
    lag: int = 0
    theta_date: str = ""


def _head(panel, end: int):
    """The panel's first ``end`` dates."""
    return panel._replace(
        dates=panel.dates[:end], F_mkt=panel.F_mkt[:end], ttm=panel.ttm[:end],
        contracts=panel.contracts[:end], dt=panel.dt[: end - 1],
        mask=None if panel.mask is None else panel.mask[:end],
        S=None if panel.S is None else panel.S[:end],
    )  # fmt: skip


def _table(panel, F, t_idx, expiring_t, F_model, inputs, signals, w_prev, target):
    """The mispricing table at t*."""
    return pd.DataFrame(
        {
            "contract": panel.contracts[t_idx],
            "ttm": np.asarray(panel.ttm, float)[t_idx],
            "expiring": expiring_t,
            "F_mkt": F[t_idx],
            "F_model": F_model,
            "mispricing": inputs.mispricing,
            "z": inputs.z,
            "signal": np.asarray(signals).astype(int),
            "w_prev": w_prev,
            "target_w": target,
        },
        index=pd.Index(panel.tenor_names, name="tenor"),
    )


def _orders_from_backtest(panel, F, t_idx: int, bt, trade_engine) -> _AtTStar:
    """``orders_t``: the backtest's own decision at t* (its Θ, inputs and book), to fill at
    the next settlement (or at t*'s with ``execution_lag = 0``)."""
    from ssjax.trading.engine import TradeDecision
    from ssjax.trading.execution import expiring_before_next

    sub = _head(panel, t_idx + 1)
    target, orders, w_from = bt.live_orders(sub, trade_engine.min_trade)
    inputs = bt.inputs_last
    signals = np.where(
        target != bt.targets.iloc[-1].to_numpy(float), np.sign(target),
        bt.signals.iloc[-1].to_numpy(float),
    )  # fmt: skip
    M = len(target)
    decision = TradeDecision(signals, target, orders, inputs.z, str(bt.status.iloc[-1]),
                             np.zeros(M, bool))  # fmt: skip
    expiring_t = expiring_before_next(sub.ttm, sub.dt)[-1]
    F_model = bt.F_model.iloc[-1].to_numpy(float)
    table = _table(panel, F, t_idx, expiring_t, F_model, inputs, signals, w_from, target)
    rolls = bt.trades[(bt.trades["date"] == panel.dates[t_idx])
                      & (bt.trades["kind"] == "roll_close")]  # fmt: skip
    roll_closes = [
        {"tenor_id": int(r.tenor_id), "tenor": str(r.tenor), "contract": str(r.contract),
         "side": str(r.side), "size": float(r.size)}
        for r in rolls.itertuples()
    ]  # fmt: skip
    lag = int(bt.info["trading"]["execution_lag"])
    theta_date = str(pd.Timestamp(bt.params.index[-1]).date())
    return _AtTStar(inputs, decision, table, w_from, "backtest", roll_closes, lag, theta_date)


def _orders_at(panel, F, mask, t_idx: int, fit, trading_cfg, trade_engine) -> _AtTStar:
    """Trading inputs and orders at t* from the full fit, from a flat book (no backtest)."""
    from ssjax.trading.engine import prepare_trading_inputs, residual_variances
    from ssjax.trading.execution import expiring_before_next

    ttm = np.asarray(panel.ttm, float)
    dt = np.asarray(panel.dt, float)
    M = F.shape[1]
    w_prev, start_book = np.zeros(M), "flat"
    expiring_t = expiring_before_next(ttm[: t_idx + 1], dt[:t_idx])[-1]
    W = trading_cfg.sigma_window
    lo = max(0, t_idx - W)
    with np.errstate(invalid="ignore", divide="ignore"):
        resid = np.log(F[lo:t_idx]) - np.log(fit.F_model_path[lo:t_idx])
    innov, filt_var = residual_variances(
        fit.params, fit.filter_result, ttm[: t_idx + 1], mask[: t_idx + 1]
    )
    inputs = prepare_trading_inputs(
        F[t_idx],
        fit.F_model_t,
        np.where(expiring_t, 0.0, ttm[t_idx]),  # not tradable: cannot be held to the next date
        cfg=trading_cfg,
        F_mkt_hist=F[lo : t_idx + 1],
        contracts_hist=panel.contracts[lo : t_idx + 1],
        resid_hist=resid,
        filtered_resid_var_t=filt_var[-1],
        innovation_var_t=innov[-1],
        dt=dt[:t_idx],
        kappa=float(np.asarray(fit.params.kappa)),
    )
    decision = orders_at_t_star(
        trade_engine, inputs, w_prev, F[t_idx], panel.contracts[t_idx], expiring_t
    )
    table = _table(panel, F, t_idx, expiring_t, fit.F_model_t, inputs, decision.signals,
                   w_prev, decision.target_w)  # fmt: skip
    return _AtTStar(inputs, decision, table, w_prev, start_book, [])


def _fill_text(lag: int) -> str:
    if lag == 0:
        return "filled at t*'s settlement (execution_lag = 0)"
    return f"to fill at the settlement {lag} date(s) after t* (execution_lag = {lag})"


def _orders_text(panel, t_idx: int, at: _AtTStar, from_backtest: bool, sizing: str) -> str:
    """The mispricing table at t* and ``orders_t``, as the report shows them."""
    lines = []
    out = lines.append
    inputs, decision = at.inputs, at.decision
    with pd.option_context("display.width", 120, "display.float_format", "{:.4f}".format):
        out(f"\nmispricing at t* = {panel.dates[t_idx].date()} (z: {inputs.z_basis})")
        out(at.table.to_string())
    if from_backtest:
        book = ("the backtest's own decision at t*: its calibration, inputs and book; "
                f"{_fill_text(at.lag)}")  # fmt: skip
    else:
        book = "from a flat book (no backtest)"
    out(f"\norders_t ({sizing}; {decision.status}; {book}):")
    if decision.orders:
        for o in decision.orders:
            name, code = panel.tenor_names[o.tenor_id], panel.contracts[t_idx, o.tenor_id]
            out(f"  ({o.tenor_id}, {o.side}, {o.size:.4f})  {name} {code}")
    else:
        out("  none")
    for r in at.roll_closes:
        out(f"  roll close: ({r['tenor_id']}, {r['side']}, {r['size']:.4f})  {r['tenor']} "
              f"{r['contract']} (the contract the backtest held)")  # fmt: skip
    return "\n".join(lines)


def _write_outputs(out_dir: Path, cfg: dict, panel, t_idx: int, fit, at: _AtTStar) -> list:
    """theta.json, mispricing_t.csv, orders_t.json/.csv and config_used.json."""
    decision = at.decision
    out_dir.mkdir(parents=True, exist_ok=True)
    theta = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in fit.theta.items()}
    (out_dir / "theta.json").write_text(json.dumps(theta, indent=2))
    at.table.to_csv(out_dir / "mispricing_t.csv")
    orders = [
        {"tenor_id": o.tenor_id, "tenor": panel.tenor_names[o.tenor_id],
         "contract": str(panel.contracts[t_idx, o.tenor_id]), "side": o.side, "size": o.size}
        for o in decision.orders
    ]  # fmt: skip
    (out_dir / "orders_t.json").write_text(
        json.dumps(
            {
                "date": str(panel.dates[t_idx].date()),
                "status": decision.status,
                "z_basis": at.inputs.z_basis,
                "start_book": at.start_book,
                "w_prev": [float(x) for x in at.w_prev],
                "orders": orders,
                "roll_closes": at.roll_closes,
                "execution_lag": at.lag,
                "theta_date": at.theta_date or None,
            },
            indent=2,
        )  # fmt: skip
    )
    pd.DataFrame(orders, columns=["tenor_id", "tenor", "contract", "side", "size"]).to_csv(
        out_dir / "orders_t.csv", index=False
    )
    (out_dir / "config_used.json").write_text(json.dumps(cfg, indent=2, default=str))
    names = ("theta.json", "mispricing_t.csv", "orders_t.json", "orders_t.csv", "config_used.json")
    return [out_dir / n for n in names]
