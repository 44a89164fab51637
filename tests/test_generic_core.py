"""The library names no use case: everything specific lives in a project directory."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mlcycle.project.config import ConfigError, load_config

SRC = Path(__file__).resolve().parents[1] / "src" / "mlcycle"
# Words of the reference project (card fraud). "user" and "transaction" alone are left out on
# purpose: the person using the tool is a user, and a database has transactions; their
# identifiers (user_id, transaction_id) are not.
FORBIDDEN = re.compile(
    r"\b\w*(fraud|merchant|age_band|txn|chargeback|cardholder|amount)\w*\b"
    r"|\bage bands?\b|\bcard transactions?\b|\b\w*(user_id|transaction_id)\w*\b",
    re.IGNORECASE,
)


def test_the_library_names_no_use_case() -> None:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in FORBIDDEN.finditer(line):
                found.append(f"{path.relative_to(SRC.parent)}:{number}: {match.group(0)!r} in {line.strip()[:90]}")
    assert not found, "use-case words in the library:\n" + "\n".join(found)


def test_the_word_list_catches_what_it_should() -> None:
    """The oracle of the test above, checked on hand-written lines (a regex that matched nothing
    would pass any library)."""
    caught = ["is_fraud", "merchant_id", "age_band", "txn_count_1h", "user_id", "amount", "amount_sum_24h",
              "Fraud rings", "chargeback", "card transactions", "transaction_id"]  # fmt: skip
    allowed = ["the user's table", "one database transaction", "model card", "user:login", "discard"]
    assert all(FORBIDDEN.search(text) for text in caught), [t for t in caught if not FORBIDDEN.search(t)]
    assert not any(FORBIDDEN.search(text) for text in allowed), [t for t in allowed if FORBIDDEN.search(t)]


def _project(tmp_path: Path, table: dict) -> Path:
    frame = pd.DataFrame(
        {
            "ts": pd.date_range("2024-01-01", periods=5, freq="D", tz="UTC"),
            "customer": [1, 2, 3, 4, 5],
            "churned": [0, 1, 0, 0, 1],
        }
    )
    (tmp_path / "data" / "raw").mkdir(parents=True)
    frame.to_parquet(tmp_path / "data" / "raw" / "t.parquet")
    cfg = {"project": "p", "table": {"path": "data/raw/t.parquet", "timestamp": "ts", "label": "churned", **table}}
    (tmp_path / "mlcycle.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "mlcycle.yaml"


def test_a_config_naming_a_column_the_table_lacks_fails_at_load_naming_it(tmp_path: Path) -> None:
    assert load_config(_project(tmp_path / "ok", {"entities": ["customer"]})).table.entities == ["customer"]
    with pytest.raises(ConfigError) as err:
        load_config(_project(tmp_path / "bad", {"entities": ["customer_id"], "event_id": "row"}))
    message = str(err.value)
    assert "customer_id (entity)" in message and "row (event_id)" in message and "mlcycle.yaml" in message


def test_the_routing_key_defaults_to_the_first_entity_and_can_be_the_request(tmp_path: Path) -> None:
    path = _project(tmp_path / "a", {"entities": ["customer"]})
    assert load_config(path).routing_key == "customer"
    raw = yaml.safe_load(path.read_text())
    raw["serving"] = {"routing_key": "request_id"}
    path.write_text(yaml.safe_dump(raw))
    assert load_config(path).routing_key is None  # each request routed on its own id
    assert load_config(_project(tmp_path / "b", {})).routing_key is None  # no entity: the request id
