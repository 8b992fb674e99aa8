"""Settlement schema, validator and readers, on the CME and continuous-contract fixtures."""

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssjax.settlements import (
    REQUIRED_COLUMNS,
    SettlementError,
    read_cme_settlements,
    read_continuous,
    read_long_csv,
    read_settlements,
    validate_settlements,
)

FIX = Path(__file__).parent / "fixtures"
CME = FIX / "cme_settlements_sample.csv"
CHRIS = FIX / "quandl_continuous_sample.csv"


@pytest.fixture(scope="module")
def cme():
    return read_cme_settlements(CME)


def _table(**overrides):
    df = pd.DataFrame(
        {
            "trade_date": ["2024-08-01", "2024-08-01", "2024-08-02", "2024-08-02"],
            "commodity": ["CL"] * 4,
            "contract": ["CLU24", "CLV24", "CLU24", "CLV24"],
            "expiration_date": ["2024-08-20", "2024-09-20", "2024-08-20", "2024-09-20"],
            "settlement_price": [76.3, 75.79, 78.42, 77.6],
        }
    )
    for k, v in overrides.items():
        df[k] = v
    return df


def test_cme_reader_schema_and_values(cme):
    raw = pd.read_csv(CME, dtype=str, keep_default_na=False)
    assert len(cme) == len(raw) == 2136
    assert list(cme.columns[:5]) == list(REQUIRED_COLUMNS)
    assert cme["trade_date"].dtype == "datetime64[ns]"
    assert set(cme["commodity"]) == {"CL", "NG", "HG"}
    # every observed cell comes back with its exact price and expiry
    raw["contract"] = raw["Sym"] + raw["MMY"].map(
        lambda m: "FGHJKMNQUVXZ"[int(m[4:6]) - 1] + m[2:4]
    )
    merged = raw.merge(
        cme.assign(BizDt=cme["trade_date"].dt.strftime("%Y-%m-%d")),
        left_on=["BizDt", "contract"],
        right_on=["BizDt", "contract"],
    )
    assert len(merged) == 2136
    np.testing.assert_array_equal(
        merged["SettlePrice"].astype(float), merged["settlement_price"].to_numpy()
    )
    assert (merged["LastTrdDt"] == merged["expiration_date"].dt.strftime("%Y-%m-%d")).all()
    # the file's line numbers label the rows (header = line 1)
    assert cme.index.min() >= 2 and cme.index.max() == 2137


def test_cme_volume_and_open_interest_are_realigned(cme):
    """PrevDayVol/PrevDayOI on date t+1 belong to date t."""
    raw = pd.read_csv(CME, dtype=str, keep_default_na=False)
    row = raw[(raw["BizDt"] == "2024-08-02") & (raw["Sym"] == "CL") & (raw["MMY"] == "202409")]
    got = cme[(cme["trade_date"] == "2024-08-01") & (cme["contract"] == "CLU24")]
    assert float(got["volume"].iloc[0]) == float(row["PrevDayVol"].iloc[0])
    assert float(got["open_interest"].iloc[0]) == float(row["PrevDayOI"].iloc[0])
    last = cme[cme["trade_date"] == cme["trade_date"].max()]
    assert last["volume"].isna().all()


def test_cme_missing_expiry_is_derived():
    text = CME.read_text().splitlines()
    header, rows = text[0], text[1:40]
    cols = header.split(",")
    k = cols.index("LastTrdDt")
    blanked = []
    for r in rows:
        fields = r.split('","')
        fields[k] = ""
        blanked.append('","'.join(fields))
    df = read_cme_settlements(io.StringIO("\n".join([header, *blanked])))
    ref = read_cme_settlements(io.StringIO("\n".join([header, *rows])))
    pd.testing.assert_series_equal(df["expiration_date"], ref["expiration_date"])


def test_continuous_reader_matches_cme(cme):
    q = read_continuous(CHRIS)
    assert len(q) == 360 and set(q["rank"]) == set(range(1, 7))
    m = q.merge(cme, on=["trade_date", "commodity", "contract"], suffixes=("_q", "_c"))
    assert len(m) == 360
    np.testing.assert_array_equal(m["settlement_price_q"], m["settlement_price_c"])
    # open interest: known where the contract is still among CL1..CL6 the next day
    both = m.dropna(subset=["open_interest_q", "open_interest_c"])
    assert len(both) == 351  # 354 day pairs less the 3 expiring front contracts
    np.testing.assert_array_equal(both["open_interest_q"], both["open_interest_c"])
    vol = m.dropna(subset=["volume_c"])
    assert len(vol) == 354
    np.testing.assert_array_equal(vol["volume_q"], vol["volume_c"])
    # CL1 rolls ON the last trading day by default; off by one day with the other rule
    d = pd.Timestamp("2024-08-20")
    assert q[(q["trade_date"] == d) & (q["rank"] == 1)]["contract"].item() == "CLV24"
    q2 = read_continuous(CHRIS, roll_on_last_trade_day=False)
    assert q2[(q2["trade_date"] == d) & (q2["rank"] == 1)]["contract"].item() == "CLU24"


