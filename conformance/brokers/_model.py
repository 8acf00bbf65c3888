"""Core types of broker provisioning: kinds, the :class:`Broker` handle, errors, URL helpers."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Literal, Protocol, Self, get_args

from bus._redact import redact_url as redact_url

BrokerKind = Literal["redis", "rabbitmq", "nats", "kafka"]
"""The broker families the bus supports and the harness can provision."""

Origin = Literal["env", "loopback", "binary", "container"]
"""Where a :class:`Broker` came from (see :func:`conformance.brokers.find_or_start`)."""

KINDS: tuple[BrokerKind, ...] = get_args(BrokerKind)

#: Port each kind listens on when run as a machine-wide service.
STANDARD_PORTS: dict[BrokerKind, int] = {
    "redis": 6379,
    "rabbitmq": 5672,
    "nats": 4222,
    "kafka": 9092,
}

#: URL schemes accepted for each kind in ``BUS_TEST_<KIND>_URL``.
SCHEMES: dict[BrokerKind, tuple[str, ...]] = {
    "redis": ("redis", "rediss"),
    "rabbitmq": ("amqp", "amqps"),
    "nats": ("nats", "tls"),
    "kafka": ("kafka",),
}

#: Schemes whose transport is TLS: only a TCP connect is checked for those.
TLS_SCHEMES = frozenset({"rediss", "amqps", "tls"})


class ProvisioningError(Exception):
    """A broker could not be found or started, or an operation on it is not allowed.

    The message is a human-readable reason (for :func:`find_or_start`, one reason per
    provisioning step tried). It never contains a password: URLs are always shown
    redacted.
    """


class Runner(Protocol):
    """What a :class:`Broker` delegates process/container lifecycle to (internal)."""

    @property
    def running(self) -> bool:
        """True while the broker process/container is up."""
        ...

    def start(self) -> None:
        """Start on the runner's fixed port; return once it accepts connections."""
        ...

    def stop(self, *, keep_data: bool) -> None:
        """Graceful shutdown; delete the data directory unless ``keep_data``."""
        ...

    def kill(self) -> None:
        """Hard kill (SIGKILL); data directory is kept."""
        ...


def check_kind(kind: str) -> BrokerKind:
    """Return ``kind`` typed as :data:`BrokerKind`, or raise ``ValueError``."""
    for known in KINDS:
        if kind == known:
            return known
    raise ValueError(f"unknown broker kind {kind!r}; expected one of {', '.join(KINDS)}")


#: Why a URL with an unparsed user part is refused (it quotes nothing from the URL).
UNENCODED_USERINFO = (
    "the user part is not percent-encoded (write / ? # @ in a user name or password "
    "as %2F %3F %23 %40)"
)


def stray_userinfo(parts: urllib.parse.SplitResult) -> bool:
    """True when an ``@`` lies outside what the URL parser took as the host part.

    That happens when a user name or password contains an unencoded ``/``, ``?`` or
    ``#`` (or the scheme is mistyped ``scheme:/``): the parser then reads a piece of the
    password as host or port. :func:`bus._redact.redact_url` masks such URLs the same
    way (everything up to the last ``@`` is the user part).
    """
    return "@" in parts.path or "@" in parts.query or "@" in parts.fragment


