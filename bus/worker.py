"""The handler runtime behind :meth:`bus.Bus.consume`: concurrency, retries with
backoff, dead-lettering, replies and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from bus.capabilities import Feature
from bus.delivery import Delivery
from bus.errors import BusClosed, BusError, DecodeError, MessageTooLarge
from bus.message import Message
from bus.retry import Retry
from bus.subscription import Subscription

if TYPE_CHECKING:
    from bus.backend import Backend, Start

__all__ = ["Handler", "Worker", "WorkerStats"]

log = logging.getLogger(__name__)

Handler = Callable[..., Any]
_Invoker = Callable[[Delivery], Awaitable[Any]]

# How often the fetch loop looks at the stop flag.
_STOP_POLL = 0.25
# Longest pause between fetch attempts while the broker is unavailable.
_MAX_PAUSE = 5.0
# Lease renewal period when the backend has leases but no ack_timeout was set
# (the built-in defaults: Redis and NATS 30 s; memory:// has no lease without one).
_DEFAULT_HEARTBEAT = 10.0


@dataclass(slots=True)
class WorkerStats:
    """Counters since the worker started (for progress and health endpoints)."""

    received: int = 0
    succeeded: int = 0
    retried: int = 0
    dead_lettered: int = 0
    dropped: int = 0


def _payload_getter(into: Any) -> Callable[[Delivery], Any]:
    def get(d: Delivery) -> Any:
        return d.message.decode(into)

    return get


def build_invoker(handler: Handler) -> _Invoker:
    """Inspect ``handler`` once and return ``invoke(delivery) -> result``.

    Each parameter gets, by its annotation: ``bus.Delivery`` the delivery,
    ``bus.Message`` (or no annotation) the message, anything else the payload
    decoded into that type (pydantic model, ``bytes``, ``str``, ``dict``, ...).
    Sync handlers run in a worker thread so they cannot block the event loop.
    """
    if not callable(handler):
        raise TypeError(f"handler must be callable, got {handler!r}")
    hints = _hints(handler)
    params = [
        p
        for p in inspect.signature(handler).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not params:
        raise TypeError("handler must take at least one parameter (payload, message or delivery)")

    getters: list[Callable[[Delivery], Any]] = []
    for param in params:
        ann = hints.get(param.name, param.annotation)
        if isinstance(ann, str | typing.ForwardRef):
            # a name typing could not resolve: decoding into a string would fail on
            # every message and dead-letter it; refuse the handler instead
            raise TypeError(
                f"cannot resolve the annotation {ann!r} of parameter {param.name!r} of "
                f"{handler!r}: import the type where the handler is defined"
            )
        if ann is Delivery:
            getters.append(lambda d: d)
        elif ann is Message or ann is inspect.Parameter.empty:
            getters.append(lambda d: d.message)
        else:
            getters.append(_payload_getter(ann))

    is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - callable objects
    )

    if is_async:

        async def invoke(d: Delivery) -> Any:
            return await handler(*[get(d) for get in getters])

    else:

        async def invoke(d: Delivery) -> Any:
            args = [get(d) for get in getters]
            result = await asyncio.to_thread(handler, *args)
            if inspect.isawaitable(result):
                # a plain callable returning a coroutine (a lambda or partial around
                # an async function): the work is that coroutine, not the call
                result = await result
            return result

    return invoke


def _hints(handler: Handler) -> dict[str, Any]:
    """The resolved annotations of ``handler``'s parameters, looked up where they are
    written: a partial's function, a callable object's ``__call__``."""
    target: Any = handler
    while isinstance(target, functools.partial):
        target = target.func
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        call = getattr(type(target), "__call__", None)  # noqa: B004 - callable objects
        if call is not None:
            target = call
    try:
        return typing.get_type_hints(target)
    except Exception:
        pass
    # One unresolvable name fails the whole call: resolve each parameter alone, so
    # that an unresolvable return annotation (unused here) costs nothing and the
    # error build_invoker raises names the parameter that really is unresolvable.
    nsobj = inspect.unwrap(target)
    globalns = getattr(getattr(nsobj, "__func__", nsobj), "__globals__", {})
    hints: dict[str, Any] = {}
    for name, ann in getattr(target, "__annotations__", {}).items():
        if name == "return":
            continue
        one = types.SimpleNamespace(__annotations__={name: ann})
        with contextlib.suppress(Exception):
            hints.update(typing.get_type_hints(one, globalns=globalns))
    return hints


class Worker:
    """Runs a handler over a group subscription.

    ``await worker.run()`` consumes until :meth:`stop`; ``async with worker:`` starts
    it in the background and stops it gracefully on exit.

    Per delivery: success acks (and replies with the return value when the message
    asked for a reply and the handler did not reply itself); an exception nacks with
    ``retry.backoff`` until ``retry.max_attempts`` deliveries were made, then
    dead-letters with the error in the ``bus-dlq-*`` headers (or drops it, logged,
    when ``dead_letter=False``); an undecodable payload is dead-lettered at once,
    since retrying cannot fix it. A handler that settles the delivery itself is
    left alone.
    """

    def __init__(
        self,
        backend: Backend,
        topic: str,
        handler: Handler,
        *,
        group: str,
        concurrency: int,
        retry: Retry,
        dead_letter: bool,
        prefetch: int,
        start: Start,
        on_stop: Callable[[Worker], None] | None = None,
    ) -> None:
        self.topic = topic
        self.group = group
        self.concurrency = concurrency
        self.retry = retry
        self.dead_letter = dead_letter
        self.stats = WorkerStats()
        self._invoke = build_invoker(handler)
        self._subscription = Subscription(
            backend, topic, group=group, start=start, prefetch=prefetch
        )
        self._inflight: dict[asyncio.Task[None], Delivery] = {}
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._started = asyncio.Event()
        self._running = False
        self._exited = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None  # started by `async with`
        self._slots = asyncio.Semaphore(concurrency)
        self._on_stop = on_stop
        self._heartbeat: asyncio.Task[None] | None = None
        self._heartbeat_every: float | None = None
        self._nack_delay = backend.capabilities.supports(Feature.NACK_DELAY)
        if backend.capabilities.supports(Feature.LEASE):
            lease = backend.options.ack_timeout
            self._heartbeat_every = lease / 3 if lease else _DEFAULT_HEARTBEAT

    def __repr__(self) -> str:
        return f"<Worker {self.topic!r} group={self.group!r} concurrency={self.concurrency}>"

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def run(self) -> None:
        """Consume until :meth:`stop` is called. Raises what the subscription raises."""
        self._running = True
        try:
            await self._run()
        finally:
            self._exited.set()

    async def _run(self) -> None:
        await self._subscription.open()
        if self._heartbeat_every is not None and self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._renew_leases(self._heartbeat_every))
        self._started.set()
        failures = 0
        while not self._stopping:
            if not await self._take_slot():
                break
            try:
                delivery = await self._subscription.receive(timeout=_STOP_POLL)
            except TimeoutError:
                self._slots.release()
                continue
            except BusClosed:
                self._slots.release()
                break
            except BusError as exc:
                # The backend gave up reconnecting for now. A worker is a long-lived
                # service: keep trying (with backoff) instead of dying silently.
                self._slots.release()
                failures += 1
                pause = min(_MAX_PAUSE, 0.1 * 2**failures)
                log.warning("%r: fetch failed (%s); retrying in %.1fs", self, exc, pause)
                await asyncio.sleep(pause)
                continue
            except BaseException:
                self._slots.release()
                raise
            failures = 0
            if self._stopping:
                # fetched as stop() began: left unsettled, so closing the subscription
                # hands it back to the group at once instead of stop() waiting for it
                self._slots.release()
                break
            self.stats.received += 1
            task = asyncio.create_task(self._handle(delivery))
            self._inflight[task] = delivery
            task.add_done_callback(self._done)

    async def _take_slot(self) -> bool:
        """Take a handler slot; False (and no slot) once :meth:`stop` was called. While
        every slot is busy, a stop does not wait for a handler to finish first."""
        if not self._slots.locked():
            await self._slots.acquire()  # free: returns at once
            return True
        acquire = asyncio.ensure_future(self._slots.acquire())
        stopping = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait({acquire, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not acquire.done():
                acquire.cancel()
        if not acquire.done() or acquire.cancelled():
            return False
        if self._stopping:
            self._slots.release()
            return False
        return True

    def _done(self, task: asyncio.Task[None]) -> None:
        del self._inflight[task]
        self._slots.release()

    async def _renew_leases(self, every: float) -> None:
        """Keep the leases of held deliveries (running or waiting) from expiring, so a
        long job is not handed to another member while this worker is alive."""
        while True:
            await asyncio.sleep(every)
            for delivery in [*self._inflight.values(), *self._subscription.buffered()]:
                if delivery.settled is None:
                    with contextlib.suppress(BusError):
                        await delivery.in_progress()

    async def started(self) -> None:
        """Wait until the worker's subscription is live."""
        await self._started.wait()

    async def _handle(self, delivery: Delivery) -> None:
        try:
            result = await self._invoke(delivery)
        except asyncio.CancelledError:
            # stop() ran out of time: give the message back for another member
            with contextlib.suppress(BusError):
                await delivery.nack()
            raise
        except DecodeError as exc:
            await self._give_up(delivery, f"undecodable payload: {exc}", exc)
            return
        except Exception as exc:
            await self._failed(delivery, exc)
            return
        try:
            if delivery.message.reply_to and not delivery.replied and delivery.settled is None:
                await delivery.reply(result)
            if delivery.settled is None:
                await delivery.ack()
            self.stats.succeeded += 1
        except MessageTooLarge as exc:
            # the same result would be too large on every retry
            await self._give_up(delivery, f"reply too large: {exc}", exc)
        except BusError:
            log.warning("settling %s failed; it will be redelivered", delivery, exc_info=True)

    async def _failed(self, delivery: Delivery, exc: Exception) -> None:
        if delivery.settled is not None:
            return
        if delivery.attempt < self.retry.max_attempts:
            self.stats.retried += 1
            log.debug("handler failed on %s; retrying", delivery, exc_info=exc)
            try:
                await delivery.nack(delay=self.retry.backoff.delay(delivery.attempt))
            except BusError:
                # the delayed copy was not written and the delivery is unsettled again:
                # hand it back at once rather than hold it (no lease on some brokers)
                log.warning("delayed nack of %s failed; nacking at once", delivery, exc_info=True)
                try:
                    await delivery.nack()
                except BusError:
                    log.warning("nack of %s failed; it will be redelivered", delivery)
            return
        await self._give_up(delivery, f"{type(exc).__name__}: {exc}", exc)

    async def _give_up(self, delivery: Delivery, reason: str, exc: Exception) -> None:
        if delivery.settled is not None:
            return
        try:
            if self.dead_letter:
                log.warning("dead-lettering %s: %s", delivery, reason, exc_info=exc)
                try:
                    await delivery.dead_letter(reason, error_type=type(exc).__qualname__)
                except BusError as failure:
                    await self._dead_letter_failed(delivery, failure)
                    return
                self.stats.dead_lettered += 1
            else:
                self.stats.dropped += 1
                log.error("dropping %s after failure: %s", delivery, reason, exc_info=exc)
                await delivery.ack()
        except BusError:
            log.warning("settling %s failed; it will be redelivered", delivery, exc_info=True)

    async def _dead_letter_failed(self, delivery: Delivery, failure: BusError) -> None:
        """The dead letter could not be written (e.g. RabbitMQ without a queue on the
        dead-letter topic): the delivery is unsettled again; hand it back after the
        retry backoff rather than hold it (a backend without leases would keep it
        until the connection closes) or deliver it again at once (a hot loop)."""
        delay = self.retry.backoff.delay(delivery.attempt) if self._nack_delay else None
        log.error(
            "dead-lettering %s failed (%s); it is delivered again%s",
            delivery,
            failure,
            f" in {delay:.1f}s" if delay else "",
        )
        try:
            await delivery.nack(delay=delay)
        except BusError:
            log.warning("nack of %s failed; it will be redelivered", delivery, exc_info=True)

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop fetching, let in-flight handlers finish for up to ``timeout`` seconds,
        cancel (and nack) the rest, then close the subscription. Idempotent."""
        self._stopping = True
        self._stop_requested.set()
        runner = self._runner
        # Waited on without awaiting it, so the caller's own cancellation propagates
        # (and a task that awaited run() and goes on afterwards is not waited for).
        if runner is not None:
            await asyncio.wait({runner})
        elif self._running:
            await self._exited.wait()
        failure = None
        if runner is not None and runner.done() and not runner.cancelled():
            failure = runner.exception()  # retrieved, whatever it is
        # a handler may call stop() itself: it does not wait for its own end
        inflight = set(self._inflight) - {asyncio.current_task()}
        if inflight:
            _, pending = await asyncio.wait(inflight, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        await self._subscription.close()
        if self._on_stop is not None:
            self._on_stop(self)
        if failure is not None and not isinstance(failure, BusError):
            raise failure  # a bug in the runner, not the broker: the caller should see it

    async def __aenter__(self) -> Worker:
        self._runner = asyncio.create_task(self.run(), name=f"bus-worker-{self.topic}")
        started = asyncio.create_task(self._started.wait())
        done, _ = await asyncio.wait({self._runner, started}, return_when=asyncio.FIRST_COMPLETED)
        if self._runner in done:
            started.cancel()
            self._runner.result()  # raise the start-up failure
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
