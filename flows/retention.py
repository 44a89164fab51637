"""The fraud project's entrypoint ``flows/retention.py:retention`` (prefect.yaml, ``python flows/retention.py``).

The flow itself is mlcycle's generic :mod:`mlcycle.flows.retention`, re-exported here: it lives in the
package so that an installed mlcycle runs it too, and this file only keeps the reference project's
layout and deployment entrypoints.
"""

from __future__ import annotations

import sys

from mlcycle.flows.retention import *  # noqa: F403  (every task and helper, as flows.retention.<name>)
from mlcycle.flows.retention import retention as retention  # the deployment's entrypoint, by name

if __name__ == "__main__":  # as the package module's own command line: [CONFIG]
    print(retention(sys.argv[1] if len(sys.argv) > 1 else None))
