"""Consumers: a group member with per-message settlement over offsets, and broadcast.

Settlement model (group). A consumer pulls records in offset order per partition and
keeps every record it pulled and has not settled as *pending* (handed out, re-queued
by ``nack()``, or held until its ``bus-not-before``). What is committed for a
partition is the contiguous settled prefix: the smallest pending offset, or the next
offset to pull when nothing is pending. A later ack therefore never commits past an
un-acked record, and a crash redelivers from the first unsettled record. Commits are
coalesced: one OffsetCommit for every partition that moved, sent before the next
fetch returns, every ``commit_interval_ms``, on a rebalance and at close.

Handing a partition back (rebalance revoke, close): on a rebalance, deliveries already
handed out from the partitions being taken away first get ``revoke_grace_ms`` to be
settled (nothing more is handed out from them meanwhile). Then the records handed out
or held and not settled are written again to the same partition as copies with
``bus-attempt`` (next attempt) and ``bus-group`` headers; once the broker confirmed
the copies the consumer commits past everything it pulled. So nothing acked is
delivered again, nothing un-acked is lost, and the next member sees the right
attempt number. The copies land at the end of the partition (per-key order is not
kept for them). A settle call arriving after its partition was revoked is ignored:
the copy is delivered again (at-least-once). A member that lost its membership (its
session expired) commits nothing and writes nothing: the partitions' new owner reads
from the last commit. A consumer killed outright cannot write copies: the next
owner reads from its last commit, so the redelivery window is every record from the
first unsettled one (plus the acks of the last ``commit_interval_ms``); those
records arrive with attempt 1 because no count survived the process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    ConsumerStoppedError,
    IllegalStateError,
    KafkaError,
)

from bus.backend import BackendSubscription, Start
from bus.delivery import Delivery
from bus.errors import BusError
from bus.message import Message

from .backend import group_id
from .records import ATTEMPT, GROUP, NOT_BEFORE, ORIGIN, PREFIX, to_message
from .teardown import stop_client
from .writes import Outgoing

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from .backend import KafkaBackend

__all__ = ["BroadcastSubscription", "GroupSubscription"]

_ID = PREFIX + "id"

log = logging.getLogger(__name__)

#: Longest single wait inside fetch(): bounds how late close() and due delays are seen.
_SLICE = 0.1
# How far past a fetch's deadline a getmany may run before it is cut short.
_GETMANY_SLACK = 0.05
#: Delayed records (``bus-not-before`` in the future) a consumer holds in memory at
#: most; beyond that it stops pulling until the earliest is due.
_MAX_HELD = 10_000
#: Deliveries one fetch() builds at most (fewer than the consumer may hold: the caller
#: fetches again when it has handed them out). A pulled record costs one object until
#: it is handed out; a delivery costs four more (message, its decoder, the decoder's
#: arguments, the Delivery). Built 256 at a time they outnumbered the cyclic GC's
#: young-generation threshold (700 net allocations) on every fetch, and each
#: collection promoted the live batch towards the full collections: 60,000 records
#: drained with receive() + ack() took 428 young / 38 middle / 4 full collections and
#: ran at 130k msg/s; built 32 at a time, 10 / 0 / 0 and 157k msg/s.
_HAND_OUT = 32
#: How long a rebalance may spend writing redelivery copies before giving up on them
#: (it then commits only the settled prefix: the next owner re-reads the rest).
_HANDBACK_TIMEOUT = 10.0


@dataclass(eq=False, slots=True)
class Pending:
    """A pulled record this consumer has not settled."""

    tp: TopicPartition
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    """As pulled (a redelivery copy carries them on)."""
    timestamp: int
    attempt: int
    """Attempt number of the next delivery."""
    message: Message | None = None
    """Built when first handed out (see ``_take``)."""
    deliveries: int = 0
    """Deliveries made by this consumer."""
    due: float = 0.0
    """Unix time before which it is not delivered (0: never held; kept once it falls
    due)."""
    out: bool = False
    """Handed to the user and not settled."""
    live: bool = True
    """False once its partition was revoked (or its log lost): settling is a no-op."""

    def copy(self, group: str | None, *, not_before_ms: int | None = None) -> Outgoing:
        """A redelivery copy of this record for ``group`` (same partition)."""
        headers = [(k, v) for k, v in self.headers if k not in (ATTEMPT, GROUP)]
        headers.append((ATTEMPT, str(self.attempt).encode()))
        if not any(k in (_ID, ORIGIN) for k, _ in headers):
            # a foreign record's id comes from its position, which the copy does not
            # share: carry it, so the copy is the same message to a deduplicating reader
            origin = f"kafka:{self.tp.topic}/{self.tp.partition}/{self.offset}"
            headers.append((ORIGIN, origin.encode()))
        if group is not None:
            headers.append((GROUP, group.encode()))
        if not_before_ms is not None:
            headers = [(k, v) for k, v in headers if k != NOT_BEFORE]
            headers.append((NOT_BEFORE, str(not_before_ms).encode()))
        return Outgoing(self.value, self.key, headers, self.tp.partition)


@dataclass(eq=False, slots=True)
class PartitionState:
    """Settlement bookkeeping of one assigned partition (group)."""

    pending: dict[int, Pending] = field(default_factory=dict)
    next: int | None = None
    """Offset after the last record pulled (None: nothing pulled yet)."""
    committed: int | None = None
    """Last offset this consumer committed."""

    def commit_point(self) -> int | None:
        if self.next is None:
            return None
        return min(self.pending) if self.pending else self.next


class _KafkaSubscription(BackendSubscription):
    """What group and broadcast consumers share: the ready queue, delayed records,
    the prefetch bound, fetch() and the log-loss check."""

    backend: KafkaBackend

    def __init__(self, backend: KafkaBackend, topic: str, group: str | None, prefetch: int) -> None:
        super().__init__(backend, topic, group)
        self.prefetch = prefetch
        self.consumer: AIOKafkaConsumer | None = None
        self._ready: collections.deque[Pending] = collections.deque()
        self._held: list[tuple[float, int, Pending]] = []
        self._seq = itertools.count()
        self._out = 0
        self._closed = False
        self._wake = asyncio.Event()
        self._beyond_end: dict[TopicPartition, float] = {}
        self._last_loss_check = 0.0
        self._revoking: set[TopicPartition] = set()
        self._settle = asyncio.Event()

    def _consumer_kwargs(self, **extra: Any) -> dict[str, Any]:
        options = self.backend.options
        return self.backend.client_kwargs(
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=options.fetch_max_wait_ms,
            max_partition_fetch_bytes=self.backend.fetch_bytes,
            request_timeout_ms=int(max(options.operation_timeout, 1.0) * 1000),
            retry_backoff_ms=100,
            # notice partitions added (or a topic re-created by a restarted memory-only
            # broker) within 30 s rather than the client default of 5 minutes
            metadata_max_age_ms=30_000,
            **extra,
        )

    # -- hooks ---------------------------------------------------------------------
    def _accepts(self, tp: TopicPartition) -> bool:
        raise NotImplementedError

    def _fresh(self, tp: TopicPartition) -> int:
        """The lowest offset of ``tp`` to take: records below it are stale."""
        raise NotImplementedError

    def _registry(self, tp: TopicPartition) -> dict[int, Pending] | None:
        """Where the unsettled records of ``tp`` are registered by offset (None: not
        tracked, nothing is committed)."""
        return None

    def _keep(self, tp: TopicPartition, offset: int, group: str | None) -> bool:
        """Whether a pulled record is for this consumer (else it counts as settled);
        ``group`` is its ``bus-group`` header (redelivery copies are for one group)."""
        raise NotImplementedError

    def _pulled(self, tp: TopicPartition, end: int) -> None:
        """The records of ``tp`` before offset ``end`` were pulled."""

    def _settled(self, record: Pending) -> None:
        """A pending record was settled."""

    async def _before_fetch(self) -> None:
        """Flush settlements (group)."""

    def _reset_partition(self, tp: TopicPartition) -> None:
        """Forget the state of ``tp`` (its log was lost)."""

    # -- fetching ------------------------------------------------------------------
    async def fetch(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        if self._closed:
            return ()
        await self._before_fetch()
        consumer = self.consumer
        assert consumer is not None
        deadline = time.monotonic() + timeout
        while not self._closed:
            self._release_due()
            room = min(max_messages, self.prefetch - self._out)
            if room > 0:
                batch = self._take(min(room, _HAND_OUT))
                if batch:
                    return batch
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            wait = min(remaining, _SLICE)
            if self._held:
                wait = max(0.0, min(wait, self._held[0][0] - time.time()))
            if room <= 0 or len(self._held) >= _MAX_HELD:
                # the user holds `prefetch` deliveries, or too many delayed records
                # wait in memory: pull nothing more until one is settled or due
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                continue
            try:
                # aiokafka waits for a partition assignment inside getmany whatever
                # timeout_ms says (a rebalance that does not finish held receive() far
                # past its timeout): the caller's deadline bounds it here
                async with asyncio.timeout(remaining + _GETMANY_SLACK):
                    records = await consumer.getmany(timeout_ms=int(wait * 1000), max_records=room)
            except TimeoutError:
                break
            except (ConsumerStoppedError, IllegalStateError):
                break  # closed while waiting
            except Exception as exc:
                raise self.backend.unavailable(f"fetch from {self.topic!r} failed", exc) from exc
            if self._closed:
                break  # what was pulled is re-read by the next owner (not committed)
            self._ingest(records)
            await self._check_log_loss()
        return ()

    def _ingest(self, records: Mapping[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        # Runs once per pulled record; the message is decoded when the handler reads
        # it. This library writes its bookkeeping headers (bus-group, bus-attempt,
        # bus-not-before) only on redelivery copies, after every other header, and
        # user headers cannot start with bus-: a record whose last header does not
        # is a first delivery for every consumer, due now.
        # The partition's bookkeeping is looked up once per batch, not per record.
        ready = self._ready
        for tp, batch in records.items():
            if not batch or not self._accepts(tp):
                continue
            low = self._fresh(tp)
            registry = self._registry(tp)
            for rec in batch:
                offset = rec.offset
                if offset < low:
                    continue
                raw = rec.headers or ()
                if raw and raw[-1][0].startswith("bus-"):
                    self._ingest_marked(tp, rec, raw)
                    continue
                pending = Pending(tp, offset, rec.key, rec.value, raw, rec.timestamp, 1)
                if registry is not None:
                    registry[offset] = pending
                ready.append(pending)
            self._pulled(tp, batch[-1].offset + 1)

    def _ingest_marked(
        self, tp: TopicPartition, rec: ConsumerRecord[Any, Any], raw: Sequence[tuple[str, bytes]]
    ) -> None:
        """A pulled record that carries bookkeeping headers (a redelivery copy)."""
        found = dict(raw)
        target = found.get(GROUP)
        group = None if target is None else target.decode("utf-8", "replace")
        offset = rec.offset
        if not self._keep(tp, offset, group):
            return
        pending = Pending(
            tp, offset, rec.key, rec.value, raw, rec.timestamp, _attempt(found.get(ATTEMPT))
        )
        registry = self._registry(tp)
        if registry is not None:
            registry[offset] = pending
        due = _not_before(found.get(NOT_BEFORE))
        if due > time.time():
            pending.due = due
            heapq.heappush(self._held, (due, next(self._seq), pending))
        else:
            self._ready.append(pending)

    def _release_due(self) -> None:
        now = time.time()
        while self._held and self._held[0][0] <= now:
            _, _, pending = heapq.heappop(self._held)
            if pending.live:
                # ``due`` stays set: hand_back copies a record that was held (the
                # next owner would otherwise re-read the log from it, records acked
                # after it included)
                self._ready.append(pending)

    def _take(self, room: int) -> list[Delivery]:
        out: list[Delivery] = []
        kept: list[Pending] = []
        while self._ready and len(out) < room:
            pending = self._ready.popleft()
            if not pending.live:
                continue
            if pending.tp in self._revoking:
                kept.append(pending)  # its partition is being handed back
                continue
            message = pending.message
            if message is None:
                tp = pending.tp
                message = pending.message = to_message(
                    tp.topic,
                    tp.partition,
                    pending.offset,
                    pending.key,
                    pending.value,
                    pending.timestamp,
                    pending.headers,
                )
            pending.out = True
            pending.deliveries += 1
            self._out += 1
            out.append(Delivery(self, message, pending.attempt, pending))
            pending.attempt += 1
        self._ready.extendleft(reversed(kept))
        return out

    async def _check_log_loss(self) -> None:
        """Emulate OFFSET_OUT_OF_RANGE: a fetch position that stays above the log end
        means the broker lost the log (a memory-only broker restarted); read the new
        log from its start instead of waiting for it to reach the old position."""
        limit_ms = self.backend.options.log_loss_check_ms
        now = time.monotonic()
        if limit_ms is None or now - self._last_loss_check < 0.5:
            return
        self._last_loss_check = now
        consumer = self.consumer
        assert consumer is not None
        for tp in list(consumer.assignment()):
            try:
                high = consumer.highwater(tp)
                if high is None:
                    continue
                position = await asyncio.wait_for(consumer.position(tp), 0.2)
            except (KafkaError, AssertionError, TimeoutError):
                continue
            if position <= high:
                self._beyond_end.pop(tp, None)
                continue
            since = self._beyond_end.setdefault(tp, now)
            if (now - since) * 1000 < limit_ms:
                continue
            log.warning(
                "kafka %s[%d]: position %d stays beyond the log end %d; the broker lost "
                "this log (restart of a memory-only broker?): reading it from the start",
                tp.topic,
                tp.partition,
                position,
                high,
            )
            self._beyond_end.pop(tp, None)
            self._reset_partition(tp)
            with contextlib.suppress(KafkaError, IllegalStateError):
                await consumer.seek_to_beginning(tp)

    def _drop(self, records: Iterable[Pending]) -> None:
        """Make ``records`` dead: out of the ready queue and the prefetch count."""
        dead = False
        for pending in records:
            pending.live = False
            dead = True
            if pending.out:
                pending.out = False
                self._out -= 1
        if dead:
            self._ready = collections.deque(p for p in self._ready if p.live)
            self._wake.set()

    # -- settling ------------------------------------------------------------------
    def _claim(self, delivery: Delivery) -> Pending | None:
        """The delivery's record if it is still ours to settle (else None: revoked)."""
        pending: Pending = delivery.handle
        if not pending.live or not pending.out:
            return None
        pending.out = False
        self._out -= 1
        self._wake.set()
        self._settle.set()
        return pending

    async def ack(self, delivery: Delivery) -> None:
        pending = self._claim(delivery)
        if pending is not None:
            self._settled(pending)

    def _requeue(self, pending: Pending, delay: float | None) -> None:
        if delay:
            pending.due = time.time() + delay
            heapq.heappush(self._held, (pending.due, next(self._seq), pending))
        else:
            self._ready.append(pending)

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        pending = self._claim(delivery)
        if pending is not None:
            self._requeue(pending, delay)

    @property
    def closed(self) -> bool:
        return self._closed

    async def abort(self) -> None:
        """Stop the consumer of a subscription that never became live."""
        self._closed = True
        if self.consumer is not None:
            await stop_client(self.consumer, self.backend.options.operation_timeout)