def test_single_dataset_continuous_layout():
    merged = pd.read_csv(CHRIS)
    cols = [c for c in merged.columns if c.startswith("CHRIS/CME_CL1 - ")]
    single = merged[["Date", *cols]].rename(columns=lambda c: c.replace("CHRIS/CME_CL1 - ", ""))
    single = single.iloc[::-1]  # the API's newest-first order
    buf = io.StringIO(single.to_csv(index=False))
    q = read_continuous(buf, root="CL", rank=1)
    ref = read_continuous(CHRIS)
    ref = ref[ref["rank"] == 1].reset_index(drop=True)
    np.testing.assert_array_equal(q["settlement_price"], ref["settlement_price"])
    assert list(q["contract"]) == list(ref["contract"])
    with pytest.raises(SettlementError, match="give root= and rank="):
        read_continuous(io.StringIO(single.to_csv(index=False)))


def test_long_csv_aliases_and_derived_expiry():
    df = pd.DataFrame(
        {
            "Date": ["2024-08-01", "2024-08-01"],
            "Ticker": ["CLU24", "CLV24"],
            "Settle": ["76.30", "75.79"],
        }
    )
    out = read_long_csv(io.StringIO(df.to_csv(index=False)))
    assert list(out["commodity"]) == ["CL", "CL"]
    assert list(out["expiration_date"].dt.strftime("%Y-%m-%d")) == ["2024-08-20", "2024-09-20"]
    with pytest.raises(SettlementError, match="missing column"):
        read_long_csv(io.StringIO("foo,bar\n1,2\n"))


def test_read_settlements_detects_layouts(tmp_path):
    assert read_settlements(CME).shape[0] == 2136
    assert read_settlements(CHRIS).shape[0] == 360
    p = tmp_path / "long.csv"
    p.write_text("date,contract,last_trade_date,price\n2024-08-01,CLU24,2024-08-20,76.3\n")
    assert read_settlements(p)["settlement_price"].item() == 76.3


def test_validator_reports_every_problem_with_rows():
    df = _table(
        trade_date=["2024-08-01", "2024-13-45", "2024-08-01", "2024-08-22"],
        contract=["CLU24", "CLV24", "CLU24", "CLU24"],
        expiration_date=["2024-08-20", "2024-09-20", "2024-08-20", "2024-08-20"],
    )
    df.index = [10, 11, 12, 13]
    with pytest.raises(SettlementError) as err:
        validate_settlements(df)
    msg = str(err.value)
    assert "trade_date: unparseable dates at rows [11]" in msg
    assert "duplicate (trade_date, commodity, contract) at rows [10, 12]" in msg
    assert "contracts past expiry at rows [13]" in msg and "CLU24 traded 2024-08-22" in msg
    assert len(err.value.problems) == 3


def test_validator_missing_columns_lists_expected():
    with pytest.raises(SettlementError, match="missing column.*'settlement_price'.*expected"):
        validate_settlements(_table().drop(columns=["settlement_price"]))


def test_negative_price_masked_with_warning_or_raised():
    df = _table(settlement_price=[76.3, -37.63, 78.42, np.inf])
    with pytest.warns(UserWarning, match=r"non-positive or non-finite at rows \[1, 3\]"):
        out = validate_settlements(df)
    assert np.isnan(out["settlement_price"].iloc[1]) and np.isnan(out["settlement_price"].iloc[3])
    with pytest.raises(SettlementError, match="non-positive"):
        validate_settlements(df, on_bad_price="raise")


def test_unsorted_input_is_reported_or_sorted():
    df = _table().iloc[[2, 0, 1, 3]]
    with pytest.raises(SettlementError, match="unsorted input.*first out of place at row 2"):
        validate_settlements(df)
    out = validate_settlements(df, sort=True)
    assert list(out.index) == [0, 1, 2, 3]


def test_two_expiries_for_one_contract():
    df = _table(expiration_date=["2024-08-20", "2024-09-20", "2024-08-21", "2024-09-20"])
    with pytest.raises(SettlementError, match="more than one expiration_date"):
        validate_settlements(df)


def test_empty_rows_in_long_file_are_dropped_with_warning():
    text = (
        "date,nearby,contract,last_trade_date,price\n"
        "1999-11-04,1,HGX99,1999-11-26,80.65\n"
        "1999-11-04,2,,,\n"
    )
    with pytest.warns(UserWarning, match=r"dropped 1 row.*lines \[3\]"):
        out = read_long_csv(io.StringIO(text))
    assert len(out) == 1


def test_bad_contract_code_names_the_line():
    text = "date,contract,price\n2024-08-01,CLU24,76.3\n2024-08-01,CL?24,75.0\n"
    with pytest.raises(SettlementError, match="line 3: contract code 'CL\\?24'"):
        read_long_csv(io.StringIO(text))
