"""What the RabbitMQ backend declares (README table, errors, conformance skips).

The declaration depends on ``queue_type``: quorum queues (the default) have no
message priorities in RabbitMQ 3.10, classic queues do. ``RabbitMQBackend.capabilities``
(the class attribute, used for the README table) is the default, quorum one; a
connected backend reports the declaration of its own ``queue_type``.
"""

from __future__ import annotations

from bus.capabilities import Capabilities, Capability, Feature, native, unsupported

__all__ = ["CLASSIC", "QUORUM", "capabilities_for"]


def _common(priority: Capability, attempts: str) -> dict[Feature, Capability]:
    return {
        Feature.BROADCAST: native(
            "exclusive auto-delete queue per subscriber, bound to the topic; re-created "
            "after a reconnect"
        ),
        Feature.REPLAY: unsupported(
            "classic and quorum queues delete what they delivered, so a new group cannot "
            "read history; RabbitMQ streams (the rabbitmq_stream plugin, a user choice) "
            "would be needed"
        ),
        Feature.KEY_ORDER: native(
            "one FIFO queue per group; one publisher channel keeps publish order; "
            "redeliveries and delayed messages come later"
        ),
        Feature.DELAY: native(
            "per-delay TTL wait queue dead-lettering into the topic exchange through a "
            "fanout exchange (no plugin); delay rounded up to a ladder (10 ms steps, then "
            "R20): never early, at most 10 ms or 14.3% late"
        ),
        Feature.NACK_DELAY: native(
            "confirmed copy to a per-delay TTL wait queue dead-lettering back into the "
            "group's queue, then ack; same rounding as delay"
        ),
        Feature.PRIORITY: priority,
        Feature.DEAD_LETTER: native(
            "group queues dead-letter into <topic>.dlq (broker-side: delivery limit, "
            "rejects); dead_letter(reason) publishes a confirmed copy with the bus-dlq-* "
            "headers there (a reject cannot carry the reason), then acks; " + attempts
        ),
        Feature.LEASE: unsupported(
            "RabbitMQ has no per-delivery lease: an un-acked delivery stays with its "
            "consumer until the channel or connection closes (then it is redelivered at "
            "once); consumer_timeout is a server-wide setting. in_progress() has nothing "
            "to extend"
        ),
        Feature.REQUEST_REPLY: native(
            "direct reply-to (amq.rabbitmq.reply-to): no reply queue, the reply goes "
            "straight to the requesting channel"
        ),
        Feature.NO_RESPONDERS: native(
            "mandatory publish: a request no queue receives (no group declared, no "
            "subscriber) is returned by the broker; a request to a group without a live "
            "member waits in its queue until the timeout"
        ),
    }


QUORUM = Capabilities(
    "rabbitmq",
    _common(
        unsupported(
            "quorum queues (the default queue_type) have no message priorities in "
            "RabbitMQ 3.10; connect with queue_type=classic for x-max-priority queues"
        ),
        "attempts counted by the quorum queue's x-delivery-count",
    ),
)

CLASSIC = Capabilities(
    "rabbitmq",
    _common(
        native("classic queues with x-max-priority 9 (queue_type=classic)"),
        "attempts counted by a bus-attempts header (nack re-publishes a copy) plus the "
        "redelivered flag",
    ),
)


def capabilities_for(queue_type: str) -> Capabilities:
    return QUORUM if queue_type == "quorum" else CLASSIC
