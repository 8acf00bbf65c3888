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
a flusher (or ``close``) sends them, a few event-loop turns after the first one is
recorded. The settled prefix of the un-acked tags goes as one
``basic.ack``/``basic.nack`` with ``multiple=True`` per run of equal outcomes;
settlements behind a still-unsettled delivery go one frame each. Frames are queued
for the socket without waiting for it to drain (AMQP acks have no reply), and
``fetch`` sends nothing itself: a peer that stops reading holds up neither ``fetch``
nor ``close`` (whose flush is bounded).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Mapping, Sequence
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
#: Event-loop turns the flusher lets pass before sending, so that the settlements a
#: burst records coalesce (about what waiting for the socket to drain used to give).
_COALESCE_TURNS = 3


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
                    if not isinstance(exc, Exception):
                        raise  # our caller was cancelled (subscribe(), close()): no error
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
            # let the settlements of this burst (a batch handled in one go) be recorded
            # first: they then go as one frame with multiple=True
            for _ in range(_COALESCE_TURNS):
                await asyncio.sleep(0)
            self._dirty.clear()
            await self._flush(None)

    async def _flush(self, timeout: float | None) -> None:
        """Send the recorded settlements (see the module docstring), within ``timeout``
        seconds (None: no bound). Frames are queued without waiting for the socket to
        drain (AMQP acks have no reply): a peer that stops reading must not hold up
        ``close``. Settlements not queued when the time is up stay recorded (the
        channel's close returns those deliveries)."""
        try:
            async with asyncio.timeout(timeout), self._flush_lock:
                await self._send_settlements()
        except TimeoutError:
            if any(v is not None for v in self._pending.values()):
                self._dirty.set()

    async def _send_settlements(self) -> None:
        channel, pending = self._live, self._pending
        if channel is None or not any(v is not None for v in pending.values()):
            return
        # (outcome, delivery tag, multiple, the tags the frame settles)
        frames: list[tuple[str, int, bool, list[int]]] = []
        items = list(pending.items())
        i = 0
        while i < len(items) and items[i][1] is not None:
            outcome, j = items[i][1], i
            while j + 1 < len(items) and items[j + 1][1] == outcome:
                j += 1
            tags = [tag for tag, _ in items[i : j + 1]]
            frames.append((outcome, items[j][0], j > i, tags))  # type: ignore[arg-type]
            i = j + 1
        frames.extend((o, tag, False, [tag]) for tag, o in items[i:] if o is not None)
        try:
            for outcome, tag, multiple, tags in frames:
                if outcome == _ACK:
                    await channel.basic_ack(tag, multiple=multiple, wait=False)
                else:
                    await channel.basic_nack(tag, multiple=multiple, requeue=True, wait=False)
                # forgotten once queued: a frame cut off by the timeout was not sent
                for settled in tags:
                    pending.pop(settled, None)
                self.frames_sent += 1
        except Exception as exc:
            # the channel is gone: the broker returns everything un-acked by itself
            log.debug("%r: settlements dropped with the channel: %s", self, exc)
            for tag in [t for t, o in pending.items() if o is not None]:
                del pending[tag]

    async def close(self) -> None:
        """Cancel the consumer, send the recorded settlements and close the channel
        (the broker requeues every un-acked delivery). Each step is bounded by
        ``_CLOSE_TIMEOUT``, also when the broker is unreachable or silent. A
        broadcast queue is deleted (one cancelled before it was consumed would not
        be auto-deleted). Cancelling close() cancels it (the channel is then closed
        in the background)."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        channel, live = self._channel, self._live
        tasks = {t for t in (self._watcher, self._flusher) if t is not None}
        for task in tasks:
            task.cancel()
        closed_channel = False
        try:
            if tasks:
                # not ``await task`` under suppress(CancelledError): that would also
                # swallow a cancellation of close() itself
                await asyncio.wait(tasks, timeout=_CLOSE_TIMEOUT)
                for task in tasks:
                    if task.done() and not task.cancelled():
                        task.exception()  # retrieved: it ended as it did, we are closing
            if live is not None and not live.is_closed and self._tag is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(_CLOSE_TIMEOUT):
                        await live.basic_cancel(self._tag)
            await self._flush(_CLOSE_TIMEOUT)
            if not self.queue.durable:
                await self._delete_broadcast_queue()
            if channel is not None:
                # closing the channel returns every un-acked delivery to the queue
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(_CLOSE_TIMEOUT):
                        await channel.close()
            closed_channel = True
        finally:
            self._buffer.clear()
            self._live = None
            self.backend.forget(self)
            if channel is not None and not closed_channel:
                # close() was cancelled: still give the deliveries back, without
                # making the canceller wait for it
                _background(channel.close())

    async def _delete_broadcast_queue(self) -> None:
        """Delete this subscriber's exclusive queue. A consumed one goes by itself
        (auto-delete), but one declared and never consumed (subscribe() cancelled or
        failed in between) would collect the topic's messages until the connection
        closes; ``x-expires`` (``Backend.broadcast_arguments``) is the backstop."""
        if self._channel is None:
            return  # cancelled before the channel opened: nothing was declared
        ch: aiormq.abc.AbstractChannel | None = None
        with contextlib.suppress(Exception):
            ch = await self._channel.get_underlay_channel()
        if ch is not None:
            try:
                # on our own channel while it is open: the broker handles a channel's
                # frames in order, so the delete cannot overtake a declare in flight
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await ch.queue_delete(self.queue.name)
                return
            except Exception:  # the channel is closing or gone: see below
                pass
            # a declare cancelled in flight makes aiormq close our channel: once the
            # broker confirmed that close, it has handled the declare, and the delete
            # on another channel cannot come first
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await ch.closing
        # on the topology channel (same connection, which an exclusive queue needs)
        await self.backend.delete_exclusive_queue(self.queue.name, _CLOSE_TIMEOUT)


_BACKGROUND: set[asyncio.Task[Any]] = set()


def _background(coro: Awaitable[Any]) -> None:
    """Run ``coro`` unawaited, bounded by ``_CLOSE_TIMEOUT``, its failure ignored."""

    async def run() -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await coro

    task = asyncio.get_running_loop().create_task(run())
    _BACKGROUND.add(task)  # a reference, so it is not collected while it runs
    task.add_done_callback(_BACKGROUND.discard)
