"""Features: declarations (window aggregations), transformations (the table → feature tables), the
pipeline (validate → build → publish, point-in-time training sets), the Feast offline store and the
store facade.

The names below load on first use (PEP 562): importing Feast (seconds to a minute on a loaded
machine) must not be the price of importing a light module of this package, such as the
aggregation engines.
"""

from __future__ import annotations

import importlib
from typing import Any

_FROM = {
    **dict.fromkeys(
        [
            "FeatureStoreUnavailable",
            "ServicePlan",
            "apply_repo",
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
        ],
        "store",
    ),
}

__all__ = sorted(_FROM)


def __getattr__(name: str) -> Any:
    if name not in _FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_FROM[name]}"), name)
    globals()[name] = value
    return value
