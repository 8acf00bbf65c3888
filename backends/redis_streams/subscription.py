"""Consumers: a member of a consumer group, and a broadcast reader.

Group member (:class:`GroupSubscription`), per ``fetch``:

1. one pipelined round trip: the coalesced ``XACK`` s (and lease renewals) settled
   since the last one, a housekeeping pass when due, and the ``fetch`` script, which
   moves due delayed messages, reclaims entries idle past the lease (``XAUTOCLAIM``,
   every ``reclaim_interval``) and reads new entries (``XREADGROUP ... >``) from the
   group's redelivery stream, then the priority streams highest first, then the base
   stream;
2. when that found nothing: one blocking ``XREADGROUP`` on the same streams, bounded
   by the fetch timeout, the next due delayed message, the next reclaim pass and
   ``MAX_BLOCK``. :meth:`close` cancels it, so a waiting fetch returns at once.

Broadcast reader (:class:`BroadcastSubscription`): ``XREAD`` from the last id it saw
on each of the topic's streams, starting at the ids current at subscribe time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis.exceptions as rex

from bus.backend import BackendSubscription
from bus.delivery import Delivery
from bus.errors import BrokerUnavailable, BusError

from .connection import MAX_BLOCK, Command, Op, ScriptCall, is_transient
from .entries import Fields, from_fields
from .keys import TopicKeys
from .scripts import SCRIPTS

if TYPE_CHECKING:
    from .backend import RedisStreamsBackend

__all__ = ["BroadcastSubscription", "GroupSubscription"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Delayed messages moved per script call.
MOVE_LIMIT = 200
#: Entries of its own a consumer re-reads after a lost connection (see ``_recover``).
RECOVER_LIMIT = 10_000
#: Broadcast readers look for new priority levels and due messages this often.
POLL_EVERY = 1.0
#: While entries flow, a group member reads them with a plain XREADGROUP (pipelined
#: with its coalesced XACKs) and runs the full fetch script (delayed-message mover,
#: new priority levels) this often, or sooner when a known delayed message is due,
#: a reclaim or housekeeping round is due, or a read must be recovered. The script
#: converts every entry it reads to Lua and back: 2.7 ms of server time per 256
#: entries of 1 KiB against 0.4 ms for a plain XREADGROUP, 17 ms against 5 ms at
#: 64 KiB. So it reads entries itself only where that is needed (reclaiming,
#: recovering, repairing a lost group, priority levels, which it reads in order);
#: otherwise a plain XREADGROUP follows it in the same round trip.
FULL_FETCH_EVERY = 0.2
#: Deliveries one fetch() builds at most; the entries read beyond them wait as the
#: rows of the reply and become deliveries when handed out. A delivery costs four
#: GC-tracked objects (message, its decoder, the decoder's arguments, the Delivery):
#: built for a whole read of 256 they pushed every read past the cyclic GC's
#: young-generation threshold with the batch still alive, promoting it towards full
#: collections (see the Kafka backend's ``_HAND_OUT``).
HAND_OUT = 32

_Handle = tuple[str, str]
#: An entry read but not handed out yet: its handle, fields and delivery count.
_Row = tuple[_Handle, "Fields", int]


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Base(BackendSubscription):
    """What both kinds share: the local buffer, prefetch bound, cancellable reads."""

    backend: RedisStreamsBackend

    def __init__(
        self, backend: RedisStreamsBackend, topic: str, group: str | None, prefetch: int
    ) -> None:
        super().__init__(backend, topic, group)
        self.keys = TopicKeys.of(backend.options.key_prefix, topic)
        self.prefetch = prefetch
        self._conn = backend.conn
        #: everything this consumer holds: handed out (a Delivery) or read and not
        #: handed out yet (None; its row waits in _overflow)
        self._unsettled: dict[_Handle, Delivery | None] = {}
        self._overflow: collections.deque[Delivery | _Row] = collections.deque()
        self._settled = asyncio.Event()
        self._closed = False
        self._read: asyncio.Task[Any] | None = None
        self._levels: list[int] = []
        self._down_since: float | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    async def _guard(self, op: Awaitable[T]) -> T | None:
        """Await ``op`` as a task :meth:`close` can cancel; None when it did."""
        task: asyncio.Task[T] = asyncio.ensure_future(op)
        if self._closed:  # closed while we were between two reads
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            return None
        self._read = task
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._closed and current is not None and not current.cancelling():
                return None
            task.cancel()
            raise
        finally:
            self._read = None

    async def _cancel_read(self) -> None:
        read = self._read
        if read is not None and not read.done():
            read.cancel()
            with contextlib.suppress(BaseException):
                await read

    def _take(self, max_messages: int) -> list[Delivery]:
        overflow, unsettled, topic = self._overflow, self._unsettled, self.topic
        out: list[Delivery] = []
        for _ in range(min(max_messages, HAND_OUT, len(overflow))):
            item = overflow.popleft()
            if isinstance(item, tuple):  # a row read earlier: build its delivery now
                handle, fields, count = item
                message, prior = from_fields(topic, handle[1], fields)
                item = unsettled[handle] = Delivery(self, message, prior + count, handle)
            out.append(item)
        return out

    def _room(self, max_messages: int) -> int:
        return min(max_messages, self.prefetch - len(self._unsettled))

    async def _wait_room(self, deadline: float) -> None:
        self._settled.clear()
        left = deadline - time.monotonic()
        if left > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._settled.wait()

    def _note_failure(self, exc: BaseException, what: str) -> None:
        """Remember when the broker was lost; give up after ``operation_timeout``."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.info(
                "%s on %r interrupted (%s); reconnecting",
                what,
                self.topic,
                self._conn.describe(exc),
            )
        elif now - self._down_since > self.backend.options.operation_timeout:
            raise self._conn.unavailable(exc, what) from exc

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        # at most HAND_OUT per call: the rest of a read is handed out by the next calls
        deadline = time.monotonic() + timeout
        pause = 0.05
        while not self._closed:
            if self._overflow:
                return self._take(max_messages)
            room = self._room(max_messages)
            if room <= 0:
                await self._wait_room(deadline)
                if time.monotonic() >= deadline:
                    return []
                continue
            try:
                batch = await self._fetch_once(room, deadline)
            except BusError:
                raise
            except (rex.RedisError, rex.RedisClusterException, OSError) as exc:
                if not is_transient(exc):
                    raise self._conn.error(exc, f"reading {self.topic!r}") from exc
                self._note_failure(exc, "reading")
                self._lost_connection()
                if self.backend.options.cluster:
                    await self._conn.refresh_routes()
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                await asyncio.sleep(min(left, pause))
                pause = min(pause * 2, 1.0)
                continue
            if self._down_since is not None:
                log.info("reading %r resumed", self.topic)
                self._down_since = None
            if batch is None:  # closed meanwhile
                return []
            if batch:
                self._overflow.extend(batch)
                return self._take(max_messages)
            if time.monotonic() >= deadline:
                return []
        return []

    def _lost_connection(self) -> None:
        """Hook: a read failed on the wire."""

    async def _fetch_once(self, room: int, deadline: float) -> Sequence[Delivery | _Row] | None:
        raise NotImplementedError

    def _block_ms(self, deadline: float, *limits: float | None) -> int:
        now = time.monotonic()
        until = min([deadline, now + MAX_BLOCK, *(t for t in limits if t is not None)])
        return int((until - now) * 1000)


