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
from collections.abc import Container, Mapping, Sequence

from bus import codec
from bus.errors import DecodeError, InvalidHeader
from bus.message import NO_HEADERS, Message, assemble

__all__ = [
    "RESERVED_PREFIXES",
    "SLOTS",
    "attribute_slots",
    "build",
    "format_time",
    "from_headers",
    "to_headers",
    "validate_headers",
]

RESERVED_PREFIXES = ("ce-", "ce_", "bus-")
_RESERVED_NAMES = frozenset({"content-type", "traceparent"})


_OPTIONAL = (
    ("schema_version", "schemaversion"),
    ("key", "partitionkey"),
    ("correlation_id", "correlationid"),
    ("causation_id", "causationid"),
    ("reply_to", "replyto"),
)


def validate_headers(headers: Mapping[str, str] | None) -> Mapping[str, str]:
    """Check user headers are ``str -> str`` and not reserved; return them (a copy,
    or one shared read-only empty mapping for none)."""
    if not isinstance(headers, Mapping) and headers is not None:
        raise InvalidHeader(f"headers must be a mapping str -> str, got {type(headers).__name__}")
    if not headers:
        return NO_HEADERS
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidHeader(f"headers must be str -> str, got {name!r}: {type(value).__name__}")
        if not name:
            raise InvalidHeader("header names must not be empty")
        lower = name.lower()
        if lower.startswith(RESERVED_PREFIXES) or lower in _RESERVED_NAMES:
            raise InvalidHeader(f"header name {name!r} is reserved by the bus")
    return dict(headers)


# The last time formatted and its text: the library stamps every message of one
# millisecond with the same datetime object (bus._ids.stamp), so a batch formats its
# time once. One tuple, replaced whole: a thread switch cannot pair a text with
# another time.
_formatted: tuple[dt.datetime | None, str] = (None, "")


def format_time(when: dt.datetime) -> str:
    """``when`` in RFC 3339 (``datetime.isoformat``), as the ``time`` attribute travels."""
    global _formatted
    last, text = _formatted
    if when is not last:
        text = when.isoformat()
        _formatted = (when, text)
    return text


def to_headers(message: Message, prefix: str = "ce-") -> dict[str, str]:
    """All attributes and user headers of ``message`` as one ``str -> str`` mapping."""
    out = dict(message.headers)
    out[prefix + "specversion"] = "1.0"
    out[prefix + "id"] = message.id
    out[prefix + "source"] = message.source
    out[prefix + "type"] = message.type
    out[prefix + "time"] = format_time(message.time)
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


# Where each attribute header goes while decoding: one slot per attribute, plus
# the alternative spellings (``<prefix>datacontenttype``, ``<prefix>traceparent``,
# which lose to ``content-type`` / ``traceparent``) and ``<prefix>specversion``.
(
    _ID, _TYPE, _SOURCE, _TIME, _CONTENT_TYPE, _SCHEMA, _KEY, _TRACE, _CORRELATION,
    _CAUSATION, _REPLY_TO, _PRIORITY, _CONTENT_TYPE_ALT, _TRACE_ALT, _SPEC,
) = range(15)  # fmt: skip
SLOTS = 15
"""Length of the attribute list :func:`build` takes."""


def reply_to_name(prefix: str = "ce-") -> str:
    """The header that carries ``reply_to``: a receive path that finds no such header
    knows the message asks for no reply without decoding the rest
    (:func:`bus.message.deferred`)."""
    return prefix + "replyto"


