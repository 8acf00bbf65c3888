"""The RabbitMQ backend: connection, topology, confirmed publishing, request/reply."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
import aiormq.exceptions as amqp
from aio_pika.abc import AbstractRobustChannel
from aiormq.abc import ConfirmationFrameType, DeliveredMessage
from pamqp.commands import Basic
from yarl import URL

from backends.rabbitmq import _names, _wire
from backends.rabbitmq._capabilities import QUORUM, capabilities_for
from backends.rabbitmq._errors import (
    HeadersTooLarge,
    describe,
    is_connection_trouble,
    is_frame_refused,
    is_inequivalent,
)
from backends.rabbitmq._options import RabbitMQOptions
from backends.rabbitmq._subscription import QueueSpec, RabbitMQSubscription
from bus._redact import redact_url
from bus._watchdog import Watchdog
from bus.backend import Backend, BackendSubscription, Start
from bus.capabilities import Feature
from bus.errors import (
    BrokerUnavailable,
    BusClosed,
    BusError,
    ConfigurationError,
    InvalidArgument,
    NoResponders,
    PublishError,
    RequestTimeout,
    UnsupportedFeature,
)
from bus.message import Message
from bus.options import BackendOptions

__all__ = ["RabbitMQBackend"]

log = logging.getLogger(__name__)

#: RabbitMQ's default ``max_message_size`` (3.8+): 128 MiB.
DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024 * 1024
#: Bus priorities are 0-9.
MAX_PRIORITY = 9
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
#: A wait queue is deleted by the broker after its TTL plus this long unused
#: (``x-expires``); we re-declare it (resetting that clock) at least this often.
_WAIT_QUEUE_SPARE_MS = 86_400_000
_WAIT_QUEUE_REDECLARE_S = 3600.0
#: ``bus-delay-to`` of a publish delay. Wait queues bound with the earlier value
#: ("topic") dead-lettered straight into the topic exchange, where a message no
#: queue took was kept and retried by its wait queue; a new value routes nothing
#: more to them (they drain and expire).
_TO_TOPIC = "due"
#: ``bus-delay-to`` of a nack delay. Wait queues bound with the earlier value
#: ("queue") dead-lettered into the default exchange, where a retry whose queue was
#: deleted meanwhile was kept and retried by its wait queue; likewise replaced.
_TO_QUEUE = "requeue"
_UNROUTABLE_LOG_EVERY = 60.0
#: ``x-expires`` of a broadcast queue: the broker deletes one left without a consumer
#: this long (a subscribe() cancelled between declare and consume, whose clean-up
#: delete failed too); a consumed one is auto-deleted with its consumer anyway.
_BROADCAST_EXPIRES_MS = 60_000

Returned = DeliveredMessage


class RabbitMQBackend(Backend):
    scheme = "rabbitmq"
    capabilities = QUORUM
    Options = RabbitMQOptions
    options: RabbitMQOptions

    def __init__(self, url: str, options: BackendOptions) -> None:
        super().__init__(url, options)
        assert isinstance(options, RabbitMQOptions)
        # The declaration depends on queue_type (priorities need classic queues);
        # the class attribute stays the default one for the README table.
        vars(self)["capabilities"] = capabilities_for(options.queue_type)
        self.redacted_url = redact_url(url)
        self.requeue_exchange = _names.requeue_exchange(options.exchange)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("amqp", "amqps"):
            raise ConfigurationError(f"not an amqp:// or amqps:// URL: {self.redacted_url!r}")
        port: int | None = None
        valid_port = True
        try:
            port = parts.port
        except ValueError:
            valid_port = False
        if not valid_port:
            # raised outside the ``except``: the parser's ValueError quotes what follows
            # the last ':' (part of a password with an unencoded '/' or '#'), and an
            # exception raised while handling it would keep it as ``__context__``
            raise ConfigurationError(f"invalid port in {self.redacted_url!r}")
        if not parts.hostname:
            raise ConfigurationError(f"no host in {self.redacted_url!r}")
        tls = scheme == "amqps"
        if not tls and (options.tls_ca_file or options.tls_cert_file or not options.tls_verify):
            raise ConfigurationError("tls_* options need an amqps:// URL")
        self.secret: str | None = unquote(parts.password) if parts.password else None
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        self._amqp_url = URL.build(
            scheme=scheme,
            user=unquote(parts.username) if parts.username else "guest",
            password=self.secret if self.secret is not None else "guest",
            host=parts.hostname,
            port=port or (5671 if tls else 5672),
            path="/" + vhost,
            query={"heartbeat": str(options.heartbeat)},
        )
        self._ssl = self._ssl_context() if tls else None
        self._connection: aio_pika.RobustConnection | None = None
        self._pub: AbstractRobustChannel | None = None
        self._topo: AbstractRobustChannel | None = None
        self._pub_underlay: aiormq.abc.AbstractChannel | None = None
        #: the negotiated frame_max (0: no limit), refreshed on each publish channel
        self._frame_max = 0
        # bounds each publish attempt without a timer per publish (see bus._watchdog)
        self._watchdog = Watchdog()
        self._closed = False
        self._subscriptions: set[RabbitMQSubscription] = set()
        self._groups: set[str] = set()
        self._wait_queues: dict[str, float] = {}
        self._unroutable: dict[str, tuple[float, int]] = {}
        self._reply_tag: str | None = None
        self._reply_lock = asyncio.Lock()
        self._waiters: dict[str, asyncio.Future[Message]] = {}

    def _ssl_context(self) -> ssl.SSLContext:
        o = self.options
        try:
            context = ssl.create_default_context(cafile=o.tls_ca_file)
            if o.tls_cert_file:
                context.load_cert_chain(o.tls_cert_file, o.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"cannot load the TLS files: {exc}") from exc
        if not o.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    @property
    def max_message_bytes(self) -> int:
        return self.options.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES

    # -- lifecycle ---------------------------------------------------------------
    async def connect(self) -> None:
        o = self.options
        conn = aio_pika.RobustConnection(
            self._amqp_url,
            ssl_context=self._ssl,
            client_properties={"connection_name": f"bus {o.source}"[:255]},
            reconnect_interval=str(o.reconnect_interval),
            fail_fast="1",
        )
        self._connection = conn
        try:
            async with asyncio.timeout(o.connect_timeout):
                await conn.connect(timeout=o.connect_timeout)
                self._check_server(conn)
                self._pub = conn.channel(publisher_confirms=True, on_return_raises=False)
                await self._pub
                self._topo = conn.channel(publisher_confirms=False)
                await self._topo
                await self._pub.declare_exchange(
                    o.exchange, aio_pika.ExchangeType.TOPIC, durable=True
                )
                await self._pub.declare_exchange(
                    _names.delay_exchange(o.exchange), aio_pika.ExchangeType.HEADERS, durable=True
                )
                # every subscription binds its queue here before consuming
                await self._pub.declare_exchange(
                    self.requeue_exchange, aio_pika.ExchangeType.TOPIC, durable=True
                )
        except BaseException as exc:
            self._connection = None
            with contextlib.suppress(Exception):
                await conn.close()
            if isinstance(exc, TimeoutError):
                raise BrokerUnavailable(
                    f"no connection to {self.redacted_url} within {o.connect_timeout}s"
                ) from None
            if isinstance(exc, BusError):
                raise
            if is_inequivalent(exc) or isinstance(exc, amqp.ChannelAccessRefused):
                raise ConfigurationError(
                    f"exchange {o.exchange!r} on {self.redacted_url} cannot be used: "
                    f"{describe(exc, self.secret)}"
                ) from exc
            if isinstance(exc, Exception):
                raise BrokerUnavailable(
                    f"cannot connect to {self.redacted_url}: {describe(exc, self.secret)}"
                ) from exc
            raise

    def _check_server(self, conn: aio_pika.RobustConnection) -> None:
        transport = conn.transport
        props: Mapping[str, Any] = {}
        if transport is not None:
            props = transport.connection.server_properties or {}
            self._frame_max = transport.connection.connection_tune.frame_max
        version = str(props.get("version", "0"))
        try:
            major_minor = tuple(int(p) for p in version.split(".")[:2])
        except ValueError:
            return  # unknown version string (a fork): let the declarations decide
        if self.options.queue_type == "quorum" and major_minor < (3, 8):
            raise ConfigurationError(
                f"RabbitMQ {version} has no quorum queues (3.8+): connect with queue_type=classic"
            )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subscriptions):
            with contextlib.suppress(Exception):
                await sub.close()
        for waiter in self._waiters.values():
            if not waiter.done():  # the requester was not cancelled: the bus closed
                waiter.set_exception(BusClosed("the bus closed while the request waited"))
        self._watchdog.close()
        conn, self._connection = self._connection, None
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10.0):
                    await conn.close()

    def forget(self, sub: RabbitMQSubscription) -> None:
        self._subscriptions.discard(sub)

    @property
    def connection(self) -> aio_pika.RobustConnection:
        if self._connection is None or self._closed:
            raise BusClosed(f"{self.redacted_url} is not connected")
        return self._connection

    async def open_channel(self) -> AbstractRobustChannel:
        """A new robust channel (reopened by aio-pika after a reconnect)."""
        deadline = time.monotonic() + self.options.operation_timeout
        while True:
            try:
                async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                    await self.connection.ready()
                    # aio-pika refuses to create a channel while disconnected
                    channel = self.connection.channel(publisher_confirms=False)
                    await channel
                return channel
            except TimeoutError:
                raise BrokerUnavailable(
                    f"no channel on {self.redacted_url} within {self.options.operation_timeout}s"
                ) from None
            except Exception as exc:
                if not is_connection_trouble(exc) or time.monotonic() >= deadline:
                    raise self.translate(exc, "open a channel") from exc
                await asyncio.sleep(0.2)

    def translate(self, exc: BaseException, action: str) -> BusError:
        """The bus error for a driver failure during ``action``."""
        text = describe(exc, self.secret)
        if is_inequivalent(exc):
            return ConfigurationError(
                f"cannot {action}: it exists on {self.redacted_url} with other arguments "
                f"({text}). It was declared with other options (queue_type, "
                "delivery_limit); connect with the options it was created with, or "
                "delete it (its messages are lost) to re-create it"
            )
        if isinstance(exc, amqp.ChannelAccessRefused):
            return ConfigurationError(f"cannot {action} on {self.redacted_url}: {text}")
        if is_connection_trouble(exc) and not is_frame_refused(exc):
            return BrokerUnavailable(f"cannot {action} on {self.redacted_url}: {text}")
        return PublishError(f"cannot {action} on {self.redacted_url}: {text}")

    # -- topology ------------------------------------------------------------------
    def group_arguments(self, topic: str) -> dict[str, Any]:
        """The arguments of every group queue of ``topic`` (the same on every run)."""
        o = self.options
        args: dict[str, Any] = {
            "x-queue-type": o.queue_type,
            "x-dead-letter-exchange": o.exchange,
            "x-dead-letter-routing-key": f"{topic}.dlq",
        }
        if o.queue_type == "classic":
            args["x-max-priority"] = MAX_PRIORITY
        if o.delivery_limit is not None:
            args["x-delivery-limit"] = o.delivery_limit
        return args

    def broadcast_arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {"x-queue-type": "classic", "x-expires": _BROADCAST_EXPIRES_MS}
        if self.options.queue_type == "classic":
            args["x-max-priority"] = MAX_PRIORITY
        return args

    async def declare_on(
        self,
        channel: aiormq.abc.AbstractChannel,
        name: str,
        arguments: Mapping[str, Any],
        *,
        durable: bool,
    ) -> None:
        await channel.queue_declare(
            name,
            durable=durable,
            exclusive=not durable,
            auto_delete=not durable,
            arguments=dict(arguments),
        )

    async def _topology(
        self,
        what: str,
        action: Callable[[aiormq.abc.AbstractChannel], Awaitable[None]],
    ) -> None:
        """Run declarations on the topology channel, retrying through reconnects."""
        topo = self._topo
        if topo is None or self._closed:
            raise BusClosed(f"{self.redacted_url} is not connected")
        deadline = time.monotonic() + self.options.operation_timeout
        last: BaseException | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerUnavailable(
                    f"cannot {what} on {self.redacted_url} within "
                    f"{self.options.operation_timeout}s"
                    + (f": {describe(last, self.secret)}" if last else "")
                )
            try:
                async with asyncio.timeout(remaining):
                    await topo.ready()
                    await action(await topo.get_underlay_channel())
                return
            except TimeoutError:
                continue
            except Exception as exc:
                if not is_connection_trouble(exc):
                    raise self.translate(exc, what) from exc
                last = exc
                await asyncio.sleep(0.2)

    async def delete_topic(self, topic: str, groups: Sequence[str] = ()) -> bool:
        """Delete the queues of ``groups`` on ``topic`` with their messages. AMQP cannot
        list queues, so a group not named in ``groups`` keeps its queue; the topic
        exchange is shared by every topic and stays."""
        for group in groups:
            name = _names.group_queue(topic, group)

            async def delete(ch: aiormq.abc.AbstractChannel, name: str = name) -> None:
                await ch.queue_delete(name)

            await self._topology(f"delete group queue {name!r}", delete)
            self._groups.discard(name)
        return True

    async def delete_exclusive_queue(self, name: str, timeout: float) -> None:
        """Delete a broadcast queue of this connection: one attempt, bounded by
        ``timeout``, failures ignored (the queue goes with the connection anyway, or
        after its ``x-expires``)."""
        topo = self._topo
        if topo is None or self._connection is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                await topo.ready()
                channel = await topo.get_underlay_channel()
                await channel.queue_delete(name)

    async def _declare_group(self, topic: str, group: str) -> str:
        name = _names.group_queue(topic, group)
        if name in self._groups:
            return name

        async def declare(ch: aiormq.abc.AbstractChannel) -> None:
            await self.declare_on(ch, name, self.group_arguments(topic), durable=True)
            await ch.queue_bind(name, self.options.exchange, routing_key=topic)

        await self._topology(f"declare group queue {name!r}", declare)
        self._groups.add(name)
        return name

    async def _wait_queue(self, target: str, ms: int, *, again: bool = False) -> None:
        """Declare (at least hourly, or ``again`` now: a publish to it came back)
        the wait queue of ``ms`` for ``target``."""
        o = self.options
        name = _names.wait_queue(o.exchange, target, ms)
        if again:
            self._wait_queues.pop(name, None)
        declared = self._wait_queues.get(name)
        if declared is not None and time.monotonic() - declared < _WAIT_QUEUE_REDECLARE_S:
            return
        to_topic = target == "topic"
        # where due messages go: the due exchange (publish delay: every queue of the
        # topic) or the requeue exchange (nack delay: the queue named by the routing key)
        dlx = _names.due_exchange(o.exchange) if to_topic else self.requeue_exchange
        args = {
            # always quorum: replicated, and at-least-once dead-lettering: a due
            # message leaves its wait queue once every queue it reaches confirmed it
            "x-queue-type": "quorum",
            "x-message-ttl": ms,
            "x-expires": ms + _WAIT_QUEUE_SPARE_MS,
            "x-dead-letter-exchange": dlx,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        route = _TO_TOPIC if to_topic else _TO_QUEUE
        binding: dict[str, Any] = {"x-match": "all", _wire.DELAY: str(ms), _wire.DELAY_TO: route}

        async def declare(ch: aiormq.abc.AbstractChannel) -> None:
            # Due messages also reach a queue that keeps nothing, so one that no other
            # queue takes (its topic has no queue, its group queue was deleted) is
            # dropped, as a publish no queue takes is: at-least-once dead-lettering
            # keeps and retries an unroutable message. Re-declared with the wait
            # queue: both must exist whenever a wait queue dead-letters into them.
            drop = _names.drop_queue(o.exchange)
            await self.declare_on(
                ch, drop, {"x-queue-type": "classic", "x-max-length": 0}, durable=True
            )
            if to_topic:
                await ch.exchange_declare(dlx, exchange_type="fanout", durable=True)
                await ch.exchange_bind(destination=o.exchange, source=dlx, routing_key="")
                await ch.queue_bind(drop, dlx, routing_key="")
            else:
                await ch.exchange_declare(dlx, exchange_type="topic", durable=True)
                await ch.queue_bind(drop, dlx, routing_key="#")
            await self.declare_on(ch, name, args, durable=True)
            await ch.queue_bind(name, _names.delay_exchange(o.exchange), arguments=binding)

        await self._topology(f"declare wait queue {name!r}", declare)
        self._wait_queues[name] = time.monotonic()

    async def declare(self, topic: str, groups: Sequence[str]) -> None:
        for group in groups:
            await self._declare_group(topic, group)

    # -- producing -----------------------------------------------------------------
    async def _send(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
        *,
        mandatory: bool,
        prepare: Callable[[aiormq.abc.AbstractChannel], Awaitable[None]] | None = None,
        deadline: float | None = None,
    ) -> ConfirmationFrameType | Returned:
        """Publish on the confirm channel and wait for the broker's answer, retrying
        through reconnects (and broker nacks) for up to ``operation_timeout``.

        Returns the ack, or the returned message when ``mandatory`` and no queue
        took it. A retry after a lost confirm may store the message twice. Raises
        :class:`bus.MessageTooLarge` (nothing sent) for properties and headers that do
        not fit in one frame, :class:`bus.BusClosed` as soon as the bus closes."""
        pub = self._pub
        if pub is None or self._closed:
            raise BusClosed(f"{self.redacted_url} is not connected")
        self._check_frame(routing_key, body, properties)
        timeout = self.options.operation_timeout
        if deadline is None:
            deadline = time.monotonic() + timeout
        last: BaseException | str | None = None
        while True:
            if self._closed:
                raise self._closed_while(routing_key)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                why = describe(last, self.secret) if isinstance(last, BaseException) else last
                cls = BrokerUnavailable if isinstance(last, BaseException) else PublishError
                raise cls(
                    f"publish to {routing_key!r} not confirmed by {self.redacted_url} "
                    f"within {timeout}s" + (f": {why}" if why else "")
                )
            try:
                result = await self._watchdog.bound(
                    self._publish_once(
                        pub, exchange, routing_key, body, properties, mandatory, prepare
                    ),
                    remaining,
                )
            except TimeoutError:
                continue
            except BaseException as exc:
                driver = isinstance(exc, Exception | asyncio.CancelledError)
                if self._closed and driver and not _caller_cancelled():
                    # close() ended the channel under it: whatever the driver raised
                    raise self._closed_while(routing_key) from None
                if is_frame_refused(exc):
                    raise self.translate(exc, f"publish to {routing_key!r}") from exc
                if not is_connection_trouble(exc):
                    if isinstance(exc, Exception) and not isinstance(exc, BusError):
                        raise self.translate(exc, f"publish to {routing_key!r}") from exc
                    raise
                last = exc
                await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                continue
            if isinstance(result, Basic.Nack):
                last = "the broker refused it (basic.nack)"
                await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
                continue
            assert result is not None
            return result

    async def _publish_once(
        self,
        pub: AbstractRobustChannel,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
        mandatory: bool,
        prepare: Callable[[aiormq.abc.AbstractChannel], Awaitable[None]] | None,
    ) -> ConfirmationFrameType | None:
        channel = await self._publish_channel(pub)
        if prepare is not None:
            await prepare(channel)
        return await channel.basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            mandatory=mandatory,
        )

    async def _publish_channel(self, pub: AbstractRobustChannel) -> aiormq.abc.AbstractChannel:
        """The confirm channel's current underlying channel; waits while reconnecting.
        Cached: looking it up through aio-pika costs several awaits per publish."""
        channel = self._pub_underlay
        if channel is None or channel.is_closed:
            await pub.ready()
            channel = self._pub_underlay = await pub.get_underlay_channel()
            # a reconnect negotiates frame_max again (another node, another config)
            tune = getattr(getattr(channel, "connection", None), "connection_tune", None)
            self._frame_max = getattr(tune, "frame_max", self._frame_max)
        return channel

    def _closed_while(self, topic: str) -> BusClosed:
        return BusClosed(f"the bus closed while publishing to {topic!r}: not confirmed")

    def _check_frame(self, topic: str, body: bytes, properties: Basic.Properties) -> None:
        """Raise :class:`bus.MessageTooLarge` for properties and headers that do not fit
        in one frame (``frame_max``). Checked before anything is sent: the broker
        closes the whole connection over such a frame, with every subscription's
        channel on it, and would do so again on every retry."""
        limit = self._frame_max
        if not limit:
            return
        size = _wire.header_frame_size(properties, len(body), below=limit)
        if size > limit:
            raise HeadersTooLarge(size, limit, topic)

    def _unroutable_publish(self, topic: str, policy: str) -> None:
        if policy == "raise":
            raise PublishError(
                f"no queue receives {topic!r} (no group declared on it, no subscriber): "
                "the broker returned the message"
            )
        if policy != "warn":
            return
        now = time.monotonic()
        last, dropped = self._unroutable.get(topic, (0.0, 0))
        dropped += 1
        if now - last >= _UNROUTABLE_LOG_EVERY:
            log.warning(
                "dropped %d message(s) published to %r: no queue receives it (no group "
                "declared, no subscriber); declare a group to keep them",
                dropped,
                topic,
            )
            self._unroutable[topic] = (now, 0)
        else:
            self._unroutable[topic] = (last, dropped)

    async def _publish_all(
        self,
        exchange: str,
        messages: Sequence[Message],
        properties: Sequence[Basic.Properties],
        *,
        mandatory: bool,
    ) -> list[ConfirmationFrameType | Returned]:
        """Pipelined: publish a window of ``publish_window`` messages on the confirm
        channel, then await their confirms together. What a reconnect or a broker nack
        interrupted is sent again one by one (through :meth:`_send`)."""
        deadline = time.monotonic() + self.options.operation_timeout
        if len(messages) == 1:
            m = messages[0]
            return [
                await self._send(
                    exchange, m.topic, m.data, properties[0], mandatory=mandatory, deadline=deadline
                )
            ]
        results: list[ConfirmationFrameType | Returned | None] = [None] * len(messages)
        pub = self._pub
        if pub is None or self._closed:
            raise BusClosed(f"{self.redacted_url} is not connected")
        for m, props in zip(messages, properties, strict=True):
            self._check_frame(m.topic, m.data, props)  # before any of them is sent
        window = self.options.publish_window
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                channel = await self._publish_channel(pub)
                for start in range(0, len(messages), window):
                    chunk = range(start, min(len(messages), start + window))
                    answers = await asyncio.gather(
                        *(
                            channel.basic_publish(
                                messages[i].data,
                                exchange=exchange,
                                routing_key=messages[i].topic,
                                properties=properties[i],
                                mandatory=mandatory,
                            )
                            for i in chunk
                        ),
                        return_exceptions=True,
                    )
                    for i, answer in zip(chunk, answers, strict=True):
                        if isinstance(answer, BaseException):
                            if self._closed:
                                raise self._closed_while(messages[i].topic) from None
                            if is_connection_trouble(answer) and not is_frame_refused(answer):
                                continue  # sent again below
                            if isinstance(answer, Exception) and not isinstance(answer, BusError):
                                what = f"publish to {messages[i].topic!r}"
                                raise self.translate(answer, what) from answer
                            raise answer
                        if answer is not None and not isinstance(answer, Basic.Nack):
                            results[i] = answer
        except TimeoutError:
            pass  # the rest goes the slow way, which raises at the deadline
        except Exception as exc:
            if self._closed and not isinstance(exc, BusClosed):
                raise self._closed_while(messages[0].topic) from None
            if not is_connection_trouble(exc) or is_frame_refused(exc):
                raise
        for i, result in enumerate(results):
            if result is None:
                m = messages[i]
                results[i] = await self._send(
                    exchange, m.topic, m.data, properties[i], mandatory=mandatory, deadline=deadline
                )
        return results  # type: ignore[return-value]

    async def publish(self, messages: Sequence[Message], *, delay: float | None = None) -> None:
        o = self.options
        if delay:
            ms = _names.delay_ms(delay)
            if ms > _names.MAX_DELAY_MS:
                raise InvalidArgument(
                    f"delay {delay}s exceeds RabbitMQ's longest TTL ({_names.MAX_DELAY_MS} ms)"
                )
            await self._wait_queue("topic", ms)
            extra = {_wire.DELAY: str(ms), _wire.DELAY_TO: _TO_TOPIC}
            props = [_wire.encode(m, extra=extra) for m in messages]
            # routed by headers to the wait queue, which dead-letters to the topic
            results = await self._publish_all(
                _names.delay_exchange(o.exchange), messages, props, mandatory=True
            )
            returned = [
                (m, p) for m, p, r in zip(messages, props, results, strict=True)
                if isinstance(r, Returned)
            ]  # fmt: skip
            if returned:
                # the wait queue was deleted (by hand, or it expired) while cached as
                # declared: declare it again and send what came back, once
                await self._wait_queue("topic", ms, again=True)
                again = await self._publish_all(
                    _names.delay_exchange(o.exchange),
                    [m for m, _ in returned],
                    [p for _, p in returned],
                    mandatory=True,
                )
                for (m, _), r in zip(returned, again, strict=True):
                    if isinstance(r, Returned):
                        raise PublishError(f"wait queue of {ms} ms for {m.topic!r} is missing")
            return
        props = [_wire.encode(m) for m in messages]
        results = await self._publish_all(o.exchange, messages, props, mandatory=True)
        for m, r in zip(messages, results, strict=True):
            if isinstance(r, Returned):
                self._unroutable_publish(m.topic, o.on_unroutable)

    async def send_copy(
        self, queue: str, message: Message, attempts: int, delay: float | None
    ) -> None:
        """Put a copy of ``message`` back into ``queue`` (after ``delay``), carrying the
        number of deliveries made so far."""
        extra: dict[str, Any] = {_wire.ATTEMPTS: str(attempts)}
        if delay:
            ms = _names.delay_ms(delay)
            if ms > _names.MAX_DELAY_MS:
                raise InvalidArgument(f"nack delay {delay}s exceeds RabbitMQ's longest TTL")
            await self._wait_queue("queue", ms)
            extra.update({_wire.DELAY: str(ms), _wire.DELAY_TO: _TO_QUEUE})
            exchange = _names.delay_exchange(self.options.exchange)
        else:
            exchange = ""  # the default exchange routes by queue name
        props = _wire.encode(message, extra=extra)
        result = await self._send(exchange, queue, message.data, props, mandatory=True)
        if isinstance(result, Returned) and delay:
            # returned by the delay exchange: the wait queue was deleted while cached
            # as declared; declare it again and send once more
            await self._wait_queue("queue", _names.delay_ms(delay), again=True)
            result = await self._send(exchange, queue, message.data, props, mandatory=True)
            if isinstance(result, Returned):
                raise PublishError(f"cannot put {message.id} back: its wait queue is missing")
        if isinstance(result, Returned):
            raise PublishError(f"cannot put {message.id} back: queue {queue!r} is gone")

    async def send_dead_letter(self, message: Message) -> None:
        """Publish a dead letter; unlike a plain publish, nobody receiving it is an error
        (the original then stays unsettled and is redelivered, never lost)."""
        props = _wire.encode(message)
        result = await self._send(
            self.options.exchange, message.topic, message.data, props, mandatory=True
        )
        if isinstance(result, Returned):
            raise PublishError(
                f"no queue receives the dead-letter topic {message.topic!r}: declare a group "
                f"on it (bus.declare({message.topic!r}, groups=[...])) to keep dead letters; "
                f"{message.id} stays unsettled and will be redelivered"
            )

    # -- consuming -----------------------------------------------------------------
    async def subscribe(
        self, topic: str, *, group: str | None, start: Start, prefetch: int
    ) -> BackendSubscription:
        if start == "earliest":
            self.capabilities.require(Feature.REPLAY)
        if group is not None:
            name = await self._declare_group(topic, group)
            spec = QueueSpec(
                name,
                durable=True,
                arguments=self.group_arguments(topic),
                counted=self.options.queue_type == "quorum",
            )
        else:
            spec = QueueSpec(
                _names.broadcast_queue(self.options.exchange),
                durable=False,
                arguments=self.broadcast_arguments(),
            )
        sub = RabbitMQSubscription(self, topic, group, spec, prefetch)
        self._subscriptions.add(sub)
        try:
            await sub.open()
        except BaseException:
            with contextlib.suppress(Exception):
                await sub.close()
            raise
        return sub

    # -- request / reply -------------------------------------------------------------
    async def _reply_consumer(self, channel: aiormq.abc.AbstractChannel) -> None:
        """Consume direct replies on ``channel`` (the one the request is published on)."""
        async with self._reply_lock:
            consumers: Mapping[str, Any] = getattr(channel, "consumers", {})
            if self._reply_tag is not None and self._reply_tag in consumers:
                return
            ok = await channel.basic_consume(DIRECT_REPLY_TO, self._on_reply, no_ack=True)
            self._reply_tag = ok.consumer_tag

    async def _on_reply(self, raw: DeliveredMessage) -> None:
        try:
            reply = _wire.decode(raw.routing_key or DIRECT_REPLY_TO, raw)
        except BusError:
            log.warning("undecodable reply dropped", exc_info=True)
            return
        waiter = self._waiters.pop(reply.causation_id or "", None)
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    async def request(self, message: Message, timeout: float) -> Message:
        self.capabilities.require(Feature.REQUEST_REPLY)
        waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiters[message.id] = waiter
        props = _wire.encode(message, reply_to=DIRECT_REPLY_TO)
        try:
            async with asyncio.timeout(timeout):
                result = await self._send(
                    self.options.exchange,
                    message.topic,
                    message.data,
                    props,
                    mandatory=True,
                    prepare=self._reply_consumer,
                )
                if isinstance(result, Returned):
                    raise NoResponders(
                        f"nothing consumes {message.topic!r}: no group is declared on it and "
                        "no subscriber listens (the broker returned the request)"
                    )
                return await waiter
        except TimeoutError:
            raise RequestTimeout(
                f"no reply to {message.id} on {message.topic!r} within {timeout}s"
            ) from None
        finally:
            self._waiters.pop(message.id, None)

    async def reply(self, message: Message) -> None:
        self.capabilities.require(Feature.REQUEST_REPLY)
        props = _wire.encode(message)
        if message.topic.startswith(DIRECT_REPLY_TO):
            # a requester that is gone (timed out) is not an error: the reply is dropped
            await self._send("", message.topic, message.data, props, mandatory=False)
            return
        result = await self._send(
            self.options.exchange, message.topic, message.data, props, mandatory=True
        )
        if isinstance(result, Returned):
            self._unroutable_publish(message.topic, self.options.on_unroutable)

    async def has_consumers(self, topic: str) -> bool:
        """Not answerable without delivering something: AMQP 0-9-1 cannot list a
        topic's bindings or probe routing without a message. :meth:`request` detects
        no responders natively (mandatory publish, returned by the broker)."""
        raise UnsupportedFeature(
            self.scheme,
            "has_consumers",
            "AMQP cannot list who consumes a topic; request() detects no responders "
            "through the broker's return of a mandatory publish",
        )


def _caller_cancelled() -> bool:
    """The current task was cancelled (not an operation inside it by the driver)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
