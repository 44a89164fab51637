"""Reading a user's table and inferring its data contract: a good table passes its own contract, a
broken copy fails by column, the YAML is the contract, and every bad input is a named error that
writes nothing.

The table is built here, so the expected answers come from how it was built (5% nulls put in one
column, three plans, non-negative spend), not from the code under test.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest
import yaml

from mlcycle.project.contract_inference import (
    InferredContract,
    TableError,
    TableSpec,
    check_table,
    contract_from_yaml,
    infer_contract,
    prepare_table,
    read_table,
)

N = 20_000
SPEND_NULLS = 1_000  # 5% of rows
PLAN_NULLS = 400  # 2% of rows
PLANS = ("basic", "plus", "pro")
ROLES = {"timestamp": "ts", "label": "churned", "entities": ("customer_id", "store")}


def make_table(n: int = N, seed: int = 11) -> pd.DataFrame:
    """Numeric with NaNs, categorical with NaNs, a boolean, free text, a timestamp, a binary label, two keys."""
    rng = np.random.default_rng(seed)
    spend = rng.lognormal(3.0, 1.0, n)
    spend[rng.choice(n, n * SPEND_NULLS // N, replace=False)] = np.nan
    plan = rng.choice(np.array(PLANS, dtype=object), n, p=[0.6, 0.3, 0.1])
    plan[rng.choice(n, n * PLAN_NULLS // N, replace=False)] = None
    return pd.DataFrame(
        {
            "customer_id": rng.integers(1, 2_001, n),
            "store": rng.choice([f"s{i:02d}" for i in range(50)], n),
            # One event every 389 s: no two rows share a time, so no key repeats at one time.
            "ts": pd.Timestamp("2023-01-01", tz="UTC") + pd.to_timedelta(np.arange(n) * 389, unit="s"),
            "spend": spend,
            "visits": rng.poisson(4.0, n),
            "plan": plan,
            "is_member": rng.random(n) < 0.3,
            "comment": [f"ticket {i}" for i in range(n)],
            "churned": (rng.random(n) < 0.2).astype("int64"),
        }
    )


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return make_table()


@pytest.fixture(scope="module")
def spec(table: pd.DataFrame) -> TableSpec:
    return check_table(table, **ROLES)


@pytest.fixture(scope="module")
def contract(table: pd.DataFrame, spec: TableSpec) -> InferredContract:
    return infer_contract(table, spec)


@pytest.fixture
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty directory: anything the code wrote (relative paths) would show up here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def failures(schema: pa.DataFrameSchema, frame: pd.DataFrame) -> pd.DataFrame:
    """pandera's failure cases for ``frame`` (empty when it passes)."""
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        return exc.failure_cases
    return pd.DataFrame(columns=["column", "check", "failure_case", "index"])


# ----------------------------------------------------------------------------- the good table


def test_spec_describes_the_roles(table: pd.DataFrame, spec: TableSpec) -> None:
    assert spec.rows == N
    assert spec.entities == ("customer_id", "store")
    assert spec.label_values == (0, 1) and spec.positive_label == 1
    assert spec.timestamp_columns == ("ts",)
    assert set(spec.features) == {"spend", "visits", "plan", "is_member", "comment"}
    assert spec.notes == ()  # tz-aware clock and a 0/1 label: nothing assumed


