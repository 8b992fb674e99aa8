"""Bundled real datasets (shipped inside the package; no network access).

* :func:`load_wti_ss2000` — the Schwartz–Smith (2000) weekly NYMEX WTI panel: 268 Tuesdays
  from 1990-01-02 to 1995-02-14, the 1st, 5th, 9th, 13th and 17th nearest contracts
  (F1, F5, F9, F13, F17), a spot series, the contract behind every cell and its last trading
  day. Source: the R package NFCP (GPL-3), object ``SS_oil``; see ``README.md`` beside it.
* :func:`load_wti_ss2000_contracts` — the same 268 dates with every contract observed (82
  contracts, ~21 per date) as a settlement table, and the F1…F17 panel rebuilt from it.
* :func:`load_copper_schwartz97` — daily COMEX copper (HG), 1996-01-02 to 2010-09-07, the 8
  nearest contracts (R package schwartz97, GPL >= 2): settlement table and nearby panel.
* :func:`load_natgas_rtl`, :func:`load_brent_rtl` — daily NYMEX natural gas (NG) and ICE
  Brent settlements of the 1st to 36th nearby contracts with their days to expiry,
  2007-01-02 to 2014-12-31 (R package RTL), as a panel of chosen nearby ranks (weekly
  Tuesdays by default). Natural gas in particular has windows whose likelihood is
  multi-modal, with degenerate local maxima (|ρ| → 1, a vanishing factor).
* :func:`load_ss2000_published` — the numbers Schwartz and Smith (2000) print for their
  futures data (Tables 2, 3 and 4), to compare a reproduction with.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ssjax.core.market import DAYS_PER_YEAR, year_fraction
from ssjax.data.panels import Panel

__all__ = [
    "Panel",
    "Bundled",
    "load_wti_ss2000",
    "load_wti_ss2000_contracts",
    "load_copper_schwartz97",
    "load_natgas_rtl",
    "load_brent_rtl",
    "load_ss2000_published",
    "RTL_TENORS",
]

_TENORS = ("F1", "F5", "F9", "F13", "F17")


def load_wti_ss2000(maturities: str = "act365") -> Panel:
    """Load the bundled weekly WTI panel of Schwartz and Smith (2000).

    Args:
        maturities: how ``ttm`` is measured:
            ``"act365"`` (default) — calendar days from the date to the contract's last
            trading day / 365 (the document's ACT/365 convention), the last trading day by
            the NYMEX rule (the source's dates disagree with it on 24 of 82 contracts and are
            corrected: datasets README); on the two dates where the source's F1 is a contract
            past that day (1994-08-23 and 1995-01-24) the row is the n-th available
            contracts by the rule, rebuilt from the contract file (as
            :func:`load_wti_ss2000_contracts`; an independent copy of the data has them);
            ``"bus262"`` — the source's business days / 262;
            ``"fixed"`` — the paper's fixed maturities 1, 5, 9, 13, 17 months (/12).

    Returns:
        :class:`Panel` with ``dt`` = 7/365 between consecutive Tuesdays.
    """
    pkg = resources.files(__name__)
    with (pkg / "ss2000_wti_weekly.csv").open("r") as fh:
        df = pd.read_csv(fh, parse_dates=["date"])
    with (pkg / "ss2000_wti_contract_last_trade_dates.csv").open("r") as fh:
        ltd = pd.read_csv(fh, parse_dates=["last_trade_date"]).set_index("contract")
    dates = pd.DatetimeIndex(df["date"])
    F = df[list(_TENORS)].to_numpy(float)
    contracts = df[[f"{t}_contract" for t in _TENORS]].to_numpy()
    if maturities == "act365":
        last = np.stack(
            [df[f"{t}_contract"].map(ltd["last_trade_date"]).to_numpy() for t in _TENORS], 1
        )
        ttm = year_fraction(dates.values[:, None], last)
        rows = (ttm < 0).any(axis=1)  # F1 priced after its last trading day (two dates)
        if rows.any():
            rebuilt = load_wti_ss2000_contracts().panel
            F[rows], ttm[rows] = rebuilt.F_mkt[rows], rebuilt.ttm[rows]
            contracts = contracts.copy()
            contracts[rows] = rebuilt.contracts[rows]
    elif maturities == "bus262":
        ttm = df[[f"{t}_ttm_years" for t in _TENORS]].to_numpy(float)
    elif maturities == "fixed":
        ttm = np.broadcast_to(np.array([1, 5, 9, 13, 17], float) / 12.0, F.shape).copy()
    else:
        raise ValueError(f"maturities must be 'act365', 'bus262' or 'fixed', got {maturities!r}")
    dt = year_fraction(dates.values[:-1], dates.values[1:])
    return Panel(
        dates,
        F,
        ttm,
        df["spot"].to_numpy(float),
        contracts,
        list(_TENORS),
        dt,
        np.isfinite(F),
        "CL",
    )


class Bundled(NamedTuple):
    """A bundled data set: the long settlement table and a ready panel built from it."""

    settlements: pd.DataFrame
    panel: Panel


#: Rows of the bundled files dated on exchange holidays, kept as the sources have them: the
#: Schwartz–Smith panel's 1990-12-25 and 1991-01-01 (Tuesdays of its weekly grid; the data
#: README notes that two copies of the panel give different prices there) and copper's
#: 2007-01-02 (COMEX closed for President Ford's funeral; the source repeats 2006-12-29).
_KNOWN_HOLIDAY_ROWS = {
    "ss2000_wti_weekly_contracts_long.csv.gz": "1990-12-25, 1991-01-01",
    "schwartz97_copper_daily.csv.gz": "2007-01-02",
}


def _read_gz(name: str) -> pd.DataFrame:
    import warnings

    from ssjax.data.settlements import read_long_csv

    with resources.as_file(resources.files(__name__) / name) as path:
        with warnings.catch_warnings():
            if name in _KNOWN_HOLIDAY_ROWS:
                days = re.escape(_KNOWN_HOLIDAY_ROWS[name])
                warnings.filterwarnings("ignore", message=rf".*holidays at rows .*\({days}\)")
            return read_long_csv(path)


def load_wti_ss2000_contracts(ranks: tuple[int, ...] = (1, 5, 9, 13, 17)) -> Bundled:
    """Every WTI contract of the 2000 paper's 268 weekly dates, and a nearby panel.

    The settlement table has columns ``trade_date, commodity, contract, expiration_date,
    settlement_price``. The panel takes the nearby
    ``ranks`` among the contracts observed that day (the source's stitching), which
    reproduces F1, F5, F9, F13 and F17 of :func:`load_wti_ss2000` exactly; ttm is ACT/365.
    """
    from ssjax.data.panels import nearby_panel

    settle = _read_gz("ss2000_wti_weekly_contracts_long.csv.gz")
    return Bundled(settle, nearby_panel(settle, list(ranks), among="observed"))


def load_copper_schwartz97(ranks: int = 8) -> Bundled:
    """Daily COMEX copper futures (US cents/lb), 3,681 dates from 1996-01-02 to 2010-09-07.

    From the CRAN package schwartz97 (object ``futures``; Bloomberg tickers): the 8 nearest
    contracts each day with last trading days, open interest and volume (29,448 rows). 13
    rows of the source carry neither a contract nor a price (1999-11-04 ranks 2-8,
    1999-11-09 rank 1, 2001-09-11 ranks 5, 6 and 8, 2003-11-25 rank 1, 2004-12-29 rank 1;
    these are all of its missing prices) and are dropped with a warning silenced here, so
    the settlement table has 29,435 rows and no missing price. The panel holds nearby ranks
    1..``ranks`` with each contract's actual ttm = (last trading day − date)/365, equal to
    the source's ``ttm_days``/365; with the default 8 ranks, exactly those 13 cells are
    masked (ranks count every listed contract, so each names its contract and keeps a ttm).
    """
    import warnings

    from ssjax.data.panels import nearby_panel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*neither a contract nor a price.*")
        settle = _read_gz("schwartz97_copper_daily.csv.gz")
    return Bundled(settle, nearby_panel(settle, ranks))


#: the nearby ranks (≈ months to expiry) of the benchmark panels: 1, 3, 6, 9, 12 and 24
RTL_TENORS = (1, 3, 6, 9, 12, 24)


def _load_rtl(name: str, prefix: str, commodity: str, ranks, weekday) -> Panel:
    ranks = tuple(int(r) for r in ranks)
    if not ranks or min(ranks) < 1 or max(ranks) > 36 or len(set(ranks)) != len(ranks):
        raise ValueError(f"ranks must be distinct nearby ranks between 1 and 36, got {ranks}")
    days = ("MON", "TUE", "WED", "THU", "FRI")
    if weekday is not None and weekday not in days:
        raise ValueError(f"weekday must be one of {days} or None (every day), got {weekday!r}")
    pkg = resources.files(__name__)
    with (pkg / f"rtl_{name}_futures_daily_prices_2007_2014.csv.gz").open("rb") as fh:
        prices = pd.read_csv(fh, compression="gzip", parse_dates=["date"])
    with (pkg / f"rtl_{name}_futures_daily_ttm_days_2007_2014.csv.gz").open("rb") as fh:
        ttm_days = pd.read_csv(fh, compression="gzip", parse_dates=["date"])
    if not prices["date"].equals(ttm_days["date"]):  # pragma: no cover - bundled data
        raise ValueError(f"the bundled {name} price and ttm files have different dates")
    if weekday is not None:
        keep = (prices["date"].dt.day_of_week == days.index(weekday)).to_numpy()
        prices, ttm_days = prices[keep], ttm_days[keep]
    cols = [f"{prefix}{r:02d}" for r in ranks]
    F = prices[cols].to_numpy(float)
    d = ttm_days[[f"{c}_ttm_days" for c in cols]].to_numpy(float)
    dates = pd.DatetimeIndex(prices["date"])
    mask = np.isfinite(F) & (F > 0)
    # the contract behind a cell is named by its expiry day (the source gives no tickers)
    expiry = dates.values[:, None] + d.astype("timedelta64[D]")
    contracts = np.char.add(f"{commodity}@", np.datetime_as_string(expiry, unit="D"))
    dt = year_fraction(dates.values[:-1], dates.values[1:])
    return Panel(
        dates, F, d / DAYS_PER_YEAR, None, contracts.astype(object), cols, dt, mask, commodity
    )


def load_natgas_rtl(ranks: tuple[int, ...] = RTL_TENORS, weekday: str | None = "TUE") -> Panel:
    """NYMEX natural gas (Henry Hub, USD/MMBtu) futures by nearby rank, 2007-2014.

    Daily settlements of the 1st to 36th nearby contracts and each one's calendar days to
    expiry, from the R package RTL (risk tool library), 2,018 trading days from 2007-01-02 to
    2014-12-31. Returns the ``ranks`` as tenors (default 1, 3, 6, 9, 12, 24: the calibration
    benchmark's panel), sampled on one ``weekday`` (default Tuesday: 414 dates; ``None``: every
    day), ttm = days / 365 (ACT/365), the contract behind each cell named by its expiry day.
    30 cells of the source are empty (ranks 8-36 on one day) and are masked.
    """
    return _load_rtl("natgas", "NG", "NG", ranks, weekday)


def load_brent_rtl(ranks: tuple[int, ...] = RTL_TENORS, weekday: str | None = "TUE") -> Panel:
    """ICE Brent (USD/bbl) futures by nearby rank, 2007-2014: as :func:`load_natgas_rtl`
    (2,066 trading days, 414 Tuesdays; 5 empty cells of the source, ranks 33-36, masked)."""
    return _load_rtl("brent", "BRN", "BRN", ranks, weekday)


def load_ss2000_published() -> dict[str, Any]:
    """The published numbers of Schwartz and Smith (2000) for their futures data.

    Schwartz, E. S. and Smith, J. E. (2000), Short-Term Variations and Long-Term Dynamics in
    Commodity Prices, Management Science 46(7), 893-911: Table 2 (estimates and standard
    errors in the paper's parameterisation: ``kappa``, ``sigma_chi``, ``lambda_chi``,
    ``mu_xi``, ``sigma_xi``, ``mu_star_xi``, ``rho_xi_chi`` and ``measurement_error_sd``
    ``s1_1mo`` … ``s5_17mo``; ``se`` ``None`` where none is printed), Table 3 (fit errors by
    tenor: ``mean``, ``sd``, ``mae``) and Table 4 (log-likelihoods of GBM, the one-factor
    mean-reverting and the two-factor model). Percentages of the paper are decimals. The
    paper's description of its data is under ``data_in_paper``.

    Returns:
        The JSON document as a dict (a fresh copy on every call).
    """
    text = resources.files(__name__).joinpath("ss2000_published.json").read_text("utf-8")
    return json.loads(text)
