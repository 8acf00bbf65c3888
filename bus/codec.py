"""Payload encoding and decoding.

``encode`` turns what a user publishes into ``(bytes, content_type)``:

=========================  ==========================  =========================
value                      bytes                       content type
=========================  ==========================  =========================
``bytes`` / ``bytearray``  as is                       ``application/octet-stream``
``str``                    UTF-8                       ``text/plain; charset=utf-8``
pydantic ``BaseModel``     ``model_dump_json()``       ``application/json``
anything JSON-able         compact JSON (pydantic)     ``application/json``
=========================  ==========================  =========================

``decode`` validates with pydantic (``TypeAdapter``), so ``decode(Email)``,
``decode(dict)`` and ``decode(list[int])`` all work; any failure is a
:class:`bus.DecodeError` naming the target type.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import pydantic
from pydantic_core import PydanticSerializationError

from bus.errors import DecodeError, InvalidArgument

__all__ = ["JSON", "OCTET_STREAM", "TEXT", "decode", "encode"]

T = TypeVar("T")

OCTET_STREAM = "application/octet-stream"
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


def encode(value: object) -> tuple[bytes, str]:
    """Encode a payload; raises :class:`bus.InvalidArgument` if it is not serialisable."""
    if isinstance(value, bytes):
        return value, OCTET_STREAM
    if isinstance(value, bytearray | memoryview):
        return bytes(value), OCTET_STREAM
    if isinstance(value, str):
        return value.encode(), TEXT
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump_json().encode(), JSON
    try:
        return _any_adapter().dump_json(value), JSON
    except PydanticSerializationError as exc:
        raise InvalidArgument(
            f"cannot encode payload of type {type(value).__name__}: {exc}"
        ) from exc


@functools.cache
def _any_adapter() -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(Any)


@functools.cache
def _adapter(into: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(into)


def decode(data: bytes, content_type: str | Callable[[], str], into: type[T]) -> T:
    """Decode ``data`` into ``into``; raises :class:`bus.DecodeError`.

    ``content_type`` (or a function returning it) only describes a failure: the
    target type decides how the payload is read, so a function is called only then.
    """
    if into is bytes:
        return cast(T, data)
    if into is str:
        try:
            return cast(T, data.decode())
        except UnicodeDecodeError as exc:
            raise DecodeError(f"payload is not UTF-8 text: {exc}") from exc
    try:
        if into is object:
            return cast(T, _any_adapter().validate_json(data))
        return cast(T, _adapter(cast(Any, into)).validate_json(data))
    except pydantic.ValidationError as exc:
        name = getattr(into, "__name__", repr(into))
        # the payload itself stays out of the message: it may hold personal data
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)[:5]
        )
        described = content_type if isinstance(content_type, str) else content_type()
        raise DecodeError(
            f"payload ({described}, {len(data)} bytes) does not decode into {name}: {problems}"
        ) from None
    except TypeError as exc:  # an un-hashable / unsupported target type
        raise DecodeError(f"cannot decode into {into!r}: {exc}") from exc