@functools.cache
def attribute_slots(prefix: str = "ce-") -> dict[str, int]:
    """Header name -> slot in the attribute list of :func:`build`.

    A decoder makes one pass over the headers: a name found here is an attribute
    (its value goes to ``attrs[slot]``); any other name not starting with ``prefix``
    is a user header; other prefixed names are unknown attributes and are dropped.
    """
    return {
        prefix + "id": _ID,
        prefix + "type": _TYPE,
        prefix + "source": _SOURCE,
        prefix + "time": _TIME,
        "content-type": _CONTENT_TYPE,
        prefix + "schemaversion": _SCHEMA,
        prefix + "partitionkey": _KEY,
        "traceparent": _TRACE,
        prefix + "correlationid": _CORRELATION,
        prefix + "causationid": _CAUSATION,
        reply_to_name(prefix): _REPLY_TO,
        prefix + "priority": _PRIORITY,
        prefix + "datacontenttype": _CONTENT_TYPE_ALT,
        prefix + "traceparent": _TRACE_ALT,
        prefix + "specversion": _SPEC,
    }


def build(
    topic: str,
    data: bytes,
    attrs: Sequence[str | None],
    user: Mapping[str, str],
    prefix: str = "ce-",
) -> Message:
    """The :class:`Message` of decoded attribute values (``attrs``, indexed by
    :func:`attribute_slots`) and user headers.

    Raises :class:`bus.DecodeError` when ``id`` is missing or ``time`` / ``priority``
    is malformed.
    """
    mid = attrs[_ID]
    if mid is None:
        raise DecodeError(f"message on {topic!r} carries no {prefix}id header")
    raw_time, raw_priority = attrs[_TIME], attrs[_PRIORITY]
    try:
        time = dt.datetime.fromisoformat(raw_time) if raw_time is not None else None
        priority = int(raw_priority) if raw_priority is not None else None
    except ValueError as exc:
        raise DecodeError(f"message {mid} has a malformed attribute: {exc}") from exc
    return assemble(
        mid,
        topic,
        data,
        attrs[_TYPE] or "",
        attrs[_SOURCE] or "",
        time or dt.datetime.now(dt.UTC),
        attrs[_CONTENT_TYPE] or attrs[_CONTENT_TYPE_ALT] or codec.OCTET_STREAM,
        attrs[_SCHEMA],
        attrs[_KEY],
        user,
        attrs[_TRACE] or attrs[_TRACE_ALT],
        attrs[_CORRELATION],
        attrs[_CAUSATION],
        attrs[_REPLY_TO],
        priority,
    )


def from_headers(
    topic: str,
    data: bytes,
    headers: Mapping[str, str],
    prefix: str = "ce-",
    skip: Container[str] = (),
) -> Message:
    """Rebuild a :class:`Message` from :func:`to_headers` output.

    Headers starting with ``prefix`` are attributes (unknown ones are dropped), as are
    ``content-type`` and ``traceparent``; names in ``skip`` (a backend's bookkeeping
    headers) are left out; every other header is a user header.
    Raises :class:`bus.DecodeError` when the mandatory ``id`` attribute is missing
    (the message was not published through this library or a CloudEvents producer).
    """
    # Runs once per delivered message on every backend: one pass, one dict lookup
    # per header.
    slots = attribute_slots(prefix)
    attrs: list[str | None] = [None] * SLOTS
    user: dict[str, str] = {}
    for name, value in headers.items():
        slot = slots.get(name)
        if slot is not None:
            attrs[slot] = value
        elif not name.startswith(prefix) and name not in skip:
            user[name] = value
    return build(topic, data, attrs, user, prefix)


def encoded_size(message: Message) -> int:
    """Payload plus every attribute and header: what the size limit is checked
    against (text counted in UTF-8 bytes, as it goes on the wire, plus a fixed
    allowance for names)."""
    m = message
    texts = [m.id, m.source, m.type, m.content_type]
    size = len(m.data) + 64
    for optional in (
        m.key,
        m.correlation_id,
        m.causation_id,
        m.trace_parent,
        m.schema_version,
        m.reply_to,
    ):
        if optional:
            texts.append(optional)
            size += 16
    for name, value in m.headers.items():
        texts += (name, value)
        size += 4
    text = "".join(texts)
    # ASCII (the usual case): as many bytes as characters, without encoding it
    return size + (len(text) if text.isascii() else len(text.encode()))
