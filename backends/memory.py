"""``memory://[name]``: an in-process broker with every capability.

A real backend, not a test double: it passes the whole conformance suite and is
the reference for what the contract means. Connections with the same ``name``
(``memory://`` is ``memory://default``) in one event loop share one broker, so
several :class:`bus.Bus` objects in a process can talk to each other. Nothing is
persisted; a process exit loses everything.

Semantics, matching the network backends:

* each topic keeps an append-only log of its last ``retention`` messages, which a
  new group or broadcast subscriber with ``start="earliest"`` reads first;
* a group is a priority queue (priority, then publish order) plus the deliveries
  held by its members; broadcast subscribers are private groups of one;
* an unsettled delivery returns to its group when its consumer closes, when it
  is nacked, or when its lease (``ack_timeout``) expires; ``in_progress`` renews
  the lease;
* :func:`restart` simulates a broker restart: for ``downtime`` seconds every
  operation waits (as a client waits while reconnecting), held deliveries return
  to their groups, and settlements from before the restart are ignored (they
  refer to deliveries the broker no longer knows), so those messages are
  delivered again - exactly what a durable broker does.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pydantic

from bus.backend import Backend, BackendSubscription, Start
from bus.capabilities import Capabilities, Feature, native
from bus.delivery import Delivery
from bus.errors import BrokerUnavailable, BusClosed
from bus.message import Message
from bus.options import BackendOptions

__all__ = ["MemoryBackend", "MemoryOptions", "restart"]


class MemoryOptions(BackendOptions):
    retention: int = pydantic.Field(default=100_000, ge=0)
    """Messages kept per topic for replay (``start="earliest"``)."""


@dataclass(eq=False)
class _Entry:
    message: Message
    seq: int
    deliveries: int = 0


@dataclass(eq=False)
class _Held:
    entry: _Entry
    consumer: _Consumer
    lease: asyncio.TimerHandle | None = None


class _Consumer:
    def __init__(self, group: _Group, prefetch: int) -> None:
        self.group = group
        self.wake = asyncio.Event()
        self.closed = False
        #: deliveries held unsettled at most, as a broker's prefetch bounds them
        self.prefetch = prefetch
        self.holding = 0

    def unhold(self) -> None:
        """One of this consumer's deliveries was settled or taken back: room for one."""
        self.holding -= 1
        self.wake.set()


@dataclass(eq=False)
class _Group:
    name: str
    topic: _Topic
    ephemeral: bool = False
    ready: list[tuple[int, int, _Entry]] = field(default_factory=list)
    held: dict[int, _Held] = field(default_factory=dict)
    consumers: list[_Consumer] = field(default_factory=list)

    def push(self, entry: _Entry) -> None:
        priority = entry.message.priority or 0
        heapq.heappush(self.ready, (-priority, entry.seq, entry))
        for consumer in self.consumers:
            consumer.wake.set()


@dataclass(eq=False)
class _Topic:
    name: str
    retention: int
    log: deque[_Entry] = field(default_factory=deque)
    groups: dict[str, _Group] = field(default_factory=dict)

    def group(self, name: str, start: Start, *, ephemeral: bool = False) -> _Group:
        existing = self.groups.get(name)
        if existing is not None:
            return existing
        group = _Group(name, self, ephemeral=ephemeral)
        if start == "earliest":
            for entry in self.log:
                group.push(_Entry(entry.message, entry.seq))
        self.groups[name] = group
        return group


