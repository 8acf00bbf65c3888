"""Messages <-> Kafka records (CloudEvents Kafka binding, binary mode).

The payload is the record value, untouched; every attribute is a record header with
the binding's ``ce_`` prefix (``ce_id``, ``ce_type``, ``content-type``, ...); the
message key is also the record key (so the default partitioner keeps per-key order).

Records written by the bus itself for redelivery carry bookkeeping headers, stripped
before the message reaches the user:

``bus-attempt``      attempt number of the next delivery (absent: 1)
``bus-group``        the only group this copy is for (other groups and broadcast
                     subscribers skip it)
``bus-not-before``   Unix time in ms before which no consumer delivers it
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from functools import partial
from operator import itemgetter

from bus import codec
from bus.envelope import from_headers, reply_to_name, to_headers
from bus.errors import DecodeError
from bus.message import Message, deferred

__all__ = [
    "ATTEMPT",
    "GROUP",
    "NOT_BEFORE",
    "ORIGIN",
    "PREFIX",
    "RecordHeaders",
    "decode_headers",
    "encode_headers",
    "to_message",
]

PREFIX = "ce_"
ATTEMPT = "bus-attempt"
GROUP = "bus-group"
NOT_BEFORE = "bus-not-before"
#: On a redelivery copy of a record without ``ce_id``: the id derived from the
#: original's position, so that the copy keeps the id consumers deduplicate by.
ORIGIN = "bus-origin-id"
_INTERNAL = (ATTEMPT, GROUP, NOT_BEFORE, ORIGIN)
_REPLY_TO = reply_to_name(PREFIX)
_name = itemgetter(0)

RecordHeaders = list[tuple[str, bytes]]


def encode_headers(message: Message, extra: Mapping[str, str] | None = None) -> RecordHeaders:
    """The record headers of ``message`` plus bookkeeping ``extra``."""
    headers = to_headers(message, PREFIX)
    if extra:
        headers.update(extra)
    return [(name, value.encode()) for name, value in headers.items()]


def decode_headers(raw: Sequence[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Record headers as ``str -> str`` (a foreign producer's binary header value is
    decoded with replacement characters rather than failing the whole fetch)."""
    out: dict[str, str] = {}
    for name, value in raw or ():
        out[name] = "" if value is None else value.decode("utf-8", "replace")
    return out


def to_message(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    timestamp_ms: int,
    headers: Sequence[tuple[str, bytes | None]],
) -> Message:
    """The :class:`Message` of a record; its attributes other than topic and data are
    decoded on first access (:func:`bus.message.deferred`).

    A record without ``ce_id`` (written by a non-CloudEvents producer), or with a
    malformed attribute, still becomes a message - id ``kafka:<topic>/<partition>/<offset>``
    (or its ``ce_id``; a redelivery copy keeps the original's), the record key as
    key, the record time as time, every header as a user header - so a foreign record
    is delivered rather than wedging the partition.
    """
    data = value or b""
    # a partial, not a closure: one object per record instead of a function and cells
    decode = partial(_decode, topic, partition, offset, key, data, timestamp_ms, headers)
    replies = _REPLY_TO in map(_name, headers)  # scanned in C: no generator per record
    return deferred(topic, data, decode, replies=replies)


def _decode(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    data: bytes,
    timestamp_ms: int,
    raw: Sequence[tuple[str, bytes | None]],
) -> Message:
    headers = decode_headers(raw)
    try:
        return from_headers(topic, data, headers, PREFIX, skip=_INTERNAL)
    except DecodeError:
        pass  # not (or malformed) CloudEvents: deliver it as a plain record
    user = {k: v for k, v in headers.items() if k not in _INTERNAL}
    return Message(
        id=user.get(PREFIX + "id") or headers.get(ORIGIN) or f"kafka:{topic}/{partition}/{offset}",
        topic=topic,
        data=data,
        time=dt.datetime.fromtimestamp(max(timestamp_ms, 0) / 1000, dt.UTC),
        content_type=user.pop("content-type", codec.OCTET_STREAM),
        key=key.decode("utf-8", "replace") if key is not None else None,
        headers=user,
    )
