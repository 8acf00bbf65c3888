"""What a workload drives: the library or one broker's raw client, behind one small
interface, so every workload is written once and runs the same on both sides.

A :class:`Driver` is one connection (publish, declare, clean up); a
:class:`Consumer` is one member of a group that hands each payload to a callback
and settles it the way its side does best (the library: ``await d.ack()`` per
delivery; the raw clients: their idiom, see each module).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

__all__ = ["Consumer", "Driver", "OnMessage", "Side", "envelope_message", "fresh_attributes"]

Side = Literal["bus", "raw"]
OnMessage = Callable[[bytes], None]


def envelope_message(topic: str) -> Any:
    """A :class:`bus.Message` as the library would publish it to ``topic`` (empty
    payload): raw drivers built with ``enveloped=True`` encode its headers once, with
    the library's own encoders, and send them with every payload, changing only the
    id and the time per message (:func:`fresh_attributes`)."""
    from bus import Message
    from bus._ids import uuid7

    return Message(id=uuid7(), topic=topic, data=b"", source="bench")


def fresh_attributes() -> tuple[str, str]:
    """A new message id and the time as it travels, made by the library's own helpers:
    the per-message work a raw client carrying the envelope cannot avoid, and no
    more. (Building a whole :class:`bus.Message` per publish, as the raw sides once
    did, charged them ~8 us of model validation the library's publish path does not
    pay, which made the library look faster than a raw client carrying the same
    headers.)"""
    from bus._ids import stamp
    from bus.envelope import format_time

    mid, when = stamp()
    return mid, format_time(when)


class Consumer(abc.ABC):
    """One member of ``group`` on ``topic``."""

    def __init__(self) -> None:
        #: ``time.monotonic_ns()`` when the last settlement (ack) returned.
        self.last_settle_ns = 0

    @abc.abstractmethod
    async def open(self) -> None:
        """Join the group; return once the member is live (assigned, for Kafka)."""

    @abc.abstractmethod
    async def run(self, on_message: OnMessage, stop: asyncio.Event) -> None:
        """Hand every payload to ``on_message`` and ack it, until ``stop`` is set."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Leave the group. Idempotent."""


class Driver(abc.ABC):
    """One connection of one side (``bus`` or ``raw``) to one backend."""

    side: ClassVar[Side]
    #: Whether joining a group is cheap enough to do per measured run. Kafka's
    #: group join takes seconds, so Kafka consumers join once per workload.
    cheap_join: ClassVar[bool] = True

    def __init__(self, backend: str, url: str) -> None:
        self.backend = backend
        self.url = url

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def declare(self, topic: str, groups: Sequence[str]) -> None:
        """Create ``topic`` and ``groups`` so the groups keep what is published next."""

    @abc.abstractmethod
    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish one message and wait for the broker's confirm."""

    @abc.abstractmethod
    async def publish_batch(self, topic: str, payloads: Sequence[bytes]) -> None:
        """Publish many, pipelined; return once every one is confirmed."""

    @abc.abstractmethod
    def consumer(self, topic: str, group: str, prefetch: int) -> Consumer: ...

    async def cleanup(self, topics: Sequence[str], groups: Sequence[str]) -> None:  # noqa: B027
        """Delete what the workload left on the broker (best effort)."""

    def settings(self) -> dict[str, Any]:
        """Client settings that matter for the figures (written into the results)."""
        return {}

    async def broker_info(self) -> dict[str, str]:
        """``{"implementation": ..., "version": ...}`` as far as the client can tell."""
        return {}
