"""Records to write, and writing many of them as whole record batches.

``AIOKafkaProducer.send()`` costs ~8 us of Python per record (partitioning, a size
check, a future, the accumulator's bookkeeping) on top of appending the record to a
batch in C. For a ``publish_many``, :func:`send_batches` appends the records to one
batch per partition itself and hands each batch over with ``send_batch()``: the
same wire format and acknowledgements, one future per batch.

Partitions are chosen as ``send()`` chooses them (aiokafka's default partitioner:
murmur2 of the key over the sorted partitions, so a key's records stay in one
partition and in order), except that the records without a key of one call share
one partition picked at random (Kafka's "sticky" partitioning) instead of one each.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from .records import RecordHeaders

__all__ = ["Outgoing", "send_batches"]

_partitioner = DefaultPartitioner()


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One record to write (a message, or a redelivery copy of a record)."""

    value: bytes | None
    key: bytes | None
    headers: RecordHeaders
    partition: int | None = None


async def send_batches(
    producer: AIOKafkaProducer, topic: str, records: Sequence[Outgoing]
) -> list[BaseException | None]:
    """Write ``records`` to ``topic`` as record batches; per record, None once the
    broker acknowledged its batch, else the batch's error. A batch is at most the
    producer's ``max_batch_size`` (a record larger than that travels alone)."""
    partitions = sorted(await producer.partitions_for(topic))
    sticky = random.choice(partitions)
    lanes: dict[int, list[int]] = {}
    for n, record in enumerate(records):
        if record.partition is not None:
            partition = record.partition
        elif record.key is not None:
            partition = _partitioner(record.key, partitions, partitions)
        else:
            partition = sticky
        lanes.setdefault(partition, []).append(n)
    submitted: list[tuple[asyncio.Future[object], list[int]]] = []
    for partition, members in lanes.items():
        batch = producer.create_batch()
        held: list[int] = []
        for n in members:
            record = records[n]
            if not _append(batch, record):  # full: submit it, start the next with this record
                submitted.append((await _submit(producer, batch, topic, partition), held))
                batch, held = producer.create_batch(), []
                _append(batch, record)  # an empty batch takes any record, whatever its size
            held.append(n)
        submitted.append((await _submit(producer, batch, topic, partition), held))
    out: list[BaseException | None] = [None] * len(records)
    for future, written in submitted:
        try:
            await future
        except KafkaError as exc:
            for n in written:
                out[n] = exc
    return out


def _append(batch: BatchBuilder, record: Outgoing) -> bool:
    appended = batch.append(
        timestamp=None, key=record.key, value=record.value, headers=record.headers
    )
    return appended is not None


async def _submit(
    producer: AIOKafkaProducer, batch: BatchBuilder, topic: str, partition: int
) -> asyncio.Future[object]:
    batch.close()  # closed: the producer's own send() must not add records to it
    future: asyncio.Future[object] = await producer.send_batch(batch, topic, partition=partition)
    return future
