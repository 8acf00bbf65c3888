"""``nats://`` and ``tls://``: the bus contract on NATS JetStream (nats-py, server 2.9+).

URL: ``nats://[user:password@|token@]host[:port][,host[:port]...][?option=value]``.
Several hosts form the server pool of a cluster; ``tls://`` (or any ``tls_*``
option) uses TLS. Credentials are passed to the client apart from the server list,
never logged, and redacted in every error.

Mapping
=======

==================  ===============================================================
bus                 JetStream
==================  ===============================================================
topic ``t``         subject ``bus.t`` (``subject_prefix``), captured by its own stream
                    ``BUS_<encoded t>`` (``_`` -> ``_-``, ``.`` -> ``__``; see ``_names``),
                    created idempotently, ``limits`` retention with ``max_age`` /
                    ``max_bytes`` / ``max_msgs``, ``replicas``, ``storage``,
                    ``duplicate_window``. If an operator's stream already captures the
                    subject (e.g. one stream for ``bus.orders.>``), that stream is used.
group ``g``         durable pull consumer ``g`` of the topic's stream, explicit ack,
                    ``AckWait`` = ``ack_timeout`` (30 s), ``max_deliver``,
                    ``max_ack_pending``; created by ``declare`` or the first subscribe
                    with DeliverPolicy ``new`` (``all`` for ``start="earliest"``), so it
                    keeps everything published after it exists, with or without members
broadcast           ephemeral pull consumer per subscriber, DeliverPolicy ``new`` (``all``
                    for ``start="earliest"``), deleted on close, removed by the server
                    after ``ephemeral_inactive_threshold`` if the process dies; if the
                    server drops it (restart) it is re-created from the next sequence
publish             JetStream publish, waits for the PubAck; ``publish_many`` sends a
                    window of 1000 and then gathers the acks. ``Nats-Msg-Id`` = message
                    id: a retried publish within ``duplicate_window`` is stored once
ack / nack          ``+ACK`` / ``-NAK`` / ``-NAK {"delay": ns}`` to the reply subject,
                    buffered and coalesced by the client (never a round trip each)
in_progress         ``+WPI`` (AckProgress) resets the ack wait
attempt             ``num_delivered`` from the delivery's ``$JS.ACK`` metadata
dead_letter         confirmed publish to ``<topic>.dlq`` with ``bus-dlq-*`` headers, then
                    ``+TERM`` of the original
delay               emulated, durable: ``<stream_prefix>-DELAYED`` holding stream + mover
                    (see ``_delay`` for what happens when a process dies)
priority            unsupported (see the capability text)
request / reply     the request is stored in the topic's stream like any message (durable
                    until a group member takes it); ``reply_to`` is this connection's core
                    inbox subject ``bus._inbox.<hex>``; the reply is a core publish (not
                    stored). ``NoResponders``: every live consumer holds a core queue
                    subscription on ``bus._live.<topic>``; a probe request gets the
                    server's 503 no-responders status when none exists
headers             CloudEvents binary mode as NATS headers (see ``_wire``), decoded when
                    the handler first reads an attribute; a message whose attributes do
                    not decode (foreign or faulty producer) is delivered with its id,
                    payload and plain headers, never dropped
max message size    the server's ``max_payload`` (INFO) less 1 KiB for headers
==================  ===============================================================

Why one stream per topic (and not one per namespace): retention, limits and
purging are per stream, so a busy topic hitting ``max_bytes`` never evicts another
topic's messages; replay (DeliverPolicy ``all``) reads one topic's log without
filtering; a topic's stream can be inspected, edited or deleted on its own; and in
a cluster each stream is its own Raft group, so topics spread over the nodes. The
cost is one stream (and, with replicas, one Raft group) per topic: fine for
hundreds or a few thousand topics, and the account's ``max_streams`` limit applies.
Deployments with very many topics can create namespace streams themselves (the
backend uses a stream that already captures a topic's subject).

Consumers pull with 30 s requests carrying 5 s idle heartbeats, renewed before
they expire, into a local buffer of at most ``prefetch`` messages per request
(see ``_pull``, which also documents the NATS 2.9 redelivery quirk it avoids).

Reconnects: the client reconnects forever (``reconnect_wait``), buffering up to
``pending_size`` bytes; a publish not acknowledged within 5 s is sent again with
the same ``Nats-Msg-Id`` until ``operation_timeout``; pull requests are re-issued
after a reconnect (or when their heartbeats stop); an un-acked delivery of a
consumer that died is redelivered after the ack wait. Duplicates are possible
when an ack or a PubAck is lost, and when NATS 2.9 mishandles a redelivery that
finds no valid pull request (it then also re-sends the newest message):
at-least-once, never loss.
"""

from backends.nats_jetstream._backend import NatsJetStreamBackend
from backends.nats_jetstream._capabilities import CAPABILITIES
from backends.nats_jetstream._options import NatsJetStreamOptions

__all__ = ["CAPABILITIES", "NatsJetStreamBackend", "NatsJetStreamOptions"]
