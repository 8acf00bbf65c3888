"""Typed, validated options shared by every backend.

Each backend extends :class:`BackendOptions` with its own fields; unknown options
are rejected (``extra="forbid"``) with a :class:`bus.ConfigurationError` that lists
the valid names. Options come from keyword arguments to :func:`bus.connect`, from
the URL's query string (``redis://h/0?ack_timeout=30``), or from
:class:`bus.BusSettings`; keyword arguments win over the query string.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import pydantic

from bus.errors import ConfigurationError

__all__ = ["BackendOptions", "parse_options"]

OptionsT = TypeVar("OptionsT", bound="BackendOptions")


def _default_source() -> str:
    return f"//{socket.gethostname()}"


class BackendOptions(pydantic.BaseModel):
    """Options every backend understands."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    source: str = pydantic.Field(default_factory=_default_source, min_length=1)
    """CloudEvents ``source`` stamped on every published message."""
    connect_timeout: float = pydantic.Field(default=10.0, gt=0, le=300)
    """Seconds to establish the connection before :class:`bus.BrokerUnavailable`."""
    operation_timeout: float = pydantic.Field(default=30.0, gt=0, le=3600)
    """Seconds to wait for a broker confirm (publish) before :class:`bus.PublishError`
    or :class:`bus.BrokerUnavailable` (the broker cannot be reached), including time
    spent reconnecting."""
    ack_timeout: float | None = pydantic.Field(default=None, gt=0)
    """Lease of a delivery: unsettled this long, it goes to another member of the
    group (backends declaring the ``lease`` capability). ``None``: backend default.
    Backends without leases (RabbitMQ, Kafka) reject it rather than ignore it."""
    max_message_bytes: int | None = pydantic.Field(default=None, gt=0)
    """Refuse larger messages with :class:`bus.MessageTooLarge` (default: the
    backend's own limit)."""


def parse_options(model: type[OptionsT], url: str, options: Mapping[str, Any]) -> OptionsT:
    """Build ``model`` from the URL query string and keyword ``options``."""
    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    merged: dict[str, Any] = {**query, **{k: v for k, v in options.items() if v is not None}}
    try:
        return model.model_validate(merged)
    except pydantic.ValidationError as exc:
        valid = ", ".join(sorted(model.model_fields))
        problems = "; ".join(
            f"{'.'.join(_shown(p) for p in err['loc']) or 'options'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        )
        raise ConfigurationError(f"invalid option(s): {problems}. Valid options: {valid}") from None


def _shown(name: object) -> str:
    # Option names are identifiers. Anything else in the query string is more likely
    # the tail of a password with an unencoded "?" in it than a mistyped option.
    text = str(name)
    return text if text.isidentifier() else "(a name that is not an identifier, not shown)"
