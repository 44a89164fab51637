"""The micro-batcher: concurrent calls on one loop go to the function together; a lone call alone."""

from __future__ import annotations

import asyncio

import pytest

from mlcycle.serving.batching import MicroBatcher


def test_calls_submitted_in_one_turn_are_scored_together_in_order() -> None:
    seen: list[list[int]] = []

    def square(items: list[int]) -> list[int]:
        seen.append(list(items))
        return [i * i for i in items]

    async def main() -> list[int]:
        batcher = MicroBatcher(square, max_size=4)
        return await asyncio.gather(*(batcher.submit(i) for i in range(10)))

    assert asyncio.run(main()) == [i * i for i in range(10)]
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # cut at max_size, submission order kept


def test_a_lone_call_does_not_wait_for_company() -> None:
    seen: list[list[str]] = []

    async def main() -> list[str]:
        batcher = MicroBatcher(lambda items: seen.append(list(items)) or [s.upper() for s in items])
        first = await batcher.submit("a")
        second = await batcher.submit("b")  # submitted after the first was answered: its own batch
        return [first, second]

    assert asyncio.run(main()) == ["A", "B"]
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
