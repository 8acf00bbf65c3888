"""The public entry points: :func:`connect` and :class:`Bus`."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from bus import codec
from bus._ids import stamp
from bus._redact import redact_url
from bus.backend import Backend, Start
from bus.capabilities import Capabilities, Feature
from bus.envelope import encoded_size, validate_headers
from bus.errors import BusClosed, BusError, ConfigurationError, InvalidArgument, MessageTooLarge
from bus.message import Message, assemble
from bus.options import parse_options
from bus.registry import resolve
from bus.retry import Retry
from bus.settings import BusSettings
from bus.subscription import Subscription
from bus.topics import validate_group, validate_topic
from bus.worker import Handler, Worker

__all__ = ["Bus", "Outgoing", "connect"]

_DEFAULT_RETRY = Retry()


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One item of :meth:`Bus.publish_many` with its own attributes."""

    data: object
    key: str | None = None
    headers: Mapping[str, str] | None = None
    type: str = ""
    priority: int | None = None
    correlation_id: str | None = None


class Bus:
    """A connection to one broker through one backend.

    Thread-unsafe like every asyncio object: use it from the event loop that
    connected it. All methods may raise :class:`bus.BrokerUnavailable` when the
    broker is lost for longer than the backend's reconnect budget.
    """

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._subscriptions: set[Subscription] = set()
        self._workers: set[Worker] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<Bus {redact_url(self._backend.url)}>"

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def capabilities(self) -> Capabilities:
        return self._backend.capabilities

    @property
    def source(self) -> str:
        return self._backend.options.source

    # -- producing -------------------------------------------------------------
    def _message(
        self,
        topic: str,
        data: object,
        *,
        key: str | None,
        headers: Mapping[str, str],
        type: str,
        priority: int | None,
        correlation_id: str | None,
        causation_id: str | None = None,
        trace_parent: str | None = None,
        schema_version: str | None = None,
    ) -> Message:
        """The message to publish; ``headers`` come from :func:`validate_headers`."""
        if priority is not None:
            if (
                isinstance(priority, bool)
                or not isinstance(priority, int)
                or not 0 <= priority < 10
            ):
                raise InvalidArgument(f"priority must be an int from 0 to 9, got {priority!r}")
            self.capabilities.require(Feature.PRIORITY)
        if key is not None and not isinstance(key, str):
            raise InvalidArgument(f"key must be a str, got {key.__class__.__name__}")
        # one test each on the hot path; the message says which argument
        if (
            type.__class__ is not str
            or (correlation_id is not None and correlation_id.__class__ is not str)
            or (causation_id is not None and causation_id.__class__ is not str)
            or (trace_parent is not None and trace_parent.__class__ is not str)
            or (schema_version is not None and schema_version.__class__ is not str)
        ):
            _not_text(
                type=type,
                correlation_id=correlation_id,
                causation_id=causation_id,
                trace_parent=trace_parent,
                schema_version=schema_version,
            )
        payload, content_type = codec.encode(data)
        mid, now = stamp()
        message = assemble(
            mid,
            topic,
            payload,
            type,
            self._backend.options.source,
            now,
            content_type,
            schema_version,
            key,
            headers,
            trace_parent,
            correlation_id,
            causation_id,
            None,  # reply_to: set by request()
            priority,
        )
        limit = self._backend.options.max_message_bytes or self._backend.max_message_bytes
        size = encoded_size(message)
        if size > limit:
            raise MessageTooLarge(size, limit, topic)
        return message

    def _check_delay(self, delay: float | None) -> float | None:
        if delay is None:
            return None
        if not isinstance(delay, int | float) or not math.isfinite(delay) or delay < 0:
            raise InvalidArgument(f"delay must be a finite number of seconds >= 0, got {delay!r}")
        if delay == 0:
            return None
        self.capabilities.require(Feature.DELAY)
        return float(delay)

    async def publish(
        self,
        topic: str,
        data: object,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        type: str = "",
        delay: float | None = None,
        priority: int | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        trace_parent: str | None = None,
        schema_version: str | None = None,
    ) -> str:
        """Publish one message; return its id once the broker has durably accepted it.

        ``data`` is bytes, str, a pydantic model or a JSON-able value (see
        :mod:`bus.codec`). ``key`` orders messages per key; ``delay`` (seconds) holds
        delivery back; ``priority`` 0-9 (higher first). Raises
        :class:`bus.InvalidTopic` / :class:`bus.InvalidArgument` /
        :class:`bus.MessageTooLarge` before anything is sent,
        :class:`bus.UnsupportedFeature` when the backend lacks delay or priority,
        :class:`bus.PublishError` or :class:`bus.BrokerUnavailable` when the broker
        did not confirm.
        """
        self._check_open()
        validate_topic(topic)
        message = self._message(
            topic,
            data,
            key=key,
            headers=validate_headers(headers),
            type=type,
            priority=priority,
            correlation_id=correlation_id,
            causation_id=causation_id,
            trace_parent=trace_parent,
            schema_version=schema_version,
        )
        await self._backend.publish([message], delay=self._check_delay(delay))
        return message.id

    async def publish_many(
        self,
        topic: str,
        items: Iterable[object],
        *,
        delay: float | None = None,
        headers: Mapping[str, str] | None = None,
        type: str = "",
    ) -> list[str]:
        """Publish a batch to one topic, pipelined; return the ids in order once all
        are confirmed. Each item is a payload or an :class:`Outgoing` carrying its own
        key, headers and priority (``headers`` and ``type`` here are defaults). On
        failure, :class:`bus.PublishError` is raised and any subset may have been
        accepted (publish is at-least-once; consumers de-duplicate by id)."""
        self._check_open()
        validate_topic(topic)
        if isinstance(items, str | bytes | bytearray | memoryview) or not isinstance(
            items, Iterable
        ):
            # a str or bytes is one payload, not a batch of characters or byte values
            raise InvalidArgument(
                f"items must be an iterable of payloads, got {items.__class__.__name__}"
            )
        common = validate_headers(headers)
        messages = []
        for item in items:
            if isinstance(item, Outgoing):
                messages.append(
                    self._message(
                        topic,
                        item.data,
                        key=item.key,
                        headers=common if item.headers is None else validate_headers(item.headers),
                        type=item.type or type,
                        priority=item.priority,
                        correlation_id=item.correlation_id,
                    )
                )
            else:
                messages.append(
                    self._message(
                        topic,
                        item,
                        key=None,
                        headers=common,
                        type=type,
                        priority=None,
                        correlation_id=None,
                    )
                )
        if messages:
            await self._backend.publish(messages, delay=self._check_delay(delay))
        return [m.id for m in messages]

    async def declare(self, topic: str, *, groups: Sequence[str] = ()) -> None:
        """Create ``topic`` and its ``groups`` if missing (idempotent), so the groups
        keep every message published from now on, before any member connects."""
        self._check_open()
        validate_topic(topic)
        if isinstance(groups, str):
            raise InvalidArgument("groups must be a sequence of names, not a str")
        await self._backend.declare(topic, [validate_group(g) for g in groups])

    # -- consuming ---------------------------------------------------------------
    def subscribe(
        self,
        topic: str,
        *,
        group: str | None = None,
        start: Start = "latest",
        prefetch: int = 64,
    ) -> Subscription:
        """A subscription to ``topic``: use ``async with`` (or ``await sub.open()``).

        ``group=None`` is broadcast: every live subscriber gets every message
        published while it is open. A named group shares the messages among its
        members (each message to one member) and keeps them while no member is
        connected. ``start="earliest"`` makes a *new* group (or a broadcast
        subscriber) read the retained history first (``Feature.REPLAY``).
        ``prefetch`` bounds the deliveries held unsettled by this consumer.
        """
        self._check_open()
        validate_topic(topic)
        if group is None:
            self.capabilities.require(Feature.BROADCAST)
        else:
            validate_group(group)
        if start not in ("latest", "earliest"):
            raise InvalidArgument(f"start must be 'latest' or 'earliest', got {start!r}")
        if start == "earliest":
            self.capabilities.require(Feature.REPLAY)
        _check_prefetch(prefetch)
        sub = Subscription(
            self._backend,
            topic,
            group=group,
            start=start,
            prefetch=prefetch,
            on_close=self._subscriptions.discard,
        )
        self._subscriptions.add(sub)
        return sub

    def consume(
        self,
        topic: str,
        handler: Handler,
        *,
        group: str,
        concurrency: int = 1,
        retry: Retry = _DEFAULT_RETRY,
        dead_letter: bool = True,
        prefetch: int | None = None,
        start: Start = "latest",
    ) -> Worker:
        """A :class:`bus.Worker` running ``handler`` for each message of ``group``.

        See :class:`bus.Worker` for the retry / dead-letter / reply behaviour.
        ``prefetch`` (deliveries held, running or waiting) defaults to
        ``2 * concurrency``; while a handler runs, the worker renews the leases of
        the deliveries it holds (``in_progress``), so long jobs are not handed to
        another member where the backend has leases.
        """
        self._check_open()
        validate_topic(topic)
        validate_group(group)
        if not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidArgument(f"concurrency must be an int >= 1, got {concurrency!r}")
        if prefetch is None:
            prefetch = min(2 * concurrency, 10_000)
        _check_prefetch(prefetch)
        if dead_letter:
            self.capabilities.require(Feature.DEAD_LETTER)
        if retry.max_attempts > 1 and retry.backoff.delay(1) > 0:
            self.capabilities.require(Feature.NACK_DELAY)
        if start == "earliest":
            self.capabilities.require(Feature.REPLAY)
        worker = Worker(
            self._backend,
            topic,
            handler,
            group=group,
            concurrency=concurrency,
            retry=retry,
            dead_letter=dead_letter,
            prefetch=prefetch,
            start=start,
            on_stop=self._workers.discard,
        )
        self._workers.add(worker)
        return worker

    # -- request / reply -----------------------------------------------------------
    async def request(
        self,
        topic: str,
        data: object,
        *,
        timeout: float = 30.0,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        type: str = "",
        correlation_id: str | None = None,
    ) -> Message:
        """Publish a request and return the reply :class:`bus.Message`.

        The request goes to ``topic`` like any message (a group consumes it; a
        :meth:`consume` handler's return value is the reply). Raises
        :class:`bus.RequestTimeout` after ``timeout`` seconds (the whole request:
        setting up the reply inbox included), :class:`bus.NoResponders` when the
        backend knows nothing consumes ``topic``, and :class:`bus.BusClosed` when
        the bus closes while the request waits.
        """
        self._check_open()
        validate_topic(topic)
        self.capabilities.require(Feature.REQUEST_REPLY)
        if not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout <= 0:
            raise InvalidArgument(f"timeout must be a positive number of seconds, got {timeout!r}")
        message = self._message(
            topic,
            data,
            key=key,
            headers=validate_headers(headers),
            type=type,
            priority=None,
            correlation_id=correlation_id,
        )
        return await self._backend.request(message, float(timeout))

    # -- lifecycle ---------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise BusClosed(f"{self!r} is closed")

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Stop workers (gracefully), close subscriptions (unsettled deliveries go
        back to their groups), flush settlements, disconnect. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for worker in list(self._workers):
            with contextlib.suppress(BusError):
                await worker.stop(timeout=10.0)
        for sub in list(self._subscriptions):
            with contextlib.suppress(BusError):
                await sub.close()
        await self._backend.close()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _make_backend(target: str | BusSettings | Backend | None, options: dict[str, Any]) -> Backend:
    if isinstance(target, Backend):
        if options:
            raise ConfigurationError("options cannot be given with a backend instance")
        return target
    if target is None:
        target = BusSettings.from_environment()
    if isinstance(target, BusSettings):
        options = {**target.connect_options(), **options}
        target = target.url
    if not isinstance(target, str):
        raise ConfigurationError(
            f"connect() takes a URL, BusSettings or Backend, got {type(target).__name__}"
        )
    cls = resolve(target)
    return cls(target, parse_options(cls.Options, target, options))


