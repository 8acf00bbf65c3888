"""The public API on the memory backend: configuration, errors, codecs, the worker."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime as dt
import inspect
import os
import pickle
import re
from collections.abc import Callable

import pytest
from pydantic import BaseModel

import bus
from bus import envelope
from bus._ids import stamp, uuid7
from bus.message import assemble, deferred
from bus.registry import resolve


class Email(BaseModel):
    subject: str


def test_all_names_exist_and_are_exported() -> None:
    for name in bus.__all__:
        assert hasattr(bus, name), name
    public = {n for n in dir(bus) if not n.startswith("_") and n[0].isupper()}
    assert public <= set(bus.__all__), public - set(bus.__all__)


def test_unknown_scheme_names_known_ones_and_suggests() -> None:
    with pytest.raises(bus.UnknownBackend) as info:
        bus.connect("foo://x")
    assert info.value.known == bus.known_schemes()
    assert "memory" in str(info.value)
    assert "redis" in str(info.value)
    with pytest.raises(bus.UnknownBackend, match="Did you mean 'memory'"):
        bus.connect("memroy://")


@pytest.mark.parametrize("url", ["", "localhost:6379", "no-scheme"])
def test_malformed_url_is_configuration_error(url: str) -> None:
    with pytest.raises(bus.ConfigurationError, match="scheme://"):
        bus.connect(url)


def test_unknown_and_invalid_options_are_rejected_with_valid_names() -> None:
    with pytest.raises(bus.ConfigurationError, match=r"bogus.*Valid options: ack_timeout"):
        bus.connect("memory://", bogus=1)
    with pytest.raises(bus.ConfigurationError, match="connect_timeout"):
        bus.connect("memory://", connect_timeout=-1)
    with pytest.raises(bus.ConfigurationError, match="retention"):
        bus.connect("memory://?retention=lots")


def test_options_from_query_string_and_keywords() -> None:
    backend = bus.connect("memory://?retention=5&connect_timeout=2", retention=7)._backend
    assert backend.options.retention == 7  # type: ignore[attr-defined]
    assert backend.options.connect_timeout == 2.0


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUS_URL", "memory://from-env")
    monkeypatch.setenv("BUS_SOURCE", "svc-a")
    monkeypatch.setenv("BUS_OPTIONS", '{"retention": 3}')
    settings = bus.BusSettings()
    assert settings.url == "memory://from-env"
    backend = bus.connect(settings)._backend
    assert backend.options.source == "svc-a"
    assert backend.options.retention == 3  # type: ignore[attr-defined]
    backend = bus.connect()._backend  # no target: settings from the environment
    assert backend.url == "memory://from-env"


def test_settings_reject_unknown_backend_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUS_OPTIONS", '{"retension": 3}')
    with pytest.raises(bus.ConfigurationError, match="retension"):
        bus.connect(bus.BusSettings())


def test_settings_repr_redacts_password() -> None:
    settings = bus.BusSettings(
        url="redis://user:s3cret@host:6379/0", options={"sasl_plain_password": "t0ken"}
    )
    shown = f"{settings!r} {settings!s} {settings}"
    assert "s3cret" not in shown
    assert "t0ken" not in shown


def test_invalid_settings_from_the_environment_are_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BUS_CONNECT_TIMEOUT", "-1")
    with pytest.raises(bus.ConfigurationError, match="BUS_CONNECT_TIMEOUT"):
        bus.connect()
    monkeypatch.delenv("BUS_CONNECT_TIMEOUT")
    monkeypatch.setenv("BUS_OPTIONS", '{"sasl_plain_password": s3cret')  # not JSON
    with pytest.raises(bus.ConfigurationError, match="BUS_OPTIONS") as info:
        bus.connect()
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("url", ["amqp://guest:guest@h/", "kafka://h:9092"])
def test_backends_without_leases_refuse_ack_timeout(url: str) -> None:
    """A lease that the broker cannot give is refused, not accepted and ignored."""
    with pytest.raises(bus.ConfigurationError, match="ack_timeout is not supported"):
        bus.connect(url, ack_timeout=5)


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("redis://:s3cret@h:6379/0", "s3cret"),
        ("amqp://guest:s3cret@h/", "s3cret"),
        ("nats://tok3n@h:4222", "tok3n"),
        ("nats://u:s3cret@a:4222,b:4222", "s3cret"),
        ("kafka://h:9092?sasl_plain_password=s3cret", "s3cret"),
    ],
)
def test_redact_url(url: str, secret: str) -> None:
    redacted = bus.redact_url(url)
    assert secret not in redacted
    assert "***" in redacted


# A password with characters the user forgot to percent-encode: each moves the "@" out
# of what a URL parser calls the host part. Its halves must not show either.
_HALVES = ("Zq9", "Xw7")


_TEMPLATES = [
    "redis://user:{pw}@127.0.0.1:{port}/0",
    "amqp://user:{pw}@127.0.0.1:{port}/",
    "nats://user:{pw}@127.0.0.1:{port}",
    "nats://{pw}@127.0.0.1:{port}",  # a token
    "kafka://user:{pw}@127.0.0.1:{port}",
    "redis:/user:{pw}@127.0.0.1:{port}/0",  # one slash
]


@pytest.mark.parametrize(
    ("template", "sep"),
    [
        (t, sep)
        for t in _TEMPLATES
        for sep in "/?#@:"
        if not (sep == ":" and "user:" not in t)  # token "a:b" reads as user a, password b
    ],
)
async def test_an_unencoded_password_stays_out_of_errors(
    template: str, sep: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Bad URL or closed port: the error (typed) and the log never show the password."""
    from conformance.brokers import free_port

    url = template.format(pw=sep.join(_HALVES), port=free_port())
    assert not any(half in bus.redact_url(url) for half in _HALVES)
    with pytest.raises(bus.BusError) as caught:
        async with bus.connect(url, connect_timeout=1.0):
            pass
    shown = f"{caught.value!s} {caught.value!r} {caplog.text}"
    assert not any(half in shown for half in _HALVES), shown