class MemoryBroker:
    """The shared state behind ``memory://name`` in one event loop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.topics: dict[str, _Topic] = {}
        self._up = asyncio.Event()
        self._up.set()
        self._seq = itertools.count()
        self._tags = itertools.count(1)

    def topic(self, name: str, retention: int) -> _Topic:
        topic = self.topics.get(name)
        if topic is None:
            topic = self.topics[name] = _Topic(name, retention)
        return topic

    async def available(self, timeout: float) -> None:
        """Wait while the broker is "restarting", like a client reconnecting."""
        if self._up.is_set():
            return
        try:
            async with asyncio.timeout(timeout):
                await self._up.wait()
        except TimeoutError:
            raise BrokerUnavailable(f"memory://{self.name} is down") from None

    def append(self, topic: _Topic, message: Message) -> None:
        entry = _Entry(message, next(self._seq))
        if topic.retention:
            topic.log.append(entry)
            while len(topic.log) > topic.retention:
                topic.log.popleft()
        for group in topic.groups.values():
            group.push(_Entry(message, entry.seq))

    def next_tag(self) -> int:
        return next(self._tags)

    async def restart(self, downtime: float) -> None:
        self._up.clear()
        for topic in self.topics.values():
            for group in topic.groups.values():
                for held in list(group.held.values()):
                    held.consumer.unhold()
                    release(group, held)
                group.held.clear()
        await asyncio.sleep(downtime)
        self._up.set()


def release(group: _Group, held: _Held) -> None:
    if held.lease is not None:
        held.lease.cancel()
    group.push(held.entry)


_brokers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, MemoryBroker]] = (
    weakref.WeakKeyDictionary()
)


def _broker(name: str) -> MemoryBroker:
    per_loop = _brokers.setdefault(asyncio.get_running_loop(), {})
    broker = per_loop.get(name)
    if broker is None:
        broker = per_loop[name] = MemoryBroker(name)
    return broker


async def restart(name: str = "default", downtime: float = 0.5) -> None:
    """Simulate a restart of broker ``name`` (see the module docstring)."""
    await _broker(name).restart(downtime)


class MemorySubscription(BackendSubscription):
    backend: MemoryBackend

    def __init__(
        self, backend: MemoryBackend, group: _Group, *, broadcast: bool, prefetch: int
    ) -> None:
        super().__init__(backend, group.topic.name, None if broadcast else group.name)
        self._group = group
        self._consumer = _Consumer(group, prefetch)
        group.consumers.append(self._consumer)

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        broker = self.backend.broker
        consumer = self._consumer
        deadline = time.monotonic() + timeout
        # every fetch yields, as a round trip to a broker does: other members of the
        # group get their turn instead of one member taking a whole backlog
        await asyncio.sleep(0)
        while not consumer.closed:
            await broker.available(self.backend.options.operation_timeout)
            group = self._group
            if group.ready and consumer.holding < consumer.prefetch:
                return self._take(max_messages)
            consumer.wake.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    await consumer.wake.wait()
            except TimeoutError:
                break
        return ()

    def _take(self, max_messages: int) -> list[Delivery]:
        group, broker = self._group, self.backend.broker
        ack_timeout = self.backend.options.ack_timeout
        consumer = self._consumer
        room = min(max_messages, consumer.prefetch - consumer.holding)
        out: list[Delivery] = []
        while group.ready and len(out) < room:
            _, _, entry = heapq.heappop(group.ready)
            entry.deliveries += 1
            tag = broker.next_tag()
            held = _Held(entry, consumer)
            consumer.holding += 1
            group.held[tag] = held
            if ack_timeout is not None:
                held.lease = asyncio.get_running_loop().call_later(ack_timeout, self._expire, tag)
            out.append(Delivery(self, entry.message, entry.deliveries, tag))
        return out

    def _expire(self, tag: int) -> None:
        held = self._group.held.pop(tag, None)
        if held is not None:
            held.lease = None
            held.consumer.unhold()
            release(self._group, held)

    def _settle(self, delivery: Delivery) -> _Held | None:
        held = self._group.held.pop(delivery.handle, None)
        if held is not None:
            held.consumer.unhold()
            if held.lease is not None:
                held.lease.cancel()
        return held

    async def ack(self, delivery: Delivery) -> None:
        await self.backend.broker.available(self.backend.options.operation_timeout)
        self._settle(delivery)

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        await self.backend.broker.available(self.backend.options.operation_timeout)
        held = self._settle(delivery)
        if held is None:
            return  # already returned to the group (lease expiry, restart)
        if delay:
            asyncio.get_running_loop().call_later(delay, self._group.push, held.entry)
        else:
            self._group.push(held.entry)

    async def in_progress(self, delivery: Delivery) -> None:
        held = self._group.held.get(delivery.handle)
        ack_timeout = self.backend.options.ack_timeout
        if held is not None and held.lease is not None and ack_timeout is not None:
            held.lease.cancel()
            held.lease = asyncio.get_running_loop().call_later(
                ack_timeout, self._expire, delivery.handle
            )

    async def close(self) -> None:
        consumer = self._consumer
        if consumer.closed:
            return
        consumer.closed = True
        consumer.wake.set()
        group = self._group
        group.consumers.remove(consumer)
        for tag, held in list(group.held.items()):
            if held.consumer is consumer:
                del group.held[tag]
                consumer.unhold()
                release(group, held)
        if group.ephemeral:
            group.topic.groups.pop(group.name, None)
        self.backend._subscriptions.discard(self)


_CAPABILITIES = Capabilities(
    "memory",
    {
        Feature.BROADCAST: native("private queue per subscriber"),
        Feature.REPLAY: native("per-topic log of the last `retention` messages"),
        Feature.KEY_ORDER: native("one FIFO per group and priority"),
        Feature.DELAY: native("timer, then append"),
        Feature.NACK_DELAY: native("timer, then requeue"),
        Feature.PRIORITY: native("priority queue per group"),
        Feature.DEAD_LETTER: native("<topic>.dlq topic"),
        Feature.LEASE: native("per-delivery timer, renewed by in_progress"),
        Feature.REQUEST_REPLY: native("inbox topic per connection"),
        Feature.NO_RESPONDERS: native("knows its live consumers"),
    },
)


class MemoryBackend(Backend):
    scheme = "memory"
    capabilities = _CAPABILITIES
    Options = MemoryOptions
    options: MemoryOptions

    def __init__(self, url: str, options: BackendOptions) -> None:
        super().__init__(url, options)
        parts = urlsplit(url)
        self.name = (parts.netloc or parts.path.strip("/")) or "default"
        self._broker: MemoryBroker | None = None
        self._subscriptions: set[MemorySubscription] = set()

    @property
    def broker(self) -> MemoryBroker:
        if self._broker is None:
            raise BusClosed(f"memory://{self.name} is not connected")
        return self._broker

    @property
    def max_message_bytes(self) -> int:
        return 64 * 1024 * 1024

    async def connect(self) -> None:
        self._broker = _broker(self.name)
        await self._broker.available(self.options.connect_timeout)

    async def close(self) -> None:
        await self._close_inbox()
        for sub in list(self._subscriptions):
            await sub.close()
        self._broker = None

    async def publish(self, messages: Sequence[Message], *, delay: float | None = None) -> None:
        broker = self.broker
        await broker.available(self.options.operation_timeout)
        for message in messages:
            topic = broker.topic(message.topic, self.options.retention)
            if delay:
                asyncio.get_running_loop().call_later(delay, broker.append, topic, message)
            else:
                broker.append(topic, message)

    async def delete_topic(self, topic: str, groups: Sequence[str] = ()) -> bool:
        """Forget the topic's log and every group on it."""
        broker = self.broker
        await broker.available(self.options.operation_timeout)
        broker.topics.pop(topic, None)
        return True

    async def declare(self, topic: str, groups: Sequence[str]) -> None:
        broker = self.broker
        await broker.available(self.options.operation_timeout)
        t = broker.topic(topic, self.options.retention)
        for name in groups:
            t.group(name, "latest")

    async def subscribe(
        self, topic: str, *, group: str | None, start: Start, prefetch: int
    ) -> BackendSubscription:
        broker = self.broker
        await broker.available(self.options.operation_timeout)
        t = broker.topic(topic, self.options.retention)
        if group is None:
            g = t.group(f"_broadcast.{broker.next_tag()}", start, ephemeral=True)
        else:
            g = t.group(group, start)
        sub = MemorySubscription(self, g, broadcast=group is None, prefetch=prefetch)
        self._subscriptions.add(sub)
        return sub

    async def has_consumers(self, topic: str) -> bool:
        t = self.broker.topics.get(topic)
        return t is not None and any(g.consumers for g in t.groups.values())

    def group_depth(self, topic: str) -> Mapping[str, int]:
        """Ready messages per group (for tests and introspection)."""
        t = self.broker.topics.get(topic)
        return {} if t is None else {name: len(g.ready) for name, g in t.groups.items()}
