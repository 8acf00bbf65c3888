"""The Kafka backend: connection, topics, publishing, group offsets, capabilities."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.protocol.admin import DeleteGroupsRequest

from bus._redact import redact_url
from bus._watchdog import Watchdog
from bus.backend import Backend, BackendSubscription, Start
from bus.capabilities import Capabilities, Feature, emulated, native, unsupported
from bus.errors import BrokerUnavailable, BusClosed, BusError, ConfigurationError, PublishError
from bus.message import Message
from bus.options import BackendOptions

from .config import ClusterConfig, parse_url
from .options import KafkaOptions
from .records import NOT_BEFORE, encode_headers
from .teardown import stop_client
from .writes import Outgoing, send_batches

__all__ = ["CAPABILITIES", "DEFAULT_MESSAGE_MAX_BYTES", "KafkaBackend", "group_id"]

log = logging.getLogger(__name__)


class _InboxGone(PublishError):
    """A reply's inbox topic does not exist: its requester closed (and deleted it)."""


#: Kafka's default ``message.max.bytes`` (1 MiB + 12), used when the broker does not
#: report its own (Tansu reports no configuration at all).
DEFAULT_MESSAGE_MAX_BYTES = 1_048_588
#: Kept free below the broker's limit for the CloudEvents headers and batch framing,
#: which the library's size check (payload + user headers) does not count.
_HEADROOM = 1024
#: Reply inboxes: ``_inbox.<id>``, one per requesting connection.
_INBOX_PREFIX = "_inbox."
#: Seconds before a reply inbox the broker does not list is looked up again.
_INBOX_RECHECK = 0.5
#: Topics whose names start with these get one partition (reply inboxes).
_SINGLE_PARTITION_PREFIXES = (_INBOX_PREFIX,)
#: Kafka error code of a topic the broker does not know (a delete is then done).
_ERR_UNKNOWN_TOPIC = 3
_ERR_TOPIC_EXISTS = 36
#: DeleteGroups: the group does not exist (nothing to delete).
_ERR_GROUP_NOT_FOUND = 69

#: bootstrap servers -> whether the broker granted a producer id, so a broker that
#: refuses idempotence is asked (and logged about) once per process, not per connect.
_IDEMPOTENCE: dict[tuple[str, ...], bool] = {}


CAPABILITIES = Capabilities(
    "kafka",
    {
        Feature.BROADCAST: native(
            "a consumer without group, assigned every partition, starting at the "
            "log ends read at subscribe"
        ),
        Feature.REPLAY: native("a new group or broadcast starts at the log start offsets"),
        Feature.KEY_ORDER: native(
            "key -> partition (record key); one consumer reads a partition in order "
            "(a nack re-queues after later records)"
        ),
        Feature.DELAY: emulated(
            "written at once with a bus-not-before header; consumers hold it (without "
            "committing past it) until due"
        ),
        Feature.NACK_DELAY: emulated(
            "a copy with bus-not-before / bus-attempt / bus-group headers is written to "
            "the same partition, then the original is settled; durable across crashes"
        ),
        Feature.PRIORITY: unsupported(
            "a Kafka partition is a FIFO log: a later record cannot overtake an earlier "
            "one; use one topic per priority level"
        ),
        Feature.DEAD_LETTER: emulated(
            "confirmed copy to the <topic>.dlq topic with bus-dlq-* headers, then ack"
        ),
        Feature.LEASE: unsupported(
            "Kafka has no per-message lease: a stuck member keeps its partitions until "
            "session_timeout_ms (dead process) or max_poll_interval_ms (no fetch) "
            "expires, then its partitions and unsettled records move as a whole"
        ),
        Feature.REQUEST_REPLY: emulated(
            "reply topic _inbox.<id> per connection (1 partition), correlated by the request id"
        ),
        Feature.NO_RESPONDERS: unsupported(
            "a broadcast consumer has no group, so the broker cannot tell whether "
            "anyone reads a topic"
        ),
    },
)


def group_id(topic: str, group: str) -> str:
    """The Kafka consumer group of bus group ``group`` on ``topic``: ``<topic>:<group>``.

    A bus group belongs to one topic (the same name on two topics is two groups), and
    ``:`` is outside the topic grammar, so the id is unambiguous.
    """
    return f"{topic}:{group}"