def test_register_backend_at_runtime() -> None:
    from backends.memory import MemoryBackend

    bus.register("mem2", MemoryBackend)
    assert resolve("mem2://x") is MemoryBackend
    assert "mem2" in bus.known_schemes()


def test_ids_are_uuid7_and_sort_by_creation() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    shape = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
    assert all(shape.fullmatch(i) for i in ids[:10])


def test_a_published_message_time_is_its_id_millisecond() -> None:
    stamps = [stamp() for _ in range(2000)]
    for mid, when in stamps:
        since_epoch = when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        assert int(mid[:8] + mid[9:13], 16) == since_epoch // dt.timedelta(milliseconds=1)
        assert when.tzinfo is dt.UTC
        assert when.microsecond % 1000 == 0
    # one datetime per millisecond, so a batch's time is formatted once
    by_ms: dict[dt.datetime, set[int]] = {}
    for _, when in stamps:
        by_ms.setdefault(when, set()).add(id(when))
    assert all(len(ids) == 1 for ids in by_ms.values())
    # the formatting cache never hands one time's text to another time
    a, b = stamps[0][1], stamps[-1][1] + dt.timedelta(microseconds=1)
    for when in (a, b, a, dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC), b):
        assert envelope.format_time(when) == when.isoformat()


async def test_messages_without_headers_pickle_and_copy() -> None:
    """A message with no user headers shares one empty mapping; it pickles (as a job
    store or a process pool needs) and copies like any message."""
    built = bus.Message(id="m1", topic="t", data=b"x")
    async with bus.connect("memory://") as b, b.subscribe("t.pickle", group="g") as sub:
        await b.publish("t.pickle", b"x")
        delivered = (await sub.receive(timeout=5)).message
    for message in (built, delivered):
        assert message.headers == {}
        assert repr(message.headers) == "{}"
        for copied in (pickle.loads(pickle.dumps(message)), copy.deepcopy(message)):
            assert copied == message
            assert copied.headers is message.headers
    assert dict(built.evolve(headers={"a": "b"}).headers) == {"a": "b"}


def test_envelope_roundtrip_keeps_every_attribute() -> None:
    message = bus.Message(
        id=uuid7(),
        topic="t",
        data=b"\x00\x01",
        type="x.y",
        source="src",
        key="k",
        headers={"a": "1"},
        trace_parent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        correlation_id="c",
        causation_id="d",
        reply_to="r",
        schema_version="2",
        priority=4,
    )
    for prefix in ("ce-", "ce_"):
        headers = envelope.to_headers(message, prefix)
        assert headers[f"{prefix}specversion"] == "1.0"
        assert envelope.from_headers("t", b"\x00\x01", headers, prefix) == message


