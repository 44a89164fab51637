"""The smallest BentoML service there is, for ``tests/test_servers_smoke.py``.

It has no model and no dependency beyond BentoML itself, so when ``bentoml serve`` of it fails the
cause is the locked environment, not mlcycle code. Served as ``smoke_service:Echo`` from ``tests/``.
"""

from __future__ import annotations

import bentoml


@bentoml.service(workers=1)
class Echo:
    """One API that returns its input: proves the request path (HTTP -> worker -> HTTP) works."""

    @bentoml.api
    def echo(self, text: str) -> str:
        return text
