"""The fraud project's entrypoint ``flows/backup.py:backup`` (prefect.yaml, ``python flows/backup.py``).

The flow itself is mlcycle's generic :mod:`mlcycle.flows.backup`, re-exported here: it lives in the
package so that an installed mlcycle runs it too, and this file only keeps the reference project's
layout and deployment entrypoints.
"""

from __future__ import annotations

import sys

from mlcycle.flows.backup import *  # noqa: F403  (every task and helper, as flows.backup.<name>)
from mlcycle.flows.backup import backup as backup  # the deployment's entrypoint, by name

if __name__ == "__main__":  # as the package module's own command line: [CONFIG]
    print(backup(sys.argv[1] if len(sys.argv) > 1 else None))
