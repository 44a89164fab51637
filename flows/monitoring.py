"""The fraud project's entrypoint ``flows/monitoring.py:monitor`` (``prefect.yaml``, ``python flows/monitoring.py``).

The flow itself is mlcycle's generic :mod:`mlcycle.flows.monitoring`, re-exported here (every public
name, as ``flows.monitoring.<name>``): it lives in the package so that an installed mlcycle runs it too,
and this file only keeps the reference project's layout and deployment entrypoints.
"""

from __future__ import annotations

import sys

from mlcycle.flows.monitoring import *  # noqa: F403  (every task and helper, as flows.monitoring.<name>)
from mlcycle.flows.monitoring import monitor as monitor  # the deployment's entrypoint, by name

if __name__ == "__main__":  # as the package module's own command line: [CONFIG]
    print(monitor(sys.argv[1] if len(sys.argv) > 1 else None))
