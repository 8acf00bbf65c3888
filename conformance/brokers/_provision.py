"""find_or_start / start_private / start_nats_cluster: the provisioning policy."""

from __future__ import annotations

import os
import secrets
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence

from ._container import ContainerRunner, docker_unavailable_reason
from ._model import (
    KINDS,
    SCHEMES,
    STANDARD_PORTS,
    TLS_SCHEMES,
    Broker,
    BrokerKind,
    ProvisioningError,
    check_kind,
    loopback_url,
    redact_url,
    url_endpoints,
)
from ._probe import free_port, probe, tcp_connect
from ._process import (
    ProcessRunner,
    jetstream_meta_leader,
    kafka_runner,
    nats_runner,
    rabbitmq_runner,
    redis_runner,
)

#: Per connection attempt when checking a URL from the environment or loopback.
PROBE_TIMEOUT = 2.0

_shared: dict[BrokerKind, Broker] = {}
_kind_locks: dict[BrokerKind, threading.Lock] = {kind: threading.Lock() for kind in KINDS}


def env_var(kind: BrokerKind) -> str:
    """Name of the environment variable holding a broker URL: ``BUS_TEST_<KIND>_URL``."""
    return f"BUS_TEST_{kind.upper()}_URL"


def provisioning_required(env: Mapping[str, str] = os.environ) -> bool:
    """True when ``CI`` is ``true`` (or ``1``/``yes``): then a broker that cannot be
    provisioned must fail the run rather than skip the tests that need it."""
    return env.get("CI", "").strip().lower() in ("true", "1", "yes")


def _from_env(kind: BrokerKind, var: str, url: str) -> Broker:
    """Validate a URL given in the environment: right scheme, reachable, speaks the protocol."""
    shown = redact_url(url)
    try:
        # url_endpoints refuses a user part the parser did not recognise before it
        # reads a host or port, so no piece of a password reaches a message or a probe.
        endpoints = url_endpoints(url, STANDARD_PORTS[kind])
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise ProvisioningError(f"{kind}: {var}={shown} is not a valid URL: {exc}") from None
    if parts.scheme not in SCHEMES[kind]:
        expected = " or ".join(f"{s}://" for s in SCHEMES[kind])
        raise ProvisioningError(f"{kind}: {var}={shown} must start with {expected}")
    username = urllib.parse.unquote(parts.username) if parts.username else "guest"
    password = urllib.parse.unquote(parts.password) if parts.password else "guest"
    reasons: list[str] = []
    for host, port in endpoints:
        if parts.scheme in TLS_SCHEMES:
            reason = tcp_connect(host, port, PROBE_TIMEOUT)
        else:
            reason = probe(
                kind, host, port, timeout=PROBE_TIMEOUT, username=username, password=password
            )
        if reason is None:
            return Broker(kind=kind, url=url, origin="env", owned=False)
        reasons.append(reason)
    raise ProvisioningError(f"{kind}: {var}={shown} is set but not usable: {'; '.join(reasons)}")


def _start_binary(kind: BrokerKind, options: Mapping[str, object]) -> Broker:
    runner = _binary_runner(kind, options)
    try:
        runner.start()
    except BaseException:
        runner.stop(keep_data=False)
        raise
    return Broker(
        kind=kind, url=loopback_url(kind, runner.port), origin="binary", owned=True, runner=runner
    )


def _start_container(kind: BrokerKind, options: Mapping[str, object]) -> Broker:
    reason = docker_unavailable_reason()
    if reason is not None:
        raise ProvisioningError(reason)
    runner = ContainerRunner(
        kind,
        max_payload=_opt_int(options, "max_payload"),
        redis_args=tuple(_opt_strs(options, "extra_args")),
        boot_timeout=_opt_float(options, "boot_timeout"),
    )
    runner.start()
    return Broker(
        kind=kind,
        url=loopback_url(kind, runner.port, host=runner.host),
        origin="container",
        owned=True,
        runner=runner,
    )


