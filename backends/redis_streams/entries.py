"""Messages <-> stream entries (CloudEvents binary mode: attributes as fields).

An entry's fields are the message's headers from :func:`bus.envelope.to_headers`
(``ce-id``, ``ce-source``, ``content-type``, user headers, ...) plus two library
fields, so a consumer in any language reads the payload from one field as published:

* ``bus-data`` - the payload bytes, untouched;
* ``bus-attempts`` - deliveries made before this entry (only on redeliveries).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from functools import partial

from bus.envelope import SLOTS, attribute_slots, build, reply_to_name, to_headers
from bus.errors import DecodeError
from bus.message import Message, deferred

__all__ = ["ATTEMPTS", "DATA", "Fields", "from_fields", "to_fields"]

log = logging.getLogger(__name__)

PREFIX = "ce-"
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


# Field names as they arrive (bytes) -> attribute slot; decoding an entry is one
# pass over its fields with one dict lookup each (it runs once per delivery).
_SLOTS = {name.encode(): slot for name, slot in attribute_slots(PREFIX).items()}
_DATA, _ATTEMPTS = DATA.encode(), ATTEMPTS.encode()
_REPLY_TO = reply_to_name(PREFIX).encode()
_PREFIX = PREFIX.encode()


def _pairs(fields: Fields) -> Iterable[tuple[bytes, bytes]]:
    if isinstance(fields, Mapping):
        return fields.items()
    it = iter(fields)
    return zip(it, it, strict=True)


def from_fields(topic: str, entry_id: str, fields: Fields) -> tuple[Message, int]:
    """The message of an entry and the deliveries made before it (``bus-attempts``).

    The payload and the attempt count are read at once; the other attributes are
    decoded when the handler first reads one (:func:`bus.message.deferred`).
    An entry not written by this library (no ``ce-id``) still becomes a message, with
    the entry id as its id and its fields as headers, so a foreign entry cannot wedge
    a consumer.
    """
    if type(fields) is list and fields and fields[0] == _DATA:
        # as this library writes entries (to_fields, the requeue script): bus-data
        # first, bus-attempts last when there is one
        data = fields[1]
        raw_prior = fields[-1] if fields[-2] == _ATTEMPTS else None
    else:
        if type(fields) is not dict:
            fields = dict(_pairs(fields or ()))
        data = fields.get(_DATA, b"")
        raw_prior = fields.get(_ATTEMPTS)
    prior = 0
    if raw_prior is not None:
        try:
            prior = int(raw_prior)
        except ValueError:
            prior = 0
    # a partial, not a closure: one object per entry instead of a function and cells
    # `in` on the flat list also matches values: a false match only decodes early
    replies = _REPLY_TO in fields
    decode = partial(_decode, topic, entry_id, data, fields)
    return deferred(topic, data, decode, replies=replies), prior


def _decode(topic: str, entry_id: str, data: bytes, fields: Fields) -> Message:
    attrs: list[str | None] = [None] * SLOTS
    user: dict[str, str] = {}
    slots = _SLOTS
    for name, value in _pairs(fields):
        slot = slots.get(name)
        if slot is not None:
            attrs[slot] = value.decode("utf-8", "replace")
        elif not name.startswith(_PREFIX) and name != _DATA and name != _ATTEMPTS:
            user[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    try:
        return build(topic, data, attrs, user, PREFIX)
    except DecodeError:
        log.warning("entry %s of %r is not a bus message; delivering it as is", entry_id, topic)
        foreign = {k: v for k, v in user.items() if not k.lower().startswith(("ce-", "bus-"))}
        return Message(id=f"redis-{entry_id}", topic=topic, data=data, headers=foreign)
