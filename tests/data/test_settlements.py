"""Settlement schema, validator and readers, on the CME and continuous-contract fixtures."""

import io

import numpy as np
import pandas as pd
import pytest
from repo_paths import FIXTURES

from ssjax.data.settlements import (
    REQUIRED_COLUMNS,
    SettlementError,
    SettlementWarning,
    read_cme_settlements,
    read_continuous,
    read_long_csv,
    read_settlements,
    validate_settlements,
)

FIX = FIXTURES
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
    q = read_continuous(CHRIS, roll_on_last_trade_day=True)
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
    q = read_continuous(buf, root="CL", rank=1, roll_on_last_trade_day=True)
    ref = read_continuous(CHRIS, roll_on_last_trade_day=True)
    ref = ref[ref["rank"] == 1].reset_index(drop=True)
    np.testing.assert_array_equal(q["settlement_price"], ref["settlement_price"])
    assert list(q["contract"]) == list(ref["contract"])
    with pytest.raises(SettlementError, match="give root= and rank="):
        read_continuous(io.StringIO(single.to_csv(index=False)), roll_on_last_trade_day=True)


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
    assert read_settlements(CHRIS, roll_on_last_trade_day=True).shape[0] == 360
    with pytest.raises(SettlementError, match="choose the rank convention"):
        read_settlements(CHRIS)
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


def _messy():
    """Five problems at once, rows labelled like file lines."""
    df = pd.DataFrame(
        {
            "trade_date": [
                "2024-08-02",  # 2: ahead of lines 3 and 4 (unsorted)
                "2024-08-01",
                "2024-08-01",
                "2024-08-32",  # 5: unparseable
                "2024-08-02",  # 6: price -37.63
                "2024-08-02",  # 7: duplicate of line 6
                "2024-08-22",  # 8: CLU24 after its last trading day
            ],
            "commodity": ["CL"] * 7,
            "contract": ["CLU24", "CLU24", "CLV24", "CLV24", "CLV24", "CLV24", "CLU24"],
            "expiration_date": ["2024-08-20", "2024-08-20", "2024-09-20", "2024-09-20",
                                "2024-09-20", "2024-09-20", "2024-08-20"],
            "settlement_price": [78.42, 76.3, 75.79, 75.0, -37.63, 77.6, 80.0],
        },
        index=pd.RangeIndex(2, 9, name="line"),
    )  # fmt: skip
    return df


UNPARSEABLE = "trade_date: unparseable dates at rows [5] ('2024-08-32')"
BAD_PRICE = "settlement_price: non-positive or non-finite at rows [6] (values [-37.63])"
DUPLICATE = "duplicate (trade_date, commodity, contract) at rows [6, 7]"
EXPIRED = "contracts past expiry at rows [8] (CLU24 traded 2024-08-22 after expiry 2024-08-20)"
UNSORTED = (
    "unsorted input: expected order ['commodity', 'trade_date', 'expiration_date', 'contract']; "
    "first out of place at row 2; 1 row(s) with unparseable or empty dates not checked "
    "(pass sort=True or call sort_settlements)"
)


def test_validator_reports_all_problems_together():
    with pytest.raises(SettlementError) as err:
        validate_settlements(_messy(), on_bad_price="raise", source="messy.csv")
    assert err.value.problems == [UNPARSEABLE, BAD_PRICE, DUPLICATE, EXPIRED, UNSORTED]
    assert str(err.value).startswith("5 problem(s) with the settlement data in messy.csv:")
    # masking the bad price (with a warning naming its row) leaves the other four
    with pytest.warns(UserWarning, match=r"non-positive or non-finite at rows \[6\]"):
        with pytest.raises(SettlementError) as err:
            validate_settlements(_messy())
    assert err.value.problems == [UNPARSEABLE, DUPLICATE, EXPIRED, UNSORTED]
    # sort=True sorts instead of complaining, but the rest is still an error
    with pytest.raises(SettlementError) as err:
        validate_settlements(_messy(), on_bad_price="raise", sort=True)
    assert err.value.problems == [UNPARSEABLE, BAD_PRICE, DUPLICATE, EXPIRED]