_OPTIONS: dict[BrokerKind, frozenset[str]] = {
    "redis": frozenset({"boot_timeout", "appendonly", "appendfsync", "extra_args"}),
    "rabbitmq": frozenset({"boot_timeout"}),
    "nats": frozenset({"boot_timeout", "max_payload"}),
    "kafka": frozenset({"boot_timeout"}),
}


def _opt_float(options: Mapping[str, object], key: str) -> float | None:
    value = options.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise TypeError(f"{key} must be a positive number, got {value!r}")
    return float(value)


def _opt_int(options: Mapping[str, object], key: str) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise TypeError(f"{key} must be a positive int, got {value!r}")
    return value


def _opt_strs(options: Mapping[str, object], key: str) -> Sequence[str]:
    value = options.get(key, ())
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(f"{key} must be a sequence of strings, got {value!r}")
    if not all(isinstance(item, str) for item in value):
        raise TypeError(f"{key} must be a sequence of strings, got {value!r}")
    return [str(item) for item in value]


def _binary_runner(kind: BrokerKind, options: Mapping[str, object]) -> ProcessRunner:
    boot_timeout = _opt_float(options, "boot_timeout")
    port = free_port()
    if kind == "redis":
        appendonly = options.get("appendonly", True)
        appendfsync = options.get("appendfsync", "everysec")
        if not isinstance(appendonly, bool):
            raise TypeError(f"appendonly must be a bool, got {appendonly!r}")
        if appendfsync not in ("always", "everysec", "no"):
            raise TypeError(f"appendfsync must be always/everysec/no, got {appendfsync!r}")
        return redis_runner(
            port,
            appendonly=appendonly,
            appendfsync=str(appendfsync),
            extra_args=_opt_strs(options, "extra_args"),
            boot_timeout=boot_timeout,
        )
    if kind == "rabbitmq":
        return rabbitmq_runner(port, free_port(), boot_timeout=boot_timeout)
    if kind == "nats":
        return nats_runner(
            port, max_payload=_opt_int(options, "max_payload"), boot_timeout=boot_timeout
        )
    return kafka_runner(port, boot_timeout=boot_timeout)


def _start_owned(
    kind: BrokerKind, options: Mapping[str, object]
) -> tuple[Broker | None, list[str]]:
    """Try a local binary, then a container. Returns the broker or the reasons."""
    reasons: list[str] = []
    try:
        return _start_binary(kind, options), reasons
    except ProvisioningError as exc:
        reasons.append(f"local binary: {exc}")
    try:
        return _start_container(kind, options), reasons
    except ProvisioningError as exc:
        reasons.append(f"container: {exc}")
    return None, reasons


def _failure(kind: BrokerKind, reasons: Sequence[str]) -> ProvisioningError:
    lines = "\n".join(f"  - {reason}" for reason in reasons)
    return ProvisioningError(f"could not provision a {kind} broker:\n{lines}")


def find_or_start(kind: BrokerKind, *, env: Mapping[str, str] = os.environ) -> Broker:
    """A broker of ``kind`` for tests that do not disrupt it.

    Tried in order:

    1. ``BUS_TEST_<KIND>_URL`` from ``env`` (origin ``env``). If it is set it must work:
       a bad scheme, an unreachable host or a failed handshake raises
       :class:`ProvisioningError` within a few seconds (no fallback to other steps).
    2. A broker on the standard loopback port (6379, 5672, 4222, 9092) that passes a
       protocol check (origin ``loopback``; for NATS JetStream must be enabled, for
       RabbitMQ guest/guest must log in).
    3. A local binary started on a free port (origin ``binary``).
    4. A testcontainers container when a Docker engine answers (origin ``container``).

    Brokers started in steps 3-4 are cached per process: every later call returns the
    same :class:`Broker` (started again if someone stopped it), and they are shut down
    at interpreter exit. Callers must not stop, kill or restart them; use
    :func:`start_private` for that. Raises :class:`ProvisioningError` listing the reason
    each step failed.
    """
    kind = check_kind(kind)
    var = env_var(kind)
    url = env.get(var, "").strip()
    if url:
        return _from_env(kind, var, url)
    reasons = [f"{var} is not set"]
    with _kind_locks[kind]:
        cached = _shared.get(kind)
        if cached is not None:
            cached.start()
            return cached
        port = STANDARD_PORTS[kind]
        reason = probe(kind, "127.0.0.1", port, timeout=PROBE_TIMEOUT)
        if reason is None:
            return Broker(kind=kind, url=loopback_url(kind, port), origin="loopback", owned=False)
        reasons.append(f"loopback: {reason}")
        broker, more = _start_owned(kind, {})
        reasons += more
        if broker is None:
            raise _failure(kind, reasons)
        _shared[kind] = broker
        return broker


