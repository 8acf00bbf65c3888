"""RabbitMQ backend: what is specific to RabbitMQ, against real servers.

The shared conformance suite covers the contract; these tests cover the RabbitMQ
mapping (topology and its arguments, queue-type changes refused clearly, coalesced
acks on the wire, mandatory returns, attempt counting on quorum and classic queues,
delay wait queues, broker-side dead-lettering, foreign producers and consumers),
configuration and connection errors (URL, closed port, wrong password, TLS), and the
failure scenarios of issue 4: a private node restarted while 2,000 messages flow,
and a consumer process killed with SIGKILL while it holds 10 un-acked messages.
Every test that disrupts something counts messages by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
from support import collect_acked, make_tls_files

import bus
from backends.rabbitmq import RabbitMQBackend
from backends.rabbitmq._names import delay_ms, group_from_queue, group_queue
from backends.rabbitmq._subscription import RabbitMQSubscription
from conformance.brokers import Broker, free_port
from conformance.brokers.fixtures import PrivateBrokerFactory, private_broker, rabbitmq_broker

# Imported for pytest to register them in this module.
FIXTURES = (private_broker, rabbitmq_broker)

pytestmark = pytest.mark.broker("rabbitmq")

ROOT = Path(__file__).resolve().parents[1]


def _topic(name: str) -> str:
    return f"rabbittest.{name}.{uuid.uuid4().hex[:10]}"


def _inner(sub: bus.Subscription) -> RabbitMQSubscription:
    inner = sub._inner
    assert isinstance(inner, RabbitMQSubscription)
    return inner


@contextlib.asynccontextmanager
async def _raw(url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A plain aio-pika channel (a foreign client, and for cleaning up)."""
    conn = await aio_pika.connect(url.split("?")[0])
    try:
        yield await conn.channel()
    finally:
        await conn.close()


async def _unroutable(url: str, exchange: str, routing_key: str) -> bool:
    """Whether a message sent to ``exchange`` with ``routing_key`` reaches no queue:
    one dead-lettered there at least once would stay in its wait queue, retried.
    (AMQP clients cannot see such a message: a queue's declare-ok counts only those
    ready for delivery, so a test asks the exchange instead.)"""
    conn = await aio_pika.connect(url.split("?")[0])
    try:
        ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
        target = await ch.get_exchange(exchange, ensure=True)
        try:
            await target.publish(aio_pika.Message(b"probe"), routing_key, mandatory=True)
        except aio_pika.exceptions.DeliveryError:
            return True
        return False
    finally:
        await conn.close()


async def _drop(url: str, *queues: str) -> None:
    """Delete test queues from the shared broker (quorum queues refuse if_unused)."""
    async with _raw(url) as ch:
        for name in queues:
            with contextlib.suppress(Exception):
                await ch.queue_delete(name, if_unused=False, if_empty=False)


# -- configuration and connection errors ---------------------------------------------


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("amqp://guest:guest@127.0.0.1:99999/", {}),
        ("amqp://guest:guest@127.0.0.1:5672/?no_such_option=1", {}),
        ("amqp:///", {}),
        ("amqp://127.0.0.1/", {"queue_type": "stream"}),
        ("amqp://127.0.0.1/", {"exchange": "amq.topic"}),
        ("amqp://127.0.0.1/", {"exchange": "has space"}),
        ("amqp://127.0.0.1/", {"ack_timeout": 5.0}),  # no lease on RabbitMQ
        ("amqp://127.0.0.1/", {"queue_type": "classic", "delivery_limit": 3}),
        ("amqp://127.0.0.1/", {"tls_ca_file": "/tmp/ca.pem"}),  # TLS option, no TLS
        ("amqps://127.0.0.1/", {"tls_ca_file": "/nonexistent/ca.pem"}),
    ],
)
def test_bad_url_or_option_is_configuration_error(url: str, options: dict[str, object]) -> None:
    with pytest.raises(bus.ConfigurationError):
        bus.connect(url, **options)


async def test_closed_port_is_broker_unavailable_within_connect_timeout() -> None:
    secret = "hunter2-secret-pw"
    url = f"amqp://alice:{secret}@127.0.0.1:{free_port()}/"
    started = time.monotonic()
    with pytest.raises(bus.BrokerUnavailable) as info:
        await bus.connect(url, connect_timeout=2.0)
    assert time.monotonic() - started < 2.0 + 1.0
    text = f"{info.value} {info.value!r} {info.value.__cause__} {info.value.__cause__!r}"
    assert secret not in text
    assert "alice:***@" in str(info.value)