def test_envelope_without_id_is_decode_error() -> None:
    with pytest.raises(bus.DecodeError, match="ce-id"):
        envelope.from_headers("t", b"", {"foo": "bar"})


def test_envelope_decoding_precedence_and_user_headers() -> None:
    headers = {
        "ce-id": "m1",
        "ce-datacontenttype": "text/csv",
        "content-type": "application/json",
        "ce-traceparent": "from-extension",
        "traceparent": "from-w3c",
        "ce-unknownattr": "dropped",
        "bus-dlq-reason": "kept: library headers are user headers",
        "x-user": "kept",
    }
    message = envelope.from_headers("t", b"{}", headers)
    assert message.content_type == "application/json"
    assert message.trace_parent == "from-w3c"
    assert dict(message.headers) == {
        "bus-dlq-reason": "kept: library headers are user headers",
        "x-user": "kept",
    }
    fallback = envelope.from_headers("t", b"", {"ce-id": "m2", "ce-datacontenttype": "text/csv"})
    assert fallback.content_type == "text/csv"
    assert (fallback.type, fallback.source) == ("", "")
    assert fallback.time.tzinfo is not None
    with pytest.raises(bus.DecodeError, match="malformed"):
        envelope.from_headers("t", b"", {"ce-id": "m3", "ce-time": "yesterday"})
    bookkeeping = {"ce_id": "m4", "bus-attempt": "2", "x-user": "kept"}
    skipped = envelope.from_headers("t", b"", bookkeeping, "ce_", skip=("bus-attempt",))
    assert dict(skipped.headers) == {"x-user": "kept"}


def test_assemble_takes_the_fields_in_declaration_order() -> None:
    # assemble() writes slots positionally: a reordered or added field must show here
    names = [f.name for f in dataclasses.fields(bus.Message)]
    assert list(inspect.signature(assemble).parameters) == names
    values = [f"v-{name}" for name in names]
    assert dataclasses.astuple(assemble(*values)) == tuple(values)  # type: ignore[arg-type]


def test_deferred_message_decodes_once_on_first_access_and_acts_as_plain() -> None:
    plain = bus.Message(
        id="m1", topic="t", data=b"payload", type="job", key="k", headers={"a": "b"}, priority=3
    )
    calls: list[int] = []

    def decode() -> bus.Message:
        calls.append(1)
        return plain

    lazy = deferred("t", b"payload", decode)
    assert (lazy.topic, lazy.data, calls) == ("t", b"payload", [])  # no decoding yet
    assert (lazy.id, lazy.type, lazy.key, lazy.priority) == ("m1", "job", "k", 3)
    assert (dict(lazy.headers), lazy.time) == ({"a": "b"}, plain.time)
    assert calls == [1]  # once, whatever is read next
    assert isinstance(lazy, bus.Message)
    assert lazy == plain
    assert plain == lazy
    assert (lazy != plain) is False
    assert deferred("t", b"payload", lambda: plain) == lazy
    assert lazy != plain.evolve(id="m2")
    assert repr(lazy) == repr(plain)
    assert lazy.decode(bytes) == b"payload"
    with pytest.raises(dataclasses.FrozenInstanceError):
        lazy.id = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        lazy.nothing  # type: ignore[attr-defined]  # noqa: B018
    # copies are plain messages, equal to the original
    for copied in (
        pickle.loads(pickle.dumps(deferred("t", b"payload", decode))),
        copy.copy(lazy),
        copy.deepcopy(lazy),
        lazy.evolve(),
        dataclasses.replace(lazy),
    ):
        assert type(copied) is bus.Message
        assert copied == plain
    assert lazy.evolve(type="other").type == "other"
    assert dataclasses.replace(lazy, key="k2").key == "k2"
    assert dataclasses.asdict(lazy) == dataclasses.asdict(plain)


def test_deferred_reply_to_without_a_reply_header_needs_no_decoding() -> None:
    plain = bus.Message(id="m1", topic="t", data=b"x", type="job")
    asking = plain.evolve(reply_to="inbox-1")
    calls: list[bus.Message] = []

    def decoder(message: bus.Message) -> Callable[[], bus.Message]:
        def decode() -> bus.Message:
            calls.append(message)
            return message

        return decode

    # the backend found no reply header: None at once, the rest still decodes
    quiet = deferred("t", b"x", decoder(plain), replies=False)
    assert (quiet.reply_to, calls) == (None, [])
    assert (quiet.type, calls) == ("job", [plain])
    assert (quiet.reply_to, quiet) == (None, plain)
    # it may carry one (the default): read from the decoded message
    calls.clear()
    lazy = deferred("t", b"x", decoder(asking))
    assert (lazy.reply_to, calls) == ("inbox-1", [asking])


