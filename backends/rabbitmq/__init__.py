"""``amqp://`` and ``amqps://``: the bus contract on RabbitMQ (aio-pika, server 3.8+,
written against 3.10).

URL: ``amqp[s]://user:password@host[:port][/vhost][?option=value]``. Credentials
come from the URL and never appear in a log line or an error; ``amqps://`` uses
TLS (``tls_ca_file``, ``tls_cert_file``/``tls_key_file``, ``tls_verify``).

Mapping
=======

==================  ===============================================================
bus                 RabbitMQ
==================  ===============================================================
topic ``t``         routing key ``t`` on one durable topic exchange (``exchange``,
                    default ``bus``). Our topic grammar has no ``*``/``#``, so a
                    binding with key ``t`` matches exactly ``t``
group ``g``         durable queue ``t.g`` (see ``_names``) bound with key ``t``,
                    declared by ``declare`` or the first subscribe with the same
                    arguments every time: ``x-queue-type`` (``queue_type``),
                    dead-letter exchange + routing key ``t.dlq``, ``x-max-priority``
                    (classic), ``x-delivery-limit`` (``delivery_limit``). It keeps
                    every message published after it exists, with or without members
broadcast           exclusive, auto-delete, classic queue ``_<exchange>.bcast.<hex>`` per
                    subscriber, bound to ``t``; re-declared and re-bound after a
                    reconnect (what was published while disconnected is missed)
publish             persistent (``delivery_mode=2``), ``mandatory``, on a publisher-
                    confirm channel: ``publish`` returns after the broker's ack;
                    ``publish_many`` pipelines up to ``publish_window`` publishes and
                    then awaits their confirms. Retried through reconnects and broker
                    nacks within ``operation_timeout``
unroutable          no queue bound (no group, no subscriber): the broker returns the
                    message. Every broker drops such a message; here it is visible:
                    ``on_unroutable`` = ``warn`` (default, rate-limited WARNING),
                    ``ignore`` or ``raise`` (PublishError). A request returned is
                    NoResponders; a returned dead letter is a PublishError
consumer            one robust channel per subscription: ``basic.qos`` = ``prefetch``,
                    manual acks; after a reconnect the queue is re-declared and consumed
                    again by the subscription itself
ack / nack          coalesced: one ``basic.ack``/``basic.nack(requeue)`` with
                    ``multiple=True`` per run of equal outcomes over the settled prefix
                    of un-acked tags, sent by a flusher and before ``close``, without
                    waiting for the socket to drain; never a round trip per message
attempt             quorum: 1 + ``x-delivery-count`` (counts nacks and consumer deaths);
                    classic: a nack re-publishes a confirmed copy with ``bus-attempts``
                    and acks the original, and a redelivery after a consumer died adds
                    one (the ``redelivered`` flag is a bool: several deaths in a row
                    count once)
close               cancel the consumer, flush settlements, close the channel: the
                    broker requeues every un-acked delivery at once
consumer death      the connection drops (SIGKILL closes the socket): same as close
delay / nack delay  per-delay TTL wait queue (quorum, ``x-message-ttl``) dead-lettering
                    at least once into the fanout exchange ``<exchange>.due`` (publish
                    delay), bound to the topic exchange (every group of the topic), or
                    into the topic exchange ``<exchange>.requeue`` (nack delay), to
                    which every consumed queue is bound by its own name (back to the
                    one queue); both also reach ``_<exchange>.due.drop``, a queue that
                    keeps nothing; no plugin. A due message whose topic has no queue, or
                    a retry whose queue was deleted, is dropped, as an immediate publish
                    no queue takes is (without the drop queue the wait queue would keep
                    and retry it). Delays round up to a ladder (10 ms
                    steps, then the R20 series: never early, at most 10 ms or 14.3%
                    late); a wait queue expires a day after its last use
priority            classic queues with ``x-max-priority`` 9 (``queue_type=classic``);
                    unsupported with quorum queues (RabbitMQ 3.10 has none)
dead letter         ``dead_letter(reason)``: confirmed copy with ``bus-dlq-*`` headers
                    to ``t.dlq``, then ack. The group queue's dead-letter exchange
                    route to ``t.dlq`` takes what the broker dead-letters itself
                    (``delivery_limit``); such messages get ``bus-dlq-*`` headers
                    derived from ``x-death`` on receipt
request / reply     direct reply-to: the request is published ``mandatory`` with
                    ``reply_to=amq.rabbitmq.reply-to`` on the confirm channel, which
                    consumes its replies (no reply queue); returned -> NoResponders.
                    A group without a live member keeps the request until the timeout;
                    a reconnect while a request waits loses its reply (RequestTimeout)
lease               unsupported: an un-acked delivery stays with its consumer until its
                    channel closes; ``in_progress()`` is a no-op (nothing to extend).
                    One held longer than the server's ``consumer_timeout`` (30 min by
                    default) makes the broker close the channel: the subscription
                    reopens it and the message is delivered again
replay              unsupported on classic/quorum queues (RabbitMQ streams, the
                    ``rabbitmq_stream`` plugin, would be the user's choice)
headers             CloudEvents binary mode in the headers table (see ``_wire``)
max message size    RabbitMQ's default ``max_message_size``, 128 MiB (or the option)
==================  ===============================================================

Why quorum queues by default
============================

Quorum queues are RabbitMQ's replicated, Raft-based queue type (3.8+): in a
cluster a group survives the loss of a minority of nodes without losing confirmed
messages (classic queues live on one node; classic mirroring is deprecated). They
count deliveries (``x-delivery-count``), which makes ``attempt`` exact even when
consumers die, and support ``x-delivery-limit``: a poison message that keeps
killing its consumers is dead-lettered by the broker instead of looping forever.
Their cost: no message priorities in 3.10, and more memory and disk per queue.
``queue_type=classic`` gives priorities (``x-max-priority``) on single-node queues.

Changing ``queue_type`` (or ``delivery_limit``) for a group that already exists is
refused by the broker (``PRECONDITION_FAILED - inequivalent arg``): ``declare`` and
``subscribe`` raise a :class:`bus.ConfigurationError` naming the queue and both
values, at once and every time - never a reconnect loop. Migrating means draining
and deleting the queue (or using a new group name).

Reconnects: aio-pika's robust connection reconnects every ``reconnect_interval``
and reopens the channels; each subscription re-declares its queue and consumes
again; publishes in flight are retried until ``operation_timeout`` (a publish
whose confirm was lost may be stored twice: at-least-once). Settlements of
deliveries from before the reconnect are dropped (the broker already returned
those messages, which are delivered again).
"""

from backends.rabbitmq._backend import RabbitMQBackend
from backends.rabbitmq._capabilities import CLASSIC, QUORUM
from backends.rabbitmq._options import RabbitMQOptions

__all__ = ["CLASSIC", "QUORUM", "RabbitMQBackend", "RabbitMQOptions"]
