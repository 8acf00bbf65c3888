"""What a scenario gets: fresh names, connections that are cleaned up, helpers that
wait with a bound, and (when the harness can give one) a broker it may restart.

When a scenario ends, the topics it named (and their dead-letter topics) are deleted
with the groups it named (:meth:`bus.backend.Backend.delete_topic`), so a run leaves
nothing behind on a shared broker. What a backend cannot find is said there (RabbitMQ
cannot list queues: a group not named through :meth:`Context.group` would stay)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import bus
from bus.capabilities import Capabilities
from bus.topics import dlq_topic
from conformance._scenario import ConformanceFailure, expect

__all__ = ["Context", "IsolatedBroker", "IsolatedBrokerFactory"]

log = logging.getLogger(__name__)

#: Longest the deletion of one scenario's topics may take (an unreachable broker, a
#: scenario that left it down) before the run goes on without it.
TEARDOWN_TIMEOUT = 30.0


@dataclass
class IsolatedBroker:
    """A broker the scenario may restart, started for it alone."""

    url: str
    restart: Callable[[], Awaitable[None]]
    keeps_data: bool = True
    """False when a restart loses stored messages (memory-only brokers such as Tansu):
    the restart scenario then checks recovery, not retention across the restart."""
    plain: bool = False
    """A single-node loopback broker without TLS or credentials (one the suite started
    itself): the suite's options that say how the broker under test is reached or
    deployed are not applied to it (see :meth:`Context.connect_isolated`)."""


#: Option names that describe how the broker under test is reached or deployed:
#: transport security, credentials, cluster mode, replication.
_DEPLOYMENT_PREFIXES = ("tls_", "ssl_", "sasl_")
_DEPLOYMENT_NAMES = frozenset({"security_protocol", "cluster", "replicas", "replication_factor"})


IsolatedBrokerFactory = Callable[[], contextlib.AbstractAsyncContextManager[IsolatedBroker]]


class Context:
    """Per-scenario state. Everything opened through it is closed when it ends."""

    def __init__(
        self,
        url: str,
        options: dict[str, Any],
        capabilities: Capabilities,
        max_message_bytes: int,
        isolated: IsolatedBrokerFactory | None,
    ) -> None:
        self.url = url
        self.options = options
        self.capabilities = capabilities
        self.max_message_bytes = max_message_bytes
        self.isolated = isolated
        self._run = uuid.uuid4().hex[:10]
        self._count = 0
        self._buses: list[bus.Bus] = []
        self._topics: list[str] = []
        self._groups: list[str] = []

    def topic(self, name: str) -> str:
        """A topic no other scenario or run uses (deleted when the scenario ends)."""
        self._count += 1
        topic = f"conformance.{name}.{self._run}{self._count}"
        self._topics.append(topic)
        return topic

    def group(self, name: str = "g") -> str:
        """A group name no other scenario or run uses (its state on the scenario's
        topics is deleted when the scenario ends)."""
        self._count += 1
        group = f"{name}-{self._run}{self._count}"
        self._groups.append(group)
        return group

    async def connect(self, url: str | None = None, **options: Any) -> bus.Bus:
        b = await bus.connect(url or self.url, **{**self.options, **options})
        self._buses.append(b)
        return b

    async def connect_isolated(self, broker: IsolatedBroker, **options: Any) -> bus.Bus:
        """Connect to an isolated broker with the suite's options and ``options``; to a
        ``plain`` one without the suite's TLS, SASL, cluster and replication options
        (a rediss:// broker's CA file would make the plain redis:// one refuse)."""
        base = self.options
        if broker.plain:
            base = {
                k: v
                for k, v in base.items()
                if not k.startswith(_DEPLOYMENT_PREFIXES) and k not in _DEPLOYMENT_NAMES
            }
        b = await bus.connect(broker.url, **{**base, **options})
        self._buses.append(b)
        return b

    async def aclose(self) -> None:
        """Close every connection, then delete the scenario's topics."""
        for b in reversed(self._buses):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(b.close(), 15)
        self._buses.clear()
        if self._topics:
            try:
                async with asyncio.timeout(TEARDOWN_TIMEOUT):
                    await self.delete_topics()
            except Exception as exc:
                # the scenario's verdict stands; what stays behind is named uniquely
                log.warning(
                    "conformance: could not delete the topics of run %s on %s: %s",
                    self._run,
                    bus.redact_url(self.url),
                    f"{type(exc).__name__}: {exc}",
                )
            self._topics.clear()

    async def delete_topics(self) -> None:
        """Delete every topic named through :meth:`topic`, and its dead-letter topic,
        with the groups named through :meth:`group`, on a connection of its own (the
        scenario's are closed: no member may hold a group that goes away)."""
        async with bus.connect(self.url, **self.options) as b:
            for topic in self._topics:
                for name in (topic, dlq_topic(topic)):
                    await b.backend.delete_topic(name, self._groups)

    # -- helpers ---------------------------------------------------------------
    @staticmethod
    async def collect(
        sub: bus.Subscription,
        count: int,
        *,
        timeout: float = 15.0,
        ack: bool = True,
        what: str = "messages",
    ) -> list[bus.Delivery]:
        """Receive ``count`` deliveries within ``timeout`` seconds (acking them unless
        ``ack=False``) or fail saying how many arrived."""
        got: list[bus.Delivery] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                d = await sub.receive(timeout=remaining)
            except TimeoutError:
                break
            got.append(d)
            if ack:
                await d.ack()
        expect(
            len(got) >= count,
            f"expected {count} {what} within {timeout}s on {sub.topic}, got {len(got)}",
        )
        return got

    @staticmethod
    async def expect_nothing(sub: bus.Subscription, within: float, why: str) -> None:
        """Fail if anything is delivered within ``within`` seconds."""
        try:
            d = await sub.receive(timeout=within)
        except TimeoutError:
            return
        raise ConformanceFailure(f"{why}: unexpected delivery {d!r}")

    @staticmethod
    def ids(deliveries: Iterable[bus.Delivery]) -> list[str]:
        return [d.message.id for d in deliveries]

    @staticmethod
    def expect_same_ids(
        got: Iterable[str], sent: Iterable[str], what: str, *, duplicates_ok: bool = False
    ) -> None:
        got_list, sent_set = list(got), set(sent)
        missing = sent_set - set(got_list)
        extra = set(got_list) - sent_set
        expect(not missing, f"{what}: {len(missing)} of {len(sent_set)} messages lost")
        expect(not extra, f"{what}: {len(extra)} messages that were never sent to this topic")
        if not duplicates_ok:
            dupes = len(got_list) - len(set(got_list))
            expect(dupes == 0, f"{what}: {dupes} duplicate deliveries without any failure")

    @contextlib.asynccontextmanager
    async def isolated_broker(self) -> AsyncIterator[IsolatedBroker]:
        expect(self.isolated is not None, "no isolated broker factory")
        assert self.isolated is not None
        async with self.isolated() as broker:
            yield broker
