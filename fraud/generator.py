"""A deterministic, seeded generator of a realistic card-transaction stream.

The stream is what a card issuer sees: users who sign up over time, merchants in categories and
countries, transactions with a daily rhythm and heavy-tailed amounts, and fraud labels that arrive
weeks later (chargebacks), with missing values at realistic rates. Fraud comes mostly in bursts
after a card is compromised (several foreign, high-value, night-time purchases in a few hours),
plus a thin background tied to risky merchants and new accounts, so that rolling user aggregates,
merchant fraud rates and request-time features all carry signal.

Drift knobs (``DriftSpec``) change the stream from a given day on, each changing exactly one thing:
amounts inflate (covariate shift), some merchants move to a new category, or the fraud pattern
changes (concept drift). Everything is vectorised NumPy: 200k rows take about a second, 10M rows
a minute.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mlcycle.project.config import ProjectConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# The generator's merchant categories (mlcycle.data.CATEGORIES is this tuple): kept here so the
# config can validate drift knobs without importing the library it configures.
KNOWN_CATEGORIES = (
    "grocery", "restaurants", "fuel", "fashion", "electronics", "travel", "health", "gaming", "digital_goods", "home",
)  # fmt: skip


class DriftSpec(_Strict):
    """Changes injected into the generated stream from ``start_day`` on, for monitoring to catch."""

    start_day: int | None = Field(None, ge=0, description="Day (from the stream's start) the drift begins.")
    amount_inflation: float = Field(1.0, gt=0, description="Covariate shift: amounts multiply by this.")
    new_category: str | None = Field(None, description="A merchant category that appears at start_day.")
    new_category_share: float = Field(0.0, ge=0, le=1, description="Share of merchants moving to it.")
    concept_drift: bool = Field(
        False, description="Fraud switches to card testing: runs of tiny daytime purchases at home, minutes apart."
    )
    concept_drift_share: float = Field(
        1.0, gt=0, le=1, description="Share of fraud rings (by card) that switch pattern; the rest keep theirs."
    )

    @model_validator(mode="after")
    def _coherent(self) -> DriftSpec:
        knobs = self.amount_inflation != 1.0 or self.new_category is not None or self.concept_drift
        if knobs and self.start_day is None:
            raise ValueError("drift knobs are set but start_day is not: say from which day the drift starts")
        if self.new_category is not None and self.new_category in KNOWN_CATEGORIES:
            raise ValueError(f"new_category '{self.new_category}' is already a known category")
        return self


class DataSpec(_Strict):
    """Shape of the generated card-transaction stream."""

    seed: int = 42
    start: datetime | None = Field(
        None, description="First day of the stream; unset: the stream ends at today's midnight (UTC)."
    )
    days: int = Field(90, ge=1)
    n_users: int = Field(20_000, ge=10)
    n_merchants: int = Field(2_000, ge=10)
    n_transactions: int = Field(200_000, ge=100)
    fraud_rate: float = Field(0.02, gt=0, lt=0.5, description="Target share of fraudulent transactions.")
    label_maturity_days: float = Field(
        30.0, gt=0, description="A legitimate transaction is confirmed legitimate after the dispute window."
    )
    drift: DriftSpec = DriftSpec()
    hard_fraud_age_band: str | None = Field(
        None,
        description="Fraud against this age band follows a low-value daytime pattern the features "
        "barely see: a biased world, for testing the fairness gate.",
    )

    @field_validator("start")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def resolved_start(self, now: datetime | None = None) -> datetime:
        """The explicit start, or ``days`` before today's midnight so the stream is current."""
        if self.start is not None:
            return self.start
        today = (now or datetime.now(UTC)).astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return today - timedelta(days=self.days)

    @model_validator(mode="after")
    def _drift_inside_span(self) -> DataSpec:
        if self.drift.start_day is not None and self.drift.start_day >= self.days:
            raise ValueError(f"drift.start_day={self.drift.start_day} must be < days={self.days}")
        return self


