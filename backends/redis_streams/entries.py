"""Messages <-> stream entries (CloudEvents binary mode: attributes as fields).

An entry's fields are the message's headers from :func:`bus.envelope.to_headers`
(``ce-id``, ``ce-source``, ``content-type``, user headers, ...) plus two library
fields, so a consumer in any language reads the payload from one field as published:

* ``bus-data`` - the payload bytes, untouched;
* ``bus-attempts`` - deliveries made before this entry (only on redeliveries).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from bus.envelope import from_headers, to_headers
from bus.errors import DecodeError
from bus.message import Message

__all__ = ["ATTEMPTS", "DATA", "Fields", "from_fields", "to_fields"]

log = logging.getLogger(__name__)

DATA = "bus-data"
ATTEMPTS = "bus-attempts"

Fields = Mapping[bytes, bytes] | Sequence[bytes]


def to_fields(message: Message) -> list[str | bytes]:
    """Flat ``[name, value, ...]`` list for XADD (or a script's ARGV)."""
    out: list[str | bytes] = [DATA, message.data]
    for name, value in to_headers(message).items():
        out.append(name)
        out.append(value)
    return out


def _pairs(fields: Fields) -> list[tuple[bytes, bytes]]:
    if isinstance(fields, Mapping):
        return list(fields.items())
    it = iter(fields)
    return list(zip(it, it, strict=True))


def from_fields(topic: str, entry_id: str, fields: Fields) -> tuple[Message, int]:
    """The message of an entry and the deliveries made before it (``bus-attempts``).

    An entry not written by this library (no ``ce-id``) still becomes a message, with
    the entry id as its id and its fields as headers, so a foreign entry cannot wedge
    a consumer.
    """
    data = b""
    prior = 0
    headers: dict[str, str] = {}
    for raw_name, raw_value in _pairs(fields):
        name = raw_name.decode("utf-8", "replace")
        if name == DATA:
            data = raw_value
        elif name == ATTEMPTS:
            try:
                prior = int(raw_value)
            except ValueError:
                prior = 0
        else:
            headers[name] = raw_value.decode("utf-8", "replace")
    try:
        return from_headers(topic, data, headers), prior
    except DecodeError:
        log.warning("entry %s of %r is not a bus message; delivering it as is", entry_id, topic)
        user = {k: v for k, v in headers.items() if not k.lower().startswith(("ce-", "bus-"))}
        user.pop("content-type", None)
        user.pop("traceparent", None)
        return Message(id=f"redis-{entry_id}", topic=topic, data=data, headers=user), prior
