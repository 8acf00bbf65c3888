"""One consumer: its own channel, queue, QoS and coalesced settlements.

Each subscription owns a robust channel (so ``prefetch`` is its own QoS, its
delivery tags are its own, and closing it returns exactly its un-acked deliveries
to the queue). A watcher task notices when the channel is lost (connection drop,
broker restart, channel error) and, once aio-pika has reopened it, declares the
queue again (same arguments), binds it and consumes again: the subscription
resumes by itself. Deliveries of the lost channel are forgotten - the broker has
already put them back - and settling one of them is a no-op (acking an unknown
tag on the new channel would close it).

Settlements are coalesced on the wire: ``ack``/``nack`` only record the outcome;
a flusher (or the next ``fetch``, or ``close``) sends them. The settled prefix of
the un-acked tags goes as one ``basic.ack``/``basic.nack`` with ``multiple=True``
per run of equal outcomes; settlements behind a still-unsettled delivery go one
frame each (still without waiting for a reply: AMQP acks have none).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiormq
from aio_pika.abc import AbstractRobustChannel
from aiormq.abc import DeliveredMessage

from backends.rabbitmq import _wire
from backends.rabbitmq._errors import describe, is_connection_trouble
from bus.backend import BackendSubscription
from bus.delivery import Delivery
from bus.errors import BrokerUnavailable
from bus.topics import dlq_topic

if TYPE_CHECKING:
    from backends.rabbitmq._backend import RabbitMQBackend

__all__ = ["QueueSpec", "RabbitMQSubscription"]

log = logging.getLogger(__name__)

_ACK, _REQUEUE = "ack", "requeue"
#: Bound on each step of close() while the broker is unreachable (the broker
#: returns the un-acked deliveries when it drops the connection anyway).
_CLOSE_TIMEOUT = 5.0


@dataclass(frozen=True)
class QueueSpec:
    """The queue a subscription consumes, declared identically on every (re)start."""

    name: str
    durable: bool
    """Durable group queue; otherwise an exclusive auto-delete broadcast queue."""
    arguments: Mapping[str, Any] = field(default_factory=dict)
    counted: bool = False
    """The queue keeps ``x-delivery-count`` (quorum); else the classic rules apply."""


class RabbitMQSubscription(BackendSubscription):
    backend: RabbitMQBackend

    def __init__(
        self,
        backend: RabbitMQBackend,
        topic: str,
        group: str | None,
        queue: QueueSpec,
        prefetch: int,
    ) -> None:
        super().__init__(backend, topic, group)
        self.queue = queue
        self.prefetch = prefetch
        self._channel: AbstractRobustChannel | None = None
        #: the underlying channel currently consuming (None while reconnecting)
        self._live: aiormq.abc.AbstractChannel | None = None
        self._tag: str | None = None
        self._buffer: collections.deque[DeliveredMessage] = collections.deque()
        #: un-acked delivery tags of ``_live`` in delivery order -> recorded outcome
        self._pending: dict[int, str | None] = {}
        self._dirty = asyncio.Event()
        self._wake = asyncio.Event()
        self._cancelled = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._closed = False
        self._watcher: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        #: frames sent, for tests of the coalescing (acks / nacks on the wire)
        self.frames_sent = 0

    def __repr__(self) -> str:
        kind = f"group={self.group!r}" if self.group else "broadcast"
        return f"<RabbitMQSubscription {self.topic!r} {kind} queue={self.queue.name!r}>"

    # -- lifecycle ---------------------------------------------------------------
    async def open(self) -> None:
        """Open the channel and start consuming; returns once the consumer is live."""
        backend = self.backend
        self._channel = await backend.open_channel()
        deadline = time.monotonic() + backend.options.operation_timeout
        await self._start(deadline)
        name = f"bus-rabbitmq-{self.queue.name}"
        self._watcher = asyncio.create_task(self._watch(), name=f"{name}-watch")
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"{name}-settle")

    async def _start(self, deadline: float) -> None:
        """(Re)declare, bind and consume on the current underlying channel."""
        assert self._channel is not None
        backend, q = self.backend, self.queue
        last: BaseException | None = None
        while not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerUnavailable(
                    f"cannot consume {q.name!r} on {backend.redacted_url}: "
                    f"{describe(last, backend.secret) if last else 'timed out'}"
                )
            try:
                async with asyncio.timeout(remaining):
                    await self._channel.ready()
                    ch = await self._channel.get_underlay_channel()
                    # declared and bound again on every start: a broadcast queue does
                    # not outlive its connection, a deleted group queue comes back
                    await backend.declare_on(ch, q.name, q.arguments, durable=q.durable)
                    await ch.queue_bind(q.name, backend.options.exchange, routing_key=self.topic)
                    # where this queue's delayed retries come back (Backend.send_copy)
                    await ch.queue_bind(q.name, backend.requeue_exchange, routing_key=q.name)
                    await ch.basic_qos(prefetch_count=self.prefetch)
                    if ch is not self._live:  # a new channel: the old tags mean nothing
                        self._live, self._pending = ch, {}
                        self._buffer.clear()
                    self._cancelled.clear()
                    ok = await ch.basic_consume(q.name, self._on_message, consumer_tag=self._tag)
                    self._tag = ok.consumer_tag
                    cancels = getattr(ch, "on_consumer_cancel_callbacks", None)
                    if isinstance(cancels, set):
                        cancels.add(self._on_cancel)
                return
            except TimeoutError:
                continue
            except BaseException as exc:
                if not is_connection_trouble(exc):
                    raise backend.translate(exc, f"consume {q.name!r}") from exc
                last = exc
                await asyncio.sleep(min(backend.options.reconnect_interval, 0.5))

    async def _watch(self) -> None:
        """Resume consuming whenever the channel is lost and reopened, or the broker
        cancels the consumer (its queue was deleted)."""
        while not self._closed:
            live = self._live
            if live is not None:
                closing = live.closing
                cancelled = asyncio.ensure_future(self._cancelled.wait())
                try:
                    await asyncio.wait({closing, cancelled}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for f in (closing, cancelled):
                        f.cancel()
                        with contextlib.suppress(BaseException):
                            await f
            if self._closed:
                return
            if live is not None and not live.is_closed:
                # the deliveries held on this channel stay valid: keep them
                log.warning("%r: the broker cancelled the consumer; consuming again", self)
            else:
                log.info("%r: channel lost; consuming again once it is reopened", self)
                self._live = None
                self._pending = {}
                self._buffer.clear()
            pause = self.backend.options.reconnect_interval
            while not self._closed:
                try:
                    await self._start(time.monotonic() + 3600.0)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # e.g. the queue was re-created with other arguments meanwhile:
                    # keep trying, slowly, and say why
                    log.warning("%r: cannot consume again (%s); retry in %.0fs", self, exc, pause)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 30.0)

    def _on_cancel(self, frame: Any) -> None:
        if getattr(frame, "consumer_tag", None) == self._tag and not self._closed:
            self._cancelled.set()

    async def _on_message(self, raw: DeliveredMessage) -> None:
        if raw.channel is not self._live or self._closed:
            return  # a late delivery of a lost channel, or after close: the broker requeues it
        self._pending[raw.delivery_tag] = None  # type: ignore[index]
        self._buffer.append(raw)
        self._wake.set()

    # -- consuming -----------------------------------------------------------------
    async def fetch(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        await self._flush()
        deadline = time.monotonic() + timeout
        while not self._buffer and not self._closed:
            self._wake.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return ()
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                return ()
        out: list[Delivery] = []
        buffer, live, counted = self._buffer, self._live, self.queue.counted
        limit = self.backend.options.delivery_limit
        while buffer and len(out) < max_messages and not self._closed:
            raw = buffer.popleft()
            if raw.channel is not live:
                continue
            try:
                message = _wire.decode(self.topic, raw, delivery_limit=limit)
            except Exception:  # never wedge a prefetch slot on a message we cannot read
                log.warning("%r: unreadable properties; delivered as raw bytes", self)
                message = _wire.bare(self.topic, raw)
            attempt = _wire.attempt_of(raw, counted=counted)
            out.append(Delivery(self, message, attempt, (raw.channel, raw.delivery_tag)))
        return out

    # -- settlement ----------------------------------------------------------------
    def _record(self, delivery: Delivery, outcome: str) -> None:
        channel, tag = delivery.handle
        if channel is self._live and tag in self._pending:
            self._pending[tag] = outcome
            self._dirty.set()

    async def ack(self, delivery: Delivery) -> None:
        self._record(delivery, _ACK)

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        if delay is None and self.queue.counted:
            # quorum queue: a requeue increments x-delivery-count, the attempt counter
            self._record(delivery, _REQUEUE)
            return
        # a confirmed copy that carries the attempts so far (to a wait queue for a
        # delay; straight back to the queue on classic queues, which count nothing),
        # then the original is acked. Lost ack -> one duplicate, never a loss.
        channel, _ = delivery.handle
        if channel is not self._live:
            return  # the broker already returned it when the channel was lost
        await self.backend.send_copy(self.queue.name, delivery.message, delivery.attempt, delay)
        self._record(delivery, _ACK)

    async def dead_letter(self, delivery: Delivery, headers: Mapping[str, str]) -> None:
        original = delivery.message
        dead = original.evolve(
            topic=dlq_topic(original.topic), headers={**original.headers, **headers}
        )
        await self.backend.send_dead_letter(dead)
        self._record(delivery, _ACK)

    async def _flush_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._flush()

    async def _flush(self) -> None:
        """Send the recorded settlements (see the module docstring)."""
        async with self._flush_lock:
            channel, pending = self._live, self._pending
            if channel is None or not any(v is not None for v in pending.values()):
                return
            frames: list[tuple[str, int, bool]] = []
            items = list(pending.items())
            i = 0
            while i < len(items) and items[i][1] is not None:
                outcome, j = items[i][1], i
                while j + 1 < len(items) and items[j + 1][1] == outcome:
                    j += 1
                frames.append((outcome, items[j][0], j > i))  # type: ignore[arg-type]
                i = j + 1
            frames.extend((o, tag, False) for tag, o in items[i:] if o is not None)
            for tag, outcome in items:
                if outcome is not None:
                    del pending[tag]
            try:
                for n, (outcome, tag, multiple) in enumerate(frames):
                    wait = n == len(frames) - 1
                    if outcome == _ACK:
                        await channel.basic_ack(tag, multiple=multiple, wait=wait)
                    else:
                        await channel.basic_nack(tag, multiple=multiple, requeue=True, wait=wait)
                    self.frames_sent += 1
            except Exception as exc:
                # the channel is gone: the broker returns everything un-acked by itself
                log.debug("%r: settlements dropped with the channel: %s", self, exc)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        channel, live = self._channel, self._live
        try:
            if live is not None and not live.is_closed and self._tag is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(_CLOSE_TIMEOUT):
                        await live.basic_cancel(self._tag)
            await self._flush()
        finally:
            self._buffer.clear()
            for task in (self._watcher, self._flusher):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if channel is not None:
                # closing the channel returns every un-acked delivery to the queue
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(_CLOSE_TIMEOUT):
                        await channel.close()
            self._live = None
            self.backend.forget(self)
