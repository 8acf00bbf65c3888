"""What the CloudEvents envelope costs on the wire, apart from the library's code.

The library publishes every attribute as a native field or header (CloudEvents
binary mode: ``ce-id``, ``ce-source``, ``ce-time``, ... and, on NATS, a
``Nats-Msg-Id`` for de-duplication); the raw-client baselines of ``bus bench``
publish the bare payload. This measures three sides on the same topic layout,
confirmed (one at a time) and batched publish, then consume + ack of what the round
published (each side's consumer joins after the publishes, drains them and leaves),
in interleaved rounds:

* ``raw``: the raw client, bare payload (the ``bus bench`` baseline);
* ``raw+envelope``: the same raw client and idiom, each payload with the headers
  the library writes (encoded once per topic by the library's own encoders; per
  message only a fresh id and time, as a raw client at its best would), and
  consuming such messages;
* ``bus``: the library.

``bus / raw+envelope`` is what the library's code costs; ``raw+envelope / raw``
is what the envelope costs the broker and the client (on RabbitMQ: the message
properties and the headers table the library writes)::

    python -m benchmarks.envelope redis://127.0.0.1:6379/0 amqp://guest:guest@127.0.0.1/ nats://127.0.0.1:4222
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.brokercost import CostMeter
from benchmarks.config import BenchConfig, profile
from benchmarks.drivers.base import Driver
from benchmarks.pollidle import PollIdle
from benchmarks.runner import for_broker, library_factory, local_broker, plan_urls
from benchmarks.workloads import close_all, drain, open_group

__all__ = ["EnvelopeRow", "envelope_cost", "main"]

_DRAIN_TIMEOUT = 60.0

SIDES = ("raw", "raw+envelope", "bus")
KINDS = ("redis", "rabbitmq", "nats", "kafka")


@dataclass
class EnvelopeRow:
    """One workload on one backend: msg/s of each side, per round."""

    backend: str
    workload: str
    runs: dict[str, list[float]]

    def median(self, side: str) -> float:
        return statistics.median(self.runs[side])

    def ratio(self, side: str, to: str) -> float:
        return self.median(side) / self.median(to)


def _raw(backend: str, url: str, config: BenchConfig, *, enveloped: bool) -> Driver:
    if backend == "redis":
        from benchmarks.drivers.raw_redis import RedisRawDriver

        return RedisRawDriver(backend, url, enveloped=enveloped)
    if backend == "rabbitmq":
        from benchmarks.drivers.raw_rabbitmq import RabbitRawDriver

        return RabbitRawDriver(backend, url, config.rabbitmq.queue_type, enveloped=enveloped)
    if backend == "nats":
        from benchmarks.drivers.raw_nats import NatsRawDriver

        return NatsRawDriver(backend, url, config.nats.storage, enveloped=enveloped)
    if backend == "kafka":
        from benchmarks.drivers.raw_kafka import KafkaRawDriver

        return KafkaRawDriver(backend, url, config.kafka, enveloped=enveloped)
    raise ValueError(f"no envelope comparison for {backend!r} (only {', '.join(KINDS)})")


async def envelope_cost(
    backend: str,
    url: str,
    *,
    config: BenchConfig | None = None,
    rounds: int = 6,
    confirmed: int = 300,
    batches: int = 10,
    batch: int = 100,
    size: int = 1024,
) -> list[EnvelopeRow]:
    """Confirmed and batched publish msg/s of the three sides, and consume + ack
    msg/s of what each round published, ``rounds`` interleaved rounds (each round:
    every side in turn), on topics of their own. ``config``: the settings both sides
    share (default: the quick profile's, decided for the broker at ``url``)."""
    if config is None:
        (plan,) = plan_urls([url])
        config = for_broker(profile("quick"), plan, local_broker(plan)[1])
    drivers = {
        "raw": _raw(backend, url, config, enveloped=False),
        "raw+envelope": _raw(backend, url, config, enveloped=True),
        "bus": library_factory(backend, url, config)(),
    }
    topics = {side: f"bench.env.{uuid.uuid4().hex[:8]}" for side in SIDES}
    payload = b"x" * size
    workloads = ("confirmed", "batched", "consume")
    rows = [EnvelopeRow(backend, w, {s: [] for s in SIDES}) for w in workloads]
    prefetch = config.prefetch
    published = confirmed + batches * batch
    opened: list[Driver] = []
    try:
        for side, driver in drivers.items():
            await driver.open()
            opened.append(driver)
            await driver.declare(topics[side], ["g"])
        for _ in range(rounds):
            for side, driver in drivers.items():
                topic = topics[side]
                t0 = time.perf_counter()
                for _ in range(confirmed):
                    await driver.publish(topic, payload)
                rows[0].runs[side].append(confirmed / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                for _ in range(batches):
                    await driver.publish_batch(topic, [payload] * batch)
                rows[1].runs[side].append(batches * batch / (time.perf_counter() - t0))
                consumer = driver.consumer(topic, "g", prefetch)
                await open_group([consumer])
                try:
                    elapsed = await drain([consumer], published, CostMeter(None), _DRAIN_TIMEOUT)
                finally:
                    await close_all([consumer])
                rows[2].runs[side].append(published / elapsed)
    finally:
        for side, driver in zip(SIDES, opened, strict=False):
            with contextlib.suppress(Exception):
                await driver.cleanup([topics[side]], ["g"])
        for driver in opened:
            await driver.close()
    return rows


def markdown(rows: Sequence[EnvelopeRow]) -> str:
    """A table of medians (min-max) and the two ratios."""
    lines = [
        "| backend | workload | raw msg/s | raw+envelope msg/s | bus msg/s "
        "| bus / raw | bus / raw+envelope | raw+envelope / raw |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [
            f"{row.median(s):,.0f} ({min(row.runs[s]):,.0f}-{max(row.runs[s]):,.0f})" for s in SIDES
        ]
        lines.append(
            f"| {row.backend} | {row.workload} | {' | '.join(cells)} "
            f"| {row.ratio('bus', 'raw'):.2f} | {row.ratio('bus', 'raw+envelope'):.2f} "
            f"| {row.ratio('raw+envelope', 'raw'):.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.envelope",
        description="What the CloudEvents envelope costs: raw client bare, raw client "
        "with the library's headers, and the library, on confirmed and batched publish "
        "and consume + ack.",
    )
    parser.add_argument(
        "urls", nargs="+", metavar="URL", help="redis://, amqp://, nats:// or kafka://"
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--confirmed", type=int, default=300, help="publishes per round")
    parser.add_argument("--batches", type=int, default=10, help="batches of 100 per round")
    parser.add_argument(
        "--halt-idle",
        action="store_true",
        help="let idle CPUs halt (by default they poll, as in `bus bench`: benchmarks.pollidle)",
    )
    args = parser.parse_args(argv)
    rows: list[EnvelopeRow] = []
    with PollIdle(not args.halt_idle) as poll_idle:
        print(f"idle CPUs polling: {poll_idle.status}", file=sys.stderr)
        for plan in plan_urls(args.urls):
            if plan.reason:
                print(f"{plan.backend}: {plan.reason}", file=sys.stderr)
                return 2
            rows += asyncio.run(
                envelope_cost(
                    plan.backend,
                    plan.url,
                    rounds=args.rounds,
                    confirmed=args.confirmed,
                    batches=args.batches,
                )
            )
    print(markdown(rows))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
