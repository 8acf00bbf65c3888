"""Names of exchanges and queues, and the delay ladder.

* group queue: ``<topic>.<group>`` - readable in the management UI and unambiguous,
  since group names have no dots (the last dot splits it). Two exceptions keep it a
  valid, collision-free queue name: a name starting with ``amq.`` (reserved by
  RabbitMQ) gets a leading ``_``, and a name longer than 255 bytes is cut to 200
  characters plus ``~`` and a hash (``~`` cannot occur in a topic or group).
* internal queues start with ``_<exchange>.``; user topics cannot start with ``_``,
  so they never collide with a group queue.
* delays are rounded *up* to a fixed ladder: 10 ms steps up to 100 ms, then the
  Renard R20 series (100, 112, 125, 140, 160, ... 900 ms, 1 s, 1.12 s, ...): a
  delayed delivery is never early and at most 10 ms or 14.3% late, whichever is
  more (plus the broker's expiry latency, a few ms). Each rung has its own wait
  queue, declared on first use; the coarse ladder keeps their number small even
  with jittered backoffs (20 per decade of delay).
"""

from __future__ import annotations

import hashlib
import math
import uuid

__all__ = [
    "MAX_DELAY_MS",
    "broadcast_queue",
    "delay_exchange",
    "delay_ms",
    "drop_queue",
    "due_exchange",
    "group_from_queue",
    "group_queue",
    "requeue_exchange",
    "wait_queue",
]

_MAX_NAME_BYTES = 255
#: Longest delay: RabbitMQ TTLs are at most 2^32-1 ms, and a wait queue's
#: ``x-expires`` is its TTL plus a day (see ``backend``).
MAX_DELAY_MS = 2**32 - 1 - 86_400_000


def _fit(name: str) -> str:
    if name.startswith("amq."):
        name = "_" + name
    if len(name.encode()) > _MAX_NAME_BYTES:
        digest = hashlib.sha256(name.encode()).hexdigest()[:32]
        name = f"{name[:200]}~{digest}"
    return name


def group_queue(topic: str, group: str) -> str:
    """The durable queue of ``group`` on ``topic``."""
    return _fit(f"{topic}.{group}")


def group_from_queue(topic: str, queue: str) -> str | None:
    """The group whose queue on ``topic`` is ``queue`` (None if it is not one)."""
    for candidate in (queue, queue.removeprefix("_")):
        if candidate.startswith(topic + ".") and "~" not in candidate:
            rest = candidate[len(topic) + 1 :]
            if rest and "." not in rest:
                return rest
    return None


def broadcast_queue(exchange: str) -> str:
    """A fresh name for one broadcast subscriber's exclusive queue."""
    return f"_{exchange}.bcast.{uuid.uuid4().hex}"


def delay_exchange(exchange: str) -> str:
    """The headers exchange that routes delayed messages to their wait queue."""
    return f"{exchange}.delay"


def due_exchange(exchange: str) -> str:
    """The fanout exchange that publish-delay wait queues dead-letter into: bound to
    the topic exchange (which routes by the message's topic) and to
    :func:`drop_queue`."""
    return f"{exchange}.due"


def requeue_exchange(exchange: str) -> str:
    """The topic exchange that nack-delay wait queues dead-letter into: every queue a
    subscription consumes is bound to it with its own name as the key (a delayed
    retry is routed by the name of the queue it goes back to), and
    :func:`drop_queue` with ``#``."""
    return f"{exchange}.requeue"


def drop_queue(exchange: str) -> str:
    """The queue that keeps nothing (``x-max-length`` 0), bound to the due and the
    requeue exchanges: a due message or a delayed retry no queue takes (its topic has
    no queue, its group queue was deleted) is still routed, so at-least-once
    dead-lettering settles it instead of keeping it in its wait queue for ever."""
    return f"_{exchange}.due.drop"


def wait_queue(exchange: str, target: str, ms: int) -> str:
    """Wait queue of ``ms`` milliseconds; ``target`` is ``topic`` (publish delay,
    dead-letters into the due exchange) or ``queue`` (nack delay, dead-letters into
    the requeue exchange, back to one queue). Earlier wait queues,
    ``_<exchange>.delay.<ms>`` (publish delay) and ``_<exchange>.retry.<ms>`` (nack
    delay), dead-lettered straight into the topic and the default exchange; nothing
    is routed to them any more, and they expire by themselves."""
    return f"_{exchange}.{'due' if target == 'topic' else 'requeue'}.{ms}"


#: The Renard R20 series (ISO 3), in hundredths: rungs 100, 112, ... 900 times 10^k ms.
_R20 = (100, 112, 125, 140, 160, 180, 200, 224, 250, 280, 315, 355, 400, 450, 500, 560, 630, 710,
        800, 900)  # fmt: skip


def delay_ms(seconds: float) -> int:
    """``seconds`` in ms rounded *up* to the delay ladder: 10 ms steps up to 100 ms,
    then the R20 series (20 rungs a decade, each at most 14.3% above the previous)."""
    ms: int = max(1, math.ceil(seconds * 1000 - 1e-6))
    if ms <= 100:
        return -(-ms // 10) * 10
    scale = 1
    while ms > 900 * scale:
        scale *= 10
    return next(rung * scale for rung in (*_R20, 1000) if rung * scale >= ms)
