"""The backend SPI: what a broker adapter implements.

The public :class:`bus.Bus` validates arguments, builds messages, runs the handler
runtime and enforces one-shot settlement; a backend only moves messages. The SPI
is deliberately small:

* :class:`Backend` - one connection to one broker: ``connect``, ``close``,
  ``publish`` (a batch, returns once every message is confirmed), ``declare``,
  ``subscribe``; optionally ``request`` / ``reply`` / ``has_consumers`` (a generic
  inbox-based request/reply built on publish + broadcast subscribe is provided).
* :class:`BackendSubscription` - one consumer: ``fetch`` a batch of
  :class:`bus.Delivery`, settle them (``ack`` / ``nack`` / ``dead_letter`` /
  ``in_progress``), ``close``.

A third-party backend subclasses both, declares :attr:`Backend.capabilities`,
registers its URL scheme under the ``bus.backends`` entry-point group, and runs
the conformance suite (``bus conformance myscheme://...``).

Rules every backend follows:

* Driver exceptions never escape: translate them (``raise BrokerUnavailable(...)
  from exc``). URLs in messages go through :func:`bus.redact_url`.
* ``subscribe`` returns only when the subscription is live: a message published
  after it returns is delivered to it (broadcast) or kept for the group.
* A group keeps every message published after the group was first declared or
  subscribed, with or without a connected member.
* Settlement calls may be coalesced on the wire (one XACK / ``basic_ack(multiple)``
  / commit for many deliveries); they must reach the broker before the next
  ``fetch`` returns and before ``close`` returns.
* ``close`` of a subscription returns every unsettled delivery to its group;
  ``fetch`` blocked at that time returns an empty batch promptly.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, Literal

from bus.capabilities import Capabilities, Feature
from bus.errors import UnsupportedFeature
from bus.options import BackendOptions

if TYPE_CHECKING:
    from bus._rpc import InboxRPC
    from bus.delivery import Delivery
    from bus.message import Message

__all__ = ["Backend", "BackendSubscription", "Start"]

Start = Literal["latest", "earliest"]


class Backend(abc.ABC):
    """One connection to a broker. Subclasses set the three class attributes."""

    scheme: ClassVar[str]
    """Name used in tables and errors (``redis``, ``rabbitmq``, ...)."""
    capabilities: ClassVar[Capabilities]
    Options: ClassVar[type[BackendOptions]] = BackendOptions

    def __init__(self, url: str, options: BackendOptions) -> None:
        self.url = url
        self.options = options
        self._rpc: InboxRPC | None = None

    # -- lifecycle ---------------------------------------------------------------
    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect within ``options.connect_timeout`` or raise :class:`bus.BrokerUnavailable`."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush pending settlements, close subscriptions and the connection. Idempotent."""

    @property
    @abc.abstractmethod
    def max_message_bytes(self) -> int:
        """Largest encoded message (payload + headers) the broker accepts."""

    # -- producing -----------------------------------------------------------------
    @abc.abstractmethod
    async def publish(self, messages: Sequence[Message], *, delay: float | None = None) -> None:
        """Publish ``messages`` (all to the same topic) and return once the broker has
        durably accepted every one; raise :class:`bus.PublishError` (or
        :class:`bus.BrokerUnavailable`) otherwise. ``delay`` is in seconds."""

    @abc.abstractmethod
    async def declare(self, topic: str, groups: Sequence[str]) -> None:
        """Idempotently create ``topic`` and ``groups`` so the groups keep messages
        published from now on, before any member connects."""

    # -- consuming -----------------------------------------------------------------
    @abc.abstractmethod
    async def subscribe(
        self, topic: str, *, group: str | None, start: Start, prefetch: int
    ) -> BackendSubscription:
        """Open a consumer. ``group=None`` is broadcast. ``start`` only matters when the
        group (or broadcast consumer) is new."""

    # -- teardown --------------------------------------------------------------------
    async def delete_topic(self, topic: str, groups: Sequence[str] = ()) -> bool:
        """Remove what the broker keeps for ``topic``: its messages and, for the groups
        the broker can find (and every one in ``groups``), their positions and pending
        deliveries. Its dead-letter topic is a topic of its own. Idempotent: an absent
        topic is not an error. Returns False when the backend cannot delete (the
        default); broker errors raise as for any other operation.

        Meant for teardown of short-lived topics (the conformance suite removes what
        each scenario created); not a :class:`bus.Bus` operation, because no member of
        a group may be connected while its state goes away."""
        return False

    # -- request / reply (generic implementation; override for native support) ----
    async def request(self, message: Message, timeout: float) -> Message:
        """Publish ``message`` with a reply address and wait for its reply."""
        self.capabilities.require(Feature.REQUEST_REPLY)
        return await self._inbox().request(message, timeout)

    async def reply(self, message: Message) -> None:
        """Send ``message`` (its ``topic`` is the request's ``reply_to``)."""
        self.capabilities.require(Feature.REQUEST_REPLY)
        await self._inbox().reply(message)

    async def has_consumers(self, topic: str) -> bool:
        """Whether any group or subscriber consumes ``topic`` (``NO_RESPONDERS``)."""
        cap = self.capabilities[Feature.NO_RESPONDERS]
        raise UnsupportedFeature(self.scheme, Feature.NO_RESPONDERS.value, cap.how)

    def _inbox(self) -> InboxRPC:
        if self._rpc is None:
            from bus._rpc import InboxRPC

            self._rpc = InboxRPC(self)
        return self._rpc

    async def _close_inbox(self) -> None:
        if self._rpc is not None:
            rpc, self._rpc = self._rpc, None
            await rpc.close()


class BackendSubscription(abc.ABC):
    """One consumer of a topic, for one group or broadcast."""

    def __init__(self, backend: Backend, topic: str, group: str | None) -> None:
        self.backend = backend
        self.topic = topic
        self.group = group

    @abc.abstractmethod
    async def fetch(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        """Up to ``max_messages`` deliveries; an empty batch after ``timeout`` seconds
        or once :meth:`close` was called."""

    @abc.abstractmethod
    async def ack(self, delivery: Delivery) -> None:
        """Settle as done. May be coalesced (see module docstring)."""

    @abc.abstractmethod
    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        """Deliver again (to this member or another), no earlier than ``delay`` seconds
        from now; the next delivery has ``attempt + 1``."""

    async def dead_letter(self, delivery: Delivery, headers: Mapping[str, str]) -> None:
        """Move to ``<topic>.dlq`` with ``headers`` added, then settle the original.

        The default publishes a copy to the dead-letter topic (confirmed) and acks the
        original, so the message is never lost between the two (at worst duplicated
        when the ack is lost). Backends with a native dead-letter route may override.
        """
        from bus.topics import dlq_topic

        original = delivery.message
        dead = original.evolve(
            topic=dlq_topic(original.topic), headers={**original.headers, **headers}
        )
        await self.backend.publish([dead])
        await self.ack(delivery)

    async def in_progress(self, delivery: Delivery) -> None:  # noqa: B027 - optional hook
        """Extend the delivery's lease. Backends without leases need not override it."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush settlements; return unsettled deliveries to the group. Idempotent."""