AGE_BANDS = ["18-24", "25-34", "35-44", "45-54", "55-64", "65+"]
AGE_BAND_P = [0.12, 0.24, 0.22, 0.18, 0.14, 0.10]
COUNTRIES = ["US", "GB", "DE", "FR", "ES", "IT", "NL", "BR", "IN", "CA"]
COUNTRY_P = [0.34, 0.12, 0.11, 0.09, 0.07, 0.06, 0.05, 0.06, 0.05, 0.05]
CATEGORIES = list(KNOWN_CATEGORIES)
CATEGORY_P = [0.24, 0.16, 0.10, 0.10, 0.07, 0.05, 0.07, 0.05, 0.08, 0.08]
# Typical ticket size of a category, as a multiple of the user's own spending scale.
CATEGORY_AMOUNT = {
    "grocery": 1.0, "restaurants": 0.8, "fuel": 1.2, "fashion": 1.8, "electronics": 4.0,
    "travel": 6.0, "health": 1.1, "gaming": 0.9, "digital_goods": 0.6, "home": 2.5,
}  # fmt: skip
CHANNELS = ["pos", "ecom", "contactless"]
ONLINE_CATEGORIES = {"gaming", "digital_goods", "travel", "electronics"}
BURST_CATEGORIES = ["electronics", "digital_goods", "gaming", "travel", "fashion"]
DRIFTED_FRAUD_CATEGORIES = ["grocery", "fuel", "restaurants", "health"]

# Missing-value rates seen in card data: the entry mode is sometimes not captured,
# and some customers never state their age.
CHANNEL_NULL_RATE = 0.015
# No single card payment above this: the Pareto tail would otherwise produce the odd
# million-dollar coffee, which the data contract (rightly) rejects.
CARD_LIMIT = 50_000.0
AGE_BAND_NULL_RATE = 0.03

HOUR_P = np.array(
    [1.0, 0.6, 0.4, 0.3, 0.3, 0.5, 1.2, 2.4, 3.6, 4.2, 4.6, 5.2,
     6.0, 5.8, 5.2, 5.0, 5.2, 5.8, 6.2, 6.0, 5.0, 3.6, 2.4, 1.6]
)  # fmt: skip
HOUR_P = HOUR_P / HOUR_P.sum()
NIGHT_HOUR_P = np.roll(HOUR_P, 12)  # compromised cards are used while their owners sleep


@dataclass(frozen=True)
class Dataset:
    """The generated stream: three tables, joined by ``user_id`` and ``merchant_id``."""

    users: pd.DataFrame
    merchants: pd.DataFrame
    transactions: pd.DataFrame

    def write(self, directory: str | Path) -> dict[str, Path]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name in ("users", "merchants", "transactions"):
            paths[name] = directory / f"{name}.parquet"
            getattr(self, name).to_parquet(paths[name], index=False)
        return paths


def read_dataset(directory: str | Path) -> Dataset:
    directory = Path(directory)
    return Dataset(
        users=pd.read_parquet(directory / "users.parquet"),
        merchants=pd.read_parquet(directory / "merchants.parquet"),
        transactions=pd.read_parquet(directory / "transactions.parquet"),
    )


def _ts(start: pd.Timestamp, offsets_days: np.ndarray) -> np.ndarray:
    """Offsets in (fractional) days from ``start`` → datetime64[s]: card messages carry whole seconds."""
    seconds = np.floor(offsets_days * 86_400).astype(np.int64)
    return np.datetime64(start.tz_convert(None), "s") + seconds.astype("timedelta64[s]")


def _time_of_day(rng: np.random.Generator, n: int, hour_p: np.ndarray) -> np.ndarray:
    hours = rng.choice(24, size=n, p=hour_p)
    return (hours + rng.random(n)) / 24.0


def _users(spec: DataSpec, rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    n = spec.n_users
    # 85% existed before the stream starts (up to three years), 15% sign up during it.
    new = rng.random(n) < 0.15
    offset = np.where(new, rng.uniform(0, spec.days * 0.9, n), -rng.uniform(1, 3 * 365, n))
    signup = _ts(pd.Timestamp(spec.resolved_start()), offset)
    age = rng.choice(len(AGE_BANDS), size=n, p=AGE_BAND_P)
    age_band = pd.Categorical.from_codes(np.where(rng.random(n) < AGE_BAND_NULL_RATE, -1, age), AGE_BANDS)
    home = rng.choice(len(COUNTRIES), size=n, p=COUNTRY_P)
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n + 1, dtype=np.int64),
            "signup_timestamp": pd.to_datetime(signup).as_unit("ns").tz_localize("UTC"),
            "age_band": age_band,
            "home_country": pd.Categorical.from_codes(home, COUNTRIES),
        }
    )
    hidden = {
        "activity": rng.lognormal(0.0, 1.0, n),
        "amount_scale": rng.lognormal(np.log(30.0), 0.5, n),
        "signup_offset": offset,
        "home": home,
    }
    return users, hidden