async def test_silent_port_is_broker_unavailable_within_connect_timeout() -> None:
    """A server that accepts TCP but never speaks AMQP: bounded by connect_timeout."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(bus.BrokerUnavailable):
            await bus.connect(f"amqp://guest:guest@127.0.0.1:{port}/", connect_timeout=1.5)
        assert time.monotonic() - started < 1.5 + 1.0
    finally:
        server.close()


async def test_wrong_password_is_broker_unavailable_without_the_password(
    rabbitmq_broker: Broker,
) -> None:
    wrong = "wr0ng-pa55word"
    url = f"amqp://guest:{wrong}@{rabbitmq_broker.host}:{rabbitmq_broker.port}/"
    started = time.monotonic()
    with pytest.raises(bus.BrokerUnavailable) as info:
        await bus.connect(url, connect_timeout=10)
    assert time.monotonic() - started < 5, "an auth failure must not wait the full timeout"
    text = f"{info.value} {info.value!r} {info.value.__cause__} {info.value.__cause__!r}"
    assert wrong not in text
    assert "authentication failed" in str(info.value)


@contextlib.asynccontextmanager
async def _tls_front(cert: Path, key: Path, host: str, port: int) -> AsyncIterator[int]:
    """A TLS listener forwarding to the broker's plain AMQP port, so the client's
    amqps:// handshake and verification run against a real RabbitMQ behind it."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    pipes: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, port)
        for task in (pipe(reader, up_writer), pipe(up_reader, writer)):
            t = asyncio.create_task(task)
            pipes.add(t)
            t.add_done_callback(pipes.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for t in list(pipes):
            t.cancel()


async def test_amqps_url_verifies_the_server(rabbitmq_broker: Broker, tmp_path: Path) -> None:
    """amqps:// connects over TLS, verifying the server against tls_ca_file; a server
    the trust store cannot verify is BrokerUnavailable (no password in the error)."""
    ca, cert, key = make_tls_files(tmp_path)
    topic = _topic("tls")
    async with _tls_front(cert, key, rabbitmq_broker.host, rabbitmq_broker.port) as port:
        url = f"amqps://guest:guest@127.0.0.1:{port}/"
        async with bus.connect(url, tls_ca_file=str(ca)) as b:
            await b.declare(topic, groups=["g"])
            mid = await b.publish(topic, b"over tls")
            async with b.subscribe(topic, group="g") as sub:
                (d,) = await collect_acked(sub, 1, 10)
            assert d.message.id == mid
        with pytest.raises(bus.BrokerUnavailable) as info:
            await bus.connect(url, connect_timeout=5)  # system trust store: unknown CA
        assert "guest:guest" not in str(info.value)
    await _drop(rabbitmq_broker.url, group_queue(topic, "g"))


# -- topology ------------------------------------------------------------------------


def test_names() -> None:
    assert group_queue("orders.created", "billing") == "orders.created.billing"
    assert group_queue("amq.x", "g") == "_amq.x.g"  # amq.* is reserved by RabbitMQ
    long = group_queue("t" * 64 + "." + "u" * 64 + "." + "v" * 64, "g" * 100)
    assert len(long.encode()) <= 255
    assert "~" in long
    assert group_from_queue("orders.created", "orders.created.billing") == "billing"
    assert group_from_queue("amq.x", "_amq.x.g") == "g"
    assert group_from_queue("orders", "_bus.retry.1300") is None
    # rounded up to the ladder (10 ms steps, then R20): never early, <= 14.3% late
    assert [delay_ms(s) for s in (0.0004, 0.05, 0.1, 0.101, 1.234, 2.0, 12.34, 3600.5)] == [
        10, 50, 100, 112, 1250, 2000, 12500, 4_000_000,
    ]  # fmt: skip
    for seconds in (0.011, 0.15, 0.999, 1.01, 7.77, 99.9, 1234.5, 86400.0):
        ms = delay_ms(seconds)
        assert seconds * 1000 <= ms <= max(seconds * 1000 * 1.143, seconds * 1000 + 10)


async def test_group_queue_topology_and_idempotent_declare(rabbitmq_broker: Broker) -> None:
    """A group is a durable quorum queue <topic>.<group> bound with the topic as routing
    key, dead-lettering to <topic>.dlq; declaring it again (another process, a restart)
    changes nothing; a broadcast queue is exclusive and gone after close."""
    url = rabbitmq_broker.url
    topic = _topic("topology")
    name = group_queue(topic, "g")
    async with bus.connect(url) as b:
        await b.declare(topic, groups=["g"])
    async with bus.connect(url) as b:  # a second process: same arguments, no error
        await b.declare(topic, groups=["g"])
        await b.publish(topic, b"x")
        async with b.subscribe(topic) as sub:
            queue = _inner(sub).queue
            assert queue.name.startswith("_bus.bcast.")
            async with _raw(url) as ch:
                with pytest.raises(aio_pika.exceptions.ChannelClosed):  # exclusive
                    await ch.declare_queue(queue.name, passive=True)
    async with _raw(url) as ch:
        q = await ch.declare_queue(name, passive=True)
        assert q.declaration_result.message_count == 1
        assert q.declaration_result.consumer_count == 0
        # same arguments again: accepted (an inequivalent one would close the channel)
        await ch.declare_queue(
            name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": "bus",
                "x-dead-letter-routing-key": f"{topic}.dlq",
            },
        )
    await _drop(url, name)


async def test_changing_the_queue_type_of_a_group_is_a_clear_configuration_error(
    rabbitmq_broker: Broker,
) -> None:
    """A group created as quorum, then used with queue_type=classic: declare and
    subscribe raise ConfigurationError (every time, naming the queue), nothing loops,
    and the connection stays usable."""
    url = rabbitmq_broker.url
    topic = _topic("qtype")
    async with bus.connect(url) as b:
        await b.declare(topic, groups=["g"])
        mid = await b.publish(topic, b"kept")
    async with bus.connect(url, queue_type="classic") as b:
        for _ in range(2):
            with pytest.raises(bus.ConfigurationError) as info:
                await b.declare(topic, groups=["g"])
            assert group_queue(topic, "g") in str(info.value)
            assert "x-queue-type" in str(info.value)
        with pytest.raises(bus.ConfigurationError):
            await b.subscribe(topic, group="g").open()
        other = _topic("qtype-other")
        await b.declare(other, groups=["g"])  # still usable
        await b.publish(other, b"fine")
    async with bus.connect(url) as b, b.subscribe(topic, group="g") as sub:
        (d,) = await collect_acked(sub, 1, 10)
        assert d.message.id == mid
    await _drop(url, group_queue(topic, "g"), group_queue(other, "g"))


async def test_consumer_resumes_when_its_queue_is_deleted(rabbitmq_broker: Broker) -> None:
    """The broker cancels the consumer of a deleted queue; the subscription declares
    the queue again (same arguments, bound again) and keeps consuming."""
    topic = _topic("deleted")
    name = group_queue(topic, "g")
    async with bus.connect(rabbitmq_broker.url) as b, b.subscribe(topic, group="g") as sub:
        await _drop(rabbitmq_broker.url, name)
        deadline = time.monotonic() + 10
        while True:  # until the subscription has re-created its queue
            with contextlib.suppress(Exception):
                async with _raw(rabbitmq_broker.url) as ch:
                    q = await ch.declare_queue(name, passive=True)
                    if q.declaration_result.consumer_count == 1:
                        break
            assert time.monotonic() < deadline, "the queue was not re-created"
            await asyncio.sleep(0.1)
        mid = await b.publish(topic, b"after")
        (d,) = await collect_acked(sub, 1, 10)
        assert d.message.id == mid
    await _drop(rabbitmq_broker.url, name)


