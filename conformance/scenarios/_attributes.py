"""Message attributes that must survive every hop (first delivery, nack, delayed
redelivery): one helper publishes a message with all of them set, one checks them.

Not a scenario module: it registers nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import bus
from conformance._scenario import expect

__all__ = ["Sent", "expect_attributes", "publish_with_attributes"]

# The same values as roundtrip_attributes: non-ASCII and empty header values too, so
# a hop that re-encodes the message (a wait queue, a retry stream) is caught mangling them.
HEADERS: dict[str, str] = {"tenant": "a", "x-unicode": "grüße ✓ 日本", "empty": ""}
KEY = "user-42"
TYPE = "com.example.job.created"
CORRELATION_ID = "saga-1"
CAUSATION_ID = "cmd-7"
TRACE_PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
SCHEMA_VERSION = "3"


@dataclass(frozen=True)
class Sent:
    """What :func:`publish_with_attributes` published, beyond the fixed attributes."""

    id: str
    topic: str
    data: bytes
    source: str


async def publish_with_attributes(b: bus.Bus, topic: str, data: bytes) -> Sent:
    """Publish ``data`` (bytes) to ``topic`` with every optional attribute set."""
    mid = await b.publish(
        topic,
        data,
        key=KEY,
        headers=HEADERS,
        type=TYPE,
        correlation_id=CORRELATION_ID,
        causation_id=CAUSATION_ID,
        trace_parent=TRACE_PARENT,
        schema_version=SCHEMA_VERSION,
    )
    return Sent(mid, topic, data, b.source)


def expect_attributes(m: bus.Message, sent: Sent, what: str) -> None:
    """Fail unless ``m`` is the message ``sent``, every attribute intact.

    ``what`` names the delivery in the failure message ("redelivery", ...).
    """
    expect(m.id == sent.id, f"{what}: id {m.id!r} != published {sent.id!r}")
    expect(m.topic == sent.topic, f"{what}: topic {m.topic!r} != {sent.topic!r}")
    expect(m.data == sent.data, f"{what}: payload {m.data!r} != {sent.data!r}")
    expect(m.content_type == "application/octet-stream", f"{what}: content_type {m.content_type!r}")
    expect(dict(m.headers) == HEADERS, f"{what}: headers {dict(m.headers)!r} != {HEADERS!r}")
    expect(m.key == KEY, f"{what}: key {m.key!r}")
    expect(m.type == TYPE, f"{what}: type {m.type!r}")
    expect(m.source == sent.source, f"{what}: source {m.source!r} != {sent.source!r}")
    expect(m.correlation_id == CORRELATION_ID, f"{what}: correlation_id {m.correlation_id!r}")
    expect(m.causation_id == CAUSATION_ID, f"{what}: causation_id {m.causation_id!r}")
    expect(m.trace_parent == TRACE_PARENT, f"{what}: trace_parent {m.trace_parent!r}")
    expect(m.schema_version == SCHEMA_VERSION, f"{what}: schema_version {m.schema_version!r}")
    expect(m.time.tzinfo is not None, f"{what}: time must be timezone-aware (UTC)")