class GroupSubscription(_Base):
    """One member of a consumer group (``XREADGROUP`` as a consumer of its own)."""

    def __init__(
        self,
        backend: RedisStreamsBackend,
        topic: str,
        group: str,
        prefetch: int,
        consumer: str,
        levels: Sequence[int],
    ) -> None:
        super().__init__(backend, topic, group, prefetch)
        self.group_name = group
        self.consumer = consumer
        opts = backend.options
        self._maxlen = str(opts.maxlen) if opts.trim == "maxlen" else ""
        self._idle_ms = str(int(backend.ack_timeout * 1000))
        self._reclaim_every = min(max(backend.ack_timeout / 4, 0.05), 2.0)
        now = time.monotonic()
        self._next_reclaim = now + self._reclaim_every
        self._next_housekeep = now + opts.housekeeping_interval
        self._due_at: float | None = None
        self._next_full = now
        self._recover = False
        #: a plain read found its group gone: the script's read recreates it
        self._repair = False
        self._cursors: dict[str, str] = {}
        self._streams: list[str] = []
        self._set_levels(levels)
        # settlements waiting to be sent: stream key -> entry ids
        self._acks: dict[str, list[str]] = {}
        self._touches: dict[str, list[str]] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        #: settlements wait up to ack_flush_interval to go out with the next read
        self._coalesce = opts.ack_flush_interval > 0
        self._flush_task: asyncio.Task[None] | None = None
        self._sending: tuple[dict[str, list[str]], dict[str, list[str]]] | None = None

    def __repr__(self) -> str:
        return f"<redis GroupSubscription {self.topic!r} group={self.group_name!r}>"

    def _set_levels(self, levels: Sequence[int]) -> None:
        self._levels = sorted({int(lv) for lv in levels if int(lv) > 0}, reverse=True)
        self._streams = [
            self.keys.retry(self.group_name),
            *(self.keys.level(lv) for lv in self._levels),
            self.keys.base,
        ]

    # -- reading -------------------------------------------------------------------
    def _lost_connection(self) -> None:
        # A read whose reply was lost left entries in this consumer's pending list
        # that it never saw: re-read them (XREADGROUP ... 0) on the next fetch.
        self._recover = True

    def _rows(self, rows: list[tuple[str, str, Fields, int]]) -> list[_Row]:
        out: list[_Row] = []
        for key, entry_id, fields, count in rows:
            handle = (key, entry_id)
            if handle in self._unsettled:
                continue  # still held here (re-read after a reconnect, or own reclaim)
            self._unsettled[handle] = None
            out.append((handle, fields, count))
        return out

    async def _fetch_once(self, room: int, deadline: float) -> list[_Row] | None:
        batch = await self._poll(room)
        if batch is None or batch:
            return batch
        block = self._block_ms(deadline, self._next_reclaim, self._due_at, self._next_housekeep)
        if block < 1:
            return []
        return await self._block(room, block)

    async def _poll(self, room: int) -> list[_Row] | None:
        now = time.monotonic()
        acks, touches = self._take_settlements()
        ops: list[Op] = self._settlement_ops(acks, touches)
        housekeep = now >= self._next_housekeep
        reclaim = now >= self._next_reclaim
        due = self._due_at is not None and now >= self._due_at
        streams = list(self._streams)
        full = housekeep or reclaim or due or self._recover or now >= self._next_full
        # With priority levels in use only the script reads in strict level order: one
        # XREADGROUP over several level streams takes COUNT entries from each of them.
        if not (full or self._levels):
            ops.append(self._read_op(room, streams))
            return await self._pipelined_read(ops, acks, touches, streams)
        self._next_full = now + FULL_FETCH_EVERY
        script_reads = reclaim or self._recover or self._repair or bool(self._levels)
        if housekeep:
            ops.append(self.backend.housekeep_call(self.keys))
        ops.append(
            ScriptCall(
                SCRIPTS.fetch,
                [self.keys.base],
                [
                    self.group_name,
                    self.consumer,
                    room,
                    self._maxlen,
                    MOVE_LIMIT,
                    self._idle_ms if reclaim else "",
                    RECOVER_LIMIT if self._recover else 0,
                    len(streams),
                    *streams,
                    *(self._cursors.get(s, "0-0") for s in streams),
                    "1" if script_reads else "0",
                ],
            )
        )
        if not script_reads:
            ops.append(self._read_op(room, streams))
        sent, results = await self._send_with_read(ops, acks, touches, 1 if script_reads else 2)
        if not sent:
            return None
        if housekeep:
            self._next_housekeep = now + self.backend.options.housekeeping_interval
        result = results[0]
        if isinstance(result, BaseException):
            if not script_reads:  # read all the same: the next fetch hands them out
                self._overflow.extend(self._plain_rows(results[1], streams))
            raise result
        entries, due_in, cursors, levels = result
        self._recover = self._repair = False
        if reclaim:
            self._next_reclaim = now + self._reclaim_every
            for key, cursor in zip(streams, cursors, strict=True):
                self._cursors[key] = _s(cursor)
        due_ms = int(due_in)
        self._due_at = None if due_ms < 0 else now + due_ms / 1000
        new_levels = sorted((int(lv) for lv in levels), reverse=True)
        if new_levels != self._levels:
            self._set_levels(new_levels)
        out = self._rows(
            [(streams[int(i) - 1], _s(eid), fields, int(n)) for i, eid, fields, n in entries]
        )
        if not script_reads:  # after the flags above: it may set _repair
            out += self._plain_rows(results[1], streams)
        return out

    def _read_op(self, room: int, streams: list[str]) -> Command:
        read = ("XREADGROUP", "GROUP", self.group_name, self.consumer, "COUNT", room)
        return Command((*read, "STREAMS", *streams, *[">"] * len(streams)), self.keys.base)

    async def _send_with_read(
        self,
        ops: list[Op],
        acks: dict[str, list[str]],
        touches: dict[str, list[str]],
        reads: int = 1,
    ) -> tuple[bool, list[Any]]:
        """Send the settlements (and housekeeping) with ``reads`` reads as the last ops,
        in one round trip; (False, []) if the subscription closed meanwhile, else (True,
        the reads' results or errors). Settlements that did not go out are kept."""
        self._sending = (acks, touches)  # close() re-sends these if it cancels us
        try:
            results = await self._guard(self._conn.pipeline(ops))
        except BaseException:
            if not self._closed:
                self._sending = None
                self._restore_settlements(acks, touches)
            raise
        if results is None:
            return False, []
        self._sending = None
        for side in results[:-reads]:  # acks, renewals, housekeeping
            if isinstance(side, BaseException):
                log.warning("on %r: %s", self.topic, self._conn.describe(side))
        return True, results[-reads:]

    async def _pipelined_read(
        self,
        ops: list[Op],
        acks: dict[str, list[str]],
        touches: dict[str, list[str]],
        streams: list[str],
    ) -> list[_Row] | None:
        """Send the settlements and a plain XREADGROUP (last op) in one round trip."""
        sent, results = await self._send_with_read(ops, acks, touches)
        if not sent:
            return None
        return self._plain_rows(results[0], streams)

    def _plain_rows(self, result: Any, streams: list[str]) -> list[_Row]:
        """Rows of a pipelined XREADGROUP's result (or raise its error)."""
        if isinstance(result, rex.ResponseError) and "NOGROUP" in str(result):
            # the group or a stream vanished (data loss): the script's read recreates it
            self._next_full = 0.0
            self._repair = True
            return []
        if isinstance(result, BaseException):
            raise result
        return self._read_rows(result, streams)

    def _read_rows(self, result: Any, streams: list[str]) -> list[_Row]:
        """Rows of an XREADGROUP reply, in read order (redeliveries first, then
        highest priority first); each is held (``_unsettled``) from now on."""
        if not result:
            return []
        streams_read: list[Any] = list(result)
        if len(streams_read) > 1:
            order = {key: n for n, key in enumerate(streams)}
            streams_read.sort(key=lambda r: order.get(_s(r[0]), 0))
        # _rows inlined: this loop runs once per entry read
        out: list[_Row] = []
        unsettled = self._unsettled
        for raw_key, items in streams_read:
            key = _s(raw_key)
            for raw_id, fields in items:
                handle = (key, raw_id.decode() if type(raw_id) is bytes else raw_id)
                if handle in unsettled:
                    continue  # still held here (re-read after a reconnect)
                unsettled[handle] = None
                out.append((handle, fields, 1))
        return out

    async def _block(self, room: int, block_ms: int) -> list[_Row] | None:
        streams = list(self._streams)
        client = self._conn.node(self.keys.base)
        try:
            result = await self._guard(
                self._conn.bounded(
                    client.xreadgroup(
                        self.group_name,
                        self.consumer,
                        dict.fromkeys(streams, ">"),
                        count=room,
                        block=block_ms,
                    )
                )
            )
        except rex.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # the group or a stream vanished (data loss): recreate, keep what is there
            await self.backend.declare_groups(self.keys, [self.group_name], "0")
            return []
        if result is None:
            return None
        return self._read_rows(result, streams)

    # -- settling ------------------------------------------------------------------
    def _take_settlements(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        acks, touches = self._acks, self._touches
        self._acks, self._touches = {}, {}
        return acks, touches

    def _restore_settlements(
        self, acks: dict[str, list[str]], touches: dict[str, list[str]]
    ) -> None:
        for key, ids in acks.items():
            self._acks.setdefault(key, []).extend(ids)
        for key, ids in touches.items():
            self._touches.setdefault(key, []).extend(ids)

    def _settlement_ops(
        self, acks: dict[str, list[str]], touches: dict[str, list[str]]
    ) -> list[Op]:
        ops: list[Op] = [
            Command(("XACK", key, self.group_name, *ids)) for key, ids in acks.items() if ids
        ]
        pairs = [x for key, ids in touches.items() for eid in ids for x in (key, eid)]
        if pairs:
            ops.append(
                ScriptCall(
                    SCRIPTS.touch, [self.keys.base], [self.group_name, self.consumer, *pairs]
                )
            )
        return ops

    def _schedule_flush(self) -> None:
        if self._flush_timer is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(
                self.backend.options.ack_flush_interval, self._start_flush
            )

    def _start_flush(self) -> None:
        self._flush_timer = None
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        """Send the coalesced settlements now (timer path; errors are retried by the
        next fetch or close, and at worst the entries are redelivered)."""
        acks, touches = self._take_settlements()
        ops = self._settlement_ops(acks, touches)
        if not ops:
            return
        try:
            await self._conn.retrying(lambda: self._conn.pipeline(ops), "sending acks")
        except BusError:
            self._restore_settlements(acks, touches)
            log.warning("sending acks on %r failed; retrying with the next fetch", self.topic)

    async def _send_now(self, ops: list[Op], what: str) -> None:
        await self._conn.retrying(lambda: self._conn.pipeline(ops), what)

    async def ack(self, delivery: Delivery) -> None:
        handle = delivery.handle
        self._unsettled.pop(handle, None)
        self._settled.set()
        key, entry_id = handle
        if self._coalesce and not self._closed:
            acks = self._acks.get(key)
            if acks is None:
                self._acks[key] = [entry_id]
            else:
                acks.append(entry_id)
            if self._flush_timer is None:
                self._schedule_flush()
            return
        await self._send_now([Command(("XACK", key, self.group_name, entry_id))], "ack")

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        key, entry_id = delivery.handle
        self._unsettled.pop(delivery.handle, None)
        self._settled.set()
        delay_ms = str(max(1, round(delay * 1000))) if delay else ""
        if delay:
            # due in the delayed set: make sure the full fetch runs when it is due
            due_at = time.monotonic() + delay
            self._due_at = due_at if self._due_at is None else min(self._due_at, due_at)
        call = ScriptCall(
            SCRIPTS.requeue,
            [self.keys.base],
            [self.group_name, self.consumer, delay_ms, self._maxlen, "ids", key, entry_id],
        )
        await self._send_now([call], "nack")

    async def in_progress(self, delivery: Delivery) -> None:
        if delivery.handle not in self._unsettled:
            return
        key, entry_id = delivery.handle
        if not self._coalesce or self._closed:
            call = ScriptCall(
                SCRIPTS.touch, [self.keys.base], [self.group_name, self.consumer, key, entry_id]
            )
            await self._send_now([call], "in_progress")
            return
        self._touches.setdefault(key, []).append(entry_id)
        self._schedule_flush()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._settled.set()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        await self._cancel_read()
        if self._flush_task is not None:
            with contextlib.suppress(BaseException):
                await self._flush_task
        if self._sending is not None:  # a cancelled poll may not have sent these
            self._restore_settlements(*self._sending)
            self._sending = None
        acks, _ = self._take_settlements()
        # Flush acks first, then hand back everything this consumer still holds
        # (also entries a cancelled read took), then leave the live set.
        ops = self._settlement_ops(acks, {})  # renewals are moot: all is handed back
        ops.append(
            ScriptCall(
                SCRIPTS.requeue,
                [self.keys.base],
                [self.group_name, self.consumer, "", self._maxlen, "owned", *self._streams],
            )
        )
        ops.append(Command(("ZREM", self.keys.live, self.consumer)))
        deadline = time.monotonic() + min(self.backend.options.operation_timeout, 15.0)
        try:
            await self._conn.retrying(
                lambda: self._conn.pipeline(ops), "closing a subscription", deadline=deadline
            )
        except BusError as exc:
            log.warning(
                "could not return the unsettled deliveries of %r to group %r (%s); they go "
                "to another member after ack_timeout (%ss)",
                self.topic,
                self.group_name,
                exc,
                self.backend.ack_timeout,
            )
        finally:
            self._unsettled.clear()
            self._overflow.clear()
            self.backend.forget(self)


class BroadcastSubscription(_Base):
    """A broadcast reader: ``XREAD`` from the last id seen on each stream of the topic.

    Settlement is local: ``ack`` forgets the delivery; ``nack`` hands it to this same
    reader again (after ``delay``) with ``attempt + 1``; nothing is kept in Redis.
    """

    def __init__(
        self,
        backend: RedisStreamsBackend,
        topic: str,
        prefetch: int,
        member: str,
        positions: dict[str, str],
        levels: Sequence[int],
    ) -> None:
        super().__init__(backend, topic, None, prefetch)
        self.member = member
        self._positions = positions
        self._levels = sorted({int(lv) for lv in levels if int(lv) > 0}, reverse=True)
        self._next_poll = time.monotonic() + POLL_EVERY
        self._due_at: float | None = None
        self._maxlen = str(backend.options.maxlen) if backend.options.trim == "maxlen" else ""
        self._timers: set[asyncio.TimerHandle] = set()
        self._seq = 0

    def __repr__(self) -> str:
        return f"<redis BroadcastSubscription {self.topic!r}>"

    def _streams(self) -> list[str]:
        return [*(self.keys.level(lv) for lv in self._levels), self.keys.base]

    async def _fetch_once(self, room: int, deadline: float) -> list[Delivery] | None:
        now = time.monotonic()
        if now >= self._next_poll or (self._due_at is not None and now >= self._due_at):
            result = await self._guard(
                self._conn.script(SCRIPTS.poll, [self.keys.base], [MOVE_LIMIT, self._maxlen])
            )
            if result is None:
                return None
            due_in, levels = result
            self._next_poll = now + POLL_EVERY
            self._due_at = None if int(due_in) < 0 else now + int(due_in) / 1000
            for lv in (int(x) for x in levels):
                if lv > 0 and lv not in self._levels:
                    # created after this reader started: everything in it is new
                    self._positions.setdefault(self.keys.level(lv), "0-0")
                    self._levels = sorted({*self._levels, lv}, reverse=True)
        block = self._block_ms(deadline, self._next_poll, self._due_at)
        if block < 1:
            return []
        streams = self._streams()
        result = await self._guard(
            self._conn.bounded(
                self._conn.node(self.keys.base).xread(
                    {s: self._positions.get(s, "0-0") for s in streams}, count=room, block=block
                )
            )
        )
        if not result:
            return [] if result is not None else None
        order = {key: n for n, key in enumerate(streams)}
        out: list[Delivery] = []
        for raw_key, items in sorted(result, key=lambda r: order.get(_s(r[0]), 0)):
            key = _s(raw_key)
            for raw_id, fields in items:
                entry_id = _s(raw_id)
                self._positions[key] = entry_id
                message, prior = from_fields(self.topic, entry_id, fields)
                out.append(self._deliver(message, prior + 1))
        return out

    def _deliver(self, message: Any, attempt: int) -> Delivery:
        self._seq += 1
        handle = (message.id, str(self._seq))
        delivery = Delivery(self, message, attempt, handle)
        self._unsettled[handle] = delivery
        return delivery

    async def ack(self, delivery: Delivery) -> None:
        self._unsettled.pop(delivery.handle, None)
        self._settled.set()

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        self._unsettled.pop(delivery.handle, None)
        self._settled.set()
        if self._closed:
            return
        if not delay:
            self._overflow.appendleft(self._deliver(delivery.message, delivery.attempt + 1))
            return

        def again() -> None:
            self._timers.discard(timer)
            if not self._closed:
                self._overflow.append(self._deliver(delivery.message, delivery.attempt + 1))

        timer = asyncio.get_running_loop().call_later(delay, again)
        self._timers.add(timer)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._settled.set()
        await self._cancel_read()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._unsettled.clear()
        self._overflow.clear()
        ops: list[Op] = [Command(("ZREM", self.keys.live, self.member))]
        if self.topic.startswith("_inbox."):
            # a private reply inbox dies with its reader
            ops.append(Command(("DEL", *self.keys.all_static(), *self._streams())))
        try:
            await self._conn.retrying(
                lambda: self._conn.pipeline(ops),
                "closing a subscription",
                deadline=time.monotonic() + min(self.backend.options.operation_timeout, 5.0),
            )
        except BrokerUnavailable:
            log.debug("could not unregister broadcast reader of %r", self.topic)
        finally:
            self.backend.forget(self)
