"""The message envelope.

A :class:`Message` is immutable. Its attributes follow CloudEvents 1.0 names
where one exists (``id``, ``source``, ``type``, ``time``, ``datacontenttype`` as
``content_type``) plus the W3C ``traceparent`` and the correlation / causation
ids that sagas and request/reply need. Backends carry every attribute as a
native header or property (CloudEvents *binary* mode, see ``bus.envelope``), and
``data`` travels as published, so a consumer in another language reads the
payload without unwrapping anything.
"""

from __future__ import annotations

import builtins
import datetime as dt
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from bus import codec

__all__ = ["NO_HEADERS", "Message", "assemble", "deferred"]

T = TypeVar("T")


class _NoHeaders(Mapping[str, str]):
    """The headers of a message that has none: one shared, read-only, empty mapping
    (equal to ``{}``; unlike an empty ``MappingProxyType`` it pickles, as itself)."""

    __slots__ = ()

    def __getitem__(self, name: str) -> str:
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "{}"

    def __reduce__(self) -> str:
        return "NO_HEADERS"  # pickled as a reference to the module's one instance


NO_HEADERS: Mapping[str, str] = _NoHeaders()


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One message as published and as delivered.

    ``id`` is a UUIDv7 (unique, sortable by creation time); ``time`` is UTC (on a
    published message, the millisecond in its id).
    ``key`` selects the ordering lane (Kafka partition, per-key order);
    ``headers`` are user headers ``str -> str``; ``priority`` is 0-9 or None.
    """

    id: str
    topic: str
    data: bytes
    type: str = ""
    source: str = ""
    time: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    content_type: str = codec.OCTET_STREAM
    schema_version: str | None = None
    key: str | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: NO_HEADERS)
    trace_parent: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    reply_to: str | None = None
    priority: int | None = None

    def decode(self, into: builtins.type[T]) -> T:
        """Decode ``data`` into ``into`` (a pydantic model, ``bytes``, ``str``, ``dict``, ...).

        Raises :class:`bus.DecodeError` if the payload does not fit.
        """
        return codec.decode(self.data, self.content_type, into)

    def json(self) -> Any:
        """Decode ``data`` as JSON (raises :class:`bus.DecodeError`)."""
        return codec.decode(self.data, codec.JSON, object)

    def evolve(self, **changes: Any) -> Message:
        """Return a copy with ``changes`` applied (messages are immutable)."""
        return replace(self, **changes)


# A frozen dataclass's generated __init__ sets each of the 15 fields through
# object.__setattr__ after binding 15 keyword arguments (~6 us on a 2-core CI
# machine). The library builds one Message per published and per delivered
# message, with every field already known, so it writes the slots directly
# (~2 us). The slot descriptors bypass the frozen __setattr__, which is what
# the dataclass __init__ does too.
_new = object.__new__
(
    _set_id, _set_topic, _set_data, _set_type, _set_source, _set_time, _set_content_type,
    _set_schema_version, _set_key, _set_headers, _set_trace_parent, _set_correlation_id,
    _set_causation_id, _set_reply_to, _set_priority,
) = (getattr(Message, name).__set__ for name in Message.__slots__)  # fmt: skip


def assemble(
    id: str,
    topic: str,
    data: bytes,
    type: str,
    source: str,
    time: dt.datetime,
    content_type: str,
    schema_version: str | None,
    key: str | None,
    headers: Mapping[str, str],
    trace_parent: str | None,
    correlation_id: str | None,
    causation_id: str | None,
    reply_to: str | None,
    priority: int | None,
) -> Message:
    """A :class:`Message` with every field given positionally, in declaration order.

    Equal to ``Message(id=id, topic=topic, ...)``; for the library's hot paths, which
    know every field. Nothing is validated (the constructor validates nothing either).
    """
    m = _new(Message)
    _set_id(m, id)
    _set_topic(m, topic)
    _set_data(m, data)
    _set_type(m, type)
    _set_source(m, source)
    _set_time(m, time)
    _set_content_type(m, content_type)
    _set_schema_version(m, schema_version)
    _set_key(m, key)
    _set_headers(m, headers)
    _set_trace_parent(m, trace_parent)
    _set_correlation_id(m, correlation_id)
    _set_causation_id(m, causation_id)
    _set_reply_to(m, reply_to)
    _set_priority(m, priority)
    return m


_FIELDS: tuple[str, ...] = Message.__slots__


def _field_tuple(message: Message) -> tuple[Any, ...]:
    return tuple(getattr(message, name) for name in _FIELDS)


class _Deferred(Message):
    """A delivered :class:`Message` whose attributes other than ``topic`` and ``data``
    come from a plain message decoded on first access (see :func:`deferred`).

    It behaves as that plain message: equal to it either way round, the same repr;
    pickling, copying, :meth:`evolve` and ``dataclasses.replace`` give plain messages.
    """

    __slots__ = ("_decode", "_plain", "_replies")
    _decode: Callable[[], Message] | None
    _plain: Message | None
    _replies: bool

    def __new__(cls, **fields: Any) -> Message:  # type: ignore[misc]
        # only reached through dataclasses.replace(): the copy is a plain message
        return Message(**fields)

    def _resolve(self) -> Message:
        plain = self._plain
        if plain is None:
            decode = self._decode
            assert decode is not None
            plain = decode()
            _set_plain(self, plain)
            _set_decode(self, None)  # let go of the wire form
        return plain

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Message):
            return self._resolve() == (other._resolve() if isinstance(other, _Deferred) else other)
        return NotImplemented

    __hash__ = Message.__hash__

    def __repr__(self) -> str:
        return repr(self._resolve())

    def __reduce__(self) -> tuple[Any, ...]:
        return (assemble, _field_tuple(self._resolve()))

    def evolve(self, **changes: Any) -> Message:
        return replace(self._resolve(), **changes)

    def decode(self, into: builtins.type[T]) -> T:
        # The content type only describes a failure (the target type decides how
        # the payload is read): a handler taking a typed payload - what bus.consume
        # passes - must not decode the envelope for it.
        return codec.decode(self.data, self._content_type, into)

    def _content_type(self) -> str:
        return self.content_type


def _deferred_attribute(name: str) -> property:
    read = getattr(Message, name).__get__

    def get(self: _Deferred) -> Any:
        plain = self._plain
        return read(plain if plain is not None else self._resolve())

    return property(get, doc=f"``{name}``, decoded on first access")


def _deferred_reply_to() -> property:
    read = vars(Message)["reply_to"].__get__

    def get(self: _Deferred) -> Any:
        plain = self._plain
        if plain is None:
            if not self._replies:
                return None
            plain = self._resolve()
        return read(plain)

    return property(
        get,
        doc="``reply_to``, decoded on first access (None at once when the wire form carries none)",
    )


for _name in _FIELDS:
    if _name not in ("topic", "data", "reply_to"):
        setattr(_Deferred, _name, _deferred_attribute(_name))
_Deferred.reply_to = _deferred_reply_to()  # type: ignore[assignment]
_set_decode = vars(_Deferred)["_decode"].__set__
_set_plain = vars(_Deferred)["_plain"].__set__
_set_replies = vars(_Deferred)["_replies"].__set__


def deferred(
    topic: str, data: bytes, decode: Callable[[], Message], *, replies: bool = True
) -> Message:
    """A :class:`Message` whose ``topic`` and ``data`` are set and whose other
    attributes are read from ``decode()``, called once, on first access.

    For backends' receive paths: a handler that reads only the payload never pays
    for decoding the envelope (~3 us per message). ``decode`` returns the message
    the backend would have built eagerly (same ``topic`` and ``data``) and must not
    raise: a backend turns what it cannot decode into a message, as it does eagerly.
    ``replies=False`` is the backend's promise that the wire form carries no reply
    address: ``reply_to`` is then None without decoding (a worker reads it after
    every handler, to send the return value to a requester).
    """
    m = _new(_Deferred)
    _set_topic(m, topic)
    _set_data(m, data)
    _set_decode(m, decode)
    _set_plain(m, None)
    _set_replies(m, replies)
    return m
