"""Options of the RabbitMQ backend (URL query string or keyword arguments)."""

from __future__ import annotations

import re
from typing import Literal

import pydantic

from bus.options import BackendOptions

__all__ = ["QueueType", "RabbitMQOptions"]

QueueType = Literal["quorum", "classic"]

_EXCHANGE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")


class RabbitMQOptions(BackendOptions):
    """Everything the RabbitMQ backend can be told.

    ``ack_timeout`` (common option) is refused: RabbitMQ has no per-delivery lease
    (see the ``lease`` capability); the server-wide ``consumer_timeout`` is a broker
    setting, not a client one.
    """

    exchange: str = "bus"
    """The durable topic exchange every topic is published to (routing key = topic).
    Its delayed-delivery companion is the headers exchange ``<exchange>.delay``; the
    internal queues are named ``_<exchange>.*``."""
    queue_type: QueueType = "quorum"
    """Type of the group queues (and delay wait queues). ``quorum``: replicated Raft
    queues with delivery counting and poison-message limits, no priorities (RabbitMQ
    3.10). ``classic``: single-node queues with ``x-max-priority`` priorities. Changing
    it for an existing group is refused with a ConfigurationError (see the package
    docstring)."""
    delivery_limit: int | None = pydantic.Field(default=None, ge=1)
    """Quorum queues only: ``x-delivery-limit``. A message returned (nack, consumer
    death) more than this many times is dead-lettered by the broker to ``<topic>.dlq``
    (``delivery_limit=2``: delivered at most 3 times). ``None`` (the default):
    unlimited, so the worker's Retry decides; a message whose handler kills its
    process every time then loops until the limit is set. It counts returns to the
    queue (nack without delay, a consumer that died or closed); ``nack(delay)``
    re-publishes a copy whose count starts again. Part of the queue's arguments:
    changing it for an existing group is refused like a queue type change."""
    on_unroutable: Literal["warn", "ignore", "raise"] = "warn"
    """What a publish that no queue receives does (no group declared on the topic, no
    broadcast subscriber): ``warn`` drops it and logs a WARNING (first per topic, then
    at most once a minute with a count); ``ignore`` drops it silently; ``raise`` raises
    PublishError. Requests always raise NoResponders; dead letters always raise."""
    reconnect_interval: float = pydantic.Field(default=1.0, gt=0, le=60)
    """Seconds between reconnect attempts after the connection is lost."""
    heartbeat: int = pydantic.Field(default=30, ge=0, le=600)
    """AMQP heartbeat in seconds (0: off). A silent dead peer is noticed after about
    three heartbeats."""
    publish_window: int = pydantic.Field(default=1000, ge=1, le=100_000)
    """Publishes of one ``publish_many`` in flight (awaiting confirms) at once."""
    tls_ca_file: str | None = None
    """CA bundle to verify an ``amqps://`` server (default: the system trust store)."""
    tls_cert_file: str | None = None
    """Client certificate (PEM) for mutual TLS."""
    tls_key_file: str | None = None
    """Key of ``tls_cert_file``."""
    tls_verify: bool = True
    """Verify the server certificate and host name (``False`` only for testing)."""

    @pydantic.field_validator("exchange")
    @classmethod
    def _check_exchange(cls, value: str) -> str:
        if not _EXCHANGE.fullmatch(value) or value.startswith("amq."):
            raise ValueError(
                "must be 1-100 letters, digits, '_', '-' and '.', not starting with "
                "'.' or 'amq.' (reserved by RabbitMQ)"
            )
        return value

    @pydantic.model_validator(mode="after")
    def _check(self) -> RabbitMQOptions:
        if self.ack_timeout is not None:
            raise ValueError(
                "ack_timeout is not supported: RabbitMQ has no per-delivery lease (an "
                "un-acked delivery stays with its consumer until the channel closes; "
                "consumer_timeout is a server-wide setting)"
            )
        if self.delivery_limit is not None and self.queue_type != "quorum":
            raise ValueError("delivery_limit needs queue_type=quorum")
        if self.tls_key_file and not self.tls_cert_file:
            raise ValueError("tls_key_file needs tls_cert_file")
        return self
