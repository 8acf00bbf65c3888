"""``kafka://host:port[,host:port...]``: the bus contract on the Kafka protocol (aiokafka).

Mapping:

=====================  ==================================================================
topic                  Kafka topic, created on demand (``partitions``, default 3;
                       ``replication_factor``, default the broker's); reply inboxes
                       ``_inbox.<id>`` get one partition and are deleted at close; a
                       reply never creates one (a late reply to a requester that
                       closed is dropped)
message                one record: value = payload bytes, untouched; attributes and user
                       headers as record headers (CloudEvents Kafka binding: ``ce_id``,
                       ``ce_type``, ``content-type``, ...); ``key`` = record key
publish confirm        ``acks=all``; the idempotent producer when the broker grants a
                       producer id (``idempotence``); ``publish_many`` sends every record
                       then awaits every confirm (batched per partition)
group                  Kafka consumer group ``<topic>:<group>``; ``declare`` and the first
                       subscribe commit the log end (``latest``) or start (``earliest``)
                       for partitions without an offset, so a group keeps every record
                       published after it was declared, with or without members
broadcast              a consumer without group assigned every partition, starting at the
                       log ends read at subscribe (``earliest``: the log start)
ack                    per message: the contiguous settled prefix of each partition is
                       committed, coalesced (next fetch, ``commit_interval_ms``, rebalance,
                       close); a later ack never commits past an un-acked record
nack()                 re-queued in this consumer (the offset stays uncommitted)
nack(delay), delay     a record with ``bus-not-before`` (nack: a copy with ``bus-attempt``
                       and ``bus-group``, written to the same partition, then the original
                       is acked); consumers hold it in memory until due (at most 10,000,
                       then they stop pulling), and the partition's commit waits for it.
                       Survives crashes. Due times are the producer's clock: meant for
                       seconds to minutes, not days.
rebalance / close      a rebalance first gives deliveries in flight ``revoke_grace_ms``
                       (2 s) to be settled; then unsettled records handed out are written
                       back as copies (``bus-attempt`` + 1, ``bus-group``) before committing
                       past them: nothing acked comes back, nothing un-acked is lost
crash (SIGKILL)        the group's next owner reads from the last commit: every record from
                       the first unsettled one is delivered again (attempt 1)
attempt                ``bus-attempt`` header + deliveries made by the current consumer
dead letter            ``<topic>.dlq`` topic (SPI default: confirmed copy, then ack)
request / reply        generic inbox (``bus._rpc``) on ``_inbox.<id>`` topics
priority, lease,       unsupported (see ``CAPABILITIES`` for why)
no responders
=====================  ==================================================================

Verified locally on Tansu 0.6 (memory storage) and what holds only on a durable Kafka:
Tansu grants no producer id (no idempotence: a producer retry may duplicate), reports
no broker configuration (``message.max.bytes`` defaults to Kafka's 1 MiB), returns a
wrong ListOffsets(latest) when the last batch holds several records (the high
watermark of a fetch is used instead), does not answer OFFSET_OUT_OF_RANGE (emulated,
``log_loss_check_ms``), numbers group generations from 0 (LeaveGroup is sent by hand),
holds every JoinGroup about half the session timeout, and loses every record and
offset on restart. So retention of confirmed records across a broker restart holds only
on a durable Kafka; locally a restart test checks recovery (producers and consumers
carry on, everything confirmed after the restart is delivered).
"""

from .backend import CAPABILITIES, KafkaBackend, group_id
from .options import KafkaOptions

__all__ = ["CAPABILITIES", "KafkaBackend", "KafkaOptions", "group_id"]
