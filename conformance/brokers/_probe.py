"""Network helpers: free ports and protocol-level probes (stdlib sockets only).

Each probe opens a TCP connection and checks that the peer really speaks the broker's
protocol, not just that a port is open:

* redis: ``PING`` answered by ``+PONG`` (or ``-NOAUTH``, which is still Redis);
* rabbitmq: AMQP 0-9-1 protocol header answered by ``Connection.Start``, then a PLAIN
  login answered by ``Connection.Tune`` (so the credentials work too);
* nats: the server's ``INFO {...}`` greeting, with ``"jetstream": true``;
* kafka: an ``ApiVersions`` (v0) request answered with the same correlation id.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from typing import Any

from ._model import BrokerKind

_recent_ports: dict[int, float] = {}
_recent_lock = threading.Lock()
_RECENT_TTL = 60.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is currently free on ``host``.

    Ports handed out during the last minute are not handed out again, so several
    ports can be reserved before any server binds them.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        now = time.monotonic()
        with _recent_lock:
            for old, when in list(_recent_ports.items()):
                if now - when > _RECENT_TTL:
                    del _recent_ports[old]
            if port in _recent_ports:
                continue
            _recent_ports[port] = now
        return port
    raise OSError("could not find a free TCP port")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a server could bind ``host:port`` now (SO_REUSEADDR, like servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tcp_connect(host: str, port: int, timeout: float) -> str | None:
    """Reason why a TCP connection to ``host:port`` fails, or None if it succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {_oserror_text(exc)}"


def _oserror_text(exc: OSError) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return exc.strerror or str(exc) or exc.__class__.__name__


class _Deadline:
    """One time budget for a whole probe: every read gets only what is left of it, so
    a peer trickling bytes cannot stretch a probe beyond its ``timeout``."""

    def __init__(self, timeout: float) -> None:
        self._end = time.monotonic() + timeout

    def remaining(self) -> float:
        return self._end - time.monotonic()

    def recv(self, sock: socket.socket, size: int) -> bytes:
        remaining = self.remaining()
        if remaining <= 0:
            raise TimeoutError("timed out")
        sock.settimeout(remaining)
        return sock.recv(size)


