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
from collections.abc import Mapping

from bus import codec
from bus.errors import DecodeError, InvalidHeader
from bus.message import Message

__all__ = ["RESERVED_PREFIXES", "from_headers", "to_headers", "validate_headers"]

RESERVED_PREFIXES = ("ce-", "ce_", "bus-")
_RESERVED_NAMES = frozenset({"content-type", "traceparent"})

# attribute -> header suffix (after the prefix)
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


def from_headers(
    topic: str, data: bytes, headers: Mapping[str, str], prefix: str = "ce-"
) -> Message:
    """Rebuild a :class:`Message` from :func:`to_headers` output.

    Raises :class:`bus.DecodeError` when the mandatory ``id`` attribute is missing
    (the message was not published through this library or a CloudEvents producer).
    """
    plen = len(prefix)
    attrs: dict[str, str] = {}
    user: dict[str, str] = {}
    for name, value in headers.items():
        if name.startswith(prefix):
            attrs[name[plen:]] = value
        elif name == "content-type":
            attrs["datacontenttype"] = value
        elif name == "traceparent":
            attrs["traceparent"] = value
        else:
            user[name] = value
    try:
        mid = attrs["id"]
    except KeyError:
        raise DecodeError(f"message on {topic!r} carries no {prefix}id header") from None
    try:
        time = dt.datetime.fromisoformat(attrs["time"]) if "time" in attrs else None
        priority = int(attrs["priority"]) if "priority" in attrs else None
    except ValueError as exc:
        raise DecodeError(f"message {mid} has a malformed attribute: {exc}") from exc
    return Message(
        id=mid,
        topic=topic,
        data=data,
        type=attrs.get("type", ""),
        source=attrs.get("source", ""),
        time=time or dt.datetime.now(dt.UTC),
        content_type=attrs.get("datacontenttype", codec.OCTET_STREAM),
        schema_version=attrs.get("schemaversion"),
        key=attrs.get("partitionkey"),
        headers=user,
        trace_parent=attrs.get("traceparent"),
        correlation_id=attrs.get("correlationid"),
        causation_id=attrs.get("causationid"),
        reply_to=attrs.get("replyto"),
        priority=priority,
    )


def encoded_size(message: Message) -> int:
    """Payload plus header bytes: what the size limit is checked against."""
    size = len(message.data) + 64 + len(message.id) + len(message.source) + len(message.type)
    for name, value in message.headers.items():
        size += len(name) + len(value) + 4
    return size