def test_deferred_payload_decodes_without_the_envelope_until_it_fails() -> None:
    # bus.consume hands a typed handler message.decode(into): the content type only
    # describes a failure, so a payload that decodes needs no envelope
    plain = bus.Message(id="m1", topic="t", data=b'{"subject":"s"}', content_type="application/x")
    calls: list[int] = []

    def decode() -> bus.Message:
        calls.append(1)
        return plain

    lazy = deferred("t", plain.data, decode)
    assert lazy.decode(Email) == Email(subject="s")
    assert (lazy.decode(bytes), lazy.decode(str), calls) == (plain.data, plain.data.decode(), [])
    bad = deferred("t", b'{"subject": 1}', decode)
    with pytest.raises(bus.DecodeError, match=r"payload \(application/x, 14 bytes\)"):
        bad.decode(Email)
    assert calls == [1]  # decoded for the error text, and only then


def test_wire_forms_say_whether_they_carry_a_reply_address() -> None:
    from backends.kafka.records import encode_headers, to_message
    from backends.redis_streams.entries import from_fields, to_fields

    plain = bus.Message(id="m1", topic="t", data=b"x")
    asking = plain.evolve(reply_to="inbox-1")
    for sent in (plain, asking):
        flat = [f if isinstance(f, bytes) else f.encode() for f in to_fields(sent)]
        entry, _ = from_fields("t", "1-0", flat)
        record = to_message("t", 0, 5, None, b"x", 0, encode_headers(sent))
        for received in (entry, record):
            # plain messages answer reply_to without decoding (the worker reads it
            # after every handler); those asking for a reply decode it
            assert received._replies is (sent.reply_to is not None)  # type: ignore[attr-defined]
            assert received.reply_to == sent.reply_to
            assert received == sent


def test_redis_entries_decode_lazily_in_any_field_order() -> None:
    from backends.redis_streams.entries import from_fields, to_fields

    sent = bus.Message(id="m1", topic="t", data=b"x", type="job", headers={"h": "v"})
    flat = [f if isinstance(f, bytes) else f.encode() for f in to_fields(sent)]
    assert flat[:2] == [b"bus-data", b"x"]  # the fast path relies on this order
    message, prior = from_fields("t", "1-0", flat)
    assert (message, prior) == (sent, 0)
    # a redelivered copy carries bus-attempts last (the requeue script appends it)
    message, prior = from_fields("t", "1-0", [*flat, b"bus-attempts", b"2"])
    assert (message, prior) == (sent, 2)
    # the same fields in another order, or as a mapping, decode to the same message
    pairs = list(zip(flat[::2], flat[1::2], strict=True))
    shuffled = [x for pair in [pairs[-1], (b"bus-attempts", b"4"), *pairs[:-1]] for x in pair]
    assert from_fields("t", "1-0", shuffled) == (sent, 4)
    assert from_fields("t", "1-0", dict(pairs)) == (sent, 0)
    # a payload that looks like a field name is still the payload
    tricky = [b"bus-data", b"bus-attempts", *flat[2:]]
    message, prior = from_fields("t", "1-0", tricky)
    assert (message.data, message.id, prior) == (b"bus-attempts", "m1", 0)
    # a foreign entry (no ce-id) becomes a message of its own when first read
    foreign, prior = from_fields("t", "7-0", [b"k", b"v"])
    assert (foreign.id, foreign.data, dict(foreign.headers), prior) == (
        "redis-7-0",
        b"",
        {"k": "v"},
        0,
    )