# -- settlement ----------------------------------------------------------------------


async def test_acks_are_coalesced_on_the_wire(rabbitmq_broker: Broker) -> None:
    """200 acks, one by one, of a prefetch-100 consumer go out as far fewer frames
    (multiple=True over the settled prefix), not one frame per message."""
    topic = _topic("coalesce")
    async with bus.connect(rabbitmq_broker.url) as b:
        await b.declare(topic, groups=["g"])
        sent = await b.publish_many(topic, [f"m{i}" for i in range(200)])
        async with b.subscribe(topic, group="g", prefetch=100) as sub:
            got = await collect_acked(sub, 200, 20)
            frames = _inner(sub).frames_sent
        assert {d.message.id for d in got} == set(sent)
        assert frames <= 50, f"{frames} ack frames for 200 acks"
    async with _raw(rabbitmq_broker.url) as ch:
        q = await ch.declare_queue(group_queue(topic, "g"), passive=True)
        assert q.declaration_result.message_count == 0  # every ack reached the broker
    await _drop(rabbitmq_broker.url, group_queue(topic, "g"))


async def test_settlement_out_of_order_and_mixed(rabbitmq_broker: Broker) -> None:
    """Acks behind an unsettled delivery, and nacks between acks, settle exactly the
    right tags: only the nacked and the never-settled messages come back."""
    topic = _topic("mixed")
    async with bus.connect(rabbitmq_broker.url) as b:
        await b.declare(topic, groups=["g"])
        sent = await b.publish_many(topic, [f"m{i}" for i in range(10)])
        async with b.subscribe(topic, group="g", prefetch=10) as sub:
            ds = [await sub.receive(timeout=10) for _ in range(10)]
            # 0 unsettled, 1-3 acked, 4 nacked, 5-8 acked, 9 unsettled
            for d in ds[1:4] + ds[5:9]:
                await d.ack()
            await ds[4].nack()
            (again,) = await collect_acked(sub, 1, 10)
            assert again.message.id == sent[4]
            assert again.attempt == 2
        async with b.subscribe(topic, group="g") as sub:  # closing returned 0 and 9
            back = await collect_acked(sub, 2, 10)
            assert {d.message.id for d in back} == {sent[0], sent[9]}
            with pytest.raises(TimeoutError):
                await sub.receive(timeout=1.0)
    await _drop(rabbitmq_broker.url, group_queue(topic, "g"))


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_attempts_are_counted_through_nacks_delays_and_closes(
    rabbitmq_broker: Broker, queue_type: str
) -> None:
    """attempt grows by one per nack, nack(delay) and consumer close, on both queue
    types (quorum: x-delivery-count; classic: bus-attempts copies + redelivered)."""
    topic = _topic(f"attempts-{queue_type}")
    async with bus.connect(rabbitmq_broker.url, queue_type=queue_type) as b:
        await b.declare(topic, groups=["g"])
        mid = await b.publish(topic, b"x")
        seen = []
        async with b.subscribe(topic, group="g") as sub:
            for step in ("nack", "nack", "delay", "nack"):
                d = await sub.receive(timeout=10)
                seen.append(d.attempt)
                await (d.nack(delay=0.2) if step == "delay" else d.nack())
            d = await sub.receive(timeout=10)
            seen.append(d.attempt)
        async with b.subscribe(topic, group="g") as sub:  # the close returned it
            d = await sub.receive(timeout=10)
            seen.append(d.attempt)
            await d.ack()
        assert d.message.id == mid
        assert seen == [1, 2, 3, 4, 5, 6]
    await _drop(rabbitmq_broker.url, group_queue(topic, "g"))


async def test_nack_delay_goes_back_to_its_own_group_only(rabbitmq_broker: Broker) -> None:
    """A delayed nack in group a re-enters a's queue only: group b is not touched."""
    topic = _topic("delay-target")
    async with bus.connect(rabbitmq_broker.url) as b:
        await b.declare(topic, groups=["a", "b"])
        mid = await b.publish(topic, b"x")
        async with b.subscribe(topic, group="a") as sa, b.subscribe(topic, group="b") as sb:
            d = await sa.receive(timeout=10)
            await d.nack(delay=0.5)
            (db,) = await collect_acked(sb, 1, 10)
            (again,) = await collect_acked(sa, 1, 10)
            assert db.message.id == again.message.id == mid
            assert again.attempt == 2
            with pytest.raises(TimeoutError):
                await sb.receive(timeout=1.5)
    await _drop(rabbitmq_broker.url, group_queue(topic, "a"), group_queue(topic, "b"))


async def test_a_delayed_message_no_queue_takes_when_due_is_dropped(
    rabbitmq_broker: Broker,
) -> None:
    """Due messages reach their topic's queues through the due exchange, each once; one
    whose topic has no queue then is dropped, as an immediate publish no queue takes
    is, instead of staying in its wait queue (at-least-once dead-lettering keeps and
    retries what it cannot route)."""
    exchange = f"rabbittest-due-{uuid.uuid4().hex[:8]}"
    url = f"{rabbitmq_broker.url.split('?')[0]}?exchange={exchange}"
    kept, orphan = _topic("due-kept"), _topic("due-orphan")
    wait, drop = f"_{exchange}.due.{delay_ms(0.2)}", f"_{exchange}.due.drop"
    try:
        async with bus.connect(url) as b:
            await b.declare(kept, groups=["g"])
            ids = [await b.publish(kept, {"n": n}, delay=0.2) for n in range(3)]
            for n in range(3):
                await b.publish(orphan, {"n": n}, delay=0.2)
            async with b.subscribe(kept, group="g") as sub:
                got = await collect_acked(sub, 3, 10)
                assert sorted(d.message.id for d in got) == sorted(ids)
                with pytest.raises(TimeoutError):
                    await sub.receive(timeout=1.0)  # each once
        # what the orphans met when due: a route (to the drop queue), not none
        assert not await _unroutable(url, f"{exchange}.due", orphan)
    finally:
        await _drop(url, wait, drop, group_queue(kept, "g"))
        async with _raw(url) as ch:
            for name in (f"{exchange}.due", f"{exchange}.delay", f"{exchange}.requeue", exchange):
                with contextlib.suppress(Exception):
                    await ch.exchange_delete(name)


