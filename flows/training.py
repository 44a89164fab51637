"""The fraud project's entrypoint ``flows/training.py:train`` (``prefect.yaml``, ``python flows/training.py``).

The flow itself is mlcycle's generic :mod:`mlcycle.flows.training`, re-exported here (every public
name, as ``flows.training.<name>``): it lives in the package so that an installed mlcycle runs it too,
and this file only keeps the reference project's layout and deployment entrypoints.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlcycle.flows.training import *  # noqa: F403  (every task and helper, as flows.training.<name>)
from mlcycle.flows.training import train as train  # the deployment's entrypoint, by name

if __name__ == "__main__":  # as the package module's own command line: [CONFIG]
    print(train(sys.argv[1] if len(sys.argv) > 1 else str(Path.cwd() / "mlcycle.yaml")))
