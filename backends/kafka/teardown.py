"""Stopping aiokafka clients within a bound, leaving nothing running.

``AIOKafkaConsumer.stop()`` commits, leaves its group and closes its fetcher and
connections; ``AIOKafkaProducer.stop()`` flushes and closes its sender. Against a
broker that stopped answering those awaits hang, and a bound cut around them is not
enough: aiokafka marks the client closed before its first await, so a stop that was
cut short can never be finished, and its heartbeat, fetch, metadata and sender tasks
and sockets outlive the client (a closed member then stays in its group, holding up
the next join). :func:`stop_client` tears down what the cut-short stop did not reach.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.errors import KafkaError

__all__ = ["stop_client"]

log = logging.getLogger(__name__)

#: Bound of each step of a forced teardown (it sends nothing: it closes sockets).
_FORCE_S = 2.0

# Background tasks of aiokafka 0.11-0.14, by the object that holds them.
_COORDINATOR_TASKS = (
    "_coordination_task",
    "_heartbeat_task",
    "_commit_refresh_task",
    "_reset_committed_task",
)


async def stop_client(client: Any, timeout: float) -> None:
    """``client.stop()`` within ``timeout`` seconds; when it does not finish, cancel
    the client's background tasks and close its connections (without a word to the
    broker: a group member is then dropped at its session timeout). Never raises a
    Kafka or timeout error; a cancellation of the caller propagates."""
    try:
        async with asyncio.timeout(timeout):
            await client.stop()
        return
    except (KafkaError, TimeoutError, OSError) as exc:
        log.debug("kafka client stop did not finish (%r); tearing it down", exc)
    await _force(client)


async def _force(client: Any) -> None:
    tasks: list[asyncio.Task[Any]] = []
    coordinator = getattr(client, "_coordinator", None)
    for name in _COORDINATOR_TASKS:
        _take(getattr(coordinator, name, None), tasks)
    _take(getattr(getattr(client, "_sender", None), "_sender_task", None), tasks)
    fetcher = getattr(client, "_fetcher", None)
    # Fetcher.close() awaits each pending request task after cancelling it and lets
    # the first CancelledError out, leaving the others: cancel them all here
    for task in getattr(fetcher, "_pending_tasks", ()):
        _take(task, tasks)
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=_FORCE_S)
    if fetcher is not None and not getattr(fetcher, "_closed", False):
        await _bounded(fetcher.close())
    inner = getattr(client, "_client", None) or getattr(client, "client", None)
    if inner is not None:
        await _bounded(inner.close())


def _take(task: object, into: list[asyncio.Task[Any]]) -> None:
    if isinstance(task, asyncio.Task) and not task.done():
        into.append(task)


async def _bounded(step: Any) -> None:
    try:
        async with asyncio.timeout(_FORCE_S):
            await step
    except (KafkaError, TimeoutError, OSError):
        pass
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # our caller's cancellation
        # else a task cancelled above, whose CancelledError aiokafka passed on