async def test_a_delayed_retry_whose_queue_was_deleted_is_dropped(
    rabbitmq_broker: Broker,
) -> None:
    """A nack with a delay comes back once to its own queue through the requeue
    exchange; one whose group queue is deleted while it waits is dropped when due, as
    the queue's other messages were, instead of staying in its wait queue (at-least-once
    dead-lettering keeps and retries what it cannot route)."""
    exchange = f"rabbittest-requeue-{uuid.uuid4().hex[:8]}"
    url = f"{rabbitmq_broker.url.split('?')[0]}?exchange={exchange}"
    kept, orphan = _topic("requeue-kept"), _topic("requeue-orphan")
    waits = [f"_{exchange}.requeue.{delay_ms(s)}" for s in (0.5, 1.5)]
    drop = f"_{exchange}.due.drop"
    try:
        async with bus.connect(url) as b, _raw(url) as raw:
            for topic in (kept, orphan):
                await b.declare(topic, groups=["g"])
            kept_id = await b.publish(kept, {"n": 1})
            await b.publish(orphan, {"n": 2})
            async with b.subscribe(orphan, group="g") as sub:
                d = await sub.receive(timeout=10)
                await d.nack(delay=1.5)  # deleted well before it is due
            await raw.queue_delete(group_queue(orphan, "g"), if_unused=False, if_empty=False)
            async with b.subscribe(kept, group="g") as sub:
                d = await sub.receive(timeout=10)
                await d.nack(delay=0.5)
                again = await sub.receive(timeout=10)
                assert (again.message.id, again.attempt) == (kept_id, 2)
                await again.ack()
                with pytest.raises(TimeoutError):
                    await sub.receive(timeout=1.0)  # once
        # what the orphan meets when due: a route (to the drop queue), not none
        assert not await _unroutable(url, f"{exchange}.requeue", group_queue(orphan, "g"))
    finally:
        await _drop(url, *waits, drop, group_queue(kept, "g"), group_queue(orphan, "g"))
        async with _raw(url) as ch:
            for name in (f"{exchange}.requeue", f"{exchange}.delay", exchange):
                with contextlib.suppress(Exception):
                    await ch.exchange_delete(name)


# -- mandatory returns ---------------------------------------------------------------


