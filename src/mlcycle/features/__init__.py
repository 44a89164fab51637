"""Features: engineering (raw → feature tables), the Feast offline store, and the store facade."""

from mlcycle.features.engineering import FeatureTables, build_feature_tables
from mlcycle.features.store import (
    FeatureStoreUnavailable,
    ServicePlan,
    apply_repo,
    clear_online,
    entity_frame,
    fs_yaml_for,
    materialize,
    online_vector,
    open_project_store,
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
    "clear_online",
    "entity_frame",
    "fs_yaml_for",
    "materialize",
    "online_vector",
    "open_project_store",
    "open_store",
    "plan_for",
    "service_plan",
    "skew_report",
    "training_set",
]
