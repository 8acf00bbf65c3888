"""CloudEvents 1.0 *binary mode*: message attributes as native headers.

The payload travels untouched; the attributes travel as headers, so a consumer in
any language reads the event without unwrapping a JSON envelope. The attribute
header names use a prefix: ``ce-`` for the HTTP / NATS / Redis bindings and
``ce_`` for the Kafka binding (the CloudEvents Kafka protocol binding's choice).

============================  =========================  ===========================
Message attribute             header                     notes
============================  =========================  ===========================
``id``                        ``ce-id``                  required
(spec version)                ``ce-specversion``         always ``1.0``
``source``                    ``ce-source``
``type``                      ``ce-type``
``time``                      ``ce-time``                RFC 3339, UTC
``content_type``              ``content-type``           CloudEvents ``datacontenttype``
``schema_version``            ``ce-schemaversion``       extension
``key``                       ``ce-partitionkey``        partitioning extension
``trace_parent``              ``traceparent``            W3C / distributed-tracing extension
``correlation_id``            ``ce-correlationid``       extension
``causation_id``              ``ce-causationid``         extension
``reply_to``                  ``ce-replyto``             extension
``priority``                  ``ce-priority``            extension, 0-9
============================  =========================  ===========================

User headers are carried as they are. Names starting with ``ce-``, ``ce_`` or
``bus-`` and the names ``content-type`` and ``traceparent`` are reserved; the
library itself writes ``bus-*`` headers (dead-letter reasons, attempt counts).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping

from bus import codec
from bus.errors import DecodeError, InvalidHeader
from bus.message import Message

__all__ = ["RESERVED_PREFIXES", "from_headers", "to_headers", "validate_headers"]

RESERVED_PREFIXES = ("ce-", "ce_", "bus-")
_RESERVED_NAMES = frozenset({"content-type", "traceparent"})

# attribute -> header suffix (after the prefix)
_ENVELOPE_NAMES = frozenset({"content-type", "traceparent"})

_OPTIONAL = (
    ("schema_version", "schemaversion"),
    ("key", "partitionkey"),
    ("correlation_id", "correlationid"),
    ("causation_id", "causationid"),
    ("reply_to", "replyto"),
)


def validate_headers(headers: Mapping[str, str] | None) -> Mapping[str, str]:
    """Check user headers are ``str -> str`` and not reserved; return them."""
    if not headers:
        return {}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidHeader(f"headers must be str -> str, got {name!r}: {type(value).__name__}")
        if not name:
            raise InvalidHeader("header names must not be empty")
        lower = name.lower()
        if lower.startswith(RESERVED_PREFIXES) or lower in _RESERVED_NAMES:
            raise InvalidHeader(f"header name {name!r} is reserved by the bus")
    return dict(headers)


def to_headers(message: Message, prefix: str = "ce-") -> dict[str, str]:
    """All attributes and user headers of ``message`` as one ``str -> str`` mapping."""
    out = dict(message.headers)
    out[prefix + "specversion"] = "1.0"
    out[prefix + "id"] = message.id
    out[prefix + "source"] = message.source
    out[prefix + "type"] = message.type
    out[prefix + "time"] = message.time.isoformat()
    out["content-type"] = message.content_type
    for attr, suffix in _OPTIONAL:
        value = getattr(message, attr)
        if value is not None:
            out[prefix + suffix] = value
    if message.trace_parent is not None:
        out["traceparent"] = message.trace_parent
    if message.priority is not None:
        out[prefix + "priority"] = str(message.priority)
    return out


@functools.cache
def _names(prefix: str) -> tuple[str, ...]:
    return tuple(
        prefix + a
        for a in (
            "id", "time", "priority", "type", "source", "schemaversion", "partitionkey",
            "correlationid", "causationid", "replyto", "datacontenttype", "traceparent",
        )
    )  # fmt: skip


def from_headers(
    topic: str, data: bytes, headers: Mapping[str, str], prefix: str = "ce-"
) -> Message:
    """Rebuild a :class:`Message` from :func:`to_headers` output.

    Headers starting with ``prefix`` are attributes (unknown ones are dropped), as are
    ``content-type`` and ``traceparent``; every other header is a user header.
    Raises :class:`bus.DecodeError` when the mandatory ``id`` attribute is missing
    (the message was not published through this library or a CloudEvents producer).
    """
    # Runs once per delivered message on every backend: lookups by precomputed
    # names, one pass for the user headers.
    get = headers.get
    names = _names(prefix)
    n_id, n_time, n_prio, n_type, n_source, n_schema, n_key = names[:7]
    n_corr, n_cause, n_reply, n_content_type, n_trace = names[7:]
    mid = get(n_id)
    if mid is None:
        raise DecodeError(f"message on {topic!r} carries no {prefix}id header")
    raw_time, raw_priority = get(n_time), get(n_prio)
    try:
        time = dt.datetime.fromisoformat(raw_time) if raw_time is not None else None
        priority = int(raw_priority) if raw_priority is not None else None
    except ValueError as exc:
        raise DecodeError(f"message {mid} has a malformed attribute: {exc}") from exc
    user = {
        name: value
        for name, value in headers.items()
        if not name.startswith(prefix) and name not in _ENVELOPE_NAMES
    }
    return Message(
        id=mid,
        topic=topic,
        data=data,
        type=get(n_type, ""),
        source=get(n_source, ""),
        time=time or dt.datetime.now(dt.UTC),
        content_type=get("content-type") or get(n_content_type, codec.OCTET_STREAM),
        schema_version=get(n_schema),
        key=get(n_key),
        headers=user,
        trace_parent=get("traceparent") or get(n_trace),
        correlation_id=get(n_corr),
        causation_id=get(n_cause),
        reply_to=get(n_reply),
        priority=priority,
    )


def encoded_size(message: Message) -> int:
    """Payload plus header bytes: what the size limit is checked against."""
    size = len(message.data) + 64 + len(message.id) + len(message.source) + len(message.type)
    for name, value in message.headers.items():
        size += len(name) + len(value) + 4
    return size