async def test_unroutable_publish_policies(
    rabbitmq_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """No queue bound: warn (default) logs once, raise raises, request is NoResponders."""
    topic = _topic("unroutable")
    async with bus.connect(rabbitmq_broker.url) as b:
        with caplog.at_level(logging.WARNING, logger="backends.rabbitmq"):
            for _ in range(5):
                await b.publish(topic, b"dropped")
        warnings = [r for r in caplog.records if topic in r.getMessage()]
        assert len(warnings) == 1, warnings
        with pytest.raises(bus.NoResponders):
            await b.request(topic, b"anyone?", timeout=5)
    async with bus.connect(rabbitmq_broker.url, on_unroutable="raise") as b:
        with pytest.raises(bus.PublishError):
            await b.publish(topic, b"x")
        await b.declare(topic, groups=["g"])
        await b.publish(topic, b"kept")  # routed now
    await _drop(rabbitmq_broker.url, group_queue(topic, "g"))


async def test_dead_letter_without_a_dlq_queue_is_an_error_and_loses_nothing(
    rabbitmq_broker: Broker,
) -> None:
    """dead_letter() when nothing receives <topic>.dlq raises PublishError; the message
    is not acked, so the group gets it again."""
    topic = _topic("nodlq")
    async with bus.connect(rabbitmq_broker.url) as b:
        await b.declare(topic, groups=["g"])
        mid = await b.publish(topic, b"poison")
        async with b.subscribe(topic, group="g") as sub:
            d = await sub.receive(timeout=10)
            with pytest.raises(bus.PublishError, match="declare a group"):
                await d.dead_letter("bad")
        async with b.subscribe(topic, group="g") as sub:
            (again,) = await collect_acked(sub, 1, 10)
            assert again.message.id == mid
    await _drop(rabbitmq_broker.url, group_queue(topic, "g"))


async def test_a_settle_that_raises_leaves_the_delivery_unsettled(rabbitmq_broker: Broker) -> None:
    """nack(delay) with a delay RabbitMQ cannot hold raises before anything is settled:
    the delivery is unsettled again, so a plain nack hands it back (it stayed marked
    nacked, a second nack was a no-op, and the message was held until the channel
    closed)."""
    topic = _topic("settleagain")
    async with bus.connect(rabbitmq_broker.url) as b:
        await b.declare(topic, groups=["g"])
        mid = await b.publish(topic, b"job")
        async with b.subscribe(topic, group="g", prefetch=1) as sub:
            d = await sub.receive(timeout=10)
            with pytest.raises(bus.InvalidArgument, match="longest TTL"):
                await d.nack(delay=10**8)
            assert d.settled is None
            await d.nack()
            (again,) = await collect_acked(sub, 1, 10)
    assert again.message.id == mid
    assert again.attempt == 2
    await _drop(rabbitmq_broker.url, group_queue(topic, "g"))


async def test_worker_whose_dead_letter_fails_hands_the_message_back_after_backoff(
    rabbitmq_broker: Broker,
) -> None:
    """bus.consume giving up on a job while no queue receives <topic>.dlq: the failed
    dead letter leaves the delivery unsettled, and the worker nacks it with the retry
    backoff instead of holding it until the channel closes (RabbitMQ has no lease).
    Once a group is declared on the dead-letter topic, the next give-up lands there:
    the job is in the dlq exactly as published, counted only then."""
    topic = _topic("dlqlater")
    dlq = f"{topic}.dlq"
    attempts: list[int] = []
    thrice = asyncio.Event()

    async def always_fails(d: bus.Delivery) -> None:
        attempts.append(d.attempt)
        if len(attempts) >= 3:
            thrice.set()
        raise RuntimeError("poison")

    async with bus.connect(rabbitmq_broker.url) as b:
        await b.declare(topic, groups=["g"])
        mid = await b.publish(topic, b"job")
        retry = bus.Retry(max_attempts=1, backoff=bus.Fixed(0.3))
        async with b.consume(topic, always_fails, group="g", retry=retry) as worker:
            await asyncio.wait_for(thrice.wait(), 10)  # handed back, failed again
            assert worker.stats.dead_lettered == 0
            # each hand-back is a new delivery: the quorum queue counts attempts up
            assert attempts == sorted(attempts), attempts
            assert attempts[-1] > attempts[0], attempts
            await b.declare(dlq, groups=["audit"])
            async with b.subscribe(dlq, group="audit") as dead:
                (letter,) = await collect_acked(dead, 1, 10)
            assert letter.message.id == mid
            assert letter.message.headers["bus-dlq-topic"] == topic
            assert letter.message.data == b"job"
            assert worker.stats.dead_lettered == 1
        # the original was settled with its dead letter: nothing comes back
        async with b.subscribe(topic, group="g") as sub:
            with pytest.raises(TimeoutError):
                await sub.receive(timeout=1.0)
    await _drop(rabbitmq_broker.url, group_queue(topic, "g"), group_queue(dlq, "audit"))


async def test_broker_dead_letters_at_the_delivery_limit(rabbitmq_broker: Broker) -> None:
    """delivery_limit: after that many returns the quorum queue dead-letters the
    message itself to <topic>.dlq, where it arrives with bus-dlq-* headers."""
    topic = _topic("limit")
    dlq = f"{topic}.dlq"
    async with bus.connect(rabbitmq_broker.url, delivery_limit=2) as b:
        await b.declare(topic, groups=["g"])
        await b.declare(dlq, groups=["audit"])
        mid = await b.publish(topic, b"poison", headers={"tenant": "t"})
        async with b.subscribe(topic, group="g") as sub:
            for attempt in (1, 2, 3):
                d = await sub.receive(timeout=10)
                assert d.attempt == attempt
                await d.nack()
        async with b.subscribe(dlq, group="audit") as dead:
            (x,) = await collect_acked(dead, 1, 10)
    h = x.message.headers
    assert x.message.id == mid
    assert x.message.data == b"poison"
    assert h.get("tenant") == "t"
    assert h.get("bus-dlq-group") == "g"
    assert h.get("bus-dlq-topic") == topic
    assert "delivery_limit" in h.get("bus-dlq-reason", ""), h
    assert h.get("bus-dlq-attempts") == "3"  # delivered 3 times, returned 3 > 2 times
    await _drop(rabbitmq_broker.url, group_queue(topic, "g"), group_queue(dlq, "audit"))


# -- interoperability ----------------------------------------------------------------


async def test_foreign_consumer_and_producer(rabbitmq_broker: Broker) -> None:
    """A plain AMQP consumer reads the payload as published with ce-* headers; a plain
    AMQP publisher's message (no ce-id) is delivered with its message_id as id."""
    url = rabbitmq_broker.url
    topic = _topic("foreign")
    async with _raw(url) as ch:
        exchange = await ch.declare_exchange("bus", aio_pika.ExchangeType.TOPIC, durable=True)
        plain = await ch.declare_queue(exclusive=True)
        await plain.bind(exchange, routing_key=topic)
        async with bus.connect(url) as b:
            await b.declare(topic, groups=["g"])
            mid = await b.publish(topic, b"\x00\xffraw", headers={"tenant": "a"}, key="k1")
            raw = await plain.get(timeout=5)
            assert raw is not None
            await raw.ack()
            assert raw.body == b"\x00\xffraw"
            assert raw.message_id == mid
            assert raw.headers["ce-id"] == mid
            assert raw.headers["tenant"] == "a"
            assert raw.headers["ce-partitionkey"] == "k1"
            assert raw.content_type == "application/octet-stream"
            await exchange.publish(
                aio_pika.Message(b"{}", message_id="foreign-1", headers={"n": 7}),
                routing_key=topic,
            )
            async with b.subscribe(topic, group="g") as sub:
                got = await collect_acked(sub, 2, 10)
    foreign = next(d for d in got if d.message.id != mid)
    assert foreign.message.id == "foreign-1"
    assert foreign.message.data == b"{}"
    assert foreign.message.headers == {"n": "7"}
    await _drop(url, group_queue(topic, "g"))


async def test_priority_needs_classic_queues(rabbitmq_broker: Broker) -> None:
    """With quorum queues (the default) priority is UnsupportedFeature, not ignored;
    queue_type=classic declares it natively."""
    async with bus.connect(rabbitmq_broker.url) as b:
        assert not b.capabilities.supports(bus.Feature.PRIORITY)
        with pytest.raises(bus.UnsupportedFeature, match="classic"):
            await b.publish(_topic("prio"), b"x", priority=5)
    async with bus.connect(rabbitmq_broker.url, queue_type="classic") as b:
        assert b.capabilities.supports(bus.Feature.PRIORITY)
    assert not RabbitMQBackend.capabilities.supports(bus.Feature.PRIORITY)  # README default


# -- broker restart and consumer death -----------------------------------------------


@pytest.mark.slow
async def test_restart_while_2000_messages_flow(private_broker: PrivateBrokerFactory) -> None:
    """A private node restarted mid-flow: every confirmed message is delivered (by id),
    publishers carry on by themselves, and the group and broadcast consumers resume
    without being re-opened."""
    broker = private_broker("rabbitmq")
    topic = _topic("restart")
    total = 2000
    async with bus.connect(broker.url, operation_timeout=60.0) as b:
        await b.declare(topic, groups=["g"])
        confirmed: list[str] = []
        received: set[str] = set()
        broadcast_after: set[str] = set()
        restarted = asyncio.Event()

        async def consume() -> None:
            async with b.subscribe(topic, group="g", prefetch=100) as sub:
                while True:
                    try:
                        d = await sub.receive(timeout=1.0)
                    except TimeoutError:
                        continue
                    received.add(d.message.id)
                    await d.ack()

        async def listen(sub: bus.Subscription) -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    d = await sub.receive(timeout=1.0)
                    if restarted.is_set():
                        broadcast_after.add(d.message.id)
                    await d.ack()

        async def publish() -> None:
            for i in range(0, total, 10):
                batch = [f"m{j}" for j in range(i, i + 10)]
                with contextlib.suppress(bus.BusError):  # not confirmed: may or may not arrive
                    confirmed.extend(await b.publish_many(topic, batch))
                await asyncio.sleep(0.005)

        broadcast = await b.subscribe(topic).open()
        tasks = [asyncio.create_task(consume()), asyncio.create_task(listen(broadcast))]
        producer = asyncio.create_task(publish())
        while len(confirmed) < 400:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        await asyncio.to_thread(broker.restart)
        restarted.set()
        await asyncio.wait_for(producer, 120)
        deadline = time.monotonic() + 60
        while not set(confirmed) <= received and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        missing = set(confirmed) - received
        assert len(confirmed) >= total - 100, f"only {len(confirmed)} of {total} confirmed"
        assert not missing, f"{len(missing)} of {len(confirmed)} confirmed messages lost"
        assert broadcast_after, "the broadcast subscriber did not resume after the restart"


@pytest.mark.slow
async def test_broker_outage_bounded_errors_then_recovery(
    private_broker: PrivateBrokerFactory,
) -> None:
    """The node is down: publish and subscribe fail within operation_timeout (no
    hang); the same Bus reconnects by itself when the node is back, and every message
    confirmed before the outage is still there."""
    broker = private_broker("rabbitmq")
    topic = _topic("outage")
    async with bus.connect(broker.url, operation_timeout=2.0) as b:
        await b.declare(topic, groups=["g"])
        before = await b.publish_many(topic, [f"m{i}" for i in range(200)])
        await asyncio.to_thread(broker.stop, keep_data=True)
        for attempt in (b.publish(topic, b"lost?"), b.subscribe(topic, group="g").open()):
            started = time.monotonic()
            with pytest.raises(bus.BusError):
                await attempt
            assert time.monotonic() - started < 2.0 + 2.0
        await asyncio.to_thread(broker.start)
        deadline = time.monotonic() + 30
        while True:  # the same Bus reconnects by itself
            try:
                after = await b.publish(topic, b"after")
                break
            except bus.BusError:
                assert time.monotonic() < deadline, "no reconnect within 30 s"
        async with b.subscribe(topic, group="g") as sub:
            got = await collect_acked(sub, 201, 20)
            with contextlib.suppress(TimeoutError):  # the unconfirmed one may be there
                got.append(await sub.receive(timeout=0.5))
    ids = {d.message.id for d in got}
    assert set(before) <= ids, f"{len(set(before) - ids)} confirmed messages lost"
    assert after in ids


_HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    import bus

    async def main():
        url, topic = sys.argv[1], sys.argv[2]
        b = await bus.connect(url)
        sub = await b.subscribe(topic, group="workers", prefetch=10).open()
        print("LIVE", flush=True)
        held = []
        while len(held) < 10:
            held.append(await sub.receive(timeout=30))
        print("READY " + " ".join(d.message.id for d in held), flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_sigkilled_consumer_holding_10_is_redelivered_within_5s(
    rabbitmq_broker: Broker,
) -> None:
    """A member killed with SIGKILL while holding 10 un-acked messages: the broker sees
    the socket close and all 10 reach another, already connected member within 5 s."""
    topic = _topic("sigkill")
    async with bus.connect(rabbitmq_broker.url) as b:
        await b.declare(topic, groups=["workers"])
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _HOLDER, rabbitmq_broker.url, topic,
            stdout=asyncio.subprocess.PIPE, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line.startswith("LIVE"), line
            # the holder is the group's only member: it takes all 10
            sent = await b.publish_many(topic, [f"job{i}" for i in range(10)])
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line.startswith("READY"), line
            held = set(line.split()[1:])
            assert held == set(sent)
            async with b.subscribe(topic, group="workers") as survivor:
                with pytest.raises(TimeoutError):  # everything is held by the other member
                    await survivor.receive(timeout=0.3)
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = time.monotonic()
                got = await collect_acked(survivor, 10, 5.0)
                elapsed = time.monotonic() - killed_at
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        assert {d.message.id for d in got} == held, f"{len(got)} of 10 within {elapsed:.1f}s"
        assert all(d.attempt == 2 for d in got), [d.attempt for d in got]
        assert elapsed <= 5.0
    await _drop(rabbitmq_broker.url, group_queue(topic, "workers"))


# -- frames, cancellation, silent peers, leaks (review of 2026-12-01) ---------------


class _Proxy:
    """A TCP proxy to the broker that a test can cut (connections dropped, port
    refusing) or freeze (a silent peer: nothing forwarded, nothing closed)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._frozen = False
        self._released = asyncio.Event()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while True:
                    data = await src.read(65536)
                    if self._frozen:  # the peer went silent: read and send nothing more
                        await self._released.wait()
                        return
                    if not data:
                        break
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def freeze(self) -> None:
        """Stop forwarding in both directions, keeping every connection open."""
        self._frozen = True

    async def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()
        self._released.set()


async def test_headers_larger_than_a_frame_are_message_too_large_and_nothing_is_cut(
    rabbitmq_broker: Broker,
) -> None:
    """Properties and headers that do not fit in one frame (frame_max): MessageTooLarge
    before anything is sent, for a publish, a batch, a request and a dead-letter copy.
    The broker would close the whole connection over such a frame (frame_too_large),
    with every subscription's channel: the held delivery must stay held (acked once,
    never redelivered)."""
    url = rabbitmq_broker.url
    topic = _topic("bighdr")
    big = {"note": "a" * 200_000}
    try:
        async with bus.connect(url, operation_timeout=3.0) as b:
            await b.declare(topic, groups=["g"])
            await b.declare(f"{topic}.dlq", groups=["audit"])
            held_id = await b.publish(topic, b"held")
            # fits one frame alone, not with a 2,000-character dead-letter reason
            near_id = await b.publish(topic, b"near", headers={"note": "n" * 130_000})
            async with b.subscribe(topic, group="g", prefetch=1) as sub:
                held = await sub.receive(timeout=10)
                assert (held.message.id, held.attempt) == (held_id, 1)
                started = time.monotonic()
                with pytest.raises(bus.MessageTooLarge):
                    await b.publish(topic, b"x", headers=big)
                with pytest.raises(bus.MessageTooLarge):
                    await b.publish_many(topic, [b"ok", b"ok"], headers=big)
                with pytest.raises(bus.MessageTooLarge):
                    await b.request(topic, b"q", headers=big, timeout=5)
                assert time.monotonic() - started < 2.0, "refused before sending, not retried"
                await held.ack()
                near = await sub.receive(timeout=10)
                assert (near.message.id, near.attempt) == (near_id, 1), "the channel was lost"
                with pytest.raises(bus.MessageTooLarge):
                    await near.dead_letter("r" * 5000)
                await near.ack()
                with pytest.raises(TimeoutError):  # nothing came back, nothing else was sent
                    await sub.receive(timeout=1.0)
            async with b.subscribe(f"{topic}.dlq", group="audit") as dlq:
                with pytest.raises(TimeoutError):
                    await dlq.receive(timeout=0.5)
        async with _raw(url) as ch:
            q = await ch.declare_queue(group_queue(topic, "g"), passive=True)
            assert q.declaration_result.message_count == 0
    finally:
        await _drop(url, group_queue(topic, "g"), group_queue(f"{topic}.dlq", "audit"))


async def test_cancelling_subscribe_raises_cancelled_error(rabbitmq_broker: Broker) -> None:
    """A subscribe() cancelled while it declares, binds or consumes raises the
    caller's CancelledError (or TimeoutError under asyncio.timeout), never a
    PublishError."""
    topic = _topic("cancelsub")
    outcomes: dict[str, int] = {}
    try:
        async with bus.connect(rabbitmq_broker.url) as b:
            await b.declare(topic, groups=["g"])
            for i in range(40):

                async def hold() -> None:
                    async with b.subscribe(topic, group="g"):
                        await asyncio.sleep(10)

                task = asyncio.create_task(hold())
                await asyncio.sleep(0.0005 * (i % 20))
                task.cancel()
                try:
                    await task
                    outcome = "returned"
                except BaseException as exc:  # counting every outcome
                    outcome = type(exc).__name__
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                try:
                    async with asyncio.timeout(0.0005 * (i % 20) + 0.0001):
                        async with b.subscribe(topic, group="g"):
                            await asyncio.sleep(10)
                    outcome = "returned"
                except BaseException as exc:
                    outcome = type(exc).__name__
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
        assert set(outcomes) <= {"CancelledError", "TimeoutError"}, outcomes
    finally:
        await _drop(rabbitmq_broker.url, group_queue(topic, "g"))


async def test_close_during_an_outage_is_bounded_and_cancellable(
    rabbitmq_broker: Broker,
) -> None:
    """The broker unreachable (proxy cut) and a long reconnect_interval: closing two
    subscriptions and the bus does not wait reconnect_interval per subscription, and a
    cancelled close() raises CancelledError instead of finishing silently."""
    topic = _topic("closeoutage")
    url = rabbitmq_broker.url
    try:
        for cancel in (False, True):
            proxy = _Proxy(rabbitmq_broker.host, rabbitmq_broker.port)
            port = await proxy.start()
            b = await bus.connect(
                f"amqp://guest:guest@127.0.0.1:{port}/", reconnect_interval=20, operation_timeout=5
            )
            try:
                await b.declare(topic, groups=["g"])
                subs = [await b.subscribe(topic, group="g").open() for _ in range(2)]
                await proxy.cut()
                await asyncio.sleep(1.0)  # the watchers are reconnecting
                started = time.monotonic()
                if cancel:
                    closer = asyncio.create_task(subs[0].close())
                    await asyncio.sleep(0)  # close() is under way
                    closer.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await asyncio.wait_for(closer, 15)
                await asyncio.wait_for(b.close(), 15)
                assert time.monotonic() - started < 8.0
            finally:
                await proxy.cut()
                await asyncio.wait_for(b.close(), 30)
    finally:
        await _drop(url, group_queue(topic, "g"))


async def test_a_silent_peer_does_not_block_receive_or_close(rabbitmq_broker: Broker) -> None:
    """The broker stops answering (a proxy that forwards nothing more) while a large
    publish fills the socket: receive(timeout) returns after about its timeout and
    close() within its bounds, instead of until the heartbeat gives up (93 s). The
    ack that could not be sent loses nothing: the held message is delivered again."""
    url = rabbitmq_broker.url
    topic = _topic("silent")
    proxy = _Proxy(rabbitmq_broker.host, rabbitmq_broker.port)
    port = await proxy.start()
    try:
        b = await bus.connect(f"amqp://guest:guest@127.0.0.1:{port}/", operation_timeout=5)
        big: asyncio.Task[str] | None = None
        try:
            await b.declare(topic, groups=["g"])
            held_id = await b.publish(topic, b"held")
            sub = await b.subscribe(topic, group="g").open()
            held = await sub.receive(timeout=10)
            proxy.freeze()
            big = asyncio.create_task(b.publish(topic, b"z" * (48 * 1024 * 1024)))
            await asyncio.sleep(1.0)  # the socket is full
            await held.ack()
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(sub.receive(timeout=1.0), 15)
            assert time.monotonic() - started < 5.0
            started = time.monotonic()
            await asyncio.wait_for(sub.close(), 20)
            assert time.monotonic() - started < 15.0
        finally:
            await proxy.cut()
            if big is not None:
                with contextlib.suppress(bus.BusError, TimeoutError):  # not confirmed: cut
                    await asyncio.wait_for(big, 30)
            await asyncio.wait_for(b.close(), 30)
        async with bus.connect(url) as b, b.subscribe(topic, group="g") as sub:
            got = await collect_acked(sub, 2, 10)
            assert [d.message.id for d in got] == [held_id], "held message lost or duplicated"
    finally:
        await proxy.cut()
        await _drop(url, group_queue(topic, "g"))


async def test_a_cancelled_broadcast_subscribe_leaves_no_queue(rabbitmq_broker: Broker) -> None:
    """Broadcast subscribes cancelled between declaring their exclusive queue and
    consuming it: no queue is left bound to the topic collecting messages (auto-delete
    never fires for a queue that was never consumed)."""
    exchange = f"rabbittest-bcast-{uuid.uuid4().hex[:8]}"
    url = f"{rabbitmq_broker.url.split('?')[0]}?exchange={exchange}"
    topic = _topic("bcastleak")
    try:
        async with bus.connect(url) as b:
            for i in range(50):

                async def hold() -> None:
                    async with b.subscribe(topic):
                        await asyncio.sleep(10)

                task = asyncio.create_task(hold())
                await asyncio.sleep(0.0003 * (i % 25))
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            # every broadcast queue is gone: a message to the topic reaches none
            assert await _unroutable(url, exchange, topic)
    finally:
        async with _raw(url) as ch:
            for name in (f"{exchange}.delay", f"{exchange}.requeue", exchange):
                with contextlib.suppress(Exception):
                    await ch.exchange_delete(name)


async def test_publishes_in_flight_when_the_bus_closes_raise_bus_closed(
    rabbitmq_broker: Broker,
) -> None:
    """Publishes in flight when close() runs either return their id (and the message
    is there) or raise BusClosed promptly, never a PublishError or BrokerUnavailable
    after operation_timeout."""
    url = rabbitmq_broker.url
    topic = _topic("pubclose")
    confirmed: list[str] = []
    outcomes: dict[str, int] = {}
    try:
        for pause in (0.0, 0.001, 0.002, 0.003, 0.005, 0.01):
            b = await bus.connect(url, operation_timeout=20)
            await b.declare(topic, groups=["g"])

            async def one(b: bus.Bus = b) -> None:
                try:
                    confirmed.append(await b.publish(topic, b"x" * 100))
                    outcome = "ok"
                except bus.BusError as exc:
                    outcome = type(exc).__name__
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

            tasks = [asyncio.create_task(one()) for _ in range(20)]
            await asyncio.sleep(pause)
            started = time.monotonic()
            await b.close()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
            assert time.monotonic() - started < 5.0
        assert set(outcomes) <= {"ok", "BusClosed"}, outcomes
        async with bus.connect(url) as b, b.subscribe(topic, group="g", prefetch=200) as sub:
            got = await collect_acked(sub, 6 * 20, 5)  # at most every publish
        lost = set(confirmed) - {d.message.id for d in got}
        assert not lost, (
            f"{len(lost)} of {len(confirmed)} confirmed publishes lost ({len(got)} got)"
        )
    finally:
        await _drop(url, group_queue(topic, "g"))


async def test_a_deleted_wait_queue_is_declared_again(rabbitmq_broker: Broker) -> None:
    """A wait queue deleted while the backend has it cached as declared: the delayed
    publish (and the nack with a delay) that the delay exchange returns declares it
    again and is sent once more, and arrives (counted by id)."""
    exchange = f"rabbittest-wait-{uuid.uuid4().hex[:8]}"
    url = f"{rabbitmq_broker.url.split('?')[0]}?exchange={exchange}"
    topic = _topic("waitgone")
    waits = [f"_{exchange}.due.{delay_ms(0.05)}", f"_{exchange}.requeue.{delay_ms(0.05)}"]
    drop = f"_{exchange}.due.drop"
    try:
        async with bus.connect(url) as b, _raw(url) as raw:
            await b.declare(topic, groups=["g"])
            ids = [await b.publish(topic, b"first", delay=0.05)]
            await asyncio.sleep(0.5)  # due: in the group queue, not in the wait queue
            await raw.queue_delete(waits[0], if_unused=False, if_empty=False)
            ids += [await b.publish(topic, f"again{n}", delay=0.05) for n in range(2)]
            async with b.subscribe(topic, group="g") as sub:
                got = await collect_acked(sub, 3, 10)
                assert sorted(d.message.id for d in got) == sorted(ids)
                retry_id = await b.publish(topic, b"retry")
                d = await sub.receive(timeout=10)
                await d.nack(delay=0.05)
                again = await sub.receive(timeout=10)
                await raw.queue_delete(waits[1], if_unused=False, if_empty=False)
                await again.nack(delay=0.05)
                last = await sub.receive(timeout=10)
                assert (d.message.id, again.message.id, last.message.id) == (retry_id,) * 3
                assert last.attempt == 3
                await last.ack()
    finally:
        await _drop(url, *waits, drop, group_queue(topic, "g"))
        async with _raw(url) as ch:
            for name in (f"{exchange}.due", f"{exchange}.requeue", f"{exchange}.delay", exchange):
                with contextlib.suppress(Exception):
                    await ch.exchange_delete(name)


@pytest.mark.parametrize("separator", ["/", "#"])
def test_a_password_with_an_unencoded_separator_is_not_kept_in_the_error(separator: str) -> None:
    """An unencoded '/' or '#' in the password ends the authority early, so the URL
    parser reads part of the password as the port: the ConfigurationError carries no
    chained exception quoting it."""
    secret = f"Sekr3t{separator}rest"
    with pytest.raises(bus.ConfigurationError) as info:
        bus.connect(f"amqp://guest:{secret}@127.0.0.1:5672/")
    exc: BaseException | None = info.value
    while exc is not None:
        assert "Sekr3t" not in f"{exc} {exc!r}"
        assert exc.__cause__ is None
        exc = exc.__context__
    assert info.value.__context__ is None