def _recv_exact(sock: socket.socket, size: int, deadline: _Deadline) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = deadline.recv(sock, size - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by peer")
        buf += chunk
    return bytes(buf)


def _recv_line(sock: socket.socket, deadline: _Deadline, limit: int = 65536) -> bytes:
    buf = bytearray()
    while not buf.endswith(b"\r\n"):
        chunk = deadline.recv(sock, 4096)
        if not chunk:
            raise ConnectionError("connection closed by peer")
        buf += chunk
        if len(buf) > limit:
            raise ConnectionError("line too long")
    return bytes(buf)


def _probe_redis(sock: socket.socket, deadline: _Deadline) -> str | None:
    sock.sendall(b"PING\r\n")
    line = _recv_line(sock, deadline)
    if line.startswith((b"+PONG", b"-NOAUTH")):
        return None
    return f"unexpected reply to PING: {line[:40]!r}"


def _amqp_shortstr(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">B", len(data)) + data


def _amqp_read_method(sock: socket.socket, deadline: _Deadline) -> tuple[int, int, bytes]:
    header = _recv_exact(sock, 7, deadline)
    if header[:4] == b"AMQP":  # server rejected our protocol version
        last = _recv_exact(sock, 1, deadline)
        raise ConnectionError(f"server wants protocol header {header + last!r}")
    frame_type, _channel, size = struct.unpack(">BHI", header)
    payload = _recv_exact(sock, size + 1, deadline)[:-1]
    if frame_type != 1 or len(payload) < 4:
        raise ConnectionError(f"unexpected AMQP frame type {frame_type}")
    class_id, method_id = struct.unpack(">HH", payload[:4])
    return class_id, method_id, payload[4:]


def _probe_amqp(
    sock: socket.socket, deadline: _Deadline, username: str, password: str
) -> str | None:
    sock.sendall(b"AMQP\x00\x00\x09\x01")
    try:
        cls, meth, _ = _amqp_read_method(sock, deadline)
    except ConnectionError as exc:
        return f"not an AMQP 0-9-1 server ({exc})"
    if (cls, meth) != (10, 10):
        return f"expected AMQP Connection.Start, got method {cls}.{meth}"
    response = b"\x00" + username.encode() + b"\x00" + password.encode()
    # client-properties = {"capabilities": {"authentication_failure_close": true}} so a
    # refused login is answered with Connection.Close instead of a silent disconnect.
    capability = _amqp_shortstr("authentication_failure_close") + b"t\x01"
    capabilities = struct.pack(">I", len(capability)) + capability
    properties = _amqp_shortstr("capabilities") + b"F" + capabilities
    args = (
        struct.pack(">I", len(properties))
        + properties
        + _amqp_shortstr("PLAIN")
        + struct.pack(">I", len(response))
        + response
        + _amqp_shortstr("en_US")
    )
    payload = struct.pack(">HH", 10, 11) + args
    sock.sendall(struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce")
    try:
        cls, meth, rest = _amqp_read_method(sock, deadline)
    except ConnectionError:
        return "AMQP login refused (connection closed after Connection.StartOk)"
    if (cls, meth) == (10, 30):  # Connection.Tune: login accepted
        return None
    if (cls, meth) == (10, 50) and len(rest) >= 3:  # Connection.Close
        code = struct.unpack(">H", rest[:2])[0]
        text_len = rest[2]
        text = rest[3 : 3 + text_len].decode(errors="replace")
        return f"AMQP login refused ({code} {text.split(' - ')[0]})"
    return f"unexpected AMQP method {cls}.{meth} after login"


def nats_info(sock: socket.socket, timeout: float | None = None) -> dict[str, Any]:
    """Read and parse the ``INFO`` greeting a NATS server sends on connect, within
    ``timeout`` seconds in all (default: the socket's timeout, else 2 s)."""
    budget = timeout if timeout is not None else sock.gettimeout() or 2.0
    return _nats_info(sock, _Deadline(budget))


def _nats_info(sock: socket.socket, deadline: _Deadline) -> dict[str, Any]:
    line = _recv_line(sock, deadline)
    if not line.startswith(b"INFO "):
        raise ConnectionError(f"not a NATS server (greeting {line[:20]!r})")
    info: dict[str, Any] = json.loads(line[5:].strip())
    return info


def _probe_nats(sock: socket.socket, deadline: _Deadline, need_jetstream: bool) -> str | None:
    try:
        info = _nats_info(sock, deadline)
    except (ConnectionError, ValueError) as exc:
        return str(exc)
    if need_jetstream and not info.get("jetstream"):
        return "NATS server has JetStream disabled (start it with -js)"
    return None


def _probe_kafka(sock: socket.socket, deadline: _Deadline) -> str | None:
    client_id = b"bus-probe"
    correlation = 0x62757321
    body = struct.pack(">hhih", 18, 0, correlation, len(client_id)) + client_id
    sock.sendall(struct.pack(">i", len(body)) + body)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4, deadline))
    if not 6 <= size <= 1 << 20:
        return f"not a Kafka broker (response size {size})"
    data = _recv_exact(sock, size, deadline)
    got, error_code = struct.unpack(">ih", data[:6])
    if got != correlation:
        return "not a Kafka broker (ApiVersions correlation id mismatch)"
    if error_code not in (0, 35):  # 35 = UNSUPPORTED_VERSION, still Kafka
        return f"Kafka ApiVersions failed with error code {error_code}"
    return None


def probe(
    kind: BrokerKind,
    host: str,
    port: int,
    *,
    timeout: float = 2.0,
    username: str = "guest",
    password: str = "guest",
    need_jetstream: bool = True,
) -> str | None:
    """Check that ``host:port`` speaks ``kind``'s protocol.

    Returns None on success, else a short human reason (never containing the password).
    The whole probe -- connect, writes and every read -- finishes within ``timeout``
    (plus scheduling slack), however slowly the peer answers.
    """
    deadline = _Deadline(timeout)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {_oserror_text(exc)}"
    with contextlib.closing(sock):
        try:
            # Writes are small (they fit the socket buffer), so only reads can stall.
            sock.settimeout(max(deadline.remaining(), 0.001))
            if kind == "redis":
                result = _probe_redis(sock, deadline)
            elif kind == "rabbitmq":
                result = _probe_amqp(sock, deadline, username, password)
            elif kind == "nats":
                result = _probe_nats(sock, deadline, need_jetstream)
            else:
                result = _probe_kafka(sock, deadline)
        except (OSError, ConnectionError, struct.error) as exc:
            text = _oserror_text(exc) if isinstance(exc, OSError) else str(exc)
            result = f"no valid {kind} handshake ({text})"
    return None if result is None else f"{host}:{port}: {result}"
