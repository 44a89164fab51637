"""The fraud project's entrypoint ``flows/retraining.py:retrain`` (``prefect.yaml``, ``python flows/retraining.py``).

The flow itself is mlcycle's generic :mod:`mlcycle.flows.retraining`, re-exported here (every public
name, as ``flows.retraining.<name>``): it lives in the package so that an installed mlcycle runs it too,
and this file only keeps the reference project's layout and deployment entrypoints.
"""

from __future__ import annotations

import sys

from mlcycle.flows.retraining import *  # noqa: F403  (every task and helper, as flows.retraining.<name>)
from mlcycle.flows.retraining import retrain as retrain  # the deployment's entrypoint, by name

if __name__ == "__main__":  # as the package module's own command line: [CONFIG]
    print(retrain(sys.argv[1] if len(sys.argv) > 1 else None))
