"""The data layer: from exchange files to the tenor panels the engines take.

* :mod:`~ssjax.data.settlements` — one long schema, its validator, exchange readers;
* :mod:`~ssjax.data.contracts` — contract codes and last-trade-date rules;
* :mod:`~ssjax.data.calendars` — settlement calendars (CME, NYMEX, COMEX, ICE Europe);
* :mod:`~ssjax.data.panels` — ``Panel``, nearby / constant-maturity panels, stacking;
* :mod:`~ssjax.data.store` — a Parquet store for settlements and panels.

Depends on :mod:`ssjax.core` only. The bundled real datasets are :mod:`ssjax.datasets`.
"""

from __future__ import annotations

from ssjax.data.calendars import (
    CALENDARS,
    FIRST_YEAR,
    LAST_YEAR,
    SPECIAL_CLOSURES,
    CMETradeDateHolidayCalendar,
    TradeCalendar,
    add_trade_days,
    cme_holidays,
    cme_trade_dates,
    get_calendar,
    holidays,
    is_trade_date,
    next_trade_date,
    previous_trade_date,
    trade_dates,
    trade_days_between,
)
from ssjax.data.contracts import (
    CODE_OF_MONTH,
    EXPIRY_RULES,
    MONTH_CODES,
    MONTH_OF_CODE,
    ROOT_CALENDARS,
    ContractCode,
    calendar_of_root,
    contract_code,
    last_trade_date,
    last_trade_dates,
    listed_contracts,
    mmy,
    parse_contract,
    parse_mmy,
)
from ssjax.data.panels import (
    Panel,
    StackedPanels,
    as_stacked,
    constant_maturity_panel,
    market_stack,
    nearby_panel,
    panel_to_long,
    select_dates,
    stack_panels,
    validate_panel,
)
from ssjax.data.settlements import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    SettlementError,
    SettlementWarning,
    read_cme_settlements,
    read_continuous,
    read_long_csv,
    read_settlements,
    sort_settlements,
    validate_settlements,
)
from ssjax.data.store import (
    SETTLEMENT_COLUMNS,
    ParquetStore,
    StoreReport,
)

__all__ = [
    "CALENDARS",
    "TradeCalendar",
    "get_calendar",
    "holidays",
    "trade_dates",
    "FIRST_YEAR",
    "LAST_YEAR",
    "SPECIAL_CLOSURES",
    "CMETradeDateHolidayCalendar",
    "add_trade_days",
    "cme_holidays",
    "cme_trade_dates",
    "is_trade_date",
    "next_trade_date",
    "previous_trade_date",
    "trade_days_between",
    "EXPIRY_RULES",
    "ROOT_CALENDARS",
    "calendar_of_root",
    "MONTH_CODES",
    "MONTH_OF_CODE",
    "CODE_OF_MONTH",
    "ContractCode",
    "contract_code",
    "last_trade_date",
    "last_trade_dates",
    "listed_contracts",
    "mmy",
    "parse_contract",
    "parse_mmy",
    "Panel",
    "as_stacked",
    "market_stack",
    "nearby_panel",
    "constant_maturity_panel",
    "select_dates",
    "stack_panels",
    "validate_panel",
    "StackedPanels",
    "panel_to_long",
    "REQUIRED_COLUMNS",
    "OPTIONAL_COLUMNS",
    "SettlementError",
    "SettlementWarning",
    "validate_settlements",
    "sort_settlements",
    "read_cme_settlements",
    "read_continuous",
    "read_long_csv",
    "read_settlements",
    "ParquetStore",
    "StoreReport",
    "SETTLEMENT_COLUMNS",
]
