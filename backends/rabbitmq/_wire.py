"""Messages on the wire: CloudEvents binary mode in AMQP 0-9-1 properties and headers.

Every attribute travels in the headers table exactly as :func:`bus.envelope.to_headers`
names it (``ce-id``, ``ce-source``, ``ce-time``, ...) except ``content-type``, which
is the native ``content_type`` property. Native properties are also set where AMQP
has one, for tooling and for the broker's own use: ``message_id`` (the id: publisher
returns are matched by it), ``correlation_id``, ``priority`` (``x-max-priority``
queues order by it), ``timestamp``, ``delivery_mode=2`` (persistent), ``reply_to``
(direct reply-to). The payload is the body, untouched.

Headers the broker adds (``x-death``, ``x-first-death-*``, ``x-last-death-*``,
``x-delivery-count``) and the backend's bookkeeping headers (``bus-attempts``,
``bus-delay``, ``bus-delay-to``) are not user headers and are removed on receipt.

A message from a foreign publisher (no ``ce-id``) is still delivered: its id is the
``message_id`` property (or a fresh UUIDv7), non-string header values become strings.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import pamqp.frame
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from backends.rabbitmq._names import group_from_queue
from bus import codec
from bus._ids import uuid7
from bus.envelope import from_headers, to_headers
from bus.errors import DecodeError, InvalidHeader
from bus.message import Message

__all__ = [
    "ATTEMPTS",
    "DELAY",
    "DELAY_TO",
    "attempt_of",
    "bare",
    "broker_dead_letter_headers",
    "decode",
    "encode",
    "header_frame_size",
]

#: Deliveries made before this copy was published (nack with delay, classic nack).
ATTEMPTS = "bus-attempts"
#: Routing headers of the delay exchange (milliseconds; ``topic`` or ``queue``).
DELAY = "bus-delay"
DELAY_TO = "bus-delay-to"

_INTERNAL = frozenset(
    {
        ATTEMPTS,
        DELAY,
        DELAY_TO,
        "x-death",
        "x-delivery-count",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)
_SHORTSTR = 255


def _short(value: str | None) -> str | None:
    """``value`` if it fits an AMQP short string, else None (the header keeps it)."""
    if value is None or len(value.encode()) > _SHORTSTR:
        return None
    return value


def encode(
    message: Message,
    *,
    extra: Mapping[str, Any] | None = None,
    reply_to: str | None = None,
) -> Basic.Properties:
    """The AMQP properties (with the headers table) that carry ``message``."""
    headers: dict[str, Any] = dict(to_headers(message))
    content_type = headers.pop("content-type")
    for name in headers:
        if len(name.encode()) > _SHORTSTR:
            raise InvalidHeader(f"header name {name[:40]!r}... is longer than AMQP's 255 bytes")
    if extra:
        headers.update(extra)
    return Basic.Properties(
        content_type=_short(content_type),
        delivery_mode=2,
        message_id=message.id,
        correlation_id=_short(message.correlation_id),
        priority=message.priority,
        timestamp=message.time.astimezone(dt.UTC).replace(microsecond=0),
        reply_to=reply_to,
        headers=headers,
    )


#: Above what :func:`header_frame_size` can be for headers of these sizes: the
#: frame's fixed part and every short-string property at its longest (255 bytes).
_FIXED_BOUND = 4096


def header_frame_size(properties: Basic.Properties, body_size: int, *, below: int = 0) -> int:
    """Bytes of the content header frame (frame overhead included) that carries
    ``properties`` and the headers table. AMQP sends it as one frame, which must fit
    the negotiated ``frame_max``. When a cheap upper bound (string headers) is at most
    ``below``, that bound is returned instead of marshalling the properties."""
    if below:
        bound = _FIXED_BOUND
        for value in (properties.headers or {}).values():
            if not isinstance(value, str):
                bound = below + 1
                break
            # name (<= 255 bytes, checked by encode), type, length, UTF-8 <= 4 bytes a char
            bound += 262 + 4 * len(value)
        if bound <= below:
            return bound
    return len(pamqp.frame.marshal(ContentHeader(0, body_size, properties), 1))


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


def decode(topic: str, raw: DeliveredMessage, *, delivery_limit: int | None = None) -> Message:
    """Rebuild the :class:`Message` of a delivery on ``topic`` (the subscription's
    topic: a delivery's routing key is the queue name after a delay or a requeue).
    ``delivery_limit`` is the groups' ``x-delivery-limit``, to count the attempts of
    a message the broker dead-lettered for reaching it."""
    props = raw.header.properties
    headers = {
        name: _text(value) for name, value in (props.headers or {}).items() if name not in _INTERNAL
    }
    if "content-type" not in headers:
        headers["content-type"] = props.content_type or codec.OCTET_STREAM
    if "ce-id" not in headers:
        headers["ce-id"] = props.message_id or uuid7()
    if props.correlation_id and "ce-correlationid" not in headers:
        headers["ce-correlationid"] = props.correlation_id
    if props.reply_to:
        # direct reply-to: the broker rewrote the property to the requester's address
        headers["ce-replyto"] = props.reply_to
    if props.priority is not None and "ce-priority" not in headers and props.priority < 10:
        headers["ce-priority"] = str(props.priority)
    headers.update(broker_dead_letter_headers(topic, raw, delivery_limit))
    body = bytes(raw.body)
    try:
        return from_headers(topic, body, headers)
    except DecodeError:
        # a malformed attribute from a foreign producer: deliver the payload anyway
        for name in ("ce-time", "ce-priority"):
            headers.pop(name, None)
        return from_headers(topic, body, headers)


def bare(topic: str, raw: DeliveredMessage) -> Message:
    """The payload alone, for a delivery whose properties cannot be decoded."""
    message_id = raw.header.properties.message_id
    return Message(id=message_id or uuid7(), topic=topic, data=bytes(raw.body))


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def attempt_of(raw: DeliveredMessage, *, counted: bool) -> int:
    """1 on the first delivery. ``counted``: the queue keeps ``x-delivery-count``
    (quorum); otherwise the ``redelivered`` flag adds one (classic)."""
    table: Mapping[str, Any] = raw.header.properties.headers or {}
    before = _int(table.get(ATTEMPTS))
    if counted:
        returned = _int(table.get("x-delivery-count"))
    else:
        returned = 1 if raw.delivery.redelivered else 0  # type: ignore[union-attr]
    return before + returned + 1


def broker_dead_letter_headers(
    topic: str, raw: DeliveredMessage, delivery_limit: int | None = None
) -> dict[str, str]:
    """``bus-dlq-*`` headers for a message the *broker* dead-lettered to ``topic``
    (``<original>.dlq``): delivery limit reached, rejected, expired. Empty when the
    message already has them (dead_letter() copies) or was not dead-lettered."""
    table: Mapping[str, Any] = raw.header.properties.headers or {}
    if "bus-dlq-reason" in table or not topic.endswith(".dlq"):
        return {}
    original = topic.removesuffix(".dlq")
    for death in table.get("x-death") or ():
        if not isinstance(death, Mapping):
            continue
        queue = _text(death.get("queue", ""))
        group = group_from_queue(original, queue)
        if group is None:
            continue  # a delay wait queue, not a group
        reason = _text(death.get("reason", ""))
        headers = {
            "bus-dlq-reason": f"dead-lettered by the broker: {reason}",
            "bus-dlq-group": group,
            "bus-dlq-topic": original,
        }
        if reason == "delivery_limit" and delivery_limit is not None:
            # dead-lettered when returned more than the limit: limit + 1 deliveries
            headers["bus-dlq-attempts"] = str(delivery_limit + 1)
        return headers
    return {}
