"""What the NATS JetStream backend declares (README table, errors, conformance skips)."""

from __future__ import annotations

from bus.capabilities import Capabilities, Feature, emulated, native, unsupported

__all__ = ["CAPABILITIES"]

CAPABILITIES = Capabilities(
    "nats",
    {
        Feature.BROADCAST: native(
            "ephemeral pull consumer per subscriber, DeliverPolicy new (re-created from its "
            "next stream sequence if the server drops it)"
        ),
        Feature.REPLAY: native("DeliverPolicy all on the topic's stream (limits retention)"),
        Feature.KEY_ORDER: native(
            "one stream per topic, a group's durable consumer delivers in stream order; "
            "redeliveries come later"
        ),
        Feature.DELAY: emulated(
            "NATS 2.9 cannot schedule: held in the <prefix>-DELAYED stream, a mover consumer "
            "shared by connected bus processes republishes when due (nak with delay until "
            "then); durable across restarts"
        ),
        Feature.NACK_DELAY: native("-NAK with delay"),
        Feature.PRIORITY: unsupported(
            "JetStream 2.9 delivers a consumer's messages in stream order and has no priority; "
            "emulating it needs a consumer per level per group polled in turn, which breaks "
            "per-key order and multiplies pull round trips"
        ),
        Feature.DEAD_LETTER: emulated(
            "confirmed republish to <topic>.dlq with bus-dlq-* headers, then +TERM of the original"
        ),
        Feature.LEASE: native("consumer AckWait = ack_timeout; in_progress() sends +WPI"),
        Feature.REQUEST_REPLY: native(
            "request stored in the topic stream (durable) with a core-NATS inbox as reply_to; "
            "reply by core publish"
        ),
        Feature.NO_RESPONDERS: native(
            "each live consumer holds a core queue subscription on <prefix>._live.<topic>; the "
            "server's 503 no-responders status answers the probe when none does"
        ),
    },
)
