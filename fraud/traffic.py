"""Replay transactions against the scoring service: the fraud story's and the canary tests' traffic."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import numpy as np
import pandas as pd


def request_body(row: pd.Series | tuple) -> dict:
    get = row.__getattribute__ if not isinstance(row, pd.Series) else row.__getitem__
    channel = get("channel")
    return {
        "request": {
            "transaction_id": int(get("transaction_id")),
            "user_id": int(get("user_id")),
            "merchant_id": int(get("merchant_id")),
            "amount": float(get("amount")),
            "country": str(get("country")),
            "merchant_category": str(get("merchant_category")),
            "channel": None if pd.isna(channel) else str(channel),
        }
    }


@dataclass
class TrafficStats:
    sent: int = 0
    status: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    variants: dict[str, int] = field(default_factory=dict)
    flagged: int = 0

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def replay(
    url: str,
    transactions: pd.DataFrame,
    n: int,
    concurrency: int = 4,
    on_response: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
) -> TrafficStats:
    """POST ``n`` requests (cycling through ``transactions``) with ``concurrency`` threads."""
    rows = [request_body(r) for r in transactions.itertuples()]
    stats = TrafficStats()
    lock = threading.Lock()

    def one(i: int, client: httpx.Client) -> None:
        if stop is not None and stop.is_set():
            return
        t = time.perf_counter()
        try:
            r = client.post(url + "/predict", json=rows[i % len(rows)])
            code, body = r.status_code, (r.json() if r.status_code == 200 else {})
        except httpx.HTTPError:
            code, body = 0, {}
        with lock:
            stats.sent += 1
            stats.status[code] = stats.status.get(code, 0) + 1
            stats.latencies_ms.append((time.perf_counter() - t) * 1000)
            if body:
                stats.variants[body["variant"]] = stats.variants.get(body["variant"], 0) + 1
                stats.flagged += int(bool(body["decision"]))
        if on_response:
            on_response()

    # A service that requires an API key (MLCYCLE_API_KEY, as `mlcycle serve --host` does) gets it.
    key = os.environ.get("MLCYCLE_API_KEY")
    headers = {"x-api-key": key} if key else {}
    clients = [httpx.Client(trust_env=False, timeout=30, headers=headers) for _ in range(concurrency)]
    try:
        with ThreadPoolExecutor(concurrency) as pool:
            for i in range(n):
                pool.submit(one, i, clients[i % concurrency])
    finally:
        for c in clients:
            c.close()
    return stats
