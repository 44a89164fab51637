"""Feast definitions for the fraud model: entities, feature views, on-demand features, services.

Definitions only — the tables behind them are built by ``mlcycle.features.engineering``
(``mlcycle features build``). Source paths are relative to this directory.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String

FEATURES_DIR = "../data/features"

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="A cardholder.")
merchant = Entity(
    name="merchant", join_keys=["merchant_id"], value_type=ValueType.INT64, description="A card acceptor."
)

user_txn_stats_source = FileSource(
    name="user_txn_stats_source",
    path=f"{FEATURES_DIR}/user_txn_stats.parquet",
    timestamp_field="event_timestamp",
)
merchant_stats_source = FileSource(
    name="merchant_stats_source",
    path=f"{FEATURES_DIR}/merchant_stats.parquet",
    timestamp_field="event_timestamp",
)
user_profile_source = FileSource(
    name="user_profile_source",
    path=f"{FEATURES_DIR}/user_profile.parquet",
    timestamp_field="event_timestamp",
)

WINDOWS = ("1h", "24h", "7d", "30d")

user_txn_stats = FeatureView(
    name="user_txn_stats",
    entities=[user],
    # Past 30 days every rolling window is empty: an older row says nothing true about "now".
    ttl=timedelta(days=30),
    schema=[
        Field(name=f"{stat}_{w}", dtype=dtype)
        for w in WINDOWS
        for stat, dtype in (
            ("txn_count", Int64),
            ("amount_sum", Float64),
            ("amount_mean", Float64),
            ("distinct_merchants", Int64),
        )
    ]
    + [Field(name="last_txn_unix", dtype=Int64)],
    source=user_txn_stats_source,
    online=True,
    description="Rolling aggregates of the user's transactions before the stamped time.",
    tags={"owner": "fraud-ml", "refresh": "per transaction"},
)

merchant_stats = FeatureView(
    name="merchant_stats",
    entities=[merchant],
    # Snapshots are nightly; a missed night is tolerated, two are not.
    ttl=timedelta(days=2),
    schema=[
        Field(name="merchant_txn_count_7d", dtype=Int64),
        Field(name="merchant_amount_mean_7d", dtype=Float64),
        Field(name="merchant_labelled_90d", dtype=Int64),
        Field(name="merchant_fraud_rate_90d", dtype=Float64),
    ],
    source=merchant_stats_source,
    online=True,
    description="Nightly merchant volume and fraud rate from labels already available.",
    tags={"owner": "fraud-ml", "refresh": "daily"},
)

user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    # Static attributes: ten years stands for "never expires" while keeping a TTL, which
    # `feast materialize-incremental` needs to know how far back to load on its first run.
    ttl=timedelta(days=3650),
    schema=[
        Field(name="home_country", dtype=String),
        Field(name="age_band", dtype=String),
        Field(name="signup_unix", dtype=Int64),
    ],
    source=user_profile_source,
    online=True,
    description="Static cardholder attributes; age_band is for fairness slicing, never a model input.",
    tags={"owner": "fraud-ml", "pii": "age_band"},
)

transaction_request = RequestSource(
    name="transaction_request",
    schema=[
        Field(name="amount", dtype=Float64),
        Field(name="country", dtype=String),
        Field(name="merchant_category", dtype=String),
        Field(name="channel", dtype=String),
        Field(name="request_unix", dtype=Int64),
    ],
    description="Fields of the authorization request itself.",
)


@on_demand_feature_view(
    sources=[transaction_request, user_txn_stats, user_profile],
    schema=[
        Field(name="log_amount", dtype=Float64),
        Field(name="amount_to_user_mean_30d", dtype=Float64),
        Field(name="hour_of_day", dtype=Int64),
        Field(name="is_foreign", dtype=Int64),
        Field(name="account_age_days", dtype=Float64),
        Field(name="secs_since_last_txn", dtype=Float64),
        Field(name="merchant_category_code", dtype=Int64),
        Field(name="channel_code", dtype=Int64),
    ],
    mode="python",
    description="Request-time features: the same code runs for training rows and online requests.",
)
def transaction_features(inputs: dict) -> dict:
    # Feast runs this function from its source text in a fresh namespace: imports and constants
    # must live inside it. Python mode, written with NumPy: mlcycle passes NumPy columns (one row
    # online, millions offline) and takes arrays back; Feast (`feast apply`, its feature server)
    # passes lists and types the outputs from lists. Numbers arrive with NaN (or None) for missing.
    import numpy as np

    # The merchant categories and channels known at training (fraud.generator.CATEGORIES and
    # CHANNELS; a test holds them equal): any other value is code -1, reported as unknown.
    categories = ("grocery", "restaurants", "fuel", "fashion", "electronics", "travel", "health", "gaming",
                  "digital_goods", "home")  # fmt: skip
    category_codes = {c: i for i, c in enumerate(categories)}
    channel_codes = {c: i for i, c in enumerate(("pos", "ecom", "contactless"))}

    def numbers(name: str) -> np.ndarray:
        return np.asarray(inputs[name], dtype="float64")  # None → NaN

    amount = numbers("amount")
    request = numbers("request_unix")
    mean_30d = numbers("amount_mean_30d")
    country, home = inputs["country"], inputs["home_country"]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "log_amount": np.log1p(np.clip(amount, 0, None)),
            "amount_to_user_mean_30d": amount / np.where(mean_30d > 0, mean_30d, np.nan),
            "hour_of_day": (np.floor_divide(request, 3600) % 24).astype("int64"),
            # Unknown home country (unknown user) is "not foreign" only by default: features_missing says so.
            "is_foreign": np.array(
                [h is not None and str(c) != str(h) for c, h in zip(country, home, strict=True)], dtype="int64"
            ),
            "account_age_days": (request - numbers("signup_unix")) / 86_400.0,
            "secs_since_last_txn": request - numbers("last_txn_unix"),
            "merchant_category_code": np.array(
                [category_codes.get(str(c), -1) for c in inputs["merchant_category"]], dtype="int64"
            ),
            "channel_code": np.array([channel_codes.get(str(c), -1) for c in inputs["channel"]], dtype="int64"),
        }
    return {k: v.tolist() for k, v in out.items()} if isinstance(inputs["amount"], list) else out


fraud_model_v1 = FeatureService(
    name="fraud_model_v1",
    # last_txn_unix is an input of the on-demand features (seconds since the last transaction),
    # not a model input: a raw clock value would let the model learn the calendar.
    features=[
        user_txn_stats[[f.name for f in user_txn_stats.schema if f.name != "last_txn_unix"]],
        merchant_stats,
        transaction_features,
    ],
    description="Inputs of the card-fraud model; the same service builds training sets and online vectors.",
    tags={"model": "fraud"},
)