def test_validator_checks_the_columns_that_are_there():
    df = _messy().drop(columns=["expiration_date"])
    with pytest.raises(SettlementError) as err:
        validate_settlements(df, on_bad_price="raise")
    missing, *rest = err.value.problems
    assert missing.startswith("missing column(s) ['expiration_date']; expected columns [")
    assert "'settlement_price']" in missing and "got ['trade_date'" in missing
    assert rest == [
        UNPARSEABLE,
        BAD_PRICE,
        DUPLICATE,
        "unsorted input: expected order ['commodity', 'trade_date'] (of ['commodity', "
        "'trade_date', 'expiration_date', 'contract']); first out of place at row 2; 1 row(s) "
        "with unparseable or empty dates not checked (pass sort=True or call sort_settlements)",
    ]  # past expiry needs the expiration column: not checked
    # with no column of the order left, nothing about sorting is claimed
    only_price = pd.DataFrame({"settlement_price": ["1.5", "x", "-2"]})
    with pytest.raises(SettlementError) as err:
        validate_settlements(only_price, on_bad_price="raise")
    assert [p.split(" at rows")[0] for p in err.value.problems] == [
        "missing column(s) ['trade_date', 'commodity', 'contract', 'expiration_date']; expected "
        "columns ['trade_date', 'commodity', 'contract', 'expiration_date', 'settlement_price'] "
        "(optional ['volume', 'open_interest']), got ['settlement_price']",
        "settlement_price: not a number",
        "settlement_price: non-positive or non-finite",
    ]


def test_continuous_reader_accepts_prev_day_open_interest_spelling():
    """Older CHRIS datasets name the last column 'Prev. Day Open Interest'."""
    merged = pd.read_csv(CHRIS)
    cols = [c for c in merged.columns if c.startswith("CHRIS/CME_CL1 - ")]
    single = merged[["Date", *cols]].rename(columns=lambda c: c.replace("CHRIS/CME_CL1 - ", ""))
    assert "Previous Day Open Interest" in single.columns
    kw = {"root": "CL", "rank": 1, "roll_on_last_trade_day": True}
    ref = read_continuous(io.StringIO(single.to_csv(index=False)), **kw)
    # the next row's previous-day figure: none for the last date and the 3 roll days
    assert ref["open_interest"].notna().sum() == 60 - 1 - 3
    old = single.rename(columns={"Previous Day Open Interest": "Prev. Day Open Interest"})
    got = read_continuous(io.StringIO(old.to_csv(index=False)), **kw)
    pd.testing.assert_frame_equal(got, ref)
    # the same spelling in the merged layout
    renamed = merged.rename(columns=lambda c: c.replace("Previous Day", "Prev. Day"))
    got = read_continuous(io.StringIO(renamed.to_csv(index=False)), roll_on_last_trade_day=True)
    pd.testing.assert_frame_equal(got, read_continuous(CHRIS, roll_on_last_trade_day=True))


def test_read_settlements_detects_the_layout_of_a_compressed_file(tmp_path):
    """The bundled ``.csv.gz`` reads like its uncompressed copy (the header is sniffed
    through the compression), and an empty file is refused by name."""
    import gzip
    from importlib import resources

    gz = resources.files("ssjax.datasets") / "ss2000_wti_weekly_contracts_long.csv.gz"
    plain = tmp_path / "long.csv"
    plain.write_bytes(gzip.decompress(gz.read_bytes()))
    # the panel's two Tuesdays on exchange holidays are reported (see ssjax.datasets)
    with pytest.warns(SettlementWarning, match=r"NYMEX holidays .*\(1990-12-25, 1991-01-01\)"):
        a = read_settlements(str(gz))
    with pytest.warns(SettlementWarning, match="NYMEX holidays"):
        b = read_settlements(plain)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) > 5000 and set(a["commodity"]) == {"CL"}
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(SettlementError, match="empty"):
        read_settlements(empty)


