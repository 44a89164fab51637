"""The micro-batcher: concurrent calls on one loop go to the function together; a lone call alone."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from mlcycle.serving.batching import MicroBatcher

T = TypeVar("T")


def test_calls_submitted_in_one_turn_are_scored_together_in_order() -> None:
    seen: list[list[int]] = []

    def square(items: list[int]) -> list[int]:
        seen.append(list(items))
        return [i * i for i in items]

    sizes: list[int] = []

    async def main() -> list[int]:
        batcher = MicroBatcher(square, max_size=4, observe=sizes.append)
        return await asyncio.gather(*(batcher.submit(i) for i in range(10)))

    assert asyncio.run(main()) == [i * i for i in range(10)]
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # cut at max_size, submission order kept
    assert sizes == [4, 4, 2]  # what /metrics reports (mlcycle_predict_batch_size)


class FrozenClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock never advances: a timer (``call_later``, ``wait_for``, ``sleep(d)``)
    never comes due, however long the machine takes; only ``call_soon`` hops move things on."""

    def time(self) -> float:
        return 0.0


def run_frozen(coro: Coroutine[Any, Any, T]) -> T:
    loop = FrozenClockLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_a_lone_call_does_not_wait_for_company() -> None:
    """A lone call is answered within a few turns of the loop, on a clock that never advances: a
    batcher that held it back on a timer (however short) would never answer it here. Counted in
    turns, not seconds: the same on an idle machine and a loaded one."""
    seen: list[list[str]] = []

    async def turns_to_answer(batcher: MicroBatcher[str, str], item: str) -> tuple[object, int]:
        call = asyncio.ensure_future(batcher.submit(item))
        turns = 0
        while not call.done() and turns < 20:
            await asyncio.sleep(0)  # one turn of the loop (sleep(0) sets no timer)
            turns += 1
        if not call.done():
            call.cancel()
            return None, turns
        return call.result(), turns

    async def main() -> list[tuple[object, int]]:
        batcher = MicroBatcher(lambda items: seen.append(list(items)) or [s.upper() for s in items])
        first = await turns_to_answer(batcher, "a")
        second = await turns_to_answer(batcher, "b")  # submitted after the first was answered: its own batch
        return [first, second]

    # Turn 1: the call is submitted and its flush queued (call_soon); turn 2: the flush answers it;
    # turn 3: the caller's task resumes with the answer.
    (first, first_turns), (second, second_turns) = run_frozen(main())
    assert (first, second) == ("A", "B")
    assert first_turns <= 3 and second_turns <= 3
    assert seen == [["a"], ["b"]]


def test_a_failing_batch_fails_each_of_its_calls_and_the_next_batch_goes_on() -> None:
    class Down(RuntimeError):
        pass

    calls = 0

    def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Down("store unavailable")
        return items

    async def main() -> tuple[list[object], int]:
        batcher = MicroBatcher(flaky)
        first = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        return first, await batcher.submit(7)

    first, after = asyncio.run(main())
    assert all(isinstance(r, Down) for r in first) and len(first) == 3
    assert after == 7


def test_a_function_returning_the_wrong_number_of_results_is_an_error_not_a_shift() -> None:
    async def main() -> None:
        batcher = MicroBatcher(lambda items: items[:-1])
        await asyncio.gather(batcher.submit(1), batcher.submit(2))

    with pytest.raises(RuntimeError, match="1 results for 2 items"):
        asyncio.run(main())


def test_a_cancelled_caller_is_skipped_and_the_others_are_answered() -> None:
    seen: list[list[int]] = []

    async def main() -> int:
        batcher = MicroBatcher(lambda items: seen.append(list(items)) or items)
        gone = asyncio.ensure_future(batcher.submit(1))
        kept = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0)  # both submitted; the flush is queued behind this turn
        gone.cancel()
        return await kept

    assert asyncio.run(main()) == 2
    assert seen == [[2]]
