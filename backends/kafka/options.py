"""Typed options of the Kafka backend (``bus.connect("kafka://...", **options)``).

Kafka-specific knobs keep the Kafka client's own names and units (milliseconds), so
an operator recognises them; the bus-wide options (``connect_timeout``,
``operation_timeout``, ...) stay in seconds.
"""

from __future__ import annotations

from typing import Literal

import pydantic

from bus.options import BackendOptions

__all__ = ["KafkaOptions"]


class KafkaOptions(BackendOptions):
    """Options of ``kafka://host:port[,host:port...]``.

    Credentials may also come from the URL (``kafka://user:password@host:9092``), which
    turns on SASL (``PLAIN`` unless ``sasl_mechanism`` says otherwise) over plaintext,
    or over TLS when ``security_protocol="SASL_SSL"``.
    """

    # -- topics ------------------------------------------------------------------
    partitions: int = pydantic.Field(default=3, ge=1, le=10_000)
    """Partitions of the topics this backend creates on demand. Per-key order holds
    within a partition; more partitions let more members of one group work at once."""
    replication_factor: int | None = pydantic.Field(default=None, ge=1, le=100)
    """Replicas of the topics this backend creates. ``None``: the broker's
    ``default.replication.factor`` when it reports one, else 1. Set 3 on a production
    cluster."""

    # -- producer ----------------------------------------------------------------
    idempotence: bool | None = None
    """Idempotent producer (no duplicate from a producer retry). ``None``: on when the
    broker grants a producer id (InitProducerId), off otherwise (Tansu's memory
    storage does not). ``True`` fails ``connect`` when the broker refuses."""
    linger_ms: int = pydantic.Field(default=0, ge=0, le=60_000)
    """Producer ``linger.ms``: how long a batch waits for more records."""
    max_batch_bytes: int = pydantic.Field(default=256 * 1024, ge=1024)
    """Producer ``batch.size``: bytes per partition batch (``publish_many`` fills them)."""
    compression: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    """Producer compression (the codec's Python package must be installed)."""

    # -- consumer ----------------------------------------------------------------
    fetch_max_wait_ms: int = pydantic.Field(default=20, ge=0, le=60_000)
    """How long the broker may hold a fetch that finds no data. Tansu holds it that
    long even when a record arrives, so there the end-to-end latency follows it (p50
    8 / 23 / 132 ms at 20 / 100 / 500 ms) and an idle subscription costs one fetch
    per wait (4.2 / 1.2 / 0.8 % of a core). Apache Kafka answers a held fetch as soon
    as data arrives, so on Kafka itself a longer wait (e.g. 500) spares the idle
    fetches without the latency."""
    session_timeout_ms: int = pydantic.Field(default=6_000, ge=1_000, le=3_600_000)
    """A group member silent this long is dead: its partitions (and what it held
    un-acked) go to the other members. 6 s is Kafka's default minimum
    (``group.min.session.timeout.ms``). Tansu also holds every join ~half of it."""
    heartbeat_interval_ms: int = pydantic.Field(default=500, ge=50, le=60_000)
    """Heartbeats; also how soon a member notices a rebalance (a join or a leave)."""
    rebalance_timeout_ms: int | None = pydantic.Field(default=None, ge=1_000)
    """How long the coordinator waits for members to rejoin (``None``: the session
    timeout)."""
    max_poll_interval_ms: int = pydantic.Field(default=300_000, ge=1_000)
    """A member that has not fetched for this long leaves its group (Kafka's
    ``max.poll.interval.ms``): the only bound on a delivery held without settling."""
    revoke_grace_ms: int = pydantic.Field(default=2_000, ge=0, le=60_000)
    """When a rebalance takes partitions away, deliveries already handed out from them
    get this long to be settled first (their acks are committed rather than ignored,
    which would deliver them again); what is still unsettled then is handed back.
    Holds up the group's rebalance by at most this much, and never more than half the
    rebalance timeout (a member slower than that would be dropped from the group)."""
    commit_interval_ms: int = pydantic.Field(default=200, ge=1, le=60_000)
    """Settlements are committed (contiguous settled prefix per partition) with the
    next fetch, at close, on a rebalance, and otherwise after at most this long: the
    window of acks a crash can lose (those messages are delivered again)."""
    log_loss_check_ms: int | None = pydantic.Field(default=2_000, ge=100)
    """Emulates Kafka's ``OFFSET_OUT_OF_RANGE`` for brokers that do not send it (Tansu):
    a partition whose fetch position stays above the log's end this long lost its log
    (a memory-only broker restarted) and is read again from its start. ``None``: off."""

    # -- security ------------------------------------------------------------------
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = None
    """``None``: ``SASL_PLAINTEXT`` when credentials are given, ``SSL`` when a CA or
    client certificate is given, ``SASL_SSL`` when both, else ``PLAINTEXT``."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_plain_username: str | None = None
    """SASL user (aiokafka's name; used by every mechanism, not only ``PLAIN``)."""
    sasl_plain_password: pydantic.SecretStr | None = None
    """SASL password. Never logged nor shown in errors (also redacted from URLs)."""
    ssl_cafile: str | None = None
    """CA bundle to verify the brokers (``None``: the system's trust store)."""
    ssl_certfile: str | None = None
    """Client certificate (mutual TLS)."""
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True

    client_id: str = pydantic.Field(default="bus", min_length=1, max_length=200)
    """Kafka ``client.id`` (broker logs, quotas)."""

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> KafkaOptions:
        if self.ack_timeout is not None:
            # accepted and ignored, it would promise a lease Kafka does not have
            raise ValueError(
                "ack_timeout is not supported: Kafka has no per-message lease (a stuck "
                "member keeps its partitions until session_timeout_ms or "
                "max_poll_interval_ms expires; set those instead)"
            )
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")
        return self