def url_endpoints(url: str, default_port: int) -> list[tuple[str, int]]:
    """Host/port pairs of a (possibly comma-separated multi-host) broker URL.

    ``nats://a:4222,b:4223`` and ``kafka://h1:9092,h2`` are accepted; a missing port
    is ``default_port``. Raises ``ValueError`` (with no secret in the message) for
    unparsable input, including a user part whose ``/``, ``?``, ``#`` (or, in the
    password, ``@``) is not percent-encoded: then no part of the URL is quoted, as the
    would-be host or port may be a piece of the password.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        # urlsplit's own messages may quote the netloc, password included.
        raise ValueError("URL does not parse") from None
    if stray_userinfo(parts):
        raise ValueError(UNENCODED_USERINFO)
    hostlist = parts.netloc.rpartition("@")[2]
    endpoints: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):  # [ipv6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest.removeprefix(":")
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise ValueError("URL has an empty host")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ValueError(f"URL has a non-numeric port {port_text!r}") from None
        if not 0 < port < 65536:
            raise ValueError(f"URL has an out-of-range port {port}")
        endpoints.append((host, port))
    if not endpoints:
        raise ValueError("URL has no host")
    return endpoints


def loopback_url(kind: BrokerKind, port: int, host: str = "127.0.0.1") -> str:
    """The bus URL of a broker of ``kind`` on ``host:port`` with the default credentials."""
    if kind == "redis":
        return f"redis://{host}:{port}/0"
    if kind == "rabbitmq":
        return f"amqp://guest:guest@{host}:{port}/"
    if kind == "nats":
        return f"nats://{host}:{port}"
    return f"kafka://{host}:{port}"


@dataclass(eq=False)
class Broker:
    """A broker the tests can connect to.

    ``url`` is the bus URL (``redis://127.0.0.1:P/0``, ``amqp://guest:guest@127.0.0.1:P/``,
    ``nats://127.0.0.1:P``, ``kafka://127.0.0.1:P``). ``origin`` says how it was found:
    ``env`` (``BUS_TEST_<KIND>_URL``), ``loopback`` (a service on the standard port),
    ``binary`` (a local server we started) or ``container`` (testcontainers).

    ``owned`` is True only when this process started the broker (``binary`` or
    ``container``); only owned brokers may be stopped, killed or restarted — the
    lifecycle methods raise :class:`ProvisioningError` otherwise. An owned broker always
    keeps its port, so URLs handed out earlier stay valid across restarts.

    Owned brokers returned by :func:`find_or_start` are shared by every caller in the
    process; tests that disrupt a broker must use :func:`start_private` instead.
    The object is a context manager: leaving the ``with`` block calls :meth:`stop`.
    """

    kind: BrokerKind
    url: str
    origin: Origin
    owned: bool
    runner: Runner | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        return (
            f"Broker(kind={self.kind!r}, url={self.redacted_url()!r}, "
            f"origin={self.origin!r}, owned={self.owned!r})"
        )

    @property
    def host(self) -> str:
        """Host of the first endpoint of :attr:`url`."""
        return url_endpoints(self.url, STANDARD_PORTS[self.kind])[0][0]

    @property
    def port(self) -> int:
        """Port of the first endpoint of :attr:`url`."""
        return url_endpoints(self.url, STANDARD_PORTS[self.kind])[0][1]

    @property
    def running(self) -> bool:
        """For owned brokers, whether the process/container is up; True otherwise."""
        return True if self.runner is None else self.runner.running

    def redacted_url(self) -> str:
        """:attr:`url` with any password replaced by ``***`` (safe to log)."""
        return redact_url(self.url)

    def _owned_runner(self, action: str) -> Runner:
        if not self.owned or self.runner is None:
            raise ProvisioningError(
                f"cannot {action} {self.kind} broker at {self.redacted_url()}: "
                f"origin {self.origin!r} is not owned by this process "
                "(use start_private() for a broker you may disrupt)"
            )
        return self.runner

    def stop(self, *, keep_data: bool = False) -> None:
        """Shut the broker down gracefully and wait until its port is closed.

        Owned brokers only (else :class:`ProvisioningError`). Idempotent. Unless
        ``keep_data`` is True the temporary data directory is deleted, so a later
        :meth:`start` boots an empty broker on the same port; with ``keep_data=True``
        a later :meth:`start` recovers the durable data (an outage, not a teardown).
        """
        self._owned_runner("stop").stop(keep_data=keep_data)

    def kill(self) -> None:
        """SIGKILL the broker (and its child processes) without a graceful shutdown.

        Owned brokers only. The data directory is kept, so :meth:`start` afterwards
        exercises crash recovery. No-op if it is not running.
        """
        self._owned_runner("kill").kill()

    def start(self) -> None:
        """Start the broker again on the same port and data directory.

        Owned brokers only; no-op if already running. Returns once the broker accepts
        connections (speaks its protocol), or raises :class:`ProvisioningError` after a
        bounded boot timeout. Durable data survives when the previous stop kept it
        (:meth:`kill`, :meth:`restart`, ``stop(keep_data=True)``); Tansu (kafka) is
        memory-only and always comes back empty.
        """
        self._owned_runner("start").start()

    def restart(self) -> None:
        """Graceful stop (data kept) then :meth:`start` on the same port.

        Returns when the broker accepts connections again. Owned brokers only.
        """
        runner = self._owned_runner("restart")
        runner.stop(keep_data=True)
        runner.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.owned:
            self.stop()
