"""mlcycle: one automated, observable, reproducible ML lifecycle.

Importing the package switches off every stack library's telemetry before any of them is imported:
the machines mlcycle runs on are often offline, where a telemetry call is a wasted DNS look-up or a
hang. ``setdefault`` lets an operator who really wants telemetry turn it back on.
"""

from __future__ import annotations

import os
import warnings

TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "BENTOML_DO_NOT_TRACK": "True",
    "FEAST_USAGE": "False",
    "HF_HUB_OFFLINE": "1",
}
# Prefect's temporary server (flows run without `prefect server start`) gives up after 20 s by
# default; a loaded 2-core machine can need longer.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # Progress bars for artifact downloads of a few KB only clutter the output.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

for _key, _value in {**TELEMETRY_OFF, **PREFECT_DEFAULTS}.items():
    os.environ.setdefault(_key, _value)


def quiet_stack_warnings() -> None:
    """Hide known, harmless notices from the stack that would drown mlcycle's own output.

    Called again after importing Feast, which installs warning filters of its own."""
    warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature")
    warnings.filterwarnings("ignore", message=r"fetch_arrow_table\(\) is deprecated")
    warnings.filterwarnings("ignore", message=r"Type object .* does not refer to an OperatorClass")
    warnings.filterwarnings("ignore", message=r"The ``noload`` loader strategy is deprecated")


quiet_stack_warnings()

__version__ = "0.1.0"