def _merchants(spec: DataSpec, rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    n = spec.n_merchants
    category = rng.choice(len(CATEGORIES), size=n, p=CATEGORY_P)
    country = rng.choice(len(COUNTRIES), size=n, p=COUNTRY_P)
    merchants = pd.DataFrame(
        {
            "merchant_id": np.arange(1, n + 1, dtype=np.int64),
            "merchant_category": pd.Categorical.from_codes(category, CATEGORIES),
            "merchant_country": pd.Categorical.from_codes(country, COUNTRIES),
        }
    )
    # A few merchants leak card data or are fronts: their customers see much more fraud.
    hidden = {"category": category, "country": country, "risky": rng.random(n) < 0.03}
    return merchants, hidden


def _pick_merchants(
    rng: np.random.Generator,
    m: dict[str, np.ndarray],
    n: int,
    country: np.ndarray | None = None,
    categories: list[str] | None = None,
) -> np.ndarray:
    """Merchant index per row: in ``country[i]`` (any country if None) and in ``categories`` (any if None)."""
    ok = np.ones(len(m["country"]), bool)
    if categories is not None:
        ok = np.isin(m["category"], [CATEGORIES.index(c) for c in categories])
    anywhere = np.flatnonzero(ok)
    out = anywhere[rng.integers(0, len(anywhere), size=n)]
    if country is not None:
        for c in range(len(COUNTRIES)):
            pool = np.flatnonzero(ok & (m["country"] == c))
            rows = np.flatnonzero(country == c)
            if len(pool) and len(rows):
                out[rows] = pool[rng.integers(0, len(pool), size=len(rows))]
    return out


def generate(spec: DataSpec | None = None) -> Dataset:
    """Generate users, merchants and transactions for ``spec``; the same spec gives the same frames.

    Every random draw happens whatever the drift knobs say, so turning a knob changes only the
    columns it names: a drifted stream equals the undrifted one with the same seed everywhere else.
    """
    spec = spec or DataSpec()
    # Today's midnight is read once: users and transactions must not straddle one that passes.
    start = pd.Timestamp(spec.resolved_start())
    spec = spec.model_copy(update={"start": start.to_pydatetime()})
    rng = np.random.default_rng(spec.seed)
    users, u = _users(spec, rng)
    merchants, m = _merchants(spec, rng)
    drift = spec.drift
    drift_day = drift.start_day if drift.start_day is not None else spec.days + 1

    # --- fraud bursts: a compromised card is used several times within a few hours -------------
    mean_burst = 3.5
    n_burst_target = int(spec.n_transactions * spec.fraud_rate * 0.85)
    n_bursts = max(1, int(n_burst_target / mean_burst))
    b_user = rng.integers(0, spec.n_users, size=n_bursts)
    b_lo = np.maximum(u["signup_offset"][b_user], 0.0)
    b_day = b_lo + rng.random(n_bursts) * (spec.days - b_lo)
    # Which cards' fraud switches pattern: a fixed hash of the card, not a random draw, so that the
    # share changes nothing else in the stream.
    switches = (b_user * 2654435761 % 1000) < drift.concept_drift_share * 1000
    # Concept drift: "card testing" — stolen cards probed with runs of tiny purchases minutes apart,
    # in the day, at everyday merchants at home. New to a model trained before it, but learnable.
    b_testing = drift.concept_drift & (b_day >= drift_day) & switches
    b_drifted = np.zeros(n_bursts, bool)
    if spec.hard_fraud_age_band is not None:
        if spec.hard_fraud_age_band not in AGE_BANDS:
            raise ValueError(f"hard_fraud_age_band must be one of {AGE_BANDS}")
        b_drifted = b_drifted | (users["age_band"].to_numpy()[b_user] == spec.hard_fraud_age_band)
    b_size = 1 + rng.poisson(mean_burst - 1, n_bursts)
    rows = np.repeat(np.arange(n_bursts), b_size)
    n_fb = len(rows)
    f_user = b_user[rows]
    f_drifted = b_drifted[rows]
    f_testing = b_testing[rows] & ~f_drifted
    # Classic pattern: minutes apart, at night, in resellable goods at any merchant (mostly foreign),
    # high-value. "Low and slow" (the hard-to-see age band): spread over three days, daytime, at
    # domestic everyday merchants, small amounts.
    classic_offset = np.floor(b_day[rows]) + _time_of_day(rng, n_fb, NIGHT_HOUR_P) + rng.exponential(1.5, n_fb) / 24
    drifted_offset = np.floor(b_day[rows]) + rng.integers(0, 3, n_fb) + _time_of_day(rng, n_fb, HOUR_P)
    first = np.r_[0, np.cumsum(b_size)[:-1]]  # each burst's first row
    position = np.arange(n_fb) - first[rows]
    testing_offset = np.floor(b_day[rows]) + (drifted_offset[first] % 1)[rows] + position * 4 / 1440
    f_offset = np.where(f_drifted, drifted_offset, np.where(f_testing, testing_offset, classic_offset))
    f_offset = np.clip(f_offset, np.maximum(u["signup_offset"][f_user], 0), spec.days - 1e-6)
    f_merchant = np.where(
        f_drifted | f_testing,
        _pick_merchants(rng, m, n_fb, u["home"][f_user], DRIFTED_FRAUD_CATEGORIES),
        _pick_merchants(rng, m, n_fb, None, BURST_CATEGORIES),
    )
    low = rng.uniform(0.05, 0.3, n_fb)
    f_amount = u["amount_scale"][f_user] * np.where(f_drifted, low, rng.lognormal(np.log(5.0), 0.6, n_fb))
    f_amount = np.where(f_testing, 0.5 + (low - 0.05) * 18, f_amount)  # 0.50 to 5.00, whoever the user

    # --- legitimate background -------------------------------------------------------------------
    n_legit = spec.n_transactions - n_fb
    if n_legit <= 0:
        raise ValueError("fraud_rate too high for n_transactions")
    p_user = u["activity"] * (spec.days - np.maximum(u["signup_offset"], 0))
    l_user = rng.choice(spec.n_users, size=n_legit, p=p_user / p_user.sum())
    l_lo = np.maximum(u["signup_offset"][l_user], 0.0)
    l_day = np.floor(l_lo + rng.random(n_legit) * (spec.days - l_lo))
    l_offset = np.clip(l_day + _time_of_day(rng, n_legit, HOUR_P), l_lo, spec.days - 1e-6)
    l_domestic = rng.random(n_legit) < 0.93
    l_merchant = np.where(
        l_domestic, _pick_merchants(rng, m, n_legit, u["home"][l_user]), _pick_merchants(rng, m, n_legit)
    )
    l_cat = m["category"][l_merchant]
    cat_mult = np.array([CATEGORY_AMOUNT[c] for c in CATEGORIES])[l_cat]
    l_amount = u["amount_scale"][l_user] * cat_mult * rng.lognormal(0.0, 0.7, n_legit)
    tail = rng.random(n_legit) < 0.01  # a few very large purchases: a Pareto tail
    l_amount[tail] *= 1 + rng.pareto(1.5, tail.sum()) * 5
    # Thin background fraud on legitimate-looking rows: risky merchants and brand-new accounts.
    account_age = l_offset - u["signup_offset"][l_user]
    logit = -6.2 + 2.8 * m["risky"][l_merchant] + 1.2 * (account_age < 14) + 0.6 * ~l_domestic
    l_fraud = rng.random(n_legit) < 1 / (1 + np.exp(-logit))

    # --- assemble ----------------------------------------------------------------------------------
    user_idx = np.concatenate([f_user, l_user])
    merchant_idx = np.concatenate([f_merchant, l_merchant])
    offset = np.concatenate([f_offset, l_offset])
    amount = np.concatenate([f_amount, l_amount])
    is_fraud = np.concatenate([np.ones(n_fb, bool), l_fraud])
    after_drift = offset >= drift_day
    if drift.start_day is not None and drift.amount_inflation != 1.0:
        amount = np.where(after_drift, amount * drift.amount_inflation, amount)
    amount = np.clip(np.round(amount, 2), 0.01, CARD_LIMIT)

    category = pd.Categorical.from_codes(m["category"][merchant_idx], CATEGORIES)
    moved = rng.random(spec.n_merchants) < drift.new_category_share  # drawn always: see generate()
    if drift.start_day is not None and drift.new_category and drift.new_category_share > 0:
        category = category.add_categories([drift.new_category])
        category[moved[merchant_idx] & after_drift] = drift.new_category

    online = np.isin(m["category"][merchant_idx], [CATEGORIES.index(c) for c in ONLINE_CATEGORIES])
    channel = np.where(online, 1, np.where(rng.random(len(offset)) < 0.45, 2, 0))
    channel = np.where(rng.random(len(offset)) < CHANNEL_NULL_RATE, -1, channel)

    # Chargebacks arrive days to weeks after the fraud (about 4% after the dispute window: late
    # positives); a legitimate purchase is confirmed when the dispute window closes without one. The
    # confirmation is exactly at the window's end: a lag after it would leave the rows just past the
    # window with their frauds labelled and their legitimate rows not, an enriched sample.
    label_delay = np.where(
        is_fraud, 1.0 + rng.lognormal(np.log(10.0), 0.6, len(offset)), float(spec.label_maturity_days)
    )
    order = np.argsort(offset, kind="stable")
    tx = pd.DataFrame(
        {
            "user_id": (user_idx + 1).astype(np.int64)[order],
            "merchant_id": (merchant_idx + 1).astype(np.int64)[order],
            "event_timestamp": pd.to_datetime(_ts(start, offset[order])).as_unit("ns").tz_localize("UTC"),
            "amount": amount[order],
            "merchant_category": category[order],
            "country": pd.Categorical.from_codes(m["country"][merchant_idx][order], COUNTRIES),
            "channel": pd.Categorical.from_codes(channel[order], CHANNELS),
            "is_fraud": is_fraud[order].astype(np.int8),
            "label_available_at": pd.to_datetime(_ts(start, (offset + label_delay)[order]))
            .as_unit("ns")
            .tz_localize("UTC"),
        }
    )
    tx.insert(0, "transaction_id", np.arange(1, len(tx) + 1, dtype=np.int64))
    return Dataset(users=users, merchants=merchants, transactions=tx)


def break_upstream(transactions: pd.DataFrame) -> pd.DataFrame:
    """The same transactions as a broken upstream feed would send them: the entry mode (channel) no
    longer captured, and merchant categories arriving in another code list (upper-case codes) —
    the kind of change a schema migration upstream makes overnight. The world did not change; the
    data did: retraining on it must wait for a person."""
    broken = transactions.copy()
    broken["channel"] = pd.Categorical([None] * len(broken), categories=CHANNELS)
    codes = broken["merchant_category"].astype(str).str.upper().str.replace("_", "-")
    broken["merchant_category"] = pd.Categorical(codes)
    return broken


def spec_of(cfg: ProjectConfig, **overrides: Any) -> DataSpec:
    """The generator's parameters: the project's ``data`` section (validated here: the library does
    not know them), the label delay from the table's definition, and ``overrides`` on top."""
    raw = {**cfg.data, **overrides}
    raw.setdefault("label_maturity_days", cfg.table.label_delay_days)
    try:
        return DataSpec.model_validate(raw)
    except Exception as exc:
        raise ValueError(f"data: {exc}") from None


def generate_project(cfg: ProjectConfig, overrides: dict[str, Any]) -> str:
    """``mlcycle data generate``: users, merchants and transactions into the project's raw directory."""
    dataset = generate(spec_of(cfg, **overrides))
    paths = dataset.write(cfg.raw_dir)
    tx = dataset.transactions
    return (
        f"{len(tx):,} transactions, {len(dataset.users):,} users, {len(dataset.merchants):,} merchants "
        f"({tx['event_timestamp'].min():%Y-%m-%d} → {tx['event_timestamp'].max():%Y-%m-%d}), "
        f"fraud rate {tx['is_fraud'].mean():.2%} → {paths['transactions']}"
    )
