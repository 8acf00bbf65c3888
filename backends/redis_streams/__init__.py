"""``redis://`` / ``rediss://``: the bus contract on Redis Streams (redis-py asyncio).

Mapping (every key of a topic shares the hash tag ``{<topic>}``, so one topic lives
in one cluster slot and every script and multi-key read stays on one node):

=====================  ==================================================================
topic                  stream ``<prefix>:{<topic>}`` (``prefix`` defaults to ``bus``)
message                one entry: ``bus-data`` = payload bytes, the CloudEvents
                       attributes and user headers as fields (``ce-id``, ``ce-type``, ...)
group                  consumer group of the same name on each stream of the topic,
                       created at ``$`` by declare / first subscribe (``0`` for
                       ``start="earliest"``); members are consumers (``XREADGROUP``),
                       one consumer name per subscription
broadcast              ``XREAD`` from the ids current at subscribe (``$`` resolved to a
                       concrete id then, so nothing published after ``subscribe``
                       returns is missed)
publish confirm        the ``XADD`` reply; ``publish_many`` is one pipeline per 1000
ack                    coalesced: one ``XACK`` per stream for every ack since the last
                       flush, sent with the next fetch, at close, or after
                       ``ack_flush_interval``
nack()                 Lua, atomic: ``XACK`` the entry and append a copy with
                       ``bus-attempts`` to the group's redelivery stream
                       ``<prefix>:{<topic>}:r:<group>``, read before everything else
nack(delay), delay     zset ``:delayed`` scored by due time (server clock); a Lua mover
                       (in the fetch script: every 0.2 s while entries flow, when a known
                       entry is due, on every idle wake-up; and by publishers) moves due
                       members to their stream exactly once; state lives in Redis and
                       survives restarts
fetch                  while entries flow, a plain ``XREADGROUP`` pipelined with the
                       coalesced ``XACK``; the fetch script (mover, reclaim, new priority
                       levels) every 0.2 s or when due, and on every read of a topic
                       with priority levels in use (it reads levels in strict order)
attempt                ``bus-attempts`` (deliveries before this entry) + the entry's
                       delivery counter in the pending list (``XPENDING``)
lease / dead consumer  ``XAUTOCLAIM`` of entries idle longer than ``ack_timeout``
                       (default 30 s), run by live members every
                       ``min(ack_timeout/4, 2 s)``: no lock, nothing to wedge;
                       ``in_progress()`` = ``XCLAIM ... JUSTID`` (resets idle time)
close                  acks flushed, then every entry this consumer holds (including
                       ones a cancelled read took) goes to the redelivery stream at once
priority               one stream per level in use ``:p<n>``, read highest first
dead letter            ``<topic>.dlq`` stream (copy with ``bus-dlq-*`` fields, then XACK)
request / reply        reply stream per connection ``_inbox.<id>`` (generic inbox)
no responders          zset ``:live`` of open subscriptions, refreshed by a heartbeat
bounded growth         ``trim="acked"`` (default): ``XTRIM MINID ~`` below the oldest
                       entry any group still needs and below now - ``retention``;
                       ``"maxlen"``: ``XADD MAXLEN ~``; idle consumers holding nothing are
                       deleted (``XGROUP DELCONSUMER``)
=====================  ==================================================================

Delivery guarantees: at-least-once. Duplicates happen when a publish is retried after
a lost reply (the entry was written but the confirm did not arrive), when an ack is
lost with a connection or not flushed before a crash, and when a lease expires while
the holder still works. Requires Redis >= 6.2.

Tested (``tests/test_redis_streams.py`` and ``bus conformance``) on Redis 7.0 standalone
and on a 3-primary Redis Cluster the test builds from local ``redis-server`` processes
(``cluster=True``; the conformance scenarios that exercise every script, pipeline and
multi-stream read), with redis-py 5.0 and 7.4 (the ``redis`` extra pins >=5.0,<8). On a
cluster each topic's keys live on the node owning its hash slot, and the backend keeps
one plain client per primary so that a pipeline or a script goes to that node whole
(MOVED / ASK refresh the slot map and retry).
"""

from .backend import CAPABILITIES, RedisStreamsBackend
from .options import RedisStreamsOptions

__all__ = ["CAPABILITIES", "RedisStreamsBackend", "RedisStreamsOptions"]
