"""bus._watchdog: safety time limits checked by one periodic task (the backends bound
every broker call with it instead of a timer per call)."""

from __future__ import annotations

import asyncio
import time

import pytest

from bus._watchdog import Watchdog


async def test_a_call_past_its_deadline_raises_timeout_error_within_one_resolution() -> None:
    dog = Watchdog(resolution=0.05)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await dog.bound(asyncio.sleep(30), 0.2)
    took = time.monotonic() - started
    assert 0.2 <= took < 2.0, took  # bounded, never a hang (generous: a loaded CI machine)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    dog.close()


async def test_a_call_in_time_returns_its_result_and_the_idle_watchdog_holds_no_task() -> None:
    dog = Watchdog(resolution=0.02)

    async def answer() -> int:
        await asyncio.sleep(0.01)
        return 42

    assert [await dog.bound(answer(), 5.0) for _ in range(3)] == [42, 42, 42]
    await asyncio.sleep(0.1)  # a tick with no call in flight ends the ticker
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "bus-watchdog"]
    assert await dog.bound(answer(), 5.0) == 42  # and the next call starts one again
    dog.close()


async def test_cancelling_the_caller_is_a_cancellation_not_a_timeout() -> None:
    dog = Watchdog(resolution=0.02)
    task = asyncio.create_task(dog.bound(asyncio.sleep(30), 10.0))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    dog.close()


async def test_only_the_expired_call_of_several_in_flight_times_out() -> None:
    dog = Watchdog(resolution=0.02)
    slow = asyncio.create_task(dog.bound(asyncio.sleep(30), 0.1))
    quick = asyncio.create_task(dog.bound(asyncio.sleep(0.3, "done"), 10.0))
    with pytest.raises(TimeoutError):
        await slow
    assert await quick == "done"
    dog.close()


async def test_an_operation_that_absorbs_the_cancellation_leaves_the_task_uncancelled() -> None:
    dog = Watchdog(resolution=0.02)

    async def stubborn() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return "finished anyway"
        return "slept"

    assert await dog.bound(stubborn(), 0.05) == "finished anyway"
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0)  # a later await is not cancelled by the spent deadline
    dog.close()


async def test_an_operation_that_turns_the_cancellation_into_an_error_times_out() -> None:
    dog = Watchdog(resolution=0.02)

    async def translating() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            raise ConnectionError("dropped mid-reply") from None

    with pytest.raises(TimeoutError) as info:
        await dog.bound(translating(), 0.05)
    assert isinstance(info.value.__cause__, ConnectionError)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    dog.close()


def test_resolution_must_be_positive() -> None:
    with pytest.raises(ValueError, match="resolution"):
        Watchdog(resolution=0)
