"""Isolated brokers for the restart scenario, for the built-in URL schemes.

The restart scenario never touches the broker under test (it may be a shared
service): it starts a private broker of the same kind on a free port through
:mod:`conformance.brokers`, restarts that one, and stops it afterwards. For
``memory://`` it uses a fresh in-process broker and :func:`backends.memory.restart`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from conformance.brokers import ProvisioningError
from conformance.context import IsolatedBroker, IsolatedBrokerFactory

__all__ = ["KIND_BY_SCHEME", "IsolatedBrokerUnavailable", "factory_for"]


class IsolatedBrokerUnavailable(ProvisioningError):
    """No private broker could be started for the restart scenario (no local binary, no
    Docker engine, ...). The runner reports the scenario as ``skip`` with this text,
    or as ``fail`` when provisioning is required (``CI=true``). A broker that started
    but failed to come back after its restart is a plain :class:`ProvisioningError`."""


KIND_BY_SCHEME = {
    "redis": "redis",
    "rediss": "redis",
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "nats": "nats",
    "tls": "nats",
    "kafka": "kafka",
}


@contextlib.asynccontextmanager
async def _memory() -> AsyncIterator[IsolatedBroker]:
    from backends.memory import restart

    name = f"isolated-{uuid.uuid4().hex[:8]}"

    async def do_restart() -> None:
        await restart(name, downtime=1.0)

    yield IsolatedBroker(f"memory://{name}", do_restart, keeps_data=True, plain=True)


def _private(kind: str) -> IsolatedBrokerFactory:
    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[IsolatedBroker]:
        from conformance.brokers import start_private

        try:
            broker = await asyncio.to_thread(start_private, kind)  # type: ignore[arg-type]
        except ProvisioningError as exc:
            raise IsolatedBrokerUnavailable(str(exc)) from exc
        try:

            async def do_restart() -> None:
                await asyncio.to_thread(broker.restart)

            # Tansu (the local Kafka-protocol broker) stores in memory only.
            yield IsolatedBroker(broker.url, do_restart, keeps_data=kind != "kafka", plain=True)
        finally:
            await asyncio.to_thread(broker.stop)

    return factory


def factory_for(url: str) -> IsolatedBrokerFactory | None:
    """The isolated-broker factory for ``url``'s scheme, or None for unknown schemes."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return _memory
    kind = KIND_BY_SCHEME.get(scheme)
    return _private(kind) if kind else None