def test_ids_stay_unique_across_seeded_random_and_fork() -> None:
    import random

    random.seed(7)  # an application seeding the global generator changes nothing
    first = uuid7()
    random.seed(7)
    assert uuid7()[19:] != first[19:]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its ids, exit without running pytest's teardown
        os.write(write, ",".join(uuid7() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split(",")
    os.waitpid(pid, 0)
    parent = [uuid7() for _ in range(50)]
    assert len(child) == 50
    # the random tail (rand_b) differs: a forked child does not replay the parent
    assert not {i[19:] for i in child} & {i[19:] for i in parent}


@pytest.mark.parametrize("name", ["ce-id", "CE-Type", "bus-dlq-reason", "traceparent", "ce_x"])
def test_reserved_header_names(name: str) -> None:
    with pytest.raises(bus.InvalidHeader):
        envelope.validate_headers({name: "x"})


def test_codec_table() -> None:
    from bus import codec

    assert codec.encode(b"x") == (b"x", "application/octet-stream")
    assert codec.encode("é") == ("é".encode(), "text/plain; charset=utf-8")
    assert codec.encode(Email(subject="s")) == (b'{"subject":"s"}', "application/json")
    assert codec.encode({"a": [1, 2]}) == (b'{"a":[1,2]}', "application/json")
    assert codec.decode(b'{"subject":"s"}', "application/json", Email) == Email(subject="s")
    with pytest.raises(bus.DecodeError) as info:
        codec.decode(b'{"subject": 1, "secret": "hunter2"}', "application/json", Email)
    assert "hunter2" not in str(info.value)  # payloads stay out of error text
    with pytest.raises(bus.InvalidArgument):
        codec.encode(object())


def test_backoff_policies() -> None:
    exp = bus.Exponential(0.5, 4.0, jitter=False)
    assert [exp.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    jittered = bus.Exponential(1.0, 8.0)
    assert all(2.0 <= jittered.delay(3) <= 4.0 for _ in range(100))
    assert bus.Fixed(0.2).delay(9) == 0.2
    with pytest.raises(ValueError):
        bus.Retry(max_attempts=0)


async def test_closed_bus_raises_bus_closed() -> None:
    b = await bus.connect("memory://closed")
    await b.close()
    await b.close()  # idempotent
    with pytest.raises(bus.BusClosed):
        await b.publish("t", b"x")
    with pytest.raises(bus.BusClosed):
        b.subscribe("t", group="g")


async def test_subscribe_argument_validation() -> None:
    async with bus.connect("memory://") as b:
        with pytest.raises(bus.InvalidArgument):
            b.subscribe("t", group="g", prefetch=0)
        with pytest.raises(bus.InvalidArgument):
            b.subscribe("t", group="g", start="middle")  # type: ignore[arg-type]
        with pytest.raises(bus.InvalidArgument):
            await b.declare("t", groups="g")  # type: ignore[arg-type]


async def test_worker_parameter_injection_sync_and_async() -> None:
    seen: list[object] = []

    def sync_handler(email: Email, delivery: bus.Delivery) -> None:  # runs in a thread
        seen.append((email.subject, delivery.attempt))

    async def raw(data: bytes) -> None:
        seen.append(data)

    async def text(body: str, message: bus.Message) -> None:
        seen.append((body, message.topic))

    async def untyped(message) -> None:  # type: ignore[no-untyped-def]
        seen.append(type(message).__name__)

    async with bus.connect("memory://inject") as b:
        for topic, handler, payload in (
            ("a", sync_handler, Email(subject="hi")),
            ("b", raw, b"\x01"),
            ("c", text, "hello"),
            ("d", untyped, b""),
        ):
            async with b.consume(topic, handler, group="g"):
                await b.publish(topic, payload)
                for _ in range(100):
                    if len(seen) == ["a", "b", "c", "d"].index(topic) + 1:
                        break
                    await asyncio.sleep(0.02)
    assert seen == [("hi", 1), b"\x01", ("hello", "c"), "Message"]


class _DeliveryCounter:
    """A callable object whose annotations are strings (``from __future__``)."""

    def __init__(self) -> None:
        self.seen: list[object] = []

    async def __call__(self, delivery: bus.Delivery) -> None:
        self.seen.append(type(delivery).__name__)


async def _until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110 - polls state the handlers change
            await asyncio.sleep(0.02)


async def test_handlers_are_resolved_as_written() -> None:
    """A callable object's and a partial's annotations are read where they are written;
    a plain callable returning a coroutine has its work done (awaited) before the ack;
    a name that cannot be resolved is refused at consume(), not dead-lettered later."""
    import functools

    done: list[bytes] = []

    async def process(data: bytes, tag: str) -> None:
        done.append(tag.encode() + data)

    counter = _DeliveryCounter()
    async with bus.connect("memory://resolve") as b:
        async with b.consume("a", counter, group="g") as w1:
            await b.publish("a", b"x")
            await _until(lambda: w1.stats.succeeded == 1)
        async with b.consume("b", functools.partial(process, tag="p:"), group="g") as w2:
            await b.publish("b", b"y")
            await _until(lambda: w2.stats.succeeded == 1)
        async with b.consume("c", lambda m: process(m.data, "l:"), group="g") as w3:
            await b.publish("c", b"z")
            await _until(lambda: w3.stats.succeeded == 1)

        def unresolvable(job: Undefined) -> None:  # type: ignore[name-defined]  # noqa: F821
            pass

        with pytest.raises(TypeError, match="Undefined"):
            b.consume("d", unresolvable, group="g")

        # an unresolvable return annotation is not used: the handler runs (and an
        # unresolvable parameter beside a fine one is named, not the fine one)
        async def returns_unknown(data: bytes) -> Undefined:  # type: ignore[name-defined]  # noqa: F821
            done.append(b"r:" + data)

        async with b.consume("e", returns_unknown, group="g") as w4:
            await b.publish("e", b"w")
            await _until(lambda: w4.stats.succeeded == 1)

        def one_bad(data: bytes, job: Undefined) -> None:  # type: ignore[name-defined]  # noqa: F821
            pass

        with pytest.raises(TypeError, match="'Undefined' of parameter 'job'"):
            b.consume("d", one_bad, group="g")
        with pytest.raises(bus.InvalidArgument, match="prefetch"):
            b.consume("d", process, group="g", prefetch=-1)
    assert counter.seen == ["Delivery"]
    assert done == [b"p:y", b"l:z", b"r:w"]
    assert (w1.stats.dead_lettered, w2.stats.dead_lettered, w3.stats.dead_lettered) == (0, 0, 0)


async def test_stop_is_bounded_while_every_slot_is_busy() -> None:
    """stop(timeout) returns once its timeout cancelled the running handler, though the
    fetch loop was waiting for a free slot; it starts nothing more, and nothing is lost:
    the cancelled job and the one not started go back to the group."""
    release = asyncio.Event()
    started: list[bytes] = []

    async def slow(data: bytes) -> None:
        started.append(data)
        await release.wait()

    async with bus.connect("memory://busy") as b:
        await b.declare("t", groups=["g"])
        ids = [await b.publish("t", bytes([n])) for n in range(2)]
        worker = b.consume("t", slow, group="g", concurrency=1, prefetch=1)
        await worker.__aenter__()
        await _until(lambda: len(started) == 1)
        stopping = asyncio.create_task(worker.stop(timeout=0.2))
        done, _ = await asyncio.wait({stopping}, timeout=10)
        assert stopping in done, "stop() hung"
        stopping.result()
        assert started == [b"\x00"]
        got: list[str] = []
        release.set()

        async def record(message: bus.Message) -> None:
            got.append(message.id)

        async with b.consume("t", record, group="g"):
            await _until(lambda: len(got) >= 2)
        assert sorted(got) == sorted(ids)


async def test_stop_propagates_the_callers_cancellation() -> None:
    async def slow(data: bytes) -> None:
        await asyncio.sleep(30)

    async with bus.connect("memory://cancelstop") as b:
        worker = b.consume("t", slow, group="g")
        await worker.__aenter__()
        await b.publish("t", b"x")
        await _until(lambda: worker.inflight == 1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await worker.stop(timeout=20)
        await worker.stop(timeout=0.1)


async def test_a_request_waiting_when_the_bus_closes_gets_bus_closed() -> None:
    """Not a CancelledError: the requesting task was not cancelled."""
    async with bus.connect("memory://rpcclose") as b:
        await b.subscribe("svc", group="g").open()  # a member that never answers
        pending = asyncio.create_task(b.request("svc", b"?", timeout=30))
        await asyncio.sleep(0.2)
        assert not pending.done()
    with pytest.raises(bus.BusClosed):
        await pending


async def test_the_reply_inbox_outlives_a_failed_ack() -> None:
    """One reply whose ack fails does not end request/reply for the connection."""
    from bus.delivery import Delivery

    async with bus.connect("memory://rpcack") as b:

        async def echo(data: bytes) -> bytes:
            return data

        async with b.consume("svc", echo, group="g"):
            assert (await b.request("svc", b"1", timeout=5)).data == b"1"
            real_ack, failed = Delivery.ack, []

            async def flaky_ack(self: Delivery) -> None:
                if self.message.topic.startswith("_inbox.") and not failed:
                    failed.append(self.message.id)
                    raise bus.BrokerUnavailable("blip")
                await real_ack(self)

            Delivery.ack = flaky_ack  # type: ignore[method-assign]
            try:
                assert (await b.request("svc", b"2", timeout=5)).data == b"2"
                assert (await b.request("svc", b"3", timeout=5)).data == b"3"
            finally:
                Delivery.ack = real_ack  # type: ignore[method-assign]
            assert failed


async def test_memory_holds_at_most_prefetch_unsettled_deliveries() -> None:
    """As a broker's prefetch does: the rest stay with the group for other members."""
    async with bus.connect("memory://prefetch") as b:
        await b.declare("t", groups=["g"])
        await b.publish_many("t", [bytes([n]) for n in range(10)])
        async with (
            b.subscribe("t", group="g", prefetch=2) as one,
            b.subscribe("t", group="g", prefetch=10) as other,
        ):
            held = [await one.receive(timeout=2) for _ in range(2)]
            with pytest.raises(TimeoutError):
                await one.receive(timeout=0.3)
            rest = [await other.receive(timeout=2) for _ in range(8)]
            await held[0].ack()
            with pytest.raises(TimeoutError):
                await one.receive(timeout=0.3)  # room again, but nothing left
        assert len({d.message.id for d in held + rest}) == 10


async def test_a_subscription_closed_while_it_opens_leaves_no_consumer() -> None:
    from backends.memory import restart

    async with bus.connect("memory://openrace") as b:
        down = asyncio.create_task(restart("openrace", downtime=0.5))
        await asyncio.sleep(0)  # the broker is down: subscribing waits for it
        sub = b.subscribe("race", group="g")
        opening = asyncio.create_task(sub.open())
        await asyncio.sleep(0.05)
        await sub.close()
        with pytest.raises(bus.BusClosed):
            await opening
        await down
        assert not await b.backend.has_consumers("race")


async def test_the_size_limit_counts_every_attribute_and_covers_replies() -> None:
    """A long key is refused like a long payload; a reply over the limit is refused
    before sending, and the worker dead-letters its request instead of retrying a
    result that can never fit; a long dead-letter reason is cut to fit."""
    from bus.delivery import MAX_REASON_CHARS

    async with bus.connect("memory://limits", max_message_bytes=2000) as b:
        with pytest.raises(bus.MessageTooLarge):
            await b.publish("t", b"x", key="k" * 5000)
        with pytest.raises(bus.MessageTooLarge):
            await b.publish("t", b"x", correlation_id="c" * 5000)
        # text counts in UTF-8 bytes, as it goes on the wire: 1,000 characters of
        # two bytes each are over the limit, 1,000 of one byte are not
        with pytest.raises(bus.MessageTooLarge):
            await b.publish("t", b"x", headers={"note": "é" * 1000})
        await b.publish("t", b"x", headers={"note": "e" * 1000})

        async def big(data: bytes) -> bytes:
            return b"r" * 5000

        worker = b.consume("svc", big, group="g")
        async with worker, b.subscribe("svc.dlq", group="audit") as dlq:
            with pytest.raises(bus.RequestTimeout):
                await b.request("svc", b"?", timeout=1.0)
            dead = await dlq.receive(timeout=5)
            assert dead.message.headers["bus-dlq-reason"].startswith("reply too large")
        assert worker.stats.dead_lettered == 1

        await b.declare("long", groups=["g"])
        await b.publish("long", b"x")
        async with (
            b.subscribe("long", group="g") as sub,
            b.subscribe("long.dlq", group="audit") as dlq,
        ):
            await (await sub.receive(timeout=2)).dead_letter("e" * 10_000)
            reason = (await dlq.receive(timeout=2)).message.headers["bus-dlq-reason"]
        assert len(reason) == MAX_REASON_CHARS
        assert reason.endswith("…")


async def test_arguments_of_the_wrong_type_are_invalid_arguments() -> None:
    """Typed errors, nothing sent: not an AttributeError, and not a str taken as a batch."""
    async with bus.connect("memory://argtypes") as b:
        await b.declare("x", groups=["g"])
        for kwargs in (
            {"headers": [("a", "b")]},
            {"type": 123},
            {"correlation_id": 5},
            {"causation_id": b"id"},
            {"trace_parent": 1.0},
            {"schema_version": 3},
        ):
            with pytest.raises(bus.InvalidArgument):
                await b.publish("x", b"", **kwargs)  # type: ignore[arg-type]
        for items in ("abc", b"abc", 7):
            with pytest.raises(bus.InvalidArgument, match="iterable of payloads"):
                await b.publish_many("x", items)  # type: ignore[arg-type]
        assert b.backend.group_depth("x") == {"g": 0}


async def test_handler_without_parameters_is_rejected() -> None:
    async with bus.connect("memory://") as b:
        with pytest.raises(TypeError, match="at least one parameter"):
            b.consume("t", lambda: None, group="g")


async def test_worker_drops_when_dead_letter_disabled() -> None:
    async with bus.connect("memory://drop") as b:

        async def fail(message: bus.Message) -> None:
            raise RuntimeError("nope")

        worker = b.consume("t", fail, group="g", retry=bus.Retry(1), dead_letter=False)
        async with worker, b.subscribe("t.dlq", group="audit") as dlq:
            await b.publish("t", b"x")
            for _ in range(100):
                if worker.stats.dropped:
                    break
                await asyncio.sleep(0.02)
            with pytest.raises(TimeoutError):
                await dlq.receive(timeout=0.3)
        assert worker.stats.dropped == 1
        assert worker.stats.dead_lettered == 0


async def test_reply_without_reply_to_is_invalid() -> None:
    async with bus.connect("memory://noreply") as b:
        await b.declare("t", groups=["g"])
        await b.publish("t", b"x")
        async with b.subscribe("t", group="g") as sub:
            d = await sub.receive(timeout=2)
            with pytest.raises(bus.InvalidArgument, match="no reply_to"):
                await d.reply(b"answer")


def test_every_backend_declares_every_feature() -> None:
    from bus.cli import declared_capabilities

    for name, caps in declared_capabilities().items():
        assert set(caps) == set(bus.Feature), name
        for feature in bus.Feature:
            cap = caps[feature]
            if cap.support is not bus.Support.NATIVE:
                assert cap.how, f"{name}.{feature} must say how or why"


async def test_worker_survives_broker_outage_longer_than_operation_timeout() -> None:
    """A worker keeps fetching (with backoff) after the backend gives up reconnecting."""
    from backends.memory import restart

    seen: list[str] = []
    async with bus.connect("memory://outage", operation_timeout=0.3) as b:

        async def handle(message: bus.Message) -> None:
            seen.append(message.id)

        async with b.consume("t", handle, group="g"):
            before = await b.publish("t", b"before")
            await restart("outage", downtime=1.5)  # fetch raises BrokerUnavailable meanwhile
            after = await b.publish("t", b"after")
            for _ in range(200):
                if len(seen) >= 2:
                    break
                await asyncio.sleep(0.05)
    assert sorted(seen) == sorted([before, after])


def test_third_party_backend_through_entry_point(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A distribution declaring a ``bus.backends`` entry point is found by scheme."""
    from pathlib import Path

    from backends.memory import MemoryBackend

    dist = Path(str(tmp_path)) / "thirdparty_bus-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-bus\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[bus.backends]\nthirdparty = backends.memory:MemoryBackend\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "thirdparty" in bus.known_schemes()
    assert resolve("thirdparty://x") is MemoryBackend


async def test_worker_renews_leases_of_long_jobs() -> None:
    """A handler running past ack_timeout is not handed to another member meanwhile."""
    runs: list[str] = []
    async with bus.connect("memory://lease", ack_timeout=0.6) as b:

        async def slow(message: bus.Message) -> None:
            runs.append(message.id)
            await asyncio.sleep(2.0)  # > 3 lease lengths

        await b.declare("jobs", groups=["g"])
        mid = await b.publish("jobs", b"long")
        async with b.consume("jobs", slow, group="g"), b.consume("jobs", slow, group="g"):
            await asyncio.sleep(3.0)
    assert runs == [mid]


async def test_closed_subscriptions_and_stopped_workers_are_released() -> None:
    async with bus.connect("memory://release") as b:
        for _ in range(3):
            async with b.subscribe("t", group="g"):
                pass
            async with b.consume("t", lambda m: None, group="g"):
                pass
        assert not b._subscriptions
        assert not b._workers