# ---- readers: figures on the right date, clear errors, both conventions, sanity checks ----
def test_cme_previous_day_figures_go_to_the_previous_trade_date(tmp_path):
    """PrevDayVol on a row dated t is the volume of the CME trade date before t: a file with
    a gap leaves the date before the gap without a volume (it is not the figure of the next
    date in the file), and a one-day file has none (the file does not say them)."""
    raw = pd.read_csv(CME, dtype=str, keep_default_na=False)
    days = sorted(raw["BizDt"].unique())
    assert len(days) >= 4
    gap = raw[raw["BizDt"] != days[2]]  # drop the third date
    p = tmp_path / "gap.csv"
    gap.to_csv(p, index=False)
    got = read_cme_settlements(p)
    before_gap = got[got["trade_date"] == days[1]]
    assert before_gap["volume"].isna().all() and before_gap["open_interest"].isna().all()
    # the first date still gets the second date's PrevDayVol (consecutive trade dates)
    row = raw[(raw["BizDt"] == days[1]) & (raw["Sym"] == "CL") & (raw["MMY"] == "202409")]
    first = got[(got["trade_date"] == days[0]) & (got["contract"] == "CLU24")]
    assert float(first["volume"].iloc[0]) == float(row["PrevDayVol"].iloc[0])
    one = tmp_path / "one.csv"
    raw[raw["BizDt"] == days[0]].to_csv(one, index=False)
    assert read_cme_settlements(one)["volume"].isna().all()


def test_cme_header_case_no_futures_and_renamed_price(tmp_path):
    text = CME.read_text()
    header, body = text.split("\n", 1)
    low = tmp_path / "low.csv"
    low.write_text(header.lower() + "\n" + body)
    pd.testing.assert_frame_equal(read_settlements(low), read_cme_settlements(CME))
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(header.replace("SettlePrice", "Settle Price") + "\n" + body)
    with pytest.raises(SettlementError, match="without a SettlePrice column") as e:
        read_settlements(renamed)
    assert "renamed.csv" in str(e.value)
    opts = tmp_path / "options.csv"
    raw = pd.read_csv(CME, dtype=str, keep_default_na=False)
    raw.assign(SecTyp="OOF").head(5).to_csv(opts, index=False)
    with pytest.raises(SettlementError, match="no futures rows") as e:
        read_settlements(opts)
    assert "options.csv" in str(e.value) and "OOF" in str(e.value)


def test_malformed_files_are_refused_naming_file_and_line(tmp_path):
    header_only = tmp_path / "header.csv"
    header_only.write_text("date,contract,last_trade_date,price\n")
    with pytest.raises(SettlementError, match="no data lines") as e:
        read_settlements(header_only)
    assert "header.csv" in str(e.value)
    cut = tmp_path / "cut.csv"
    cut.write_text("date,contract,last_trade_date,price\n2024-08-01,CLU24,2024-08-20,76.3\n"
                   "2024-08-02,CLU24,2024-08-20,77.1,extra,fields\n")  # fmt: skip
    with pytest.raises(SettlementError, match="malformed CSV.*line 3") as e:
        read_settlements(cut)
    assert "cut.csv" in str(e.value)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("date,contract,last_trade_date,price,note\n"
                      "2024-08-01,CLU24,2024-08-20,76.3,caf\xe9\n".encode("latin-1"))  # fmt: skip
    with pytest.raises(SettlementError, match="not UTF-8") as e:
        read_settlements(latin)
    assert "latin.csv" in str(e.value) and "encoding=" in str(e.value)
    assert read_settlements(latin, encoding="latin-1")["settlement_price"].item() == 76.3


