"""Issue-2 acceptance for every network backend: a closed port raises BrokerUnavailable
within the connect timeout (never a hang), and the error carries no password."""

from __future__ import annotations

import socket
import time

import pytest

import bus

URLS = {
    "redis": "redis://user:s3cret@127.0.0.1:{port}/0",
    "nats": "nats://user:s3cret@127.0.0.1:{port}",
    "rabbitmq": "amqp://guest:s3cret@127.0.0.1:{port}/",
    "kafka": "kafka://user:s3cret@127.0.0.1:{port}",
}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends


@pytest.mark.parametrize("kind", list(URLS))
async def test_closed_port_is_broker_unavailable_within_connect_timeout(kind: str) -> None:
    url = URLS[kind].format(port=_closed_port())
    started = time.monotonic()
    with pytest.raises(bus.BrokerUnavailable) as info:
        async with bus.connect(url, connect_timeout=2.0):
            pass
    elapsed = time.monotonic() - started
    assert elapsed < 2.0 + 3.0, f"{kind}: BrokerUnavailable after {elapsed:.1f}s"
    assert "s3cret" not in str(info.value)
    assert "s3cret" not in repr(info.value.__cause__ or "")


@pytest.mark.parametrize("kind", list(URLS))
def test_default_connect_timeout_is_at_most_10s(kind: str) -> None:
    backend = bus.connect(URLS[kind].format(port=1))._backend
    assert backend.options.connect_timeout <= 10
