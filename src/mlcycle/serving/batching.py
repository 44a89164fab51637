"""Micro-batching of concurrent single requests on one event loop.

Under concurrent traffic a service worker receives several ``/predict`` calls within one turn of its
event loop. Scored one by one, each pays the whole fixed cost of a score — a round trip to the
online store, NumPy arrays built for one row, one model call, one log append. ``MicroBatcher``
collects the calls that reach it before the loop gets round to scoring, and scores them in one
call of a function on the list: one store read, one matrix, one model call. A call that finds the
loop idle is scored on the next turn on its own, so a lone request waits for nothing but one
``call_soon`` hop. No timer is involved: it never holds a request back to wait for company.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """``await submit(item)`` answers ``fn([..., item, ...])[k]``: the items submitted before the
    loop's next turn go to ``fn`` together (at most ``max_size`` per call), in submission order.

    ``fn`` runs on the event loop, synchronously, and must return one result per item, in order.
    An exception from ``fn`` is raised in every call of that batch; the next batch is unaffected.
    One batcher belongs to one event loop (a BentoML worker has one).

    ``observe`` (optional) is told the size of each batch handed to ``fn`` (the service's
    ``mlcycle_predict_batch_size`` histogram): whether concurrent calls were scored together shows
    in ``/metrics``."""

    def __init__(
        self, fn: Callable[[list[T]], Sequence[R]], max_size: int = 64, observe: Callable[[int], None] | None = None
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        self._fn = fn
        self.max_size = max_size
        self._observe = observe
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._scheduled = False

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self.max_size):
            batch = [(item, future) for item, future in pending[start : start + self.max_size] if not future.done()]
            if not batch:  # every caller of this batch gave up (a cancelled request)
                continue
            try:  # (an observer's error fails this batch's calls, never leaves them waiting)
                if self._observe is not None:
                    self._observe(len(batch))
                results = self._fn([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            except Exception as exc:  # every caller of this batch gets it; the next batch goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
