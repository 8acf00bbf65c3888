"""Translation of aio-pika / aiormq / socket exceptions at the backend boundary.

Nothing here lets a driver type escape: callers ``raise BusError(...) from exc``
with a message built by :func:`describe`, which never contains the password (the
URL is redacted, and the raw password is masked wherever a driver quoted it).
"""

from __future__ import annotations

import asyncio

import aiormq.exceptions as amqp

from bus.errors import MessageTooLarge

__all__ = [
    "RETRYABLE",
    "HeadersTooLarge",
    "describe",
    "is_connection_trouble",
    "is_frame_refused",
    "is_inequivalent",
]

#: Failures that a reconnect may cure: publish and consume retry them.
RETRYABLE: tuple[type[BaseException], ...] = (
    amqp.AMQPConnectionError,
    amqp.ChannelInvalidStateError,
    amqp.ChannelNotFoundEntity,  # e.g. the exchange vanished: the robust channel re-declares it
    ConnectionError,
    OSError,
)


class HeadersTooLarge(MessageTooLarge):
    """The properties and headers of a message do not fit in one AMQP frame; nothing
    was sent. ``size`` is the content header frame, ``limit`` the negotiated
    ``frame_max``: AMQP 0-9-1 cannot split a content header over frames, and a broker
    that receives a larger one closes the whole connection (``frame_too_large``)."""

    def __init__(self, size: int, limit: int, topic: str) -> None:
        super().__init__(size, limit, topic)
        self.args = (
            f"the properties and headers of a message to {topic!r} take {size} bytes on "
            f"the wire, more than one AMQP frame carries ({limit} bytes, the broker's "
            "frame_max): shorten its headers; nothing was sent",
        )


def is_frame_refused(exc: BaseException) -> bool:
    """The broker closed the connection over a frame we sent (``FRAME_ERROR``, e.g.
    ``frame_too_large``): sending the same frame after the reconnect would only close
    the connection again, and every channel on it with it."""
    return isinstance(exc, amqp.ConnectionFrameError)


def is_connection_trouble(exc: BaseException) -> bool:
    """True for failures that a reconnect may cure (the operation can be retried)."""
    if isinstance(exc, asyncio.CancelledError):
        # a closing channel cancels its pending confirms; our task was not cancelled
        task = asyncio.current_task()
        return task is not None and task.cancelling() == 0
    if isinstance(exc, amqp.ChannelClosed) and not isinstance(exc, amqp.ChannelNotFoundEntity):
        return False
    if isinstance(exc, RuntimeError):
        # aio-pika: "<Connection ...> closed", "Connection was not opened"
        text = str(exc).lower()
        return "closed" in text or "not opened" in text or "reconnecting" in text
    return isinstance(exc, RETRYABLE)


def is_inequivalent(exc: BaseException) -> bool:
    """A declare refused because the entity exists with other arguments."""
    return isinstance(exc, amqp.ChannelPreconditionFailed) and "inequivalent" in str(exc)


def describe(exc: BaseException, secret: str | None) -> str:
    """``exc`` as ``Type: text`` with ``secret`` masked."""
    text = str(exc) or repr(exc)
    if isinstance(exc, amqp.ProbableAuthenticationError | amqp.AuthenticationError):
        text = f"authentication failed ({text})"
    if secret:
        text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}"