class BroadcastSubscription(_KafkaSubscription):
    """``group=None``: a consumer without group, assigned every partition.

    It starts at the log ends read when it subscribes (confirmed by a fetch's high
    watermark, see :meth:`KafkaBackend.log_ends`), so a record published after
    ``subscribe`` returns is delivered and one published before is not; with
    ``start="earliest"`` at the log start. Nothing is committed: acks only free
    prefetch room, ``nack()`` re-queues locally, ``nack(delay)`` holds locally.
    Partitions added to the topic later are not read.
    """

    def __init__(self, backend: KafkaBackend, topic: str, prefetch: int) -> None:
        super().__init__(backend, topic, None, prefetch)
        self._start: dict[TopicPartition, int] = {}

    async def start(self, start: Start) -> None:
        tps = await self.backend.partitions(self.topic)
        consumer = self.consumer = AIOKafkaConsumer(**self._consumer_kwargs(group_id=None))
        await consumer.start()
        consumer.assign(tps)
        if start == "earliest":
            await consumer.seek_to_beginning(*tps)
            self._start = dict.fromkeys(tps, 0)
            return
        reported: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, reported[tp])
        early: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        starts: dict[TopicPartition, int] = {}
        while len(starts) < len(tps):
            waiting = [tp for tp in tps if tp not in starts]
            got = await consumer.getmany(*waiting, timeout_ms=50)
            for tp, batch in got.items():
                early.setdefault(tp, []).extend(batch)
            for tp in waiting:
                high = consumer.highwater(tp)
                if high is not None:
                    starts[tp] = max(high, reported[tp])
        self._start = starts
        self._ingest(early)  # keeps only records at or after the start offsets

    def _accepts(self, tp: TopicPartition) -> bool:
        return True

    def _fresh(self, tp: TopicPartition) -> int:
        return self._start.get(tp, 0)  # records before the start offsets are not ours

    def _keep(self, tp: TopicPartition, offset: int, group: str | None) -> bool:
        return group is None  # redelivery copies are for their group only

    def _reset_partition(self, tp: TopicPartition) -> None:
        self._start[tp] = 0
        self._drop([p for p in self._ready if p.tp == tp])
        self._drop([p for _, _, p in self._held if p.tp == tp])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._drop(list(self._ready))
        self._held.clear()
        if self.consumer is not None:
            await stop_client(self.consumer, self.backend.options.operation_timeout)
        self.backend.forget_subscription(self)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sub: GroupSubscription) -> None:
        self._sub = sub

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._sub.hand_back(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._sub.assigned(set(assigned))


class GroupSubscription(_KafkaSubscription):
    """A member of the Kafka consumer group ``<topic>:<group>`` (see the module
    docstring for settlement, hand-back and the redelivery window)."""

    group: str

    def __init__(self, backend: KafkaBackend, topic: str, group: str, prefetch: int) -> None:
        super().__init__(backend, topic, group, prefetch)
        self.group_id = group_id(topic, group)
        self._states: dict[TopicPartition, PartitionState] = {}
        self._dirty: set[TopicPartition] = set()
        self._dirty_event = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._joined = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._committing: asyncio.Task[None] | None = None
        self._commit_failures = 0
        self._commit_retry_at = 0.0
        self.commits = 0
        """OffsetCommit requests sent (for tests and introspection)."""

    async def start(self) -> None:
        options = self.backend.options
        consumer = self.consumer = AIOKafkaConsumer(
            **self._consumer_kwargs(
                group_id=self.group_id,
                session_timeout_ms=options.session_timeout_ms,
                heartbeat_interval_ms=options.heartbeat_interval_ms,
                rebalance_timeout_ms=options.rebalance_timeout_ms,
                max_poll_interval_ms=options.max_poll_interval_ms,
            )
        )
        await consumer.start()
        consumer.subscribe([self.topic], listener=_Listener(self))
        self._flusher = asyncio.create_task(
            self._flush_loop(), name=f"bus-kafka-commit-{self.topic}"
        )
        # The group's start offsets were committed before joining, so nothing published
        # from now on can be missed; waiting for the first assignment makes the member
        # ready to deliver when subscribe returns (Tansu holds a join ~session/2).
        join_wait = options.session_timeout_ms / 1000 * 2 + 5
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(join_wait, options.operation_timeout)):
                await self._joined.wait()

    # -- rebalance -------------------------------------------------------------------
    def assigned(self, tps: set[TopicPartition]) -> None:
        log.debug("kafka group %s: assigned %s", self.group_id, sorted(tps))
        for tp in tps:
            self._states.setdefault(tp, PartitionState())
        self._joined.set()

    def _membership_lost(self) -> bool:
        # aiokafka resets member_id to "" when the coordinator no longer knows this
        # member (session expired, broker restarted): it must not commit, because its
        # partitions may already be read by another member (or, on a restarted
        # memory-only broker, the offsets would point into a log that no longer exists).
        coordinator = getattr(self.consumer, "_coordinator", None)
        return getattr(coordinator, "member_id", None) == ""

    async def hand_back(self, tps: set[TopicPartition]) -> None:
        """Give ``tps`` back to the group: copies of what is unsettled, then a commit
        past everything pulled (see the module docstring)."""
        log.debug("kafka group %s: revoked %s", self.group_id, sorted(tps))
        await self._grace(tps)
        async with self._commit_lock:
            states = {tp: self._states.pop(tp) for tp in tps if tp in self._states}
            self._revoking -= tps
            self._dirty -= tps
            if not states:
                return
            records = [p for st in states.values() for p in st.pending.values()]
            self._drop(records)
            if self._membership_lost():
                log.info(
                    "kafka group %s: membership lost, %d unsettled records left to the "
                    "next owner of their partitions",
                    self.group_id,
                    len(records),
                )
                return
            offsets: dict[TopicPartition, int] = {}
            copies: list[Outgoing] = []
            for tp, st in states.items():
                if st.next is None:
                    continue
                # records never handed out nor held are simply re-read by the next
                # owner: commit up to the first of them, copy what lies before
                fresh = [o for o, p in st.pending.items() if p.deliveries == 0 and not p.due]
                boundary = min(fresh) if fresh else st.next
                copies += [p.copy(self.group) for o, p in st.pending.items() if o < boundary]
                offsets[tp] = boundary
            if copies:
                try:
                    timeout = min(self.backend.options.operation_timeout, _HANDBACK_TIMEOUT)
                    await self.backend.send(self.topic, copies, timeout)
                except BusError as exc:
                    log.warning(
                        "kafka group %s: could not write %d redelivery copies (%s); "
                        "committing the settled prefix only",
                        self.group_id,
                        len(copies),
                        exc,
                    )
                    offsets = {
                        tp: point
                        for tp, st in states.items()
                        if (point := st.commit_point()) is not None
                    }
            offsets = {
                tp: o
                for tp, o in offsets.items()
                if states[tp].committed is None or o > (states[tp].committed or 0)
            }
            await self._commit(offsets)

    async def _grace(self, tps: set[TopicPartition]) -> None:
        """Before a rebalance takes ``tps`` away, give the deliveries already handed
        out from them up to ``revoke_grace_ms`` to be settled (their acks are then
        committed instead of ignored, which would deliver them again). Nothing more
        is handed out or pulled from these partitions meanwhile."""
        options = self.backend.options
        rebalance_ms = options.rebalance_timeout_ms or options.session_timeout_ms
        grace = min(options.revoke_grace_ms, rebalance_ms // 2) / 1000
        if self._closed or grace <= 0 or self._membership_lost():
            return

        def held() -> bool:
            return any(
                p.out for tp in tps if (st := self._states.get(tp)) for p in st.pending.values()
            )

        self._revoking |= tps
        deadline = time.monotonic() + grace
        while held() and not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._settle.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._settle.wait()

    async def _commit(self, offsets: dict[TopicPartition, int]) -> bool:
        if not offsets or self.consumer is None:
            return True
        try:
            # bounded: aiokafka retries a retriable commit error forever, and a stuck
            # commit must not stall fetching (the offsets stay dirty and are retried)
            async with asyncio.timeout(min(self.backend.options.operation_timeout, 2.0)):
                self.commits += 1
                await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            log.debug("kafka group %s: commit refused after a rebalance: %s", self.group_id, exc)
            return True  # the partitions moved on; their state is dropped
        except (KafkaError, TimeoutError) as exc:
            self._commit_failures += 1
            backoff = min(0.5 * 2 ** (self._commit_failures - 1), 5.0)
            self._commit_retry_at = time.monotonic() + backoff
            log.warning(
                "kafka group %s: commit failed (%s); retrying in %.1fs",
                self.group_id,
                self.backend.error_text(exc) if str(exc) else type(exc).__name__,
                backoff,
            )
            return False
        self._commit_failures = 0
        self._commit_retry_at = 0.0
        return True

    # -- settlement ------------------------------------------------------------------
    def _accepts(self, tp: TopicPartition) -> bool:
        return tp in self._states and tp not in self._revoking

    def _fresh(self, tp: TopicPartition) -> int:
        # below: pulled before a rebalance gave the partition back to us
        return self._states[tp].next or 0

    def _registry(self, tp: TopicPartition) -> dict[int, Pending] | None:
        return self._states[tp].pending

    def _pulled(self, tp: TopicPartition, end: int) -> None:
        state = self._states[tp]
        if state.next is None or end > state.next:
            state.next = end
        self._mark(tp)  # the commit point may have moved

    def _keep(self, tp: TopicPartition, offset: int, group: str | None) -> bool:
        return group is None or group == self.group

    def _settled(self, record: Pending) -> None:
        state = self._states.get(record.tp)
        if state is not None and state.pending.pop(record.offset, None) is not None:
            self._mark(record.tp)

    def _mark(self, tp: TopicPartition) -> None:
        self._dirty.add(tp)
        self._dirty_event.set()

    def _reset_partition(self, tp: TopicPartition) -> None:
        state = self._states.get(tp)
        if state is not None:
            self._drop(list(state.pending.values()))
            self._states[tp] = PartitionState()
        self._dirty.discard(tp)

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        if not delay:
            await super().nack(delivery, None)
            return
        pending: Pending = delivery.handle
        if not pending.live or not pending.out:
            return
        # a durable copy that no member delivers before it is due, then settle this one
        not_before = int((time.time() + delay) * 1000)
        try:
            await self.backend.send(
                self.topic,
                [pending.copy(self.group, not_before_ms=not_before)],
                self.backend.options.operation_timeout,
            )
        except BusError as exc:
            log.warning(
                "kafka group %s: delayed redelivery copy not written (%s); holding the "
                "record in this consumer instead",
                self.group_id,
                exc,
            )
            await super().nack(delivery, delay)
            return
        await self.ack(delivery)

    async def _before_fetch(self) -> None:
        # Commit what was settled since the last fetch alongside this fetch rather
        # than before it: the commit's round trip overlaps the fetch's (one commit in
        # flight at a time; close() waits for it). Same commits as awaiting it here.
        if (
            self._dirty
            and time.monotonic() >= self._commit_retry_at
            and (self._committing is None or self._committing.done())
        ):
            self._committing = asyncio.get_running_loop().create_task(self._commit_in_background())

    async def _commit_in_background(self) -> None:
        try:
            await self.flush()
        except Exception:  # the next fetch or the commit loop tries again
            log.exception("kafka group %s: commit error", self.group_id)

    async def flush(self) -> None:
        """Commit the settled prefix of every partition that moved."""
        async with self._commit_lock:
            self._dirty_event.clear()
            if not self._dirty:
                return
            if self._membership_lost():
                return  # rejoining: the hand-back / next assignment decides
            offsets: dict[TopicPartition, int] = {}
            for tp in self._dirty:
                state = self._states.get(tp)
                point = state.commit_point() if state is not None else None
                if (
                    state is not None
                    and point is not None
                    and (state.committed is None or point > state.committed)
                ):
                    offsets[tp] = point
            dirty, self._dirty = self._dirty, set()
            if await self._commit(offsets):
                for tp, point in offsets.items():
                    state = self._states.get(tp)
                    if state is not None:
                        state.committed = max(point, state.committed or 0)
            else:
                self._dirty |= {tp for tp in dirty if tp in self._states}
                self._dirty_event.set()

    async def _flush_loop(self) -> None:
        interval = self.backend.options.commit_interval_ms / 1000
        while not self._closed:
            await self._dirty_event.wait()
            await asyncio.sleep(max(interval, self._commit_retry_at - time.monotonic()))
            try:
                await self.flush()
            except Exception:  # keep committing whatever happens to one attempt
                log.exception("kafka group %s: commit loop error", self.group_id)
                await asyncio.sleep(1.0)

    # -- close ---------------------------------------------------------------------
    async def abort(self) -> None:
        """Stop a subscription that never became live: its commit loop (started
        before the join) too, and leave the group as :meth:`close` does."""
        self._closed = True
        self._wake.set()
        await self._stop_flusher()
        if self.consumer is not None:
            await self._leave(self.consumer)

    async def _stop_flusher(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            # waited for without awaiting it: its CancelledError is not ours, and a
            # cancellation of close() itself still propagates
            await asyncio.wait({self._flusher})

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        await self._stop_flusher()
        if self._committing is not None:
            with contextlib.suppress(Exception):
                await self._committing  # then the final flush below sees its result
        consumer = self.consumer
        try:
            await self.flush()
            await self.hand_back(set(self._states))
        finally:
            if consumer is not None:
                await self._leave(consumer)
            self.backend.forget_subscription(self)

    async def _leave(self, consumer: AIOKafkaConsumer) -> None:
        coordinator = getattr(consumer, "_coordinator", None)
        generation = getattr(coordinator, "generation", None)
        member = getattr(coordinator, "member_id", "")
        node = getattr(coordinator, "coordinator_id", None)
        await stop_client(consumer, self.backend.options.operation_timeout)
        if generation == 0 and member and node is not None:
            # aiokafka sends LeaveGroup only for generation > 0, but Tansu numbers
            # generations from 0: without this the member would linger for a whole
            # session timeout and hold up the next rebalance.
            await self.backend.leave_group(node, self.group_id, member)


def _not_before(raw: bytes | None) -> float:
    """Unix time of a ``bus-not-before`` header value (ms); 0.0 when absent or bad."""
    if not raw:
        return 0.0
    try:
        return int(raw) / 1000
    except ValueError:
        return 0.0


def _attempt(raw: bytes | None) -> int:
    """The attempt number of a ``bus-attempt`` header value (absent or bad: 1)."""
    if not raw:
        return 1
    try:
        return max(1, int(raw))
    except ValueError:
        return 1
