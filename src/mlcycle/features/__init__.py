"""Features: engineering (raw → feature tables), the Feast offline store, and the store facade."""

from mlcycle.features.engineering import FeatureTables, build_feature_tables
from mlcycle.features.store import (
    FeatureStoreUnavailable,
    ServicePlan,
    apply_repo,
    entity_frame,
    materialize,
    online_vector,
    open_store,
    plan_for,
    service_plan,
    skew_report,
    training_set,
)

__all__ = [
    "FeatureStoreUnavailable",
    "FeatureTables",
    "ServicePlan",
    "apply_repo",
    "build_feature_tables",
    "entity_frame",
    "materialize",
    "online_vector",
    "open_store",
    "plan_for",
    "service_plan",
    "skew_report",
    "training_set",
]
