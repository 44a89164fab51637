"""The fraud project's entrypoint ``flows/rollout.py:rollout_flow`` (``prefect.yaml``, ``python flows/rollout.py``).

The flow itself is mlcycle's generic :mod:`mlcycle.flows.rollout`, re-exported here (every public
name, as ``flows.rollout.<name>``): it lives in the package so that an installed mlcycle runs it too,
and this file only keeps the reference project's layout and deployment entrypoints.
"""

from __future__ import annotations

import sys

from mlcycle.flows.rollout import *  # noqa: F403  (every task and helper, as flows.rollout.<name>)
from mlcycle.flows.rollout import rollout_flow as rollout_flow  # the deployment's entrypoint, by name

if __name__ == "__main__":  # as the package module's own command line: [CONFIG]
    print(rollout_flow(sys.argv[1] if len(sys.argv) > 1 else None))