def test_continuous_plain_rank_header_and_explicit_convention(tmp_path):
    """``Date, CL1..CLn`` reads like the CHRIS layout's Settle columns; the convention of
    rank 1 on an expiry day must be chosen, and the two differ on those days only."""
    merged = pd.read_csv(CHRIS)
    plain = merged[["Date"]].copy()
    for k in range(1, 7):
        plain[f"CL{k}"] = merged[f"CHRIS/CME_CL{k} - Settle"]
    p = tmp_path / "plain.csv"
    plain.to_csv(p, index=False)
    with pytest.raises(SettlementError, match="choose the rank convention"):
        read_settlements(p)
    got = read_settlements(p, roll_on_last_trade_day=True)
    ref = read_continuous(CHRIS, roll_on_last_trade_day=True)
    cols = ["trade_date", "commodity", "contract", "expiration_date", "settlement_price"]
    pd.testing.assert_frame_equal(got[cols].reset_index(drop=True),
                                  ref[cols].reset_index(drop=True))  # fmt: skip
    other = read_settlements(p, roll_on_last_trade_day=False)
    differ = got["contract"].to_numpy() != other["contract"].to_numpy()
    expiry_days = set(ref["expiration_date"])
    assert differ.any() and set(got.loc[differ, "trade_date"]) <= expiry_days


def test_suspect_values_are_warned():
    df = pd.DataFrame({
        "trade_date": ["2024-08-01", "2024-08-02", "2024-08-05"],
        "commodity": ["CL"] * 3,
        "contract": ["CLU24"] * 3,
        "expiration_date": ["2024-08-20"] * 3,
        "settlement_price": [76.3, 7630.0, 76.0],
    })  # fmt: skip
    with pytest.warns(SettlementWarning, match=r"factor of 5 or more.*CLU24 on 2024-08-02 ×100"):
        validate_settlements(df)
    weekend = df.assign(trade_date=["2024-08-01", "2024-08-03", "2024-08-05"],
                        settlement_price=[76.3, 76.5, 76.0])  # fmt: skip
    with pytest.warns(SettlementWarning, match="weekend.*2024-08-03"):
        validate_settlements(weekend)


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_files_separated_otherwise_than_by_commas_are_read(tmp_path, sep):
    """A long, CME or continuous file separated by ``;``, tabs or ``|`` reads like the comma
    one; a decimal comma is reported by column and line."""
    long = tmp_path / "long.csv"
    long.write_text(
        sep.join(["trade_date", "commodity", "contract", "expiration_date", "settlement_price"])
        + "\n"
        + sep.join(["2024-07-03", "CL", "CLQ24", "2024-07-22", "83.0"])
        + "\n"
    )
    out = read_settlements(long)
    assert out["settlement_price"].tolist() == [83.0] and out["contract"].tolist() == ["CLQ24"]
    cme = tmp_path / "cme.csv"
    cme.write_text(
        sep.join(["BizDt", "Sym", "MMY", "SecTyp", "LastTrdDt", "SettlePrice"])
        + "\n"
        + sep.join(["2024-08-14", "CL", "202410", "FUT", "2024-09-19", "77.5"])
        + "\n"
    )
    assert read_settlements(cme)["contract"].tolist() == ["CLV24"]
    cont = tmp_path / "cont.csv"
    cont.write_text(
        sep.join(["Date", "CL1", "CL2"]) + "\n" + sep.join(["2024-08-14", "77.5", "77"])
    )
    got = read_settlements(cont, roll_on_last_trade_day=False)
    assert got["contract"].tolist() == ["CLU24", "CLV24"]
    if sep == ";":
        bad = tmp_path / "decimal_comma.csv"
        bad.write_text(long.read_text().replace("83.0", "83,0"))
        with pytest.raises(
            SettlementError,
            match=r"decimal_comma.csv.*\n- settlement_price: not a number at rows \[2\]",
        ):
            read_settlements(bad)
