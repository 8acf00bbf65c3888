"""Messages on the wire: CloudEvents binary-mode headers in NATS headers.

Every attribute travels as a native NATS header (``bus.envelope.to_headers``) and
the payload as the message body, untouched. NATS headers are HTTP-flavoured: a
name is an RFC 7230 token, a value a single line whose leading / trailing
whitespace the client strips. A header that would not survive that (a name with
a space or ``:``, a value with a line break or edge whitespace, a name starting
with ``Nats-`` that the server would interpret, or ``Status`` / ``Description``
that the client uses for status messages) is carried instead inside one JSON
header, ``bus-hx``, and restored on receipt. Normal headers never need it.

``Nats-Msg-Id`` carries the message id, so the stream's duplicate window drops a
retried publish. Headers the server adds (``Nats-*``) are not user headers and
are removed on receipt.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import NamedTuple

from bus.envelope import SLOTS, attribute_slots, build, from_headers, reply_to_name, to_headers
from bus.errors import DecodeError
from bus.message import Message, deferred

__all__ = [
    "ESCAPED",
    "MSG_ID",
    "AckMeta",
    "ack_meta",
    "decode",
    "delivered",
    "encode",
    "wire_size",
]

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
ESCAPED = "bus-hx"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CLIENT_NAMES = frozenset({"status", "description"})
# "NATS/1.0\r\n" ... "\r\n"
_HEADER_FRAME = 12


@functools.lru_cache(maxsize=4096)  # names repeat: the attributes on every message
def _native_name(name: str) -> bool:
    lower = name.lower()
    return (
        _TOKEN.fullmatch(name) is not None
        and not lower.startswith("nats-")
        and lower not in _CLIENT_NAMES
    )


def _native_value(value: str) -> bool:
    if value != value.strip() or "\r" in value or "\n" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def encode(message: Message, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The NATS headers of ``message`` (plus ``extra`` library headers)."""
    headers: dict[str, str] = {}
    escaped: dict[str, str] = {}
    for name, value in to_headers(message).items():
        if _native_name(name) and _native_value(value):
            headers[name] = value
        else:
            escaped[name] = value
    if extra:
        headers.update(extra)
    if escaped:
        headers[ESCAPED] = json.dumps(escaped, ensure_ascii=True, separators=(",", ":"))
    headers[MSG_ID] = message.id
    return headers


def wire_size(headers: Mapping[str, str], payload: bytes) -> int:
    """Bytes the server counts against ``max_payload`` (header block + body)."""
    size = _HEADER_FRAME + len(payload)
    for name, value in headers.items():
        encoded = len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
        size += len(name) + encoded + 4
    return size


_SLOTS = attribute_slots()
_ID = _SLOTS["ce-id"]
_REPLY_TO = reply_to_name("ce-")


def delivered(
    topic: str, data: bytes, headers: Mapping[str, str] | None, fallback_id: str
) -> Message:
    """The :class:`Message` of a delivery, its attributes decoded on first access
    (:func:`bus.message.deferred`: a handler that reads only the payload does not
    pay for them); see :func:`decode`."""
    # reply_to travels in its own header, or escaped inside bus-hx
    replies = headers is not None and (_REPLY_TO in headers or ESCAPED in headers)
    decode_it: Callable[[], Message] = functools.partial(decode, topic, data, headers, fallback_id)
    return deferred(topic, data, decode_it, replies=replies)


def decode(topic: str, data: bytes, headers: Mapping[str, str] | None, fallback_id: str) -> Message:
    """Rebuild the :class:`Message` published to ``topic``. Never raises.

    A message published by a plain NATS client (no ``ce-id``) gets its
    ``Nats-Msg-Id``, else ``fallback_id`` (stream and sequence), as id, so it can
    still be consumed and settled. One whose attributes do not decode (a malformed
    ``ce-time``, ``ce-priority`` or ``bus-hx``: a faulty or foreign producer) is
    delivered with its id, payload and the headers that are not attributes, rather
    than lost.
    """
    try:
        return _decode(topic, data, headers, fallback_id)
    except DecodeError as exc:
        log.warning(
            "message %s on %r is not a bus message (%s); delivered as is", fallback_id, topic, exc
        )
        found = headers or {}
        user = {
            name: value
            for name, value in found.items()
            if not name.lower().startswith(("ce-", "bus-", "nats-")) and name != "content-type"
        }
        msg_id = found.get("ce-id") or found.get(MSG_ID) or fallback_id
        return Message(id=msg_id, topic=topic, data=data, headers=user)


def _decode(
    topic: str, data: bytes, headers: Mapping[str, str] | None, fallback_id: str
) -> Message:
    # Once per delivery: one pass over the headers (the escaped-headers case, rare,
    # takes the two-pass path below).
    attrs: list[str | None] = [None] * SLOTS
    user: dict[str, str] = {}
    msg_id = fallback_id
    slots = _SLOTS
    for name, value in (headers or {}).items():
        slot = slots.get(name)
        if slot is not None:
            attrs[slot] = value
        elif name[:5].lower() == "nats-":
            if name == MSG_ID:
                msg_id = value
        elif name == ESCAPED:
            return _decode_escaped(topic, data, headers or {}, fallback_id)
        elif not name.startswith("ce-"):
            user[name] = value
    if attrs[_ID] is None:
        attrs[_ID] = msg_id
    return build(topic, data, attrs, user)


def _decode_escaped(
    topic: str, data: bytes, headers: Mapping[str, str], fallback_id: str
) -> Message:
    clean: dict[str, str] = {}
    msg_id = fallback_id
    for name, value in headers.items():
        if name[:5].lower() == "nats-":
            if name == MSG_ID:
                msg_id = value
            continue
        if name == ESCAPED:
            try:
                restored = json.loads(value)
            except ValueError as exc:
                raise DecodeError(f"malformed {ESCAPED} header on {topic!r}") from exc
            if isinstance(restored, dict):
                clean.update({str(k): str(v) for k, v in restored.items()})
            continue
        clean[name] = value
    if "ce-id" not in clean:
        clean["ce-id"] = msg_id
    return from_headers(topic, data, clean)


class AckMeta(NamedTuple):
    """What the ``$JS.ACK`` reply subject of a delivery says about it."""

    stream: str
    consumer: str
    delivered: int
    stream_seq: int


def ack_meta(reply: str) -> AckMeta | None:
    """Parse ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>``
    (and the v2 form with domain and account hash); None if it is not one."""
    tokens = reply.split(".")
    n = len(tokens)
    if n < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    base = 2 if n == 9 else 4
    try:
        return AckMeta(tokens[base], tokens[base + 1], int(tokens[base + 2]), int(tokens[base + 3]))
    except (ValueError, IndexError):
        return None