def test_generated_table_passes_its_own_contract(table: pd.DataFrame, spec: TableSpec, contract: InferredContract):
    found = failures(contract.schema, prepare_table(table, spec))
    assert found.empty, found.head()


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_table_read_from_a_file_passes_its_own_contract(table: pd.DataFrame, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"t{suffix}"
    table.to_parquet(path) if suffix == ".parquet" else table.to_csv(path, index=False)
    frame = read_table(path)
    spec = check_table(frame, **ROLES)
    assert spec.timestamp_columns == ("ts",)
    contract = infer_contract(frame, spec)
    prepared = prepare_table(frame, spec)
    # CSV keeps the offset as text ("+00:00"); both arrive as UTC instants, equal to the originals.
    assert prepared["ts"].dtype == pd.DatetimeTZDtype("ns", "UTC")
    assert prepared["ts"].equals(table["ts"].dt.as_unit("ns"))
    found = failures(contract.schema, prepared)
    assert found.empty, found.head()


def test_columns_are_described_from_the_data(table: pd.DataFrame, contract: InferredContract) -> None:
    kinds = {c.name: c.kind for c in contract.columns}
    assert kinds == {
        "customer_id": "identifier",
        "store": "identifier",
        "ts": "timestamp",
        "spend": "numeric",
        "visits": "numeric",
        "plan": "categorical",
        "is_member": "boolean",
        "comment": "identifier",
        "churned": "categorical",
    }
    # Free text is flagged for a person, the keys are not.
    assert contract.flagged == ("comment",)

    spend = contract.column("spend")
    assert spend.observed_null_rate == SPEND_NULLS / N
    assert spend.max_null_rate == pytest.approx(SPEND_NULLS / N + 0.05)
    lo, hi = table["spend"].min(), table["spend"].max()
    assert (spend.observed_min, spend.observed_max) == (lo, hi)
    # All spend is positive: the margin does not admit negatives; the top is widened by ~10% of the span.
    assert spend.min == 0.0
    assert hi + 0.1 * (hi - lo) <= spend.max <= hi + 0.11 * (hi - lo)

    visits = contract.column("visits")
    assert visits.max_null_rate == 0.0  # no null in 20k rows → declared non-null
    assert visits.min == 0.0 and visits.max >= table["visits"].max()

    plan = contract.column("plan")
    assert plan.values == PLANS
    assert plan.max_null_rate == pytest.approx(PLAN_NULLS / N + 0.05)
    assert contract.column("churned").values == (0, 1)
    assert contract.column("is_member").max_null_rate == 0.0
    assert contract.unique == ("customer_id", "store", "ts")


# ----------------------------------------------------------------------------- broken copies


def shifted_units(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(spend=df["spend"] * 1_000)  # cents instead of currency units


def unknown_category(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.loc[df.index[:4], "plan"] = "platinum"
    return df


def too_many_nulls(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.loc[df.index[: len(df) // 2], "spend"] = np.nan
    return df


def nulls_in_a_non_null_column(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["visits"] = df["visits"].astype("float64")
    df.loc[df.index[:3], "visits"] = np.nan
    return df


def negative_values(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.loc[df.index[:5], "visits"] = -1
    return df


def third_label_value(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.loc[df.index[:2], "churned"] = 2
    return df


def not_a_boolean(df: pd.DataFrame) -> pd.DataFrame:
    df = df.astype({"is_member": object})
    df.loc[df.index[:3], "is_member"] = "maybe"
    return df


def dropped_column(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["plan"])


def repeated_key(df: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([df, df.iloc[[10]]], ignore_index=True)


CORRUPTIONS: list[tuple[Callable[[pd.DataFrame], pd.DataFrame], str, str, object]] = [
    (shifted_units, "spend", "less_than_or_equal_to", None),
    (unknown_category, "plan", "known_values", "platinum"),
    (too_many_nulls, "spend", "max_null_rate", None),
    (nulls_in_a_non_null_column, "visits", "not_nullable", None),
    (negative_values, "visits", "greater_than_or_equal_to", -1.0),
    (third_label_value, "churned", "known_values", 2),
    (not_a_boolean, "is_member", "boolean", "maybe"),
    (dropped_column, "plan", "column_in_dataframe", "plan"),
    # A repeated key is reported on every column of the key.
    (repeated_key, "customer_id store ts", "multiple_fields_uniqueness", None),
]


def failing(found: pd.DataFrame) -> set[tuple[str, str]]:
    # A missing column is reported under the schema's name, with the column as the failure case.
    column = found["column"].where(found["check"] != "column_in_dataframe", found["failure_case"])
    return {(str(c), str(k).split("(")[0]) for c, k in zip(column, found["check"], strict=True)}


@pytest.mark.parametrize(
    ("corrupt", "column", "check", "example"), CORRUPTIONS, ids=[c[0].__name__ for c in CORRUPTIONS]
)
def test_corrupted_copy_fails_on_the_right_column(
    table: pd.DataFrame, spec: TableSpec, contract: InferredContract, corrupt, column: str, check: str, example
) -> None:
    found = failures(contract.schema, corrupt(prepare_table(table, spec)))
    assert not found.empty
    assert {c for c, _ in failing(found)} == set(column.split()), found.head()
    assert (column.split()[0], check) in failing(found)
    if example is not None:
        assert example in set(found.loc[found["check"].str.startswith(check), "failure_case"])


# ----------------------------------------------------------------------------- the YAML


def test_yaml_is_readable_and_says_where_bounds_came_from(contract: InferredContract) -> None:
    text = contract.yaml
    assert text.startswith("# Data contract inferred by mlcycle from a table of 20000 rows.")
    spend_block = text.split("  spend:\n")[1].split("\n  visits:")[0]
    assert "max_null_rate: 0.1  # observed 0.0500 + margin 0.05" in spend_block
    assert "min: 0.0  # observed min" in spend_block and "not below 0" in spend_block
    assert "# observed max" in spend_block
    assert "values: [basic, plus, pro]  # 3 values seen" in text
    assert "flagged: 20000 distinct values" in text
    assert yaml.safe_load(text)["unique"] == ["customer_id", "store", "ts"]


def checks_of(schema: pa.DataFrameSchema) -> dict[str, list[object]]:
    return {
        name: [*sorted((c.name, repr(c.statistics)) for c in col.checks), ("dtype", str(col.dtype)), col.nullable]
        for name, col in schema.columns.items()
    }


def test_yaml_round_trips_to_the_same_checks(table: pd.DataFrame, spec: TableSpec, contract: InferredContract) -> None:
    again = contract_from_yaml(contract.yaml)
    assert checks_of(again) == checks_of(contract.schema)
    assert again.unique == contract.schema.unique
    prepared = prepare_table(table, spec)
    assert failures(again, prepared).empty
    for corrupt, *_ in CORRUPTIONS:
        broken = corrupt(prepared)
        a, b = failures(contract.schema, broken), failures(again, broken)
        assert failing(a) == failing(b), corrupt.__name__
        assert len(a) == len(b), corrupt.__name__


def test_tightened_yaml_is_the_contract(table: pd.DataFrame, spec: TableSpec, contract: InferredContract) -> None:
    raw = yaml.safe_load(contract.yaml)
    raw["columns"]["visits"]["max"] = 5  # the user knows better: at most 5 visits
    found = failures(contract_from_yaml(yaml.safe_dump(raw)), prepare_table(table, spec))
    assert failing(found) == {("visits", "less_than_or_equal_to")}
    assert set(found["failure_case"]) == set(table.loc[table["visits"] > 5, "visits"].astype(float))


def test_a_misspelt_bound_is_an_error_not_a_silent_no_op(contract: InferredContract) -> None:
    raw = yaml.safe_load(contract.yaml)
    raw["columns"]["visits"]["maxx"] = 5
    with pytest.raises(ValueError, match=r"'visits'.*maxx"):
        contract_from_yaml(yaml.safe_dump(raw))


# ----------------------------------------------------------------------------- bad input


def small(n: int = 400, seed: int = 3) -> pd.DataFrame:
    return make_table(n, seed)


def expect(err: pytest.ExceptionInfo[TableError], column: str | None, *phrases: str) -> None:
    assert err.value.column == column
    assert err.value.fix, "every error says how to fix it"
    for phrase in phrases:
        assert phrase in str(err.value), str(err.value)


def test_missing_column_suggests_the_close_match(empty_cwd: Path) -> None:
    with pytest.raises(TableError) as err:
        check_table(small(), timestamp="ts", label="churn", entities=("customer_id",))
    expect(err, "churn", "label column 'churn' is not in the table", "did you mean 'churned'")
    with pytest.raises(TableError) as err:
        check_table(small(), timestamp="ts", label="churned", entities=("Customer_ID",))
    expect(err, "Customer_ID", "did you mean 'customer_id'")
    assert list(empty_cwd.iterdir()) == []


def test_non_binary_label_is_refused_naming_its_values() -> None:
    df = small().assign(churned=lambda d: np.arange(len(d)) % 3)
    with pytest.raises(TableError) as err:
        check_table(df, **ROLES)
    expect(err, "churned", "3 distinct values", "0, 1, 2", "--task regression")


def test_single_class_label_is_refused() -> None:
    with pytest.raises(TableError) as err:
        check_table(small().assign(churned=0), **ROLES)
    expect(err, "churned", "one value only")


def test_two_valued_text_label_says_which_is_positive() -> None:
    df = small()
    df["churned"] = np.where(df["churned"] == 1, "yes", "no")
    spec = check_table(df, **ROLES)
    assert spec.label_values == ("no", "yes")
    assert any("'yes' is taken as the positive class" in n for n in spec.notes)
    # Without a word that reads as yes, the rarer value (churn is ~20% here) is the positive class.
    df["churned"] = np.where(df["churned"] == "yes", "left", "stayed")
    assert check_table(df, **ROLES).label_values == ("stayed", "left")


def test_regression_accepts_numbers_written_as_text() -> None:
    df = small()
    df["churned"] = (df["spend"].fillna(0) * 2).round(2).astype(str)  # "12.34": a quantity, as text
    spec = check_table(df, **ROLES | {"task": "regression"})
    assert spec.label_values == ()
    prepared = prepare_table(df, spec)
    assert prepared["churned"].dtype == "float64"
    assert prepared["churned"].tolist() == pytest.approx((df["spend"].fillna(0) * 2).round(2).tolist())
    contract = infer_contract(df, spec)
    assert contract.column("churned").kind == "numeric"
    assert failures(contract.schema, prepared).empty


def test_regression_refuses_a_text_or_boolean_label() -> None:
    df = small()
    df["churned"] = np.where(df["churned"] == 1, "high", "low")
    with pytest.raises(TableError) as err:
        check_table(df, **ROLES | {"task": "regression"})
    expect(err, "churned", "must be numeric for regression", "'high'", "--task classification")
    with pytest.raises(TableError) as err:
        check_table(small().assign(churned=lambda d: d["churned"] == 1), **ROLES | {"task": "regression"})
    expect(err, "churned", "true/false")


def iso(df: pd.DataFrame, offset: str = "+00:00") -> pd.Series:
    return df["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S") + offset


def test_mixed_time_zones_are_refused_with_convert_to_utc() -> None:
    df = small()
    text = iso(df, "+02:00")
    text[::2] = iso(df.iloc[::2], "-05:00")
    with pytest.raises(TableError) as err:
        check_table(df.assign(ts=text), **ROLES)
    expect(err, "ts", "mixes time zones", "2 different UTC offsets", "-05:00", "+02:00")
    assert "convert 'ts' to UTC" in err.value.fix
    # Some rows with an offset, some without: the naive ones are on an unknown clock.
    text = iso(df, "Z")
    text[:10] = iso(df.iloc[:10], "")
    with pytest.raises(TableError) as err:
        check_table(df.assign(ts=text), **ROLES)
    expect(err, "ts", "some values carry a UTC offset and some do not")


def test_one_offset_or_naive_text_parses_to_utc() -> None:
    df = small()
    spec = check_table(df.assign(ts=iso(df, "+02:00")), **ROLES)
    parsed = prepare_table(df.assign(ts=iso(df, "+02:00")), spec)["ts"]
    assert parsed.equals(df["ts"].dt.as_unit("ns") - pd.Timedelta(hours=2))
    naive = df.assign(ts=iso(df, ""))
    spec = check_table(naive, **ROLES)
    assert "'ts' has no time zone: taken as UTC" in spec.notes
    assert prepare_table(naive, spec)["ts"].equals(df["ts"].dt.as_unit("ns"))


def test_unparseable_timestamp_names_the_rows() -> None:
    df = small()
    text = iso(df, "Z")
    text[[5, 9]] = ["not a date", "31/31/2023"]
    with pytest.raises(TableError) as err:
        check_table(df.assign(ts=text), **ROLES)
    expect(err, "ts", "2 of 400 values do not parse", "'not a date'", "ISO 8601")


def test_missing_or_numeric_timestamp_is_refused() -> None:
    df = small()
    df.loc[[1, 2], "ts"] = pd.NaT
    with pytest.raises(TableError) as err:
        check_table(df, **ROLES)
    expect(err, "ts", "2 rows have no timestamp")
    with pytest.raises(TableError) as err:
        check_table(small().assign(ts=lambda d: d["ts"].astype("int64") // 10**9), **ROLES)
    expect(err, "ts", "holds numbers", "unit='s'")


def test_duplicate_entity_keys_at_one_time_are_refused_with_an_example() -> None:
    df = small()
    df.loc[7, ["customer_id", "store", "ts"]] = df.loc[3, ["customer_id", "store", "ts"]].to_numpy()
    with pytest.raises(TableError) as err:
        check_table(df, **ROLES)
    expect(err, "ts", "2 rows share their entity key and time", "1 keys", f"customer_id={df.loc[3, 'customer_id']}")
    # The same rows are fine without entity keys (each row is scored on its own).
    check_table(df, timestamp="ts", label="churned")


def test_empty_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="no rows"):
        check_table(small().iloc[:0], **ROLES)
    (tmp_path / "header_only.csv").write_text("ts,churned\n")
    with pytest.raises(TableError, match=r"header_only\.csv has no rows"):
        read_table(tmp_path / "header_only.csv")
    (tmp_path / "blank.csv").write_text("")
    with pytest.raises(TableError, match=r"blank\.csv is empty"):
        read_table(tmp_path / "blank.csv")
    with pytest.raises(TableError) as err:
        check_table(small(50), **ROLES)
    assert "50 rows; at least 200" in str(err.value)


def test_unreadable_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="no table at"):
        read_table(tmp_path / "nope.parquet")
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(TableError, match=r"unsupported file type '\.xlsx'"):
        read_table(tmp_path / "t.xlsx")


@pytest.mark.parametrize(
    ("bad", "phrase", "suggestion"),
    [
        ("unit price", "not a name Feast and SQL can use", "unit_price"),
        ("2nd_visit", "not a name Feast and SQL can use", "c_2nd_visit"),
        ("order", "reserved word in SQL", "order_value"),
        ("event_timestamp", "clashes with a column Feast adds", "event_timestamp_value"),
        ("Visits", "differ only in case", "Visits_2"),
    ],
)
def test_bad_column_name_is_refused_with_a_rename(bad: str, phrase: str, suggestion: str) -> None:
    df = small()
    df[bad] = 1.0
    with pytest.raises(TableError) as err:
        check_table(df, **ROLES)
    expect(err, bad, phrase)
    assert f"'{suggestion}'" in err.value.fix


def test_event_timestamp_may_be_the_timestamp_itself() -> None:
    df = small().rename(columns={"ts": "event_timestamp"})
    assert check_table(df, **ROLES | {"timestamp": "event_timestamp"}).timestamp == "event_timestamp"


def test_label_before_its_event_is_refused() -> None:
    df = small().assign(label_at=lambda d: d["ts"] + pd.Timedelta(days=30))
    df.loc[4, "label_at"] = df.loc[4, "ts"] - pd.Timedelta(hours=1)
    with pytest.raises(TableError) as err:
        check_table(df, **ROLES | {"label_available_at": "label_at"})
    expect(err, "label_at", "1 rows have their label before the event")
    df.loc[4, "label_at"] = pd.NaT  # not known yet: allowed
    spec = check_table(df, **ROLES | {"label_available_at": "label_at"})
    contract = infer_contract(df, spec)
    assert contract.column("label_at").kind == "timestamp"
    assert failures(contract.schema, prepare_table(df, spec)).empty


def test_missing_entity_key_and_unknown_task_are_refused() -> None:
    df = small().astype({"customer_id": "float64"})
    df.loc[[0, 1, 2], "customer_id"] = np.nan
    with pytest.raises(TableError) as err:
        check_table(df, **ROLES)
    expect(err, "customer_id", "missing on 3 rows")
    with pytest.raises(TableError, match="unknown task 'ranking'"):
        check_table(small(), **ROLES | {"task": "ranking"})


def test_bad_inputs_write_nothing(empty_cwd: Path) -> None:
    """Every refusal above, run in an empty working directory: it stays empty."""
    df = small()
    bad_calls = [
        lambda: check_table(df, timestamp="time", label="churned"),
        lambda: check_table(df.assign(churned=np.arange(len(df)) % 3), **ROLES),
        lambda: check_table(df.assign(ts="soon"), **ROLES),
        lambda: check_table(pd.concat([df, df.iloc[[0]]]), **ROLES),
        lambda: check_table(df.iloc[:0], **ROLES),
        lambda: check_table(df.assign(**{"bad name": 1}), **ROLES),
    ]
    for call in bad_calls:
        with pytest.raises(TableError):
            call()
    infer_contract(df, check_table(df, **ROLES))  # a good table: described, still nothing written
    assert os.listdir(empty_cwd) == []