def scrub(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` masked (driver messages never get near a password,
    but an error text is user-visible, so make sure)."""
    return text.replace(secret, "***") if secret else text


class KafkaBackend(Backend):
    scheme = "kafka"
    capabilities = CAPABILITIES
    Options = KafkaOptions
    options: KafkaOptions

    def __init__(self, url: str, options: BackendOptions) -> None:
        super().__init__(url, options)
        self.cluster: ClusterConfig = parse_url(url, self.options)
        self._secret: str | None = self.cluster.client_kwargs.get("sasl_plain_password")
        self._admin: AIOKafkaAdminClient | None = None
        self._producer: AIOKafkaProducer | None = None
        self._probe: AIOKafkaConsumer | None = None
        self._probe_lock = asyncio.Lock()
        self._topic_lock = asyncio.Lock()
        # bounds each send attempt without a timer per publish (see bus._watchdog)
        self._watchdog = Watchdog()
        self._topics: set[str] = set()
        self._subscriptions: set[BackendSubscription] = set()
        self._broker_max_bytes = DEFAULT_MESSAGE_MAX_BYTES
        self._replication = self.options.replication_factor or 1
        self._closed = False
        self.idempotent = False
        """Whether the producer is idempotent (decided at connect)."""

    def __repr__(self) -> str:
        return f"<KafkaBackend {redact_url(self.url)}>"

    # -- helpers -----------------------------------------------------------------
    @property
    def where(self) -> str:
        """The broker list for error messages (no credentials)."""
        return ",".join(self.cluster.bootstrap)

    def error_text(self, exc: BaseException) -> str:
        return scrub(f"{type(exc).__name__}: {exc}", self._secret)

    def unavailable(self, what: str, exc: BaseException | None = None) -> BrokerUnavailable:
        detail = f" ({self.error_text(exc)})" if exc is not None else ""
        return BrokerUnavailable(f"kafka at {self.where}: {what}{detail}")

    def client_kwargs(self, **extra: Any) -> dict[str, Any]:
        return {**self.cluster.client_kwargs, **extra}

    def _check_open(self) -> None:
        if self._closed or self._producer is None:
            raise BusClosed(f"{self!r} is not connected")

    @property
    def producer(self) -> AIOKafkaProducer:
        self._check_open()
        assert self._producer is not None
        return self._producer

    @property
    def admin(self) -> AIOKafkaAdminClient:
        self._check_open()
        assert self._admin is not None
        return self._admin

    @property
    def max_message_bytes(self) -> int:
        return self._broker_max_bytes - _HEADROOM

    @property
    def fetch_bytes(self) -> int:
        """Per-partition fetch size: at least one record of the largest allowed size."""
        limit = max(self._broker_max_bytes, self.options.max_message_bytes or 0)
        return max(1024 * 1024, limit + 64 * 1024)

    def _request_timeout_ms(self) -> int:
        return int(max(self.options.operation_timeout, 1.0) * 1000)

    # -- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                self._admin = AIOKafkaAdminClient(
                    **self.client_kwargs(request_timeout_ms=self._request_timeout_ms())
                )
                await self._admin.start()
                await self._read_broker_config()
                self._producer = await self._start_producer()
                self._probe = AIOKafkaConsumer(
                    **self.client_kwargs(
                        group_id=None,
                        enable_auto_commit=False,
                        fetch_max_wait_ms=10,
                        max_partition_fetch_bytes=self.fetch_bytes,
                        request_timeout_ms=self._request_timeout_ms(),
                    )
                )
                await self._probe.start()
        except TimeoutError:
            await self._close_clients()
            raise self.unavailable(
                f"no answer within connect_timeout={self.options.connect_timeout}s"
            ) from None
        except BusError:
            await self._close_clients()
            raise
        except Exception as exc:
            # KafkaError, OSError (DNS), and whatever aiokafka lets slip: a failed SCRAM
            # exchange surfaces as a bare KeyError from its authenticator
            await self._close_clients()
            raise self.unavailable("cannot connect or authenticate", exc) from exc
        except BaseException:
            await self._close_clients()
            raise

    async def _read_broker_config(self) -> None:
        """``message.max.bytes`` and ``default.replication.factor`` from the broker,
        when it reports them (best effort: defaults otherwise)."""
        admin = self._admin
        assert admin is not None
        try:
            cluster = await admin.describe_cluster()
            node = str(cluster["brokers"][0]["node_id"])
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.BROKER, node)]
            )
        except (KafkaError, LookupError, TypeError, ValueError) as exc:
            log.debug("kafka broker configuration unavailable: %s", self.error_text(exc))
            return
        entries: dict[str, str] = {}
        for response in responses:
            for resource in getattr(response, "resources", ()):
                for entry in resource[4]:
                    if entry[1] is not None:
                        entries[str(entry[0])] = str(entry[1])
        with contextlib.suppress(KeyError, ValueError):
            self._broker_max_bytes = int(entries["message.max.bytes"])
        if self.options.replication_factor is None:
            with contextlib.suppress(KeyError, ValueError):
                self._replication = max(1, int(entries["default.replication.factor"]))

    async def _start_producer(self) -> AIOKafkaProducer:
        wanted = self.options.idempotence
        known = _IDEMPOTENCE.get(self.cluster.bootstrap)
        attempt = wanted if wanted is not None else (known if known is not None else True)
        if attempt:
            producer = self._make_producer(idempotent=True)
            try:
                await producer.start()
            except KafkaError as exc:
                await stop_client(producer, 5.0)
                if not exc.retriable:
                    if wanted:
                        raise ConfigurationError(
                            f"idempotence=True but the broker at {self.where} grants no "
                            f"producer id ({self.error_text(exc)})"
                        ) from exc
                    log.warning(
                        "kafka at %s grants no producer id (%s): idempotence off, "
                        "a producer retry may duplicate a record",
                        self.where,
                        self.error_text(exc),
                    )
                    _IDEMPOTENCE[self.cluster.bootstrap] = False
                else:
                    raise
            except BaseException:
                # connect_timeout or a cancellation mid-start: nothing may outlive it
                await stop_client(producer, 5.0)
                raise
            else:
                _IDEMPOTENCE[self.cluster.bootstrap] = True
                self.idempotent = True
                return producer
        producer = self._make_producer(idempotent=False)
        try:
            await producer.start()
        except BaseException:
            await stop_client(producer, 5.0)
            raise
        return producer

    def _make_producer(self, *, idempotent: bool) -> AIOKafkaProducer:
        limit = max(self._broker_max_bytes, self.options.max_message_bytes or 0)
        return AIOKafkaProducer(
            **self.client_kwargs(
                acks="all",
                enable_idempotence=idempotent,
                linger_ms=self.options.linger_ms,
                max_batch_size=self.options.max_batch_bytes,
                max_request_size=limit + 64 * 1024,
                compression_type=self.options.compression,
                request_timeout_ms=self._request_timeout_ms(),
                retry_backoff_ms=100,
            )
        )

    async def close(self) -> None:
        if self._closed:
            return
        inbox = self._rpc.inbox if self._rpc is not None else None
        with contextlib.suppress(BusError):
            await self._close_inbox()
        await asyncio.gather(*(self._close_subscription(s) for s in list(self._subscriptions)))
        self._closed = True
        if inbox is not None and self._admin is not None and inbox in self._topics:
            with contextlib.suppress(KafkaError, TimeoutError):
                async with asyncio.timeout(5.0):
                    await self._admin.delete_topics([inbox])
        await self._close_clients()
        self._watchdog.close()

    @staticmethod
    async def _close_subscription(sub: BackendSubscription) -> None:
        with contextlib.suppress(BusError):
            await sub.close()

    async def _close_clients(self) -> None:
        clients: list[Any] = [self._producer, self._probe, self._admin]
        self._producer = self._probe = self._admin = None
        # at once: against a broker that stopped answering, close takes one bound,
        # not one per client
        await asyncio.gather(*(self._close_client(c) for c in clients if c is not None))

    async def _close_client(self, client: Any) -> None:
        bound = max(self.options.operation_timeout, 5.0)
        if isinstance(client, AIOKafkaAdminClient):
            with contextlib.suppress(KafkaError, TimeoutError, OSError):
                async with asyncio.timeout(bound):
                    await client.close()
        else:
            await stop_client(client, bound)

    # -- topics --------------------------------------------------------------------
    def _partitions_for_new(self, topic: str) -> int:
        if topic.startswith(_SINGLE_PARTITION_PREFIXES):
            return 1
        return self.options.partitions

    async def ensure_topic(self, topic: str) -> None:
        """Create ``topic`` unless this connection knows it exists (idempotent)."""
        if topic in self._topics:
            return
        async with self._topic_lock:
            if topic in self._topics:
                return
            new = NewTopic(topic, self._partitions_for_new(topic), self._replication)
            response = await self.admin.create_topics([new])
            for name, code, *rest in response.topic_errors:
                if code not in (0, _ERR_TOPIC_EXISTS) and not await self._topic_exists(name):
                    message = rest[0] if rest else None
                    raise PublishError(
                        f"cannot create kafka topic {name!r}: error {code} {message}"
                    )
            self._topics.add(topic)

    async def _existing_inbox(self, topic: str) -> None:
        """A write never creates a reply inbox (its owner's subscription does): a late
        reply would bring back an inbox its owner deleted at close, which nobody would
        ever delete. Raises :class:`_InboxGone` when the broker does not list it, twice
        :data:`_INBOX_RECHECK` s apart (in a cluster a new topic reaches each broker's
        metadata a moment after its creation); broker errors propagate, for the
        write's retries."""
        if topic in self._topics:
            return
        for attempt in range(2):
            if topic in await self.admin.list_topics():
                self._topics.add(topic)
                return
            if attempt == 0:
                await asyncio.sleep(_INBOX_RECHECK)
        raise _InboxGone(f"the inbox {topic!r} does not exist (its requester closed)")

    async def _topic_exists(self, topic: str) -> bool:
        with contextlib.suppress(KafkaError):
            return topic in await self.admin.list_topics()
        return False

    async def delete_topic(self, topic: str, groups: Sequence[str] = ()) -> bool:
        """Delete the Kafka topic, then its consumer groups (``<topic>:<group>``: those
        the broker lists and those of ``groups``) with their committed offsets, so a
        group declared again on a topic of the same name starts afresh."""
        what = f"delete topic {topic!r}"
        try:
            async with asyncio.timeout(self.options.operation_timeout):
                response = await self.admin.delete_topics([topic])
                for name, code, *_ in response.topic_error_codes:
                    if code not in (0, _ERR_UNKNOWN_TOPIC):
                        raise BusError(
                            f"kafka at {self.where} refused to {what}: error {code} ({name})"
                        )
                self._topics.discard(topic)
                listed = await self.admin.list_consumer_groups()
                prefix = group_id(topic, "")
                ids = {str(g[0]) for g in listed if str(g[0]).startswith(prefix)}
                ids.update(group_id(topic, g) for g in groups)
                await self._delete_groups(sorted(ids))
        except (KafkaError, TimeoutError) as exc:
            raise self.unavailable(what, exc) from exc
        return True

    async def _delete_groups(self, ids: Sequence[str]) -> None:
        # aiokafka's admin client has no delete_consumer_groups: DeleteGroups (API 42)
        # goes to each group's coordinator through the client's request path.
        by_node: dict[int, list[str]] = {}
        for gid in ids:
            by_node.setdefault(await self.admin.find_coordinator(gid), []).append(gid)
        for node, names in by_node.items():
            response = await self.admin._send_request_to_node(node, DeleteGroupsRequest(names))
            for name, code in response.results:
                if code not in (0, _ERR_GROUP_NOT_FOUND):
                    raise BusError(
                        f"kafka at {self.where} refused to delete consumer group {name!r}: "
                        f"error {code}"
                    )

    def forget_topic(self, topic: str) -> None:
        """After an error suggesting the topic vanished (broker restart): create it
        again before the next write."""
        self._topics.discard(topic)

    async def partitions(self, topic: str) -> list[TopicPartition]:
        """Every partition of ``topic`` (which exists)."""
        described = await self.admin.describe_topics([topic])
        for entry in described:
            if entry.get("topic") == topic and not entry.get("error_code"):
                parts = sorted(p["partition"] for p in entry.get("partitions", ()))
                if parts:
                    return [TopicPartition(topic, p) for p in parts]
        raise BrokerUnavailable(f"kafka at {self.where} reports no partitions for {topic!r}")

    # -- offsets ---------------------------------------------------------------------
    async def log_ends(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The offset the next record of each partition will get.

        ListOffsets(latest) alone is not enough: Tansu 0.6 answers the last *batch*'s
        base offset + 1, which is below the end when that batch holds several records.
        The high watermark of a fetch response is right on every broker, so one fetch
        from the reported end confirms (or raises) it.
        """
        if not tps:
            return {}
        probe = self._probe
        if probe is None:
            raise BusClosed(f"{self!r} is not connected")
        async with self._probe_lock:
            reported: dict[TopicPartition, int] = await probe.end_offsets(list(tps))
            probe.assign(list(tps))
            try:
                for tp in tps:
                    probe.seek(tp, reported[tp])
                ends: dict[TopicPartition, int] = {}
                while len(ends) < len(tps):
                    waiting = [tp for tp in tps if tp not in ends]
                    await probe.getmany(*waiting, timeout_ms=50)
                    for tp in waiting:
                        high = probe.highwater(tp)
                        if high is not None:
                            ends[tp] = max(high, reported[tp])
                return ends
            finally:
                probe.unsubscribe()

    async def log_starts(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        probe = self._probe
        if probe is None:
            raise BusClosed(f"{self!r} is not connected")
        async with self._probe_lock:
            starts: dict[TopicPartition, int] = await probe.beginning_offsets(list(tps))
            return starts

    async def init_group_offsets(self, topic: str, group: str, start: Start) -> None:
        """Commit a start offset for every partition of ``topic`` on which the Kafka
        group of ``group`` has none: the log end (``latest``, so the group keeps what
        is published from now on, with or without members) or the log start
        (``earliest``). Partitions that already have an offset keep it."""
        gid = group_id(topic, group)
        tps = await self.partitions(topic)
        committed = await self.admin.list_consumer_group_offsets(gid, partitions=tps)
        missing = [tp for tp in tps if getattr(committed.get(tp), "offset", -1) < 0]
        if not missing:
            return
        if start == "earliest":
            targets = await self.log_starts(missing)
        else:
            targets = await self.log_ends(missing)
        committer = AIOKafkaConsumer(
            **self.client_kwargs(
                group_id=gid,
                enable_auto_commit=False,
                request_timeout_ms=self._request_timeout_ms(),
            )
        )
        try:
            await committer.start()
            committer.assign(missing)
            await committer.commit({tp: targets[tp] for tp in missing})
        except (CommitFailedError, IllegalStateError) as exc:
            # an active group refuses a commit from outside: its members own the offsets
            log.debug("group %s already active, start offsets left to it: %s", gid, exc)
        finally:
            await stop_client(committer, self.options.operation_timeout)

    # -- producing -------------------------------------------------------------------
    async def publish(self, messages: Sequence[Message], *, delay: float | None = None) -> None:
        self._check_open()
        if not messages:
            return
        topic = messages[0].topic
        extra = {NOT_BEFORE: str(int((time.time() + delay) * 1000))} if delay else None
        records = [
            Outgoing(
                value=m.data,
                key=m.key.encode() if m.key is not None else None,
                headers=encode_headers(m, extra),
            )
            for m in messages
        ]
        await self.send(topic, records, self.options.operation_timeout)

    async def send(self, topic: str, records: Sequence[Outgoing], timeout: float) -> None:
        """Write ``records`` to ``topic``; return once the broker confirmed all (acks=all).

        Retriable failures (a broker restarting, a leader moving, a topic that vanished
        with a memory-only broker) are retried until ``timeout`` seconds have passed,
        re-sending only what was not confirmed. Raises :class:`bus.PublishError`.
        """
        deadline = time.monotonic() + timeout
        pending = list(records)
        last: BaseException | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                detail = f": {self.error_text(last)}" if last is not None else ""
                raise PublishError(
                    f"{len(pending)} of {len(records)} records to {topic!r} not confirmed "
                    f"by kafka at {self.where} within {timeout}s{detail}"
                )
            try:
                results = await self._watchdog.bound(self._send_once(topic, pending), remaining)
            except TimeoutError:
                continue  # reported at the top of the loop
            except BusError:
                raise
            except KafkaError as exc:
                if not exc.retriable:
                    raise PublishError(
                        f"kafka at {self.where} refused a write to {topic!r}: "
                        f"{self.error_text(exc)}"
                    ) from exc
                last = exc
                results = [exc] * len(pending)
            except Exception as exc:  # anything else the driver raises, translated
                raise PublishError(
                    f"write to {topic!r} at {self.where} failed: {self.error_text(exc)}"
                ) from exc
            failed = [(r, e) for r, e in zip(pending, results, strict=True) if e is not None]
            if not failed:
                return
            for _, error in failed:
                if isinstance(error, KafkaError) and not error.retriable:
                    raise PublishError(
                        f"kafka at {self.where} refused a write to {topic!r}: "
                        f"{self.error_text(error)}"
                    ) from error
            last = failed[0][1]
            log.debug("kafka write to %r failed, retrying: %s", topic, self.error_text(last))
            pending = [
                Outgoing(r.value, r.key, r.headers, None)  # the partition may be gone
                if r.partition is not None and _partition_gone(e)
                else r
                for r, e in failed
            ]
            self.forget_topic(topic)
            await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    async def reply(self, message: Message) -> None:
        """Send a reply to its requester's inbox; a reply whose inbox is gone (the
        requester closed, deleting it) is dropped with a log line, as a broker with
        native replies drops one for a requester that left."""
        try:
            await super().reply(message)
        except _InboxGone as exc:
            log.info("kafka reply %s dropped: %s", message.id, exc)
        except PublishError:
            # A write to an inbox this connection knew, deleted since, fails as the
            # broker sees fit (Tansu: UnknownError, not retriable). If the inbox is
            # gone, the reply is dropped like one to an inbox never seen; if it still
            # exists, the write's error stands.
            if not message.topic.startswith(_INBOX_PREFIX):
                raise
            self.forget_topic(message.topic)
            try:
                await self._existing_inbox(message.topic)
            except _InboxGone as exc:
                log.info("kafka reply %s dropped: %s", message.id, exc)
                return
            except (KafkaError, TimeoutError, OSError):
                pass  # the broker cannot say: the write's error stands
            raise

    async def _send_once(
        self, topic: str, records: Sequence[Outgoing]
    ) -> list[BaseException | None]:
        if topic.startswith(_INBOX_PREFIX):
            await self._existing_inbox(topic)
        else:
            await self.ensure_topic(topic)
        producer = self.producer
        if len(records) > 1:
            return await send_batches(producer, topic, records)
        futures = [
            await producer.send(topic, r.value, key=r.key, partition=r.partition, headers=r.headers)
            for r in records
        ]
        # awaiting each future in turn (they complete in send order per partition)
        # costs fewer event-loop rounds than gather(), which matters for one record
        out: list[BaseException | None] = []
        for future in futures:
            try:
                await future
            except KafkaError as exc:
                out.append(exc)
            else:
                out.append(None)
        return out

    async def declare(self, topic: str, groups: Sequence[str]) -> None:
        self._check_open()
        try:
            async with asyncio.timeout(self.options.operation_timeout):
                await self.ensure_topic(topic)
                for group in groups:
                    await self.init_group_offsets(topic, group, "latest")
        except TimeoutError:
            raise self.unavailable(
                f"declare of {topic!r} not done within {self.options.operation_timeout}s"
            ) from None
        except BusError:
            raise
        except Exception as exc:
            raise self.unavailable(f"declare of {topic!r} failed", exc) from exc

    # -- consuming -------------------------------------------------------------------
    async def subscribe(
        self, topic: str, *, group: str | None, start: Start, prefetch: int
    ) -> BackendSubscription:
        from .subscription import BroadcastSubscription, GroupSubscription

        self._check_open()
        sub: BroadcastSubscription | GroupSubscription | None = None
        try:
            async with asyncio.timeout(self.options.operation_timeout):
                await self.ensure_topic(topic)
                if group is None:
                    sub = BroadcastSubscription(self, topic, prefetch)
                    await sub.start(start)
                else:
                    await self.init_group_offsets(topic, group, start)
                    sub = GroupSubscription(self, topic, group, prefetch)
                    await sub.start()
        except BaseException as exc:
            if sub is not None:
                with contextlib.suppress(BusError, KafkaError, TimeoutError):
                    await sub.abort()
            if isinstance(exc, TimeoutError):
                raise self.unavailable(
                    f"subscribe to {topic!r} not live within {self.options.operation_timeout}s"
                ) from None
            if isinstance(exc, Exception) and not isinstance(exc, BusError):
                raise self.unavailable(f"subscribe to {topic!r} failed", exc) from exc
            raise
        self._subscriptions.add(sub)
        return sub

    async def leave_group(self, node: int, gid: str, member: str) -> None:
        """Send LeaveGroup for ``member`` (best effort; see GroupSubscription._leave)."""
        from aiokafka.protocol.group import LeaveGroupRequest

        client = getattr(self._admin, "_client", None)
        if client is None:
            return
        with contextlib.suppress(KafkaError, TimeoutError, OSError):
            async with asyncio.timeout(5.0):
                await client.send(node, LeaveGroupRequest(gid, member))

    def forget_subscription(self, sub: BackendSubscription) -> None:
        self._subscriptions.discard(sub)

    def subscriptions(self) -> Iterable[BackendSubscription]:
        return tuple(self._subscriptions)


def _partition_gone(error: BaseException | None) -> bool:
    name = type(error).__name__
    return name in ("UnknownTopicOrPartitionError", "KafkaTimeoutError")