def start_private(kind: BrokerKind, **options: object) -> Broker:
    """Start a broker of ``kind`` owned by the caller, on a free loopback port.

    Always a new instance (local binary, else container), never the shared service,
    so tests may :meth:`~Broker.stop`, :meth:`~Broker.kill` and
    :meth:`~Broker.restart` it. It is stopped at interpreter exit if the caller did
    not stop it. Options (``TypeError`` for unknown ones):

    * all kinds: ``boot_timeout`` (seconds; defaults 15 s, RabbitMQ 90 s);
    * redis: ``appendonly`` (default True), ``appendfsync`` (``everysec``),
      ``extra_args`` (more ``redis-server`` arguments);
    * nats: ``max_payload`` (bytes).

    Raises :class:`ProvisioningError` with the reason of each attempt.
    """
    kind = check_kind(kind)
    unknown = set(options) - _OPTIONS[kind]
    if unknown:
        raise TypeError(
            f"unknown option(s) for {kind}: {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(_OPTIONS[kind]))}"
        )
    broker, reasons = _start_owned(kind, options)
    if broker is None:
        raise _failure(kind, reasons)
    return broker


def start_nats_cluster(
    n: int = 3, *, max_payload: int | None = None, timeout: float = 30.0
) -> list[Broker]:
    """Start an ``n``-node NATS cluster with JetStream on loopback (local binary only).

    Each node has its own client port, route port, monitoring port, store directory and
    a distinct ``server_name`` (``<cluster>-n1`` ...); all share one cluster name and
    route to each other. Returns once every node accepts clients and reports a
    JetStream meta leader (bounded by ``timeout``, else :class:`ProvisioningError` and
    the nodes are stopped). Each returned broker is owned and can be stopped or
    restarted on its own (it rejoins with the same routes); connect to all of them
    with ``[b.url for b in brokers]``.
    """
    if n < 1:
        raise ValueError("a cluster needs at least one node")
    cluster = f"bus-{secrets.token_hex(3)}"
    client_ports = [free_port() for _ in range(n)]
    route_ports = [free_port() for _ in range(n)]
    monitor_ports = [free_port() for _ in range(n)]
    runners = [
        nats_runner(
            client_ports[i],
            max_payload=max_payload,
            server_name=f"{cluster}-n{i + 1}",
            cluster=(cluster, route_ports[i], [p for j, p in enumerate(route_ports) if j != i]),
            monitor_port=monitor_ports[i],
            boot_timeout=timeout,
        )
        for i in range(n)
    ]
    try:
        for runner in runners:
            runner.spawn()
        for runner in runners:
            runner.wait_ready()
        deadline = time.monotonic() + timeout
        while True:
            leaders = {jetstream_meta_leader(port) for port in monitor_ports}
            if None not in leaders and len(leaders) == 1:
                break
            if time.monotonic() >= deadline:
                raise ProvisioningError(
                    f"nats cluster {cluster}: no agreed JetStream meta leader within "
                    f"{timeout:.0f} s (nodes report {sorted(map(str, leaders))})"
                )
            time.sleep(0.2)
    except BaseException:
        for runner in runners:
            runner.stop(keep_data=False)
        raise
    return [
        Broker(kind="nats", url=loopback_url("nats", r.port), origin="binary", owned=True, runner=r)
        for r in runners
    ]
