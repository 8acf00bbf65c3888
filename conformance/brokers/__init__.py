"""Broker provisioning for the bus test-suite and benchmarks.

Tests get brokers from :func:`find_or_start` (shared, never disrupted) or
:func:`start_private` / :func:`start_nats_cluster` (owned by the test, may be stopped,
killed and restarted). See the README's section "Brokers in tests"::

    from conformance.brokers import find_or_start, start_private

    broker = find_or_start("redis")          # env URL, loopback service, binary or container
    with start_private("nats", max_payload=8 << 20) as nats:
        nats.restart()                       # same port, JetStream store kept

Environment: ``BUS_TEST_REDIS_URL``, ``BUS_TEST_RABBITMQ_URL``, ``BUS_TEST_NATS_URL``,
``BUS_TEST_KAFKA_URL`` override discovery; ``CI=true`` makes provisioning failures fatal
(:func:`provisioning_required`). pytest fixtures live in
:mod:`conformance.brokers.fixtures`.
"""

from ._model import Broker, BrokerKind, Origin, ProvisioningError, redact_url
from ._probe import free_port
from ._provision import (
    env_var,
    find_or_start,
    provisioning_required,
    start_nats_cluster,
    start_private,
)

__all__ = [
    "Broker",
    "BrokerKind",
    "Origin",
    "ProvisioningError",
    "env_var",
    "find_or_start",
    "free_port",
    "provisioning_required",
    "redact_url",
    "start_nats_cluster",
    "start_private",
]
