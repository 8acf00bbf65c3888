"""One delivery of a message to one consumer, and its one-shot settlement."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from bus import codec
from bus._ids import uuid7
from bus.capabilities import Feature
from bus.envelope import encoded_size, validate_headers
from bus.errors import DeliveryStateError, InvalidArgument, MessageTooLarge
from bus.message import Message

if TYPE_CHECKING:
    from bus.backend import BackendSubscription

__all__ = ["DLQ_HEADERS", "MAX_REASON_CHARS", "Delivery"]

T = TypeVar("T")

#: Headers added to a dead-lettered message.
DLQ_HEADERS = (
    "bus-dlq-reason",  # why (free text from dead_letter(reason) or the handler's error)
    "bus-dlq-error",  # exception type, when a handler failed
    "bus-dlq-attempts",  # deliveries made, including the last
    "bus-dlq-group",  # the group that gave up ("" for broadcast)
    "bus-dlq-topic",  # the original topic
)

#: ``bus-dlq-reason`` is cut to this many characters (ending in "…"), so a dead
#: letter stays within the broker's size limit whatever the error's text.
MAX_REASON_CHARS = 2048

_ACK, _NACK, _DEAD = "ack", "nack", "dead_letter"


class Delivery:
    """A message handed to one consumer, to be settled exactly once.

    Settling is one-shot: repeating the *same* call (``ack`` twice, ``nack`` twice)
    is a no-op; a conflicting call (``nack`` after ``ack``) raises
    :class:`bus.DeliveryStateError`. The state changes before any I/O, so two tasks
    racing to settle one delivery cannot both win. A settling call that raises
    leaves the delivery unsettled again (the broker may not have it: a nack's delayed
    copy or a dead letter not written), so it can be settled once more, by the same
    call or another; the message may then come twice (at-least-once), never not at all.

    ``attempt`` is 1 on the first delivery and grows with every redelivery (nack,
    lease expiry, consumer death) as far as the backend can count it.
    """

    __slots__ = ("_state", "_sub", "attempt", "handle", "message", "replied")

    def __init__(
        self, subscription: BackendSubscription, message: Message, attempt: int, handle: Any
    ) -> None:
        self._sub = subscription
        self._state: str | None = None
        self.message = message
        self.attempt = attempt
        #: Backend-private reference (delivery tag, stream id, offset, ...).
        self.handle = handle
        #: True once :meth:`reply` was sent.
        self.replied = False

    def __repr__(self) -> str:
        return (
            f"<Delivery {self.message.id} topic={self.topic!r} attempt={self.attempt} "
            f"state={self._state or 'unsettled'}>"
        )

    @property
    def topic(self) -> str:
        return self.message.topic

    @property
    def group(self) -> str | None:
        return self._sub.group

    @property
    def settled(self) -> str | None:
        """``"ack"``, ``"nack"``, ``"dead_letter"`` or ``None`` while unsettled."""
        return self._state

    def decode(self, into: type[T]) -> T:
        """Decode the payload (see :meth:`bus.Message.decode`)."""
        return self.message.decode(into)

    def _transition(self, state: str) -> bool:
        """Record ``state``; False when already in it (no-op), raise on conflict."""
        if self._state is None:
            self._state = state
            return True
        if self._state == state:
            return False
        raise DeliveryStateError(
            f"delivery {self.message.id} was already settled with {self._state}(); "
            f"{state}() conflicts"
        )

    async def ack(self) -> None:
        """Done: the message will not be delivered to this group again."""
        if self._state is None:  # the common case, without a call to _transition
            self._state = _ACK
            try:
                await self._sub.ack(self)
            except BaseException:
                self._state = None
                raise
        else:
            self._transition(_ACK)  # a repeated ack is a no-op, a conflicting one raises

    async def nack(self, delay: float | None = None) -> None:
        """Deliver again, no earlier than ``delay`` seconds from now, to this member or
        another (which one is the backend's: Kafka re-queues a plain nack in the consumer
        that holds the partition)."""
        if delay is not None:
            if not (isinstance(delay, int | float) and math.isfinite(delay) and delay >= 0):
                raise InvalidArgument(f"nack delay must be a finite number >= 0, got {delay!r}")
            if delay > 0:
                self._sub.backend.capabilities.require(Feature.NACK_DELAY)
        if self._transition(_NACK):
            try:
                await self._sub.nack(self, delay or None)
            except BaseException:
                self._state = None  # e.g. the delayed copy was not written
                raise

    async def dead_letter(self, reason: str, *, error_type: str | None = None) -> None:
        """Move to ``<topic>.dlq`` with the reason, attempts, group and original topic
        in ``bus-dlq-*`` headers (see :data:`DLQ_HEADERS`). When it raises, the delivery
        is unsettled again (see the class docstring)."""
        self._sub.backend.capabilities.require(Feature.DEAD_LETTER)
        if self._transition(_DEAD):
            if len(reason) > MAX_REASON_CHARS:
                # an exception's text can be any size; the dead letter must still fit
                reason = reason[: MAX_REASON_CHARS - 1] + "…"
            headers = {
                "bus-dlq-reason": reason,
                "bus-dlq-attempts": str(self.attempt),
                "bus-dlq-group": self._sub.group or "",
                "bus-dlq-topic": self.message.topic,
            }
            if error_type:
                headers["bus-dlq-error"] = error_type
            try:
                await self._sub.dead_letter(self, headers)
            except BaseException:
                # The dead letter may not have been written (RabbitMQ: no queue on the
                # dead-letter topic), so the original was not settled: unsettled again,
                # the caller can nack it or try later instead of holding it for ever.
                self._state = None
                raise

    async def in_progress(self) -> None:
        """Still working: extend the lease so the message is not handed to another
        member. A no-op where the backend has no lease (see ``Feature.LEASE``)."""
        if self._state is not None:
            raise DeliveryStateError(f"delivery {self.message.id} is already settled")
        await self._sub.in_progress(self)

    async def reply(
        self, data: object, *, headers: Mapping[str, str] | None = None, type: str = ""
    ) -> str:
        """Send ``data`` to the requester (``message.reply_to``); returns the reply's id.

        Does not settle the delivery. Raises :class:`bus.InvalidArgument` when the
        message did not ask for a reply, :class:`bus.MessageTooLarge` (nothing sent)
        when the reply exceeds the backend's size limit.
        """
        request = self.message
        if not request.reply_to:
            raise InvalidArgument(f"message {request.id} has no reply_to; nobody waits")
        payload, content_type = codec.encode(data)
        backend = self._sub.backend
        answer = Message(
            id=uuid7(),
            topic=request.reply_to,
            data=payload,
            content_type=content_type,
            type=type,
            source=backend.options.source,
            headers=validate_headers(headers),
            correlation_id=request.correlation_id or request.id,
            causation_id=request.id,
            trace_parent=request.trace_parent,
        )
        limit = backend.options.max_message_bytes or backend.max_message_bytes
        size = encoded_size(answer)
        if size > limit:
            raise MessageTooLarge(size, limit, answer.topic)
        await backend.reply(answer)
        self.replied = True
        return answer.id
