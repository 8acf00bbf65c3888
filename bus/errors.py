"""The one error tree of the library.

Every error a user can see derives from :class:`BusError`; driver exceptions
(aio-pika, redis-py, nats-py, aiokafka) are translated at the backend boundary
with ``raise ... from exc`` so callers never import a driver to catch a failure::

    BusError
    ├── ConfigurationError        invalid URL, option or settings       (ValueError)
    │   └── UnknownBackend        no backend for a URL scheme; names the known ones
    ├── InvalidArgument           a bad argument to a call               (ValueError)
    │   ├── InvalidTopic          topic or group name outside the grammar
    │   ├── InvalidHeader         non-str header, reserved header name
    │   └── MessageTooLarge       payload above the backend's limit; nothing was sent
    ├── DecodeError               payload does not decode into the requested type (ValueError)
    ├── BrokerUnavailable         broker unreachable or lost past the timeout (ConnectionError)
    ├── PublishError              the broker did not confirm a publish
    ├── RequestError
    │   ├── RequestTimeout        no reply within the timeout                    (TimeoutError)
    │   └── NoResponders          nobody consumes the request topic
    ├── DeliveryStateError        conflicting settlement of one delivery
    ├── UnsupportedFeature        the backend cannot do this; see its capabilities
    └── BusClosed                 the bus or subscription was already closed
"""

from __future__ import annotations

__all__ = [
    "BrokerUnavailable",
    "BusClosed",
    "BusError",
    "ConfigurationError",
    "DecodeError",
    "DeliveryStateError",
    "InvalidArgument",
    "InvalidHeader",
    "InvalidTopic",
    "MessageTooLarge",
    "NoResponders",
    "PublishError",
    "RequestError",
    "RequestTimeout",
    "UnknownBackend",
    "UnsupportedFeature",
]


class BusError(Exception):
    """Base of every error raised by this library."""


class ConfigurationError(BusError, ValueError):
    """A URL, option or setting is invalid. Raised before any connection is made."""


class UnknownBackend(ConfigurationError):
    """No backend is registered for a URL scheme.

    ``known`` lists the schemes that are registered; ``suggestion`` is the closest
    one, if any, and is included in the message ("did you mean ...?").
    """

    def __init__(self, scheme: str, known: list[str], suggestion: str | None) -> None:
        self.scheme = scheme
        self.known = known
        self.suggestion = suggestion
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        super().__init__(
            f"no bus backend for scheme {scheme!r} (known schemes: {', '.join(known)}).{hint}"
        )


class InvalidArgument(BusError, ValueError):
    """An argument to a bus call is invalid; nothing was sent."""


class InvalidTopic(InvalidArgument):
    """A topic or group name does not match the topic grammar (see ``bus.topics``)."""


class InvalidHeader(InvalidArgument):
    """A header is not ``str -> str``, or uses a reserved name (``ce-*``, ``bus-*``)."""


class MessageTooLarge(InvalidArgument):
    """The encoded message exceeds the backend's limit; nothing was sent."""

    def __init__(self, size: int, limit: int, topic: str) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message of {size} bytes to {topic!r} exceeds the limit of {limit}")


class DecodeError(BusError, ValueError):
    """A payload cannot be decoded into the requested type. Retrying cannot fix it."""


class BrokerUnavailable(BusError, ConnectionError):
    """The broker cannot be reached (or was lost) within the configured timeout."""


class PublishError(BusError):
    """The broker did not accept (confirm) a published message."""


class RequestError(BusError):
    """Base of request/reply failures."""


class RequestTimeout(RequestError, TimeoutError):
    """No reply arrived within the request's timeout."""


class NoResponders(RequestError):
    """The backend knows that nothing consumes the request topic."""


class DeliveryStateError(BusError):
    """A delivery was settled twice in conflicting ways (e.g. ``ack`` then ``nack``)."""


class UnsupportedFeature(BusError):
    """The backend does not provide this feature; its capabilities say why."""

    def __init__(self, backend: str, feature: str, reason: str) -> None:
        self.backend = backend
        self.feature = feature
        self.reason = reason
        super().__init__(f"{backend} does not support {feature}: {reason}")


class BusClosed(BusError):
    """The bus, subscription or worker was closed."""
