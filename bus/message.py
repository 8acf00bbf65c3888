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
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, TypeVar

from bus import codec

__all__ = ["Message"]

T = TypeVar("T")

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One message as published and as delivered.

    ``id`` is a UUIDv7 (unique, sortable by creation time); ``time`` is UTC.
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
    headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
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