class _Connecting:
    """What :func:`connect` returns: awaitable, and an async context manager."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._bus: Bus | None = None

    async def _connect(self) -> Bus:
        try:
            await self._backend.connect()
        except BaseException:
            with contextlib.suppress(BusError, asyncio.CancelledError):
                await self._backend.close()
            raise
        self._bus = Bus(self._backend)
        return self._bus

    def __await__(self) -> Generator[Any, None, Bus]:
        return self._connect().__await__()

    async def __aenter__(self) -> Bus:
        return await self._connect()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bus is not None:
            await self._bus.close()


def connect(target: str | BusSettings | Backend | None = None, /, **options: Any) -> _Connecting:
    """Connect to a broker chosen by URL scheme (or settings, or a backend instance).

    ``async with bus.connect("redis://127.0.0.1:6379/0", source="controller") as b:``
    or ``b = await bus.connect(...)`` then ``await b.close()``. With no target,
    :class:`bus.BusSettings` reads ``BUS_URL`` etc. from the environment.
    Options are validated by the backend's options model; an unknown option or a bad
    value raises :class:`bus.ConfigurationError` at once, an unknown scheme
    :class:`bus.UnknownBackend`, an unreachable broker :class:`bus.BrokerUnavailable`
    within ``connect_timeout``.
    """
    return _Connecting(_make_backend(target, options))


def _check_prefetch(prefetch: object) -> None:
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 1 <= prefetch <= 10_000:
        raise InvalidArgument(f"prefetch must be an int from 1 to 10000, got {prefetch!r}")


def _not_text(**attributes: object) -> None:
    """Raise :class:`InvalidArgument` naming the first attribute that is not a str."""
    for name, value in attributes.items():
        if value is not None and not isinstance(value, str):
            raise InvalidArgument(f"{name} must be a str, got {value.__class__.__name__}")
