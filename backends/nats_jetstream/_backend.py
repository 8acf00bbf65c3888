"""The NATS JetStream backend: connection, streams, publishing, consumers, RPC.

See the package docstring (``backends.nats_jetstream``) for the mapping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import nats.errors
from nats.aio.client import NO_RESPONDERS_STATUS, Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import Header

from backends.nats_jetstream import _wire
from backends.nats_jetstream._acks import Item, PubAcks
from backends.nats_jetstream._api import (
    CONSUMER_NOT_FOUND,
    STREAM_NAME_IN_USE,
    STREAM_NOT_FOUND,
    SUBJECTS_OVERLAP,
    ApiError,
    JetStreamApi,
    Unreachable,
    ns,
)
from backends.nats_jetstream._capabilities import CAPABILITIES
from backends.nats_jetstream._delay import DelayMover, held_headers
from backends.nats_jetstream._names import Names
from backends.nats_jetstream._options import NatsJetStreamOptions
from backends.nats_jetstream._pull import Puller
from backends.nats_jetstream._subscription import NatsSubscription
from bus._redact import redact_url
from bus._watchdog import Watchdog
from bus.backend import Backend, BackendSubscription, Start
from bus.errors import (
    BrokerUnavailable,
    BusClosed,
    BusError,
    ConfigurationError,
    InvalidArgument,
    MessageTooLarge,
    NoResponders,
    PublishError,
    RequestTimeout,
)
from bus.message import Message
from bus.options import BackendOptions

__all__ = ["NatsJetStreamBackend", "parse_url", "subject_matches"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 4222
#: Bytes of ``max_payload`` kept for the headers the library adds beyond what
#: ``bus.envelope.encoded_size`` counts (``ce-*`` attributes, ``Nats-Msg-Id``).
HEADER_HEADROOM = 1024
# One publish attempt waits this long for its PubAck before it is sent again
# (same Nats-Msg-Id, so the server stores it once).
_ATTEMPT_TIMEOUT = 5.0
# Publishes of one publish_many in flight at once.
_WINDOW = 1000
# JetStream error codes that are a configuration problem, not an outage.
_CONFIG_ERRORS = {
    10074: "replicas > 1 needs a JetStream cluster",
}
_JETSTREAM_NOT_ENABLED = {10039, 10076}


def parse_url(
    url: str,
) -> tuple[list[str], str | None, str | None, str | None, bool]:
    """``(servers, user, password, token, tls)`` from a ``nats://`` / ``tls://`` URL.

    Several servers may be listed: ``nats://u:p@a:4222,b:4222``. Credentials are
    returned apart so they never appear in a server URL (nats-py logs those).
    """
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigurationError(f"malformed NATS URL {shown!r}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("nats", "tls"):
        raise ConfigurationError(f"NATS URL must start with nats:// or tls://, got {shown!r}")
    if parts.path not in ("", "/") or parts.fragment:
        raise ConfigurationError(f"NATS URL takes no path, got {shown!r}")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    user = password = token = None
    if userinfo:
        name, sep, secret = userinfo.partition(":")
        if sep:
            user, password = unquote(name), unquote(secret)
        else:
            token = unquote(name)
    servers: list[str] = []
    for item in hostlist.split(","):
        item = item.strip()
        if not item:
            raise ConfigurationError(f"NATS URL has an empty host: {shown!r}")
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            host = f"[{host}]"
            port_text = rest.removeprefix(":")
        else:
            host, _, port_text = item.partition(":")
        if not host or any(c.isspace() or c in "/?#@" for c in host):
            raise ConfigurationError(f"NATS URL has an invalid host: {shown!r}")
        try:
            port = int(port_text) if port_text else DEFAULT_PORT
        except ValueError:
            raise ConfigurationError(f"NATS URL has a non-numeric port: {shown!r}") from None
        if not 0 < port < 65536:
            raise ConfigurationError(f"NATS URL has an out-of-range port: {shown!r}")
        servers.append(f"{scheme}://{host}:{port}")
    return servers, user, password, token, scheme == "tls"


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


class _Outcome:
    """Why one publish attempt needs another."""

    __slots__ = ("missing", "reason")

    def __init__(self, reason: str, *, missing: bool = False) -> None:
        self.reason = reason
        self.missing = missing


_NO_STREAM = _Outcome("no stream captures the subject", missing=True)


def _judge(reply: Msg | None, subject: str, timeout: float) -> _Outcome | None:
    """None when ``reply`` is the PubAck of a stored (or duplicate) message, else why
    the publish needs another attempt; raises PublishError when the stream refused it
    for good."""
    if reply is None:
        return _Outcome(f"no PubAck within {timeout:.1f}s")
    if reply.headers and reply.headers.get(Header.STATUS) == NO_RESPONDERS_STATUS:
        return _NO_STREAM
    body = reply.data
    if body[:1] == b"{" and b'"error"' not in body:
        return None  # {"stream": ..., "seq": ...}: stored (parsing it is 1/4 of a publish)
    try:
        ack = json.loads(body)
    except ValueError:
        return _Outcome("malformed PubAck")
    error = ack.get("error") if isinstance(ack, dict) else None
    if error:
        description = str(error.get("description", "error"))
        if int(error.get("code", 0)) == 503:
            return _Outcome(description)
        raise PublishError(f"JetStream rejected a message on {subject!r}: {description}")
    return None


class NatsJetStreamBackend(Backend):
    scheme = "nats"
    capabilities = CAPABILITIES
    Options = NatsJetStreamOptions
    options: NatsJetStreamOptions

    def __init__(self, url: str, options: BackendOptions) -> None:
        super().__init__(url, options)
        self.redacted = redact_url(url)
        self._servers, self._user, self._password, self._token, tls = parse_url(url)
        opts = self.options
        self._tls: ssl.SSLContext | None = None
        if tls or opts.tls_ca_file or opts.tls_cert_file:
            try:
                self._tls = ssl.create_default_context(cafile=opts.tls_ca_file)
                if opts.tls_cert_file:
                    self._tls.load_cert_chain(opts.tls_cert_file, opts.tls_key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(f"TLS files cannot be loaded: {exc}") from None
        self.names = Names(opts.subject_prefix, opts.stream_prefix)
        self._nc: Client | None = None
        self._api: JetStreamApi | None = None
        self._acks: PubAcks | None = None
        # bounds the wait for a window's PubAcks without a timer per publish
        self._watchdog = Watchdog()
        self._closed = False
        self._streams: dict[str, str] = {}
        self._durables: set[tuple[str, str]] = set()
        self._stream_locks: dict[str, asyncio.Lock] = {}
        self._subs: set[NatsSubscription] = set()
        self._mover: DelayMover | None = None
        self._mover_lock = asyncio.Lock()
        self._inbox_topic = f"_inbox.{uuid.uuid4().hex}"
        self._reply_sub: Subscription | None = None
        self._reply_lock = asyncio.Lock()
        self._waiters: dict[str, asyncio.Future[Message]] = {}
        self._connected_once = False
        self._last_error: str = ""
        self._auth_failed: asyncio.Event | None = None

    # -- plumbing ----------------------------------------------------------------
    @property
    def nc(self) -> Client:
        if self._nc is None or self._closed:
            raise BusClosed(f"NATS backend for {self.redacted} is not connected")
        return self._nc

    @property
    def acks(self) -> PubAcks:
        if self._acks is None or self._closed:
            raise BusClosed(f"NATS backend for {self.redacted} is not connected")
        return self._acks

    @property
    def api(self) -> JetStreamApi:
        if self._api is None or self._closed:
            raise BusClosed(f"NATS backend for {self.redacted} is not connected")
        return self._api

    @property
    def max_message_bytes(self) -> int:
        """The server's ``max_payload`` (from its INFO) less :data:`HEADER_HEADROOM`."""
        payload = self._nc.max_payload if self._nc is not None else 1024 * 1024
        return max(payload - HEADER_HEADROOM, 1)

    def forget(self, sub: NatsSubscription) -> None:
        self._subs.discard(sub)

    # -- connection -------------------------------------------------------------
    async def _on_error(self, exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        self._last_error = text
        if not self._connected_once:
            denied = isinstance(exc, nats.errors.AuthorizationError)
            if (denied or "authorization" in text.lower()) and self._auth_failed is not None:
                self._auth_failed.set()
            log.debug("connecting to %s: %s", self.redacted, text)
        elif isinstance(exc, OSError | nats.errors.StaleConnectionError):
            log.debug("NATS connection problem (%s): %s", self.redacted, text)
        else:
            log.warning("NATS error (%s): %s", self.redacted, text)

    async def _on_disconnect(self) -> None:
        if self._connected_once and not self._closed:
            log.warning("disconnected from NATS (%s); reconnecting", self.redacted)

    async def _on_reconnect(self) -> None:
        log.info("reconnected to NATS (%s)", self.redacted)
        for sub in list(self._subs):
            sub.puller.reset()
        if self._mover is not None:
            self._mover.reset()

    async def connect(self) -> None:
        opts = self.options
        loop = asyncio.get_running_loop()
        deadline = loop.time() + opts.connect_timeout
        self._auth_failed = asyncio.Event()
        nc = Client()
        self._nc = nc
        kwargs: dict[str, Any] = {}
        if self._tls is not None:
            kwargs["tls"] = self._tls
            if opts.tls_hostname:
                kwargs["tls_hostname"] = opts.tls_hostname
        connecting = asyncio.create_task(
            nc.connect(
                servers=self._servers,
                user=self._user,
                password=self._password,
                token=self._token,
                name=opts.source,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnect,
                reconnected_cb=self._on_reconnect,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=opts.reconnect_wait,  # type: ignore[arg-type]
                connect_timeout=max(1, min(int(opts.connect_timeout), 5)),
                pending_size=opts.pending_size,
                # a publish that overfills the buffer forces a flush: bounded, so a
                # broker that stopped reading cannot hold a publish for ever
                flush_timeout=min(opts.operation_timeout, _ATTEMPT_TIMEOUT),
                **kwargs,
            ),
            name="bus-nats-connect",
        )
        denied = asyncio.create_task(self._auth_failed.wait())
        try:
            done, _ = await asyncio.wait(
                {connecting, denied},
                timeout=opts.connect_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            denied.cancel()
        if connecting not in done:
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await connecting
            await self._abandon(nc)
            why = "authorization failed" if self._auth_failed.is_set() else self._last_error
            raise BrokerUnavailable(
                f"cannot connect to NATS at {self.redacted} within {opts.connect_timeout}s"
                + (f": {why}" if why else "")
            )
        try:
            connecting.result()
        except Exception as exc:  # whatever the driver raised: translated here
            await self._abandon(nc)
            raise BrokerUnavailable(
                f"cannot connect to NATS at {self.redacted}: {type(exc).__name__}"
            ) from exc
        self._connected_once = True
        self._api = JetStreamApi(nc)
        self._acks = PubAcks(nc, self._watchdog)
        await self._acks.open()
        await self._check_jetstream(deadline)

    async def _check_jetstream(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            remaining = deadline - loop.time()
            try:
                await self.api.account_info(max(remaining, 0.5))
                return
            except ApiError as exc:
                await self._abandon(self.nc)
                if exc.code in _JETSTREAM_NOT_ENABLED:
                    raise BrokerUnavailable(
                        f"JetStream is not enabled on {self.redacted}: {exc.description}"
                    ) from None
                raise BrokerUnavailable(
                    f"JetStream at {self.redacted} refused: {exc.description}"
                ) from None
            except Unreachable as exc:
                if loop.time() + 0.2 >= deadline:
                    await self._abandon(self.nc)
                    raise BrokerUnavailable(
                        f"JetStream is not available on {self.redacted} (is it enabled?): {exc}"
                    ) from None
                await asyncio.sleep(0.2)

    async def _abandon(self, nc: Client) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await nc.close()
        self._nc = None
        self._api = None

    async def close(self) -> None:
        if self._closed or self._nc is None:
            self._closed = True
            return
        nc = self._nc
        for sub in list(self._subs):
            with contextlib.suppress(BusError):
                await sub.close()
        if self._mover is not None:
            mover, self._mover = self._mover, None
            await mover.close()
        for waiter in self._waiters.values():
            if not waiter.done():  # the requester was not cancelled: the bus closed
                waiter.set_exception(BusClosed("the bus closed while the request waited"))
        self._waiters.clear()
        self._closed = True
        if self._acks is not None:
            await self._acks.close()
        self._watchdog.close()
        timeout = min(5.0, self.options.operation_timeout)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                if nc.is_connected:
                    await nc.flush(timeout=max(1, int(timeout)))
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                await nc.close()

    # -- management ---------------------------------------------------------------
    async def _admin(self, what: str, call: Callable[[float], Awaitable[Any]]) -> Any:
        """Run a management request, retrying while JetStream does not answer (a
        restart, a leader election) for up to ``operation_timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.operation_timeout
        delay = 0.1
        while True:
            remaining = deadline - loop.time()
            try:
                return await call(max(min(remaining, _ATTEMPT_TIMEOUT), 0.5))
            except ApiError as exc:
                if exc.code in _CONFIG_ERRORS:
                    raise ConfigurationError(
                        f"{what}: {_CONFIG_ERRORS[exc.code]} ({exc.description})"
                    ) from None
                if exc.status != 503 or loop.time() + delay >= deadline:
                    raise
                problem = exc.description
            except Unreachable as exc:
                problem = str(exc)
            except nats.errors.ConnectionClosedError:
                raise BusClosed(f"the connection to {self.redacted} is closed") from None
            if loop.time() + delay >= deadline:
                raise BrokerUnavailable(
                    f"{what}: JetStream at {self.redacted} unavailable for "
                    f"{self.options.operation_timeout}s: {problem}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _stream_config(self, name: str, subjects: list[str]) -> dict[str, Any]:
        opts = self.options
        return {
            "name": name,
            "subjects": subjects,
            "retention": "limits",
            "storage": opts.storage,
            "num_replicas": opts.replicas,
            "max_age": ns(opts.max_age or 0),
            "max_bytes": opts.max_bytes or -1,
            "max_msgs": opts.max_msgs or -1,
            "max_msg_size": -1,
            "max_consumers": -1,
            "discard": "old",
            "duplicate_window": ns(opts.duplicate_window),
        }

    async def _create_stream(self, name: str, subjects: list[str], probe: str) -> str:
        """Create stream ``name`` (idempotent); return the stream that captures
        ``probe`` - ours, or an operator's stream that already covers it."""
        config = self._stream_config(name, subjects)
        try:
            await self._admin(
                f"creating stream {name}", lambda t: self.api.create_stream(config, t)
            )
        except ApiError as exc:
            if exc.code == STREAM_NAME_IN_USE:
                # exists with another configuration (other limits): keep it, if it
                # captures our subject
                info = await self._admin(
                    f"inspecting stream {name}", lambda t: self.api.stream_info(name, t)
                )
                captured = (info.get("config") or {}).get("subjects") or []
                if not any(subject_matches(pattern, probe) for pattern in captured):
                    raise ConfigurationError(
                        f"stream {name} exists but does not capture {probe!r} (its subjects: "
                        f"{', '.join(captured)}); another subject_prefix uses the same "
                        "stream_prefix on this server"
                    ) from None
                log.debug("stream %s exists with another configuration; keeping it", name)
                return name
            if exc.code == SUBJECTS_OVERLAP:
                existing = await self._admin(
                    f"finding the stream of {probe}",
                    lambda t: self.api.stream_for_subject(probe, t),
                )
                if existing:
                    return str(existing)
            raise BrokerUnavailable(
                f"JetStream at {self.redacted} refused to create stream {name}: {exc.description}"
            ) from None
        return name

    async def ensure_stream(self, topic: str, *, force: bool = False) -> str:
        """The stream of ``topic``, created if missing (once per connection)."""
        if not force and topic in self._streams:
            return self._streams[topic]
        lock = self._stream_locks.setdefault(topic, asyncio.Lock())
        async with lock:
            if not force and topic in self._streams:
                return self._streams[topic]
            subject = self.names.subject(topic)
            stream = await self._create_stream(self.names.stream(topic), [subject], subject)
            self._streams[topic] = stream
            return stream

    async def ensure_delay_stream(self, *, force: bool = False) -> str:
        key = self.names.delay_root
        if not force and key in self._streams:
            return self._streams[key]
        lock = self._stream_locks.setdefault(key, asyncio.Lock())
        async with lock:
            if not force and key in self._streams:
                return self._streams[key]
            names = self.names
            stream = await self._create_stream(
                names.delay_stream, [f"{names.delay_root}.>"], f"{names.delay_root}.x"
            )
            self._streams[key] = stream
            return stream

    async def ensure_durable(
        self,
        stream: str,
        config: dict[str, Any],
        *,
        update_lease: bool = True,
        force: bool = False,
    ) -> None:
        """Create durable consumer ``config`` on ``stream`` unless it exists.

        An existing consumer keeps its configuration (its start position matters
        only at creation), except its ack wait, which follows an explicitly set
        ``ack_timeout`` when ``update_lease``.
        """
        durable = str(config["durable_name"])
        key = (stream, durable)
        if key in self._durables and not force:
            return
        what = f"consumer {durable} of {stream}"
        info: dict[str, Any] | None
        try:
            info = await self._admin(what, lambda t: self.api.consumer_info(stream, durable, t))
        except ApiError as exc:
            if exc.code != CONSUMER_NOT_FOUND:
                raise self._refused(what, exc) from None
            info = None
        if info is None:
            try:
                await self._admin(what, lambda t: self.api.create_durable(stream, config, t))
            except ApiError as exc:
                # created meanwhile by another member (maybe with another start)
                try:
                    await self._admin(what, lambda t: self.api.consumer_info(stream, durable, t))
                except ApiError:
                    raise self._refused(what, exc) from None
        elif update_lease and self.options.ack_timeout is not None:
            current = dict(info.get("config") or {})
            if current.get("ack_wait") != config["ack_wait"]:
                current["ack_wait"] = config["ack_wait"]
                try:
                    await self._admin(what, lambda t: self.api.create_durable(stream, current, t))
                except ApiError as exc:
                    log.warning("could not update the ack wait of %s: %s", what, exc.description)
        self._durables.add(key)

    def _refused(self, what: str, exc: ApiError) -> BusError:
        return BrokerUnavailable(f"{what}: JetStream at {self.redacted} refused: {exc.description}")

    def _group_config(self, topic: str, group: str, start: Start) -> dict[str, Any]:
        opts = self.options
        return {
            "durable_name": group,
            "deliver_policy": "all" if start == "earliest" else "new",
            "ack_policy": "explicit",
            "ack_wait": ns(opts.lease),
            "max_deliver": opts.max_deliver or -1,
            "filter_subject": self.names.subject(topic),
            "replay_policy": "instant",
            "max_ack_pending": opts.max_ack_pending,
            "max_waiting": 512,
        }

    async def ensure_group(
        self, topic: str, group: str, start: Start, *, force: bool = False
    ) -> str:
        stream = await self.ensure_stream(topic, force=force)
        await self.ensure_durable(stream, self._group_config(topic, group, start), force=force)
        return stream

    async def _create_ephemeral(
        self, stream: str, topic: str, start: Start, from_seq: int
    ) -> tuple[str, int]:
        """A broadcast consumer; returns its name and the first sequence it delivers."""
        opts = self.options
        config: dict[str, Any] = {
            "ack_policy": "explicit",
            "ack_wait": ns(opts.lease),
            "max_deliver": opts.max_deliver or -1,
            "filter_subject": self.names.subject(topic),
            "replay_policy": "instant",
            "max_ack_pending": opts.max_ack_pending,
            "inactive_threshold": ns(opts.ephemeral_inactive_threshold),
        }
        if from_seq > 0:
            config["deliver_policy"] = "by_start_sequence"
            config["opt_start_seq"] = from_seq
        else:
            config["deliver_policy"] = "all" if start == "earliest" else "new"
        what = f"broadcast consumer of {stream}"
        try:
            info = await self._admin(what, lambda t: self.api.create_ephemeral(stream, config, t))
        except ApiError as exc:
            raise self._refused(what, exc) from None
        delivered = info.get("delivered") or {}
        return str(info["name"]), int(delivered.get("stream_seq", 0)) + 1

    async def drop_ephemeral(self, stream: str, consumer: str) -> None:
        if self._closed or self._api is None:
            return
        with contextlib.suppress(ApiError, Unreachable, nats.errors.Error):
            await self._api.delete_consumer(
                stream, consumer, min(2.0, self.options.operation_timeout)
            )

    async def _ensure_mover(self) -> None:
        if not self.options.delay_mover or self._mover is not None:
            return
        async with self._mover_lock:
            if self._mover is None and not self._closed:
                mover = DelayMover(self)
                await mover.start()
                self._mover = mover

    async def _start_mover_quietly(self) -> None:
        try:
            await self._ensure_mover()
        except BusError as exc:
            log.warning("delay mover not started (retried on the next subscribe): %s", exc)

    # -- producing ---------------------------------------------------------------
    def _encode(self, messages: Iterable[Message], delay: float | None) -> list[Item]:
        limit = self.nc.max_payload
        due = time.time() + delay if delay else None
        items: list[Item] = []
        for message in messages:
            headers = _wire.encode(message)
            if due is not None:
                headers = held_headers(headers, due)
            size = _wire.wire_size(headers, message.data)
            if size > limit:
                raise MessageTooLarge(size, self.max_message_bytes, message.topic)
            items.append((headers, message.data))
        return items

    async def publish(self, messages: Sequence[Message], *, delay: float | None = None) -> None:
        if not messages:
            return
        topic = messages[0].topic
        items = self._encode(messages, delay)
        if delay:
            await self._ensure_mover()
            await self._confirm(
                self.names.delay_subject(topic), items, lambda: self.ensure_delay_stream(force=True)
            )
        else:
            await self.publish_raw(topic, items)

    async def publish_raw(self, topic: str, items: Sequence[Item]) -> None:
        """Publish encoded ``items`` to ``topic`` and wait for every PubAck."""
        await self._confirm(
            self.names.subject(topic), items, lambda: self.ensure_stream(topic, force=True)
        )

    async def _attempts(
        self, subject: str, items: Sequence[Item], timeout: float
    ) -> list[_Outcome | None]:
        """One publish of each item; per item None once its PubAck says stored (or
        duplicate), else why it needs another attempt."""
        try:
            replies = await self.acks.publish(subject, items, timeout)
        except nats.errors.ConnectionClosedError:
            raise BusClosed(f"the connection to {self.redacted} is closed") from None
        except nats.errors.MaxPayloadError:
            size = max(len(data) for _, data in items)
            raise MessageTooLarge(size, self.max_message_bytes, subject) from None
        except nats.errors.Error as exc:  # buffer full while reconnecting, ...
            return [_Outcome(type(exc).__name__)] * len(items)
        return [_judge(reply, subject, timeout) for reply in replies]

    async def _confirm(
        self, subject: str, items: Sequence[Item], ensure: Callable[[], Awaitable[str]]
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.operation_timeout
        first: _Outcome | None = None
        if len(items) == 1:
            # the common single publish: one attempt without the window machinery
            # below (a tenth of a publish's CPU); on failure it joins the retry loop
            (first,) = await self._attempts(
                subject, items, min(self.options.operation_timeout, _ATTEMPT_TIMEOUT)
            )
            if first is None:
                return
        pending = list(items)
        problem = "no PubAck"
        backoff = 0.05
        while pending:
            retry: list[Item] = []
            missing = False
            if first is not None:  # already attempted once, above
                retry, problem, missing, first = pending, first.reason, first.missing, None
            else:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise self._publish_failure(subject, len(pending), problem)
                for start in range(0, len(pending), _WINDOW):
                    window = pending[start : start + _WINDOW]
                    # each window within what is left of operation_timeout
                    attempt = min(deadline - loop.time(), _ATTEMPT_TIMEOUT)
                    if attempt <= 0:
                        retry.extend(pending[start:])  # raised at the deadline below
                        break
                    outcomes = await self._attempts(subject, window, attempt)
                    for item, outcome in zip(window, outcomes, strict=True):
                        if outcome is not None:
                            retry.append(item)
                            problem = outcome.reason
                            missing = missing or outcome.missing
            pending = retry
            if not pending:
                return
            if missing:
                try:
                    async with asyncio.timeout(max(deadline - loop.time(), 0.1)):
                        await ensure()
                except (BrokerUnavailable, ApiError, TimeoutError) as exc:
                    problem = str(exc) or "creating the stream timed out"
            pause = min(backoff, max(deadline - loop.time(), 0))
            await asyncio.sleep(pause)
            backoff = min(backoff * 2, 1.0)

    def _publish_failure(self, subject: str, count: int, problem: str) -> BusError:
        text = (
            f"{count} message(s) to {subject!r} not confirmed by {self.redacted} within "
            f"{self.options.operation_timeout}s: {problem}"
        )
        if self._nc is not None and not self._nc.is_connected:
            return BrokerUnavailable(text)
        return PublishError(text)

    async def delete_topic(self, topic: str, groups: Sequence[str] = ()) -> bool:
        """Delete the topic's stream (with its durable consumers), when it is the one
        this backend names; when an operator's stream captures the topic's subject,
        delete only the durable consumers of ``groups`` on it. Delayed messages held
        for the topic are purged too (a mover would otherwise publish them later and
        create the stream again)."""
        delay_stream = self._streams.get(self.names.delay_root, self.names.delay_stream)
        held = self.names.delay_subject(topic)
        what = f"purging {held} from {delay_stream}"
        try:
            await self._admin(what, lambda t: self.api.purge_subject(delay_stream, held, t))
        except ApiError as exc:
            if exc.code != STREAM_NOT_FOUND:
                raise self._refused(what, exc) from None
        subject = self.names.subject(topic)
        stream = self._streams.get(topic) or await self._admin(
            f"finding the stream of {subject}", lambda t: self.api.stream_for_subject(subject, t)
        )
        if stream is not None:
            doomed: list[tuple[str, str | None]]
            if stream == self.names.stream(topic):
                doomed = [(f"deleting stream {stream}", None)]
            else:
                doomed = [(f"deleting consumer {g} of {stream}", g) for g in groups]
            for what, group in doomed:

                def call(t: float, group: str | None = group) -> Awaitable[None]:
                    if group is None:
                        return self.api.delete_stream(stream, t)
                    return self.api.delete_consumer(stream, group, t)

                try:
                    await self._admin(what, call)
                except ApiError as exc:
                    if exc.code not in (STREAM_NOT_FOUND, CONSUMER_NOT_FOUND):
                        raise self._refused(what, exc) from None
            self._durables = {key for key in self._durables if key[0] != stream}
        self._streams.pop(topic, None)
        return True

    async def declare(self, topic: str, groups: Sequence[str]) -> None:
        await self.ensure_stream(topic)
        for group in groups:
            await self.ensure_group(topic, group, "latest")

    # -- consuming ---------------------------------------------------------------
    async def subscribe(
        self, topic: str, *, group: str | None, start: Start, prefetch: int
    ) -> BackendSubscription:
        nc, api = self.nc, self.api
        stream = await self.ensure_stream(topic)
        await self._start_mover_quietly()
        if group is None:
            consumer, next_seq = await self._create_ephemeral(stream, topic, start, 0)
            puller = Puller(nc, api, stream, consumer)
            sub = NatsSubscription(self, topic, None, stream, puller, next_seq)

            async def recover_broadcast() -> str:
                await self.ensure_stream(topic, force=True)
                name, _ = await self._create_ephemeral(stream, topic, start, sub.next_seq)
                return name

            puller.recover = recover_broadcast
        else:
            await self.ensure_group(topic, group, start)
            puller = Puller(nc, api, stream, group)
            sub = NatsSubscription(self, topic, group, stream, puller, 0)

            async def recover_group() -> str:
                log.warning("consumer %s of %s is gone; recreating it", group, stream)
                await self.ensure_group(topic, group, start, force=True)
                return group

            puller.recover = recover_group
        try:
            await sub.start()
        except nats.errors.Error as exc:
            await sub.close()
            raise BrokerUnavailable(f"cannot subscribe on {self.redacted}: {exc}") from exc
        self._subs.add(sub)
        return sub

    # -- request / reply ------------------------------------------------------------
    async def has_consumers(self, topic: str) -> bool:
        """Ask the live consumers of ``topic``: each holds a core queue subscription
        on its liveness subject, and the server answers ``503 no responders`` at
        once when there is none."""
        try:
            await self.nc.request(
                self.names.live_subject(topic),
                b"",
                timeout=min(2.0, self.options.operation_timeout),
            )
        except nats.errors.NoRespondersError:
            return False
        except (TimeoutError, nats.errors.TimeoutError):
            return True  # someone holds the subject but is slow to answer
        except nats.errors.ConnectionClosedError:
            raise BusClosed(f"the connection to {self.redacted} is closed") from None
        except nats.errors.Error as exc:
            raise BrokerUnavailable(f"cannot reach {self.redacted}: {type(exc).__name__}") from exc
        return True

    async def _ensure_reply_inbox(self) -> None:
        async with self._reply_lock:
            if self._reply_sub is None:
                subject = self.names.subject(self._inbox_topic)
                self._reply_sub = await self.nc.subscribe(subject, cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        reply = _wire.decode(self._inbox_topic, msg.data, msg.headers, "")
        waiter = self._waiters.pop(reply.causation_id or "", None)
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    async def request(self, message: Message, timeout: float) -> Message:
        """Store the request in the topic's stream (durable: a group member takes it
        even if it starts later or restarts), with ``reply_to`` naming this
        connection's core inbox; the reply comes back over core NATS (not stored:
        nobody but this connection waits for it)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Message] = loop.create_future()
        try:
            async with asyncio.timeout(timeout) as scope:
                await self._ensure_reply_inbox()
                if not await self.has_consumers(message.topic):
                    raise NoResponders(f"nothing consumes {message.topic!r}")
                self._waiters[message.id] = waiter
                await self.publish([message.evolve(reply_to=self._inbox_topic)])
                return await waiter
        except TimeoutError:
            if not scope.expired():
                raise
            raise RequestTimeout(
                f"no reply to {message.id} on {message.topic!r} within {timeout}s"
            ) from None
        finally:
            self._waiters.pop(message.id, None)

    async def reply(self, message: Message) -> None:
        """Core publish to the requester's inbox subject (``reply_to``)."""
        topic = message.topic
        if not topic or any(c.isspace() or c in "*>" for c in topic):
            raise InvalidArgument(f"reply_to {topic!r} is not a NATS subject")
        headers = _wire.encode(message)
        size = _wire.wire_size(headers, message.data)
        if size > self.nc.max_payload:
            raise MessageTooLarge(size, self.max_message_bytes, topic)
        try:
            await self.nc.publish(self.names.subject(topic), message.data, headers=headers)
        except nats.errors.ConnectionClosedError:
            raise BusClosed(f"the connection to {self.redacted} is closed") from None
        except nats.errors.Error as exc:
            raise PublishError(f"reply to {topic!r} failed: {type(exc).__name__}") from exc
