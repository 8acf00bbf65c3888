"""bus: one async messaging contract over RabbitMQ, Redis Streams, NATS JetStream,
Kafka and an in-memory broker, chosen by URL.

    import bus

    async with bus.connect("redis://127.0.0.1:6379/0", source="controller") as b:
        await b.declare("jobs.classify", groups=["workers"])
        await b.publish("jobs.classify", Email(...), key="user-42")
        async with b.subscribe("jobs.classify", group="workers") as sub:
            async for d in sub:
                email = d.decode(Email)
                await d.ack()

No broker client library is imported until a URL asks for its backend.
"""

from bus._redact import redact_url
from bus.backend import Backend, BackendSubscription, Start
from bus.capabilities import Capabilities, Capability, Feature, Support
from bus.client import Bus, Outgoing, connect
from bus.delivery import DLQ_HEADERS, Delivery
from bus.errors import (
    BrokerUnavailable,
    BusClosed,
    BusError,
    ConfigurationError,
    DecodeError,
    DeliveryStateError,
    InvalidArgument,
    InvalidHeader,
    InvalidTopic,
    MessageTooLarge,
    NoResponders,
    PublishError,
    RequestError,
    RequestTimeout,
    UnknownBackend,
    UnsupportedFeature,
)
from bus.message import Message
from bus.options import BackendOptions
from bus.registry import known_schemes, register
from bus.retry import Backoff, Exponential, Fixed, Retry
from bus.settings import BusSettings
from bus.subscription import Subscription
from bus.worker import Worker, WorkerStats

__version__ = "0.1.0"

__all__ = [
    "DLQ_HEADERS",
    "Backend",
    "BackendOptions",
    "BackendSubscription",
    "Backoff",
    "BrokerUnavailable",
    "Bus",
    "BusClosed",
    "BusError",
    "BusSettings",
    "Capabilities",
    "Capability",
    "ConfigurationError",
    "DecodeError",
    "Delivery",
    "DeliveryStateError",
    "Exponential",
    "Feature",
    "Fixed",
    "InvalidArgument",
    "InvalidHeader",
    "InvalidTopic",
    "Message",
    "MessageTooLarge",
    "NoResponders",
    "Outgoing",
    "PublishError",
    "RequestError",
    "RequestTimeout",
    "Retry",
    "Start",
    "Subscription",
    "Support",
    "UnknownBackend",
    "UnsupportedFeature",
    "Worker",
    "WorkerStats",
    "connect",
    "known_schemes",
    "redact_url",
    "register",
]
