"""The fraud project's entrypoint ``flows/batch_score.py:batch_score`` (prefect.yaml, ``python flows/batch_score.py``).

The flow itself is mlcycle's generic :mod:`mlcycle.flows.batch_score`, re-exported here (every public
name, as ``flows.batch_score.<name>``): it lives in the package so that an installed mlcycle runs it too,
and this file only keeps the reference project's layout and deployment entrypoints.
"""

from __future__ import annotations

import sys

from mlcycle.flows.batch_score import *  # noqa: F403  (every task and helper, as flows.batch_score.<name>)
from mlcycle.flows.batch_score import batch_score as batch_score  # the deployment's entrypoint, by name

if __name__ == "__main__":  # as the package module's own command line: [CONFIG]
    print(batch_score(sys.argv[1] if len(sys.argv) > 1 else None))
