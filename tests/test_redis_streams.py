"""Redis Streams backend: what is specific to Redis, against real servers.

The shared conformance suite covers the contract; these tests cover the Redis
mapping (hash-tagged keys, coalesced XACK on the wire, trimming, idle-consumer
cleanup, the delay mover, foreign entries), configuration and connection errors
(URL, closed port, ACL user, TLS), and the failure scenarios of issue 3: a server
restart twice while 2,000 messages flow, and a consumer process killed with SIGKILL
while it holds 10 un-acked messages. Every test that disrupts something counts
messages by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from support import collect_acked, make_tls_files

import bus
from backends.redis_streams import RedisStreamsBackend
from backends.redis_streams.keys import TopicKeys
from conformance.brokers import Broker, free_port
from conformance.brokers.fixtures import PrivateBrokerFactory, private_broker, redis_broker

# Imported for pytest to register them in this module.
FIXTURES = (private_broker, redis_broker)

pytestmark = pytest.mark.broker("redis")

ROOT = Path(__file__).resolve().parents[1]


def _topic(name: str) -> str:
    return f"redistest.{name}.{uuid.uuid4().hex[:10]}"


def _backend(b: bus.Bus) -> RedisStreamsBackend:
    backend = b.backend
    assert isinstance(backend, RedisStreamsBackend)
    return backend


@contextlib.asynccontextmanager
async def _raw(url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(url.split("?")[0])
    try:
        yield client
    finally:
        await client.aclose()


async def _drop_topic(url: str, topic: str) -> None:
    async with _raw(url) as r:
        keys = [k async for k in r.scan_iter(match=f"bus:{{{topic}}}*")]
        if keys:
            await r.delete(*keys)


# -- configuration and connection errors ---------------------------------------------


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("redis://127.0.0.1:6379/notadb", {}),
        ("redis://127.0.0.1:99999/0", {}),
        ("redis://127.0.0.1:6379/0?no_such_option=1", {}),
        ("redis://127.0.0.1:6379/0", {"trim": "sometimes"}),
        ("redis://127.0.0.1:6379/0", {"key_prefix": "has:colon"}),
        ("redis://127.0.0.1:6379/0", {"tls_ca_file": "/tmp/ca.pem"}),  # TLS option, no TLS
        ("redis://127.0.0.1:6379/3", {"cluster": True}),
    ],
)
def test_bad_url_or_option_is_configuration_error(url: str, options: dict[str, object]) -> None:
    with pytest.raises(bus.ConfigurationError):
        bus.connect(url, **options)


async def test_closed_port_is_broker_unavailable_within_connect_timeout() -> None:
    secret = "hunter2-secret-pw"
    url = f"redis://alice:{secret}@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    with pytest.raises(bus.BrokerUnavailable) as info:
        await bus.connect(url, connect_timeout=2.0)
    assert time.monotonic() - started < 2.0 + 1.0
    text = f"{info.value} {info.value!r} {info.value.__cause__}"
    assert secret not in text
    assert "alice:***@" in str(info.value)


@pytest.mark.slow
async def test_acl_user_from_url_and_wrong_password(private_broker: PrivateBrokerFactory) -> None:
    """ACL user and password come from the URL; a wrong password is BrokerUnavailable
    and the password appears in no error text."""
    broker = private_broker(
        "redis", extra_args=["--user", "alice", "on", ">right-pw-1", "~*", "&*", "+@all"]
    )
    good = f"redis://alice:right-pw-1@127.0.0.1:{broker.port}/0"
    topic = _topic("acl")
    async with bus.connect(good) as b, b.subscribe(topic, group="g") as sub:
        mid = await b.publish(topic, b"hello")
        (d,) = await collect_acked(sub, 1, 10)
        assert d.message.id == mid
    wrong = "wrong-pw-2"
    with pytest.raises(bus.BrokerUnavailable) as info:
        await bus.connect(f"redis://alice:{wrong}@127.0.0.1:{broker.port}/0")
    text = f"{info.value} {info.value!r} {info.value.__cause__!r}"
    assert wrong not in text
    assert "authentication failed" in str(info.value)


@pytest.mark.slow
async def test_tls_rediss_url(private_broker: PrivateBrokerFactory, tmp_path: Path) -> None:
    """rediss:// connects over TLS, verifying the server against tls_ca_file; an
    unverifiable server certificate is BrokerUnavailable."""
    ca_file, cert_file, key_file = make_tls_files(tmp_path)
    tls_port = free_port()
    private_broker(
        "redis",
        extra_args=[
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(cert_file),
            "--tls-key-file", str(key_file),
            "--tls-ca-cert-file", str(ca_file),
            "--tls-auth-clients", "no",
        ],
    )  # fmt: skip
    url = f"rediss://127.0.0.1:{tls_port}/0"
    topic = _topic("tls")
    async with (
        bus.connect(url, tls_ca_file=str(ca_file)) as b,
        b.subscribe(topic, group="g") as sub,
    ):
        mid = await b.publish(topic, b"over tls")
        (d,) = await collect_acked(sub, 1, 10)
    assert d.message.id == mid
    assert d.message.data == b"over tls"
    with pytest.raises(bus.BrokerUnavailable):
        await bus.connect(url, connect_timeout=3.0)  # system CAs do not know our CA


# -- mapping -----------------------------------------------------------------------


async def test_every_key_of_a_topic_is_in_one_cluster_slot(redis_broker: Broker) -> None:
    """Stream, priority streams, redelivery stream, delayed zset, registries: one hash
    slot, so the scripts and multi-stream reads work on Redis Cluster."""
    topic = _topic("slots")
    async with bus.connect(redis_broker.url) as b:
        await b.declare(topic, groups=["g1", "g2"])
        await b.publish(topic, b"plain")
        await b.publish(topic, b"urgent", priority=7)
        await b.publish(topic, b"later", delay=60)
        async with b.subscribe(topic, group="g1", prefetch=1) as sub:
            d = await sub.receive(timeout=10)
            await d.nack(delay=60)
            keys = [
                k.decode()
                async for k in _backend(b).conn.client.scan_iter(match=f"bus:{{{topic}}}*")
            ]
    tk = TopicKeys.of("bus", topic)
    expected = {tk.base, tk.level(7), tk.retry("g1"), tk.retry("g2"), tk.delayed, tk.levels}
    assert expected <= set(keys), sorted(keys)
    assert len({key_slot(k.encode()) for k in keys}) == 1
    await _drop_topic(redis_broker.url, topic)


async def test_acks_are_coalesced_on_the_wire(private_broker: PrivateBrokerFactory) -> None:
    """1,000 acks make a handful of XACK commands, not 1,000; ack_flush_interval=0
    sends one per ack (and is measurably slower: both rates are printed)."""
    broker = private_broker("redis")
    rates: dict[float, float] = {}
    xacks: dict[float, int] = {}
    for flush in (0.02, 0.0):
        topic = _topic("acks")
        async with bus.connect(broker.url, ack_flush_interval=flush) as b, _raw(broker.url) as r:
            await b.declare(topic, groups=["g"])
            sent = await b.publish_many(topic, [b"x" * 1024] * 1000)
            await r.config_resetstat()
            started = time.perf_counter()
            async with b.subscribe(topic, group="g", prefetch=200) as sub:
                got = await collect_acked(sub, 1000, 30)
            rates[flush] = 1000 / (time.perf_counter() - started)
            stats = await r.info("commandstats")
            xacks[flush] = int(stats.get("cmdstat_xack", {}).get("calls", 0))
            assert {d.message.id for d in got} == set(sent)
            groups = await r.xinfo_groups(f"bus:{{{topic}}}")
            assert groups[0]["pending"] == 0
    print(f"\nconsume+ack 1000 x 1 KiB: coalesced {rates[0.02]:.0f}/s ({xacks[0.02]} XACK), "
          f"per-message {rates[0.0]:.0f}/s ({xacks[0.0]} XACK)")  # fmt: skip
    assert xacks[0.02] <= 100
    assert xacks[0.0] >= 1000


async def test_acked_history_is_trimmed_but_never_what_a_group_needs(
    redis_broker: Broker,
) -> None:
    """trim="acked": entries every group settled are trimmed; a group that has not
    read yet keeps everything it needs."""
    topic = _topic("trim")
    opts = {"retention": 0, "housekeeping_interval": 0.2}
    key = f"bus:{{{topic}}}"
    async with bus.connect(redis_broker.url, **opts) as b, _raw(redis_broker.url) as r:
        await b.declare(topic, groups=["fast", "slow"])
        sent = await b.publish_many(topic, [f"m{i}" for i in range(1000)])
        async with b.subscribe(topic, group="fast", prefetch=200) as sub:
            got = await collect_acked(sub, 1000, 30)
            assert len(got) == 1000
            with contextlib.suppress(TimeoutError):
                await sub.receive(timeout=1.0)  # fetches run the housekeeping meanwhile
        assert await r.xlen(key) == 1000, "group 'slow' has read nothing: nothing may go"
        async with b.subscribe(topic, group="slow", prefetch=200) as sub:
            got = await collect_acked(sub, 1000, 30)
            assert {d.message.id for d in got} == set(sent)
            deadline = time.monotonic() + 10
            while await r.xlen(key) > 200 and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    await sub.receive(timeout=0.3)  # fetches run the housekeeping
        length = await r.xlen(key)
    assert length <= 200, f"{length} entries left after every group acked 1000"
    await _drop_topic(redis_broker.url, topic)


async def test_maxlen_policy_caps_the_stream(redis_broker: Broker) -> None:
    topic = _topic("maxlen")
    async with bus.connect(redis_broker.url, trim="maxlen", maxlen=100) as b:
        for _ in range(10):
            await b.publish_many(topic, [b"x"] * 100)
        async with _raw(redis_broker.url) as r:
            length = await r.xlen(f"bus:{{{topic}}}")
    assert length <= 200
    await _drop_topic(redis_broker.url, topic)


async def test_delay_mover_moves_each_message_once_with_many_movers(redis_broker: Broker) -> None:
    """Six members of one group and a second group all run the mover: each of 200
    delayed messages reaches each group exactly once, not before its delay."""
    topic = _topic("mover")
    conns = [await bus.connect(redis_broker.url) for _ in range(6)]
    try:
        await conns[0].declare(topic, groups=["a", "b"])
        subs = [await c.subscribe(topic, group="a", prefetch=50).open() for c in conns[:5]]
        other = await conns[5].subscribe(topic, group="b", prefetch=200).open()
        published = time.monotonic()
        sent = await conns[0].publish_many(topic, [f"d{i}" for i in range(200)], delay=1.0)
        per_group: dict[str, list[str]] = {"a": [], "b": []}
        first_at: list[float] = []

        async def drain(sub: bus.Subscription, group: str) -> None:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(set(per_group[group])) < 200:
                try:
                    d = await sub.receive(timeout=0.5)
                except TimeoutError:
                    continue
                first_at.append(time.monotonic())
                per_group[group].append(d.message.id)
                await d.ack()

        await asyncio.gather(*(drain(s, "a") for s in subs), drain(other, "b"))
        await asyncio.sleep(0.5)
        for s in [*subs, other]:
            with contextlib.suppress(TimeoutError):
                d = await s.receive(timeout=0.1)
                per_group["a" if s in subs else "b"].append(d.message.id)
            await s.close()
    finally:
        for c in conns:
            await c.close()
    for group, ids in per_group.items():
        assert sorted(ids) == sorted(sent), f"group {group}: {len(ids)} deliveries of 200"
    assert min(first_at) - published >= 1.0 - 0.1
    await _drop_topic(redis_broker.url, topic)


async def test_foreign_entry_is_delivered_not_wedged(redis_broker: Broker) -> None:
    """An entry another program XADDed (no ce-id) is delivered with its fields as
    headers; the messages after it flow normally."""
    topic = _topic("foreign")
    async with bus.connect(redis_broker.url) as b, _raw(redis_broker.url) as r:
        await b.declare(topic, groups=["g"])
        entry = (
            await r.xadd(f"bus:{{{topic}}}", {"bus-data": b"raw", "origin": "legacy"})
        ).decode()
        mid = await b.publish(topic, b"ours")
        async with b.subscribe(topic, group="g") as sub:
            first, second = await collect_acked(sub, 2, 10)
    assert first.message.id == f"redis-{entry}"
    assert first.message.data == b"raw"
    assert first.message.headers == {"origin": "legacy"}
    assert second.message.id == mid
    await _drop_topic(redis_broker.url, topic)


async def test_group_lost_under_a_live_member_is_recreated(redis_broker: Broker) -> None:
    """A consumer group that vanishes while a member reads (data loss: a restart
    without persistence, an operator's XGROUP DESTROY) is recreated from the start of
    what the stream still holds; nothing published after the loss is missed (the
    member's reads meet NOGROUP; the fetch script's own read or the blocking read
    recreates the group)."""
    topic = _topic("lostgroup")
    async with bus.connect(redis_broker.url) as b, _raw(redis_broker.url) as r:
        await b.declare(topic, groups=["g"])
        async with b.subscribe(topic, group="g") as sub:
            await b.publish(topic, b"before")
            (first,) = await collect_acked(sub, 1, 10)
            await asyncio.sleep(0.3)  # past the first full fetch: plain reads now
            await r.xgroup_destroy(f"bus:{{{topic}}}", "g")
            sent = {await b.publish(topic, f"after-{i}".encode()) for i in range(5)}
            seen: set[str] = set()
            deadline = time.monotonic() + 10
            while not sent <= seen and time.monotonic() < deadline:
                d = await sub.receive(timeout=max(deadline - time.monotonic(), 0.01))
                seen.add(d.message.id)
                await d.ack()
    assert first.message.data == b"before"
    assert sent <= seen, f"missing after the group was lost: {sorted(sent - seen)}"
    await _drop_topic(redis_broker.url, topic)


async def test_payload_is_readable_by_a_plain_redis_client(redis_broker: Broker) -> None:
    """CloudEvents binary mode: payload in bus-data as published, attributes as fields."""
    topic = _topic("plain")
    async with bus.connect(redis_broker.url, source="svc-a") as b, _raw(redis_broker.url) as r:
        mid = await b.publish(topic, b"\x00\xffbytes", key="k1", headers={"tenant": "t"})
        ((_, fields),) = await r.xrange(f"bus:{{{topic}}}")
    assert fields[b"bus-data"] == b"\x00\xffbytes"
    assert fields[b"ce-id"] == mid.encode()
    assert fields[b"ce-source"] == b"svc-a"
    assert fields[b"ce-partitionkey"] == b"k1"
    assert fields[b"tenant"] == b"t"
    await _drop_topic(redis_broker.url, topic)


async def test_nack_wakes_another_member_at_once(redis_broker: Broker) -> None:
    """nack() puts the entry in the group's redelivery stream, which a member blocked
    in XREADGROUP also waits on: it gets the message at once, attempt 2 (not after
    its blocking read times out, MAX_BLOCK = 5 s)."""
    topic = _topic("nackwake")
    async with bus.connect(redis_broker.url) as a, bus.connect(redis_broker.url) as b:
        await a.declare(topic, groups=["g"])
        mid = await a.publish(topic, b"x")
        async with a.subscribe(topic, group="g") as sub_a:
            d = await sub_a.receive(timeout=10)
            member = await _backend(b).subscribe(topic, group="g", start="latest", prefetch=10)
            try:
                waiting = asyncio.create_task(member.fetch(10, 8.0))
                await asyncio.sleep(0.5)  # the member is blocked in XREADGROUP now
                started = time.monotonic()
                await d.nack()
                (again,) = await waiting
                elapsed = time.monotonic() - started
                await again.ack()
            finally:
                await member.close()
    assert again.message.id == mid
    assert again.attempt == 2
    assert elapsed < 2.5, f"took {elapsed:.2f}s: the blocked read was not woken"
    await _drop_topic(redis_broker.url, topic)


@pytest.mark.slow
async def test_delayed_messages_survive_a_restart(private_broker: PrivateBrokerFactory) -> None:
    """Delayed publishes and nack(delay) live in Redis (zset), not in the client: after
    a broker restart and with new connections, both are delivered, not early."""
    broker = private_broker("redis")
    topic = _topic("delayrestart")
    async with bus.connect(broker.url) as b:
        await b.declare(topic, groups=["g"])
        published = time.monotonic()
        later = await b.publish(topic, b"later", delay=3.0)
        retried = await b.publish(topic, b"retry")
        async with b.subscribe(topic, group="g") as sub:
            d = await sub.receive(timeout=10)
            assert d.message.id == retried
            await d.nack(delay=3.0)
    await asyncio.to_thread(broker.restart)
    async with bus.connect(broker.url) as b, b.subscribe(topic, group="g") as sub:
        got = await collect_acked(sub, 2, 20)
    arrived = time.monotonic() - published
    assert {d.message.id for d in got} == {later, retried}
    assert [d.attempt for d in got if d.message.id == retried] == [2]
    assert arrived >= 3.0 - 0.1


# -- failures ----------------------------------------------------------------------


@pytest.mark.slow
async def test_a_frozen_server_makes_publish_fail_in_bounded_time_not_hang(
    private_broker: PrivateBrokerFactory,
) -> None:
    """A Redis that keeps its sockets open but answers nothing (SIGSTOP): publish
    raises BrokerUnavailable once operation_timeout (1 s) has passed, instead of
    waiting forever or for the reply timeout sized for blocking reads (15 s). Once
    the server runs again, the same Bus publishes on a new connection, and every
    confirmed message is in the stream."""
    broker = private_broker("redis")
    topic = _topic("frozen")
    async with _raw(broker.url) as r:
        pid = int((await r.info("server"))["process_id"])
    confirmed: list[str] = []
    async with bus.connect(broker.url, operation_timeout=1.0) as b:
        await b.declare(topic, groups=["g"])
        confirmed += [await b.publish(topic, b"before") for _ in range(5)]
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(bus.BrokerUnavailable):
                await b.publish(topic, b"frozen")
            took = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        # operation_timeout, then the watchdog's resolution (0.25 s) and scheduling
        assert 0.95 <= took < 3.0, f"publish to a frozen server gave up after {took:.1f}s"
        confirmed += [await b.publish(topic, b"after") for _ in range(5)]
        async with b.subscribe(topic, group="g") as sub:
            # the frozen publish may have been stored too (at-least-once): 10 or 11
            got = await collect_acked(sub, 11, 5)
    assert set(confirmed) <= {d.message.id for d in got}, "a confirmed message is missing"


@pytest.mark.slow
async def test_restart_twice_while_2000_messages_flow(
    private_broker: PrivateBrokerFactory,
) -> None:
    """A private Redis (appendonly yes) restarted twice mid-flow: publisher and
    consumer carry on by themselves and every confirmed message is delivered."""
    broker = private_broker("redis")
    topic, group = _topic("restart"), "workers"
    confirmed: list[str] = []
    received: set[str] = set()
    failed_batches = 0
    async with (
        bus.connect(broker.url, operation_timeout=60.0) as pub,
        bus.connect(broker.url, operation_timeout=60.0) as con,
    ):
        await pub.declare(topic, groups=[group])

        async def produce() -> None:
            nonlocal failed_batches
            for i in range(0, 2000, 5):
                try:
                    confirmed.extend(await pub.publish_many(topic, [f"m{i + j}" for j in range(5)]))
                except bus.BusError:
                    failed_batches += 1  # not confirmed: may or may not arrive
                await asyncio.sleep(0.01)

        async def consume() -> None:
            async with con.subscribe(topic, group=group, prefetch=100) as sub:
                while True:
                    try:
                        d = await sub.receive(timeout=1.0)
                    except TimeoutError:
                        continue
                    received.add(d.message.id)
                    await d.ack()

        consumer = asyncio.create_task(consume())
        producer = asyncio.create_task(produce())
        restarts_at = []
        for threshold in (600, 1300):
            while len(confirmed) < threshold and not producer.done():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            restarts_at.append(len(confirmed))
            await asyncio.to_thread(broker.restart)
        await asyncio.wait_for(producer, 90)
        deadline = time.monotonic() + 60
        while not set(confirmed) <= received and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
    missing = set(confirmed) - received
    assert all(n < 2000 for n in restarts_at), f"restarts happened after the flow: {restarts_at}"
    assert not missing, f"{len(missing)} of {len(confirmed)} confirmed messages lost"
    assert len(confirmed) == 2000, f"{failed_batches} batches failed despite operation_timeout"


_HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    import bus

    async def main():
        url, topic = sys.argv[1], sys.argv[2]
        b = await bus.connect(url, ack_timeout=3.0, liveness_ttl=3.0)
        sub = await b.subscribe(topic, group="workers", prefetch=10).open()
        held = []
        while len(held) < 10:
            held.append(await sub.receive(timeout=30))
        print("READY " + " ".join(d.message.id for d in held), flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_sigkilled_consumer_holding_10_is_redelivered_within_idle_plus_5s(
    redis_broker: Broker,
) -> None:
    """A member killed with SIGKILL while holding 10 un-acked entries: all 10 reach
    another member within ack_timeout + 5 s (XAUTOCLAIM by the live member, no lock);
    the dead consumer is then deleted and stops counting as live."""
    topic = _topic("sigkill")
    ack_timeout = 3.0
    opts = {
        "ack_timeout": ack_timeout,
        "consumer_idle_timeout": 1.0,
        "housekeeping_interval": 0.5,
        "liveness_ttl": 3.0,
    }
    async with bus.connect(redis_broker.url, **opts) as b:
        await b.declare(topic, groups=["workers"])
        sent = await b.publish_many(topic, [f"job{i}" for i in range(10)])
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _HOLDER, redis_broker.url, topic,
            stdout=asyncio.subprocess.PIPE, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line.startswith("READY"), line
            held = set(line.split()[1:])
            assert held == set(sent)
            os.kill(proc.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        async with b.subscribe(topic, group="workers") as sub:
            got = await collect_acked(sub, 10, ack_timeout + 5.0)
            elapsed = time.monotonic() - killed_at
            assert {d.message.id for d in got} == held, f"{len(got)} of 10 within {elapsed:.1f}s"
            assert all(d.attempt == 2 for d in got), [d.attempt for d in got]
            assert elapsed <= ack_timeout + 5.0
            # the dead consumer holds nothing now: housekeeping deletes it
            async with _raw(redis_broker.url) as r:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    with contextlib.suppress(TimeoutError):
                        await sub.receive(timeout=0.3)
                    consumers = await r.xinfo_consumers(f"bus:{{{topic}}}", "workers")
                    if len(consumers) == 1:
                        break
                assert len(consumers) == 1, consumers
        # nothing consumes the topic any more (the killed process's entry expired)
        deadline = time.monotonic() + opts["liveness_ttl"] + 2
        while await _backend(b).has_consumers(topic) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        assert not await _backend(b).has_consumers(topic)
    await _drop_topic(redis_broker.url, topic)


# -- Redis Cluster -------------------------------------------------------------------

CLUSTER_SCENARIOS = [
    "group_competing_consumers",
    "two_groups_each_get_all",
    "publish_many_batch",
    "broadcast_every_subscriber",
    "close_without_ack_redelivers",
    "lease_expiry_redelivers",
    "nack_delay",
    "priority_order",
    "request_reply",
    "no_responders",
]


@pytest.mark.slow
async def test_cluster_of_three_primaries(private_broker: PrivateBrokerFactory) -> None:
    """On a 3-primary Redis Cluster (cluster=True), topics spread over the nodes and
    the scenarios that use every script, multi-stream read and pipeline pass."""
    from conformance.runner import run_conformance

    # --cluster-port: the bus port may be above 55535, where the default (port + 10000)
    # does not exist
    nodes = [
        private_broker(
            "redis", extra_args=["--cluster-enabled", "yes", "--cluster-port", str(free_port())]
        )
        for _ in range(3)
    ]
    created = await asyncio.to_thread(
        subprocess.run,
        [
            "redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
            "--cluster-replicas", "0", "--cluster-yes",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    url = f"redis://127.0.0.1:{nodes[0].port}/0"
    async with _raw(url) as r:
        deadline = time.monotonic() + 30
        while b"cluster_state:ok" not in await r.execute_command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "cluster did not become ok"
            await asyncio.sleep(0.1)
    result = await run_conformance(
        url, options={"cluster": True}, only=CLUSTER_SCENARIOS, isolated=None
    )
    failed = [(s.name, s.reason) for s in result.scenarios if s.status != "pass"]
    assert not failed

    async def nodes_holding(pattern: str) -> set[int]:
        used = set()
        for node in nodes:
            async with _raw(node.url) as r:
                if [k async for k in r.scan_iter(match=pattern)]:
                    used.add(node.port)
        return used

    # the scenarios deleted their topics on whichever node held them
    assert await nodes_holding("bus:{conformance.*") == set()
    # topics really land on different nodes (and delete_topic finds them there)
    topics = [_topic(f"spread{i}") for i in range(8)]
    async with bus.connect(url, cluster=True) as b:
        for topic in topics:
            await b.declare(topic, groups=["g"])
            await b.publish(topic, b"x")
        assert len(await nodes_holding("bus:{redistest.spread*")) >= 2
        for topic in topics:
            await b.backend.delete_topic(topic, ["g"])
    assert await nodes_holding("bus:{redistest.spread*") == set()


def test_hiredis_packing_is_byte_identical_to_redis_py() -> None:
    """The C packer sends exactly what redis-py's own packer would, and hands what
    hiredis cannot pack (a memoryview) back to redis-py."""
    import redis.asyncio as aioredis

    from backends.redis_streams.packing import HIREDIS_PACKING, use_hiredis_packing

    assert HIREDIS_PACKING, "hiredis is part of the redis extra"
    client = use_hiredis_packing(aioredis.Redis())
    fast = client.connection_pool.connection_class()
    plain = aioredis.Connection()
    for args in [
        ("XADD", "bus:{t}", "MAXLEN", "~", 1000, "*", "bus-data", b"\x00\xff" * 600, "ce-id", "ü"),
        ("CONFIG GET", "maxmemory"),
        (b"CLIENT SETNAME", b"bus"),
        ("XACK", "k", "g", *(f"{i}-0" for i in range(300))),
    ]:
        assert b"".join(fast.pack_command(*args)) == b"".join(plain.pack_command(*args))
    view = memoryview(b"payload")
    assert b"".join(fast.pack_command("SET", "k", view)) == b"".join(
        plain.pack_command("SET", "k", view)
    )


async def test_concurrent_publishes_share_round_trips(redis_broker: Broker) -> None:
    """Eight tasks publishing one message at a time: every message lands once, each
    task's messages in its order, in fewer pipelines than publishes; a message the
    server refuses fails only its own caller's publish."""
    topic, refused = _topic("coalesce"), _topic("coalesce-refused")
    async with bus.connect(redis_broker.url) as b, _raw(redis_broker.url) as r:
        backend = _backend(b)
        await b.declare(topic, groups=["g"])
        await r.set(f"bus:{{{refused}}}", "not a stream")  # XADD to it: WRONGTYPE
        try:
            before = backend._coalescer.sends

            async def publisher(p: int) -> list[str]:
                return [await b.publish(topic, f"{p}:{i}".encode()) for i in range(250)]

            ids = await asyncio.gather(*(publisher(p) for p in range(8)))
            sends = backend._coalescer.sends - before
            entries = await r.xrange(f"bus:{{{topic}}}")
            assert len(entries) == 2000
            by_id = {f[b"ce-id"].decode(): f[b"bus-data"].decode() for _, f in entries}
            assert set(by_id) == {i for p in ids for i in p}
            for p, mine in enumerate(ids):
                assert [by_id[i] for i in mine] == [f"{p}:{i}" for i in range(250)]
            order = [f[b"bus-data"].decode() for _, f in entries]
            for p in range(8):
                seq = [int(x.split(":")[1]) for x in order if x.startswith(f"{p}:")]
                assert seq == sorted(seq)  # each task's messages land in its order
            assert sends < 2000, sends  # eight publishers, far fewer round trips

            outcomes = await asyncio.gather(
                *(b.publish(refused if n % 4 == 0 else topic, b"x") for n in range(16)),
                return_exceptions=True,
            )
            failed = [n for n, o in enumerate(outcomes) if isinstance(o, BaseException)]
            assert failed == [0, 4, 8, 12]
            assert all(isinstance(outcomes[n], bus.PublishError) for n in failed)
            assert "WRONGTYPE" in str(outcomes[0])
            assert await r.xlen(f"bus:{{{topic}}}") == 2012
        finally:
            await r.delete(f"bus:{{{refused}}}")
            await _drop_topic(redis_broker.url, topic)
            await _drop_topic(redis_broker.url, refused)


async def test_coalescer_merges_what_queues_and_answers_each_caller() -> None:
    """The merging itself, with a send that records its pipelines: a lone caller goes
    at once; callers queued meanwhile go in one pipeline up to the limit, each getting
    its own results; a caller cancelled while queued sends nothing; a failed pipeline
    fails every caller in it and no other."""
    from backends.redis_streams.coalesce import Coalescer
    from backends.redis_streams.connection import Command

    sent: list[list[str]] = []
    gate = asyncio.Event()

    async def send(ops: list[Command], what: str) -> list[object]:
        sent.append([op.args[1] for op in ops])
        await gate.wait()
        if any(op.args[1] == "boom" for op in ops):
            raise bus.PublishError(f"{what}: refused")
        return [f"ok:{op.args[1]}" for op in ops]

    def ops(*names: str) -> list[Command]:
        return [Command(("XADD", n)) for n in names]

    c = Coalescer(send, limit=3)  # type: ignore[arg-type]
    first = asyncio.create_task(c.run(ops("a"), "w"))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(c.run(ops(n), "w")) for n in ("b", "c", "d", "e")]
    two = asyncio.create_task(c.run(ops("f", "g"), "w"))
    await asyncio.sleep(0)
    queued[1].cancel()  # "c": cancelled before it went out
    gate.set()
    assert await first == ["ok:a"]
    assert [await queued[i] for i in (0, 2, 3)] == [["ok:b"], ["ok:d"], ["ok:e"]]
    assert await two == ["ok:f", "ok:g"]
    assert sent == [["a"], ["b", "d", "e"], ["f", "g"]]  # limit 3 per pipeline
    assert c.sends == 3

    gate.clear()
    sent.clear()
    lone = asyncio.create_task(c.run(ops("h"), "w"))
    await asyncio.sleep(0)
    bad = [asyncio.create_task(c.run(ops(n), "w")) for n in ("boom", "i")]
    await asyncio.sleep(0)
    gate.set()
    assert await lone == ["ok:h"]
    for task in bad:  # the pipeline failed: both of its callers see it
        with pytest.raises(bus.PublishError, match="refused"):
            await task
    assert sent == [["h"], ["boom", "i"]]
    await c.close()
