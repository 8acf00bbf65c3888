"""Options of the NATS JetStream backend (URL query string or keyword arguments)."""

from __future__ import annotations

import re
from typing import Literal

import pydantic

from bus.options import BackendOptions

__all__ = ["DEFAULT_ACK_TIMEOUT", "NatsJetStreamOptions"]

#: Lease (consumer ``AckWait``) when ``ack_timeout`` is not given.
DEFAULT_ACK_TIMEOUT = 30.0

_SUBJECT_PREFIX = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_STREAM_PREFIX = re.compile(r"[A-Za-z0-9-]{1,32}")


class NatsJetStreamOptions(BackendOptions):
    """Everything the NATS JetStream backend can be told.

    ``ack_timeout`` (common option) is the group consumer's ``AckWait``; default
    :data:`DEFAULT_ACK_TIMEOUT` seconds.
    """

    subject_prefix: str = "bus"
    """Subjects are ``<subject_prefix>.<topic>``."""
    stream_prefix: str = "BUS"
    """Streams are ``<stream_prefix>_<encoded topic>``; internal ones ``<stream_prefix>-...``."""
    replicas: int = pydantic.Field(default=1, ge=1, le=5)
    """Replicas of each stream the backend creates (3 for an R3 stream in a cluster)."""
    storage: Literal["file", "memory"] = "file"
    """Storage of created streams. ``memory`` loses everything when the server stops."""
    max_age: float | None = pydantic.Field(default=None, gt=0)
    """Seconds a message is kept in its topic's stream (``None``: no age limit)."""
    max_bytes: int | None = pydantic.Field(default=None, gt=0)
    """Bytes kept per topic stream, oldest discarded first (``None``: unlimited)."""
    max_msgs: int | None = pydantic.Field(default=None, gt=0)
    """Messages kept per topic stream, oldest discarded first (``None``: unlimited)."""
    duplicate_window: float = pydantic.Field(default=120.0, gt=0, le=86_400)
    """Seconds the server remembers ``Nats-Msg-Id`` values: a publish retried within
    it is stored once."""
    max_deliver: int | None = pydantic.Field(default=None, ge=1)
    """Server-side cap on deliveries of one message to a group (``None``: unlimited).
    A message that reaches it is no longer delivered (the server only emits an
    advisory), so prefer the worker's ``Retry`` + dead-letter."""
    max_ack_pending: int = pydantic.Field(default=10_000, ge=1)
    """Unsettled deliveries one group may have across all its members."""
    ephemeral_inactive_threshold: float = pydantic.Field(default=300.0, gt=0)
    """Seconds before the server removes the consumer of a broadcast subscriber
    that stopped pulling (a crashed process leaves nothing behind for longer)."""
    reconnect_wait: float = pydantic.Field(default=0.5, gt=0, le=60)
    """Seconds between reconnect attempts (the client reconnects forever)."""
    pending_size: int = pydantic.Field(default=8 * 1024 * 1024, ge=0)
    """Bytes buffered while reconnecting before publishes fail (and are retried)."""
    delay_mover: bool = True
    """Run the mover of delayed messages in this process (see the module docstring)."""
    tls_ca_file: str | None = None
    """CA bundle for ``tls://`` (default: the system trust store)."""
    tls_cert_file: str | None = None
    """Client certificate (PEM) for mutual TLS."""
    tls_key_file: str | None = None
    """Key of ``tls_cert_file``."""
    tls_hostname: str | None = None
    """Server name to verify when the URL names an IP address."""

    @pydantic.field_validator("subject_prefix")
    @classmethod
    def _check_subject_prefix(cls, value: str) -> str:
        if not _SUBJECT_PREFIX.fullmatch(value):
            raise ValueError("must be dot-separated tokens of letters, digits, '_' and '-'")
        return value

    @pydantic.field_validator("stream_prefix")
    @classmethod
    def _check_stream_prefix(cls, value: str) -> str:
        if not _STREAM_PREFIX.fullmatch(value):
            raise ValueError("must be 1-32 letters, digits and '-'")
        return value

    @pydantic.model_validator(mode="after")
    def _check_tls(self) -> NatsJetStreamOptions:
        if self.tls_key_file and not self.tls_cert_file:
            raise ValueError("tls_key_file needs tls_cert_file")
        return self

    @property
    def lease(self) -> float:
        """The consumer ``AckWait`` in seconds."""
        return self.ack_timeout if self.ack_timeout is not None else DEFAULT_ACK_TIMEOUT
