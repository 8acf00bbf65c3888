"""Options of the Redis Streams backend (``bus.connect(url, **options)`` or the URL query)."""

from __future__ import annotations

from typing import Literal

import pydantic

from bus.options import BackendOptions

__all__ = ["DEFAULT_ACK_TIMEOUT", "RedisStreamsOptions"]

#: Lease used when ``ack_timeout`` is not set (seconds).
DEFAULT_ACK_TIMEOUT = 30.0


class RedisStreamsOptions(BackendOptions):
    """Typed options; every field has a named default and unknown names are rejected."""

    key_prefix: str = pydantic.Field(default="bus", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    """First part of every key: ``<prefix>:{<topic>}`` (the braces are the cluster hash tag)."""
    cluster: bool = False
    """Connect with the Redis Cluster client (the URL names one seed node). Every key of
    one topic shares one hash slot, so all scripts and multi-key reads stay on one node."""
    trim: Literal["acked", "maxlen", "none"] = "acked"
    """How history is bounded. ``acked`` (default): periodically ``XTRIM MINID ~`` below the
    oldest entry any group still needs (its oldest pending entry, or the first entry it
    has not read), keeping acknowledged entries younger than ``retention`` for broadcast
    readers and replay. ``maxlen``: ``XADD MAXLEN ~ maxlen`` (may drop entries a group has
    not consumed yet). ``none``: never trim."""
    maxlen: int = pydantic.Field(default=1_000_000, ge=1)
    """Approximate entries kept per stream with ``trim="maxlen"``."""
    retention: float = pydantic.Field(default=60.0, ge=0)
    """Seconds an entry every group has settled is still kept with ``trim="acked"``
    (broadcast subscribers lagging more than this may miss entries)."""
    housekeeping_interval: float = pydantic.Field(default=5.0, gt=0, le=3600)
    """Seconds between trim / idle-consumer cleanup passes, run by each subscriber and
    publisher of a topic (pipelined with its acks or publishes)."""
    consumer_idle_timeout: float = pydantic.Field(default=3600.0, gt=0)
    """A group consumer idle this long and holding no pending entry is deleted
    (``XGROUP DELCONSUMER``); a live one is simply re-created by its next read."""
    liveness_ttl: float = pydantic.Field(default=10.0, ge=1, le=3600)
    """Open subscriptions announce themselves every ``liveness_ttl / 3`` seconds; a
    subscriber that died without closing counts as live (``NoResponders`` is not raised)
    for at most this long."""
    ack_flush_interval: float = pydantic.Field(default=0.02, ge=0, le=5)
    """Acks (and lease renewals) are sent coalesced: one ``XACK`` per stream for all
    settled deliveries, before the next fetch, at close, or after this many seconds.
    ``0`` sends each ``ack()`` on its own and waits for it (slower, one round trip each)."""
    tls_ca_file: str | None = None
    """CA bundle to verify the server with (``rediss://``); default: the system store."""
    tls_cert_file: str | None = None
    """Client certificate for mutual TLS (``rediss://``)."""
    tls_key_file: str | None = None
    """Private key of ``tls_cert_file``."""
    tls_verify: bool = True
    """Verify the server certificate and host name (``rediss://``). Only disable for tests."""
