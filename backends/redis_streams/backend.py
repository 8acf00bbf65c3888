"""The backend: connection, publishing, declaring, subscribing, liveness."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

from bus.backend import Backend, BackendSubscription, Start
from bus.capabilities import Capabilities, Feature, emulated, native
from bus.errors import BrokerUnavailable, BusError, PublishError
from bus.message import Message
from bus.options import BackendOptions

from .coalesce import Coalescer
from .connection import Command, Connection, Op, ScriptCall
from .entries import to_fields
from .keys import TopicKeys
from .options import DEFAULT_ACK_TIMEOUT, RedisStreamsOptions
from .scripts import SCRIPTS
from .subscription import MOVE_LIMIT, BroadcastSubscription, GroupSubscription, _Base

__all__ = ["CAPABILITIES", "RedisStreamsBackend"]

log = logging.getLogger(__name__)

#: Largest message accepted by default. Redis itself takes bulk strings up to 512 MB,
#: but a stream entry is read whole by every consumer; 64 MiB keeps that sane.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Operations per pipeline (one round trip each) when publishing a large batch.
PIPELINE_CHUNK = 1000
#: Internal topics (reply inboxes) expire this long after their last message.
INTERNAL_TTL = 3600
#: Replies kept unread per inbox at most (approximately); its reader reads at once.
INTERNAL_MAXLEN = 10_000

CAPABILITIES = Capabilities(
    "redis",
    {
        Feature.BROADCAST: native(
            "XREAD from the last id seen, starting at the stream ids current at subscribe"
        ),
        Feature.REPLAY: native(
            "a new group is created at 0 (XGROUP CREATE ... 0), a broadcast reader reads "
            "from 0; history is what the trim policy keeps"
        ),
        Feature.KEY_ORDER: native(
            "one stream per priority level read in id order by XREADGROUP; with one "
            "consumer, same-key messages of one priority arrive in publish order"
        ),
        Feature.DELAY: emulated(
            "sorted set <prefix>:{topic}:delayed scored by due time; an atomic Lua mover, "
            "run by subscribers (every 0.2 s while entries flow, when a known entry is due) "
            "and publishers periodically, moves each due message to its stream exactly once"
        ),
        Feature.NACK_DELAY: emulated(
            "Lua: XACK the entry and put a copy (attempts counted) in the delayed sorted "
            "set, bound for the group's redelivery stream"
        ),
        Feature.PRIORITY: emulated(
            "one stream per priority level in use (<prefix>:{topic}:p<n>), read highest "
            "first; the group's redeliveries are read before all levels"
        ),
        Feature.DEAD_LETTER: native(
            "XADD to the <topic>.dlq stream with bus-dlq-* fields, then XACK"
        ),
        Feature.LEASE: native(
            "XAUTOCLAIM by live members of entries idle longer than ack_timeout (default "
            "30 s); in_progress() resets the idle time with XCLAIM ... JUSTID"
        ),
        Feature.REQUEST_REPLY: emulated(
            "a reply stream per connection (_inbox.<id>) read with XREAD; replies matched "
            "by causation id"
        ),
        Feature.NO_RESPONDERS: emulated(
            "open subscriptions refresh their entry in <prefix>:{topic}:live every "
            "liveness_ttl/3; a crashed consumer counts as live for up to liveness_ttl"
        ),
    },
)


def _consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


class RedisStreamsBackend(Backend):
    """``redis://[user:password@]host[:port][/db]`` and ``rediss://`` (TLS).

    See the package docstring for how the contract maps onto Redis.
    """

    scheme = "redis"
    capabilities = CAPABILITIES
    Options = RedisStreamsOptions
    options: RedisStreamsOptions

    def __init__(self, url: str, options: BackendOptions) -> None:
        if not isinstance(options, RedisStreamsOptions):
            options = RedisStreamsOptions.model_validate(options.model_dump())
        super().__init__(url, options)
        self.conn = Connection(url, options)
        self.ack_timeout = options.ack_timeout or DEFAULT_ACK_TIMEOUT
        self._maxlen = str(options.maxlen) if options.trim == "maxlen" else ""
        self._subscriptions: set[_Base] = set()
        self._housekeep_at: dict[str, float] = {}
        # concurrent publishes share round trips (see coalesce.py)
        self._coalescer = Coalescer(self._send_publish, PIPELINE_CHUNK)
        self._heartbeat: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<RedisStreamsBackend {self.conn.safe_url}>"

    @property
    def max_message_bytes(self) -> int:
        return MAX_MESSAGE_BYTES

    def keys(self, topic: str) -> TopicKeys:
        return TopicKeys.of(self.options.key_prefix, topic)

    # -- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        await self.conn.open()
        self._heartbeat = asyncio.create_task(self._announce(), name="bus-redis-liveness")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._close_inbox()
            # concurrently: each close waits for the broker for a bounded time
            await asyncio.gather(*(sub.close() for sub in list(self._subscriptions)))
        finally:
            if self._heartbeat is not None:
                self._heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._heartbeat
            await self._coalescer.close()
            await self.conn.close()

    def forget(self, sub: BackendSubscription) -> None:
        self._subscriptions.discard(sub)

    async def _announce(self) -> None:
        """Refresh the live-set entries of every open subscription (``has_consumers``)."""
        every = self.options.liveness_ttl / 3
        while True:
            await asyncio.sleep(every)
            members: dict[str, list[str]] = {}
            for sub in list(self._subscriptions):
                name = sub.consumer if isinstance(sub, GroupSubscription) else sub.member  # type: ignore[attr-defined]
                members.setdefault(sub.keys.live, []).append(name)
            if not members:
                continue
            ops: list[Op] = [self._live_call(key, names) for key, names in members.items()]
            try:
                await self.conn.pipeline(ops)
            except Exception as exc:  # keep announcing; the next round may work
                log.debug("liveness refresh failed: %s", self.conn.describe(exc))

    def _live_call(self, live_key: str, names: Sequence[str]) -> ScriptCall:
        ttl_ms = int(self.options.liveness_ttl * 1000)
        return ScriptCall(SCRIPTS.live, [live_key], [ttl_ms, *names])

    def housekeep_call(self, keys: TopicKeys) -> ScriptCall:
        opts = self.options
        return ScriptCall(
            SCRIPTS.housekeep,
            [keys.base],
            [
                opts.trim,
                int(opts.retention * 1000),
                int(opts.consumer_idle_timeout * 1000),
                MOVE_LIMIT,
                self._maxlen,
            ],
        )

    async def _pipeline(self, ops: Sequence[Op], what: str) -> list[Any]:
        results = await self.conn.retrying(lambda: self.conn.pipeline(ops), what)
        for result in results:
            if isinstance(result, BaseException):
                raise self.conn.error(result, what) from result
        return results

    async def delete_topic(self, topic: str, groups: Sequence[str] = ()) -> bool:
        """Delete the topic's keys: its streams (every priority level), delayed set,
        live set, and the redelivery streams of the groups it records and of ``groups``."""
        keys = self.keys(topic)
        what = f"deleting topic {topic!r}"
        (known,) = await self._pipeline([Command(("SMEMBERS", keys.groups))], what)
        names = {g.decode() if isinstance(g, bytes) else str(g) for g in known or ()}
        names.update(groups)
        doomed = [
            *keys.all_static(),
            *(keys.level(n) for n in range(1, 10)),
            *(keys.retry(g) for g in sorted(names)),
        ]
        # one DEL: every key carries the topic's hash tag, so one node holds them all
        await self._pipeline([Command(("DEL", *doomed))], what)
        self._housekeep_at.pop(topic, None)
        return True

    # -- producing -------------------------------------------------------------------
    async def publish(self, messages: Sequence[Message], *, delay: float | None = None) -> None:
        if not messages:
            return
        topic = messages[0].topic
        keys = self.keys(topic)
        maxlen = self._maxlen
        if topic.startswith("_") and not maxlen:
            maxlen = str(INTERNAL_MAXLEN)
        trim_args: tuple[str, ...] = ("MAXLEN", "~", maxlen) if maxlen else ()
        ops: list[Op] = []
        delay_ms = max(1, round(delay * 1000)) if delay else 0
        for message in messages:
            fields = to_fields(message)
            level = message.priority or 0
            if delay_ms:
                ops.append(ScriptCall(SCRIPTS.schedule, [keys.base], [delay_ms, level, *fields]))
            elif level > 0:
                ops.append(ScriptCall(SCRIPTS.publish_level, [keys.base], [level, maxlen, *fields]))
            else:
                ops.append(Command(("XADD", keys.base, *trim_args, "*", *fields)))
        tail: list[Op] = []
        now = time.monotonic()
        if topic.startswith("_"):
            # reply inboxes: read at once by their owner, deleted when it closes; expire
            # if it vanished without closing
            tail.append(Command(("EXPIRE", keys.base, INTERNAL_TTL)))
        elif now >= self._housekeep_at.get(topic, 0.0):
            if len(self._housekeep_at) > 10_000:
                self._housekeep_at.clear()  # bounded memory with very many topics
            self._housekeep_at[topic] = now + self.options.housekeeping_interval
            tail.append(self.housekeep_call(keys))
        what = f"publishing to {topic!r}"
        for first in range(0, len(ops), PIPELINE_CHUNK):
            chunk = ops[first : first + PIPELINE_CHUNK]
            sent = len(chunk)
            if first + PIPELINE_CHUNK >= len(ops):
                chunk = chunk + tail
            try:
                if len(chunk) <= PIPELINE_CHUNK:
                    results = await self._coalescer.run(chunk, what)
                else:  # a full chunk and its tail: alone, as it is big enough
                    results = await self._send_publish(chunk, what)
            except BrokerUnavailable:
                raise
            except BusError as exc:
                raise PublishError(str(exc)) from exc
            for n, result in enumerate(results):
                if not isinstance(result, BaseException):
                    continue
                if n < sent:
                    raise PublishError(
                        f"redis at {self.conn.safe_url} refused a message to {topic!r}: "
                        f"{self.conn.describe(result)}"
                    ) from result
                log.warning("housekeeping of %r failed: %s", topic, self.conn.describe(result))

    async def _send_publish(self, ops: list[Op], what: str) -> list[Any]:
        """One pipeline of publishing operations, retried while the broker is
        unreachable for up to ``operation_timeout`` from now."""
        deadline = time.monotonic() + self.options.operation_timeout
        return await self.conn.retrying(lambda: self.conn.pipeline(ops), what, deadline=deadline)

    async def declare(self, topic: str, groups: Sequence[str]) -> None:
        await self.declare_groups(self.keys(topic), groups, "$")

    async def declare_groups(self, keys: TopicKeys, groups: Sequence[str], start: str) -> None:
        """Create ``groups`` on every stream of the topic at ``start`` (``$`` or ``0``)
        where they do not exist yet."""
        if groups:
            await self._pipeline(
                [ScriptCall(SCRIPTS.declare, [keys.base], [start, *groups])], "declaring groups"
            )

    # -- consuming -------------------------------------------------------------------
    async def subscribe(
        self, topic: str, *, group: str | None, start: Start, prefetch: int
    ) -> BackendSubscription:
        keys = self.keys(topic)
        sub: _Base
        if group is not None:
            consumer = _consumer_name()
            first = "0" if start == "earliest" else "$"
            _, _, levels = await self._pipeline(
                [
                    ScriptCall(SCRIPTS.declare, [keys.base], [first, group]),
                    self._live_call(keys.live, [consumer]),
                    Command(("SMEMBERS", keys.levels)),
                ],
                f"subscribing to {topic!r}",
            )
            sub = GroupSubscription(
                self, topic, group, prefetch, consumer, [int(lv) for lv in levels]
            )
        else:
            member = _consumer_name()
            _, (levels, ids) = await self._pipeline(
                [
                    self._live_call(keys.live, [member]),
                    ScriptCall(SCRIPTS.position, [keys.base], [start]),
                ],
                f"subscribing to {topic!r}",
            )
            level_list = [int(lv) for lv in levels]
            stream_keys = [keys.base, *(keys.level(lv) for lv in level_list)]
            positions = {
                key: (i.decode() if isinstance(i, bytes) else str(i))
                for key, i in zip(stream_keys, ids, strict=True)
            }
            sub = BroadcastSubscription(self, topic, prefetch, member, positions, level_list)
        self._subscriptions.add(sub)
        return sub

    async def has_consumers(self, topic: str) -> bool:
        count = await self.conn.retrying(
            lambda: self.conn.script(SCRIPTS.count_live, [self.keys(topic).live], []),
            "checking for consumers",
        )
        return int(count) > 0
