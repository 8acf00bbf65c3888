"""The redis-py client: URL -> client, driver errors -> bus errors, retries, scripts.

Everything that talks to Redis goes through :class:`Connection`, which is the one
place driver exceptions are translated (``raise BrokerUnavailable(...) from exc``)
and where transient failures (connection refused or reset, ``LOADING`` after a
restart, a cluster failover) are retried with backoff within a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from bus._redact import redact_url
from bus._watchdog import Watchdog
from bus.errors import BrokerUnavailable, BusError, ConfigurationError

from .options import RedisStreamsOptions
from .packing import use_hiredis_packing
from .scripts import Script

__all__ = ["Command", "Connection", "ScriptCall", "is_transient"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Oldest server with everything used here (XAUTOCLAIM, XADD MINID, XTRIM MINID).
MIN_SERVER = (6, 2)
#: Longest BLOCK of one read: bounds how stale levels / due times / reclaims can get.
MAX_BLOCK = 5.0

_TRANSIENT: tuple[type[BaseException], ...] = (
    rex.ConnectionError,
    rex.TimeoutError,
    rex.ReadOnlyError,  # a replica after failover
    rex.ClusterDownError,
    rex.TryAgainError,
    rex.SlotNotCoveredError,
    rex.AskError,  # also MovedError: a slot moved; routes are refreshed, then retried
    ConnectionError,  # OSError family from the socket layer
    TimeoutError,
)
_FATAL: tuple[type[BaseException], ...] = (rex.AuthenticationError, rex.AuthorizationError)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same operation later can succeed."""
    if isinstance(exc, _FATAL):
        return False
    if isinstance(exc, _TRANSIENT):
        return True
    return isinstance(exc, rex.ResponseError) and str(exc).startswith(
        ("LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")
    )


def _as_read(response: Any, **_: Any) -> Any:
    return [] if response is None else response  # None: a blocking read timed out


def _own_client(client: aioredis.Redis) -> aioredis.Redis:
    """A client as the backend uses it: commands packed by hiredis, and XREADGROUP
    replies left as read (``[[stream, [[id, [field, value, ...]], ...]], ...]``):
    the subscription decodes each entry in one pass of its own, so redis-py's
    dict per entry would be a second one."""
    client.set_response_callback("XREADGROUP", _as_read)
    return use_hiredis_packing(client)


@dataclass(frozen=True, slots=True)
class Command:
    """A plain command for a pipeline; ``key`` routes it on a cluster (default: the
    first argument after the command name, right for XADD, XACK, XTRIM, ...)."""

    args: tuple[Any, ...]
    key: str | None = None


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """A script invocation for a pipeline."""

    script: Script
    keys: Sequence[str]
    args: Sequence[Any]


Op = Command | ScriptCall


def _client_kwargs(url: str, options: RedisStreamsOptions) -> dict[str, Any]:
    safe = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        # not the parser's text: it quotes the host part, which holds the password
        # when the URL puts it there unencoded
        raise ConfigurationError(f"invalid redis URL {safe!r}: malformed host or port") from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss"):
        raise ConfigurationError(f"redis backend needs redis:// or rediss://, got {safe!r}")
    if parts.fragment:
        raise ConfigurationError(f"invalid redis URL {safe!r}: unexpected fragment")
    path = parts.path.strip("/")
    try:
        db = int(path) if path else 0
    except ValueError:
        raise ConfigurationError(
            f"invalid redis URL {safe!r}: the path must be a database number"
        ) from None
    if db < 0:
        raise ConfigurationError(f"invalid redis URL {safe!r}: negative database number")
    if options.cluster and db != 0:
        raise ConfigurationError("Redis Cluster has only database 0")
    kwargs: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": port or 6379,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else None,
        "socket_connect_timeout": options.connect_timeout,
        # No per-reply timer: redis-py arms one for every reply it reads (a pipeline
        # of 100 XADDs, 100 timers), which cost a fifth of publish_many. Each
        # command, pipeline and read is bounded once, by Connection.bounded; only
        # the cluster client's own topology reads use redis-py's socket_timeout.
        "socket_timeout": None,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 0),  # retried here, within operation_timeout
        "client_name": "bus",
        "decode_responses": False,
        "protocol": 2,  # same reply shapes on every redis-py version (8.x defaults to 3)
    }
    if not options.cluster:
        kwargs["db"] = db
    if scheme == "rediss":
        kwargs["ssl"] = True
        kwargs["ssl_cert_reqs"] = "required" if options.tls_verify else "none"
        kwargs["ssl_check_hostname"] = options.tls_verify
        kwargs["ssl_ca_certs"] = options.tls_ca_file
        kwargs["ssl_certfile"] = options.tls_cert_file
        kwargs["ssl_keyfile"] = options.tls_key_file
    elif options.tls_ca_file or options.tls_cert_file or options.tls_key_file:
        raise ConfigurationError("tls_* options need a rediss:// URL")
    return kwargs


class Connection:
    """One client (pool of connections) to a Redis server or cluster."""

    def __init__(self, url: str, options: RedisStreamsOptions) -> None:
        self.url = url
        self.safe_url = redact_url(url)
        self.options = options
        self._kwargs = _client_kwargs(url, options)
        self._password: str | None = self._kwargs["password"]
        #: Longest wait for a reply: reads block for at most MAX_BLOCK, so a reply
        #: slower than this means a dead socket or a hung server.
        self.reply_timeout = max(options.operation_timeout, MAX_BLOCK + 10.0)
        self._client: aioredis.Redis | RedisCluster | None = None
        # Cluster: one plain client per primary. Every key of a topic is in one slot,
        # so each pipeline, script and multi-stream read goes to one node whole
        # (redis-py's cluster pipeline refuses EVALSHA and would split a pipeline).
        self._nodes: dict[str, aioredis.Redis] = {}
        # bounds every call by reply_timeout without a timer per call
        self._watchdog = Watchdog(resolution=0.25)

    # -- lifecycle ---------------------------------------------------------------
    @property
    def client(self) -> aioredis.Redis | RedisCluster:
        if self._client is None:
            raise BrokerUnavailable(f"redis at {self.safe_url} is not connected")
        return self._client

    async def open(self) -> None:
        """Connect and check the server within ``connect_timeout``."""
        timeout = self.options.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                if self.options.cluster:
                    cluster = RedisCluster(
                        max_connections=10_000,
                        **{**self._kwargs, "socket_timeout": self.reply_timeout},
                    )
                    self._client = cluster
                    await cluster.initialize()
                else:
                    self._client = _own_client(aioredis.Redis(**self._kwargs))
                info = await self._client.info("server")
        except TimeoutError as exc:
            await self.close()
            raise BrokerUnavailable(
                f"redis at {self.safe_url} did not answer within {timeout}s"
            ) from exc
        except (rex.RedisError, rex.RedisClusterException, OSError) as exc:
            await self.close()
            raise self.unavailable(exc, "cannot connect") from exc
        version = _server_version(info)
        if version < MIN_SERVER:
            await self.close()
            raise BrokerUnavailable(
                f"redis at {self.safe_url} is {'.'.join(map(str, version))}; "
                f"the bus needs Redis >= {'.'.join(map(str, MIN_SERVER))}"
            )

    async def close(self) -> None:
        self._watchdog.close()
        client, self._client = self._client, None
        nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            try:
                await node.aclose()
            except (rex.RedisError, OSError):
                log.debug("closing a cluster node client failed", exc_info=True)
        if client is not None:
            try:
                await client.aclose()
            except (rex.RedisError, OSError):
                log.debug("closing the redis client failed", exc_info=True)

    # -- routing ---------------------------------------------------------------------
    def node(self, key: str) -> aioredis.Redis:
        """The client that serves ``key`` (the one client, unless on a cluster)."""
        client = self.client
        if isinstance(client, aioredis.Redis):
            return client
        node = client.nodes_manager.get_node_from_slot(key_slot(key.encode()))
        found = self._nodes.get(node.name)
        if found is None:
            kwargs = {k: v for k, v in self._kwargs.items() if k not in ("host", "port")}
            found = self._nodes[node.name] = _own_client(
                aioredis.Redis(host=node.host, port=int(node.port), **kwargs)
            )
        return found

    async def refresh_routes(self) -> None:
        """Re-read the cluster's slot map (after MOVED / ASK / a lost node)."""
        client = self._client
        if isinstance(client, RedisCluster):
            with contextlib.suppress(rex.RedisError, rex.RedisClusterException, OSError):
                await client.nodes_manager.initialize()

    # -- errors ------------------------------------------------------------------
    def describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        if self._password:
            text = text.replace(self._password, "***")
        return text

    def unavailable(self, exc: BaseException, what: str) -> BrokerUnavailable:
        if isinstance(exc, rex.AuthenticationError):
            return BrokerUnavailable(
                f"redis at {self.safe_url}: authentication failed ({self.describe(exc)})"
            )
        return BrokerUnavailable(f"redis at {self.safe_url}: {what}: {self.describe(exc)}")

    def error(self, exc: BaseException, what: str) -> BusError:
        """A bus error for a non-transient driver failure."""
        if isinstance(exc, (rex.ConnectionError, rex.TimeoutError, OSError)):
            return self.unavailable(exc, what)
        return BusError(f"redis at {self.safe_url}: {what}: {self.describe(exc)}")

    # -- retries -----------------------------------------------------------------
    async def retrying(
        self,
        op: Callable[[], Awaitable[T]],
        what: str,
        *,
        deadline: float | None = None,
    ) -> T:
        """Run ``op`` until it succeeds, retrying transient failures with backoff until
        ``deadline`` (monotonic; default now + ``operation_timeout``), then raise
        :class:`bus.BrokerUnavailable`; an attempt still waiting for its reply at the
        deadline is cancelled (within the watchdog's resolution). Other driver errors
        become :class:`bus.BusError`."""
        if deadline is None:
            deadline = time.monotonic() + self.options.operation_timeout
        pause = 0.05
        while True:
            try:
                left = deadline - time.monotonic()
                if left >= self.reply_timeout:
                    return await op()  # bounded by reply_timeout inside
                # The attempt ends by the deadline too: a frozen server (sockets open,
                # nothing answered) is not waited for the whole reply_timeout, which
                # is sized for blocking reads (15 s or more), when operation_timeout
                # says less. Cancelled mid-reply, redis-py drops that connection.
                return await self._watchdog.bound(op(), max(left, 0.0))
            except BusError:
                raise
            except (rex.RedisError, rex.RedisClusterException, OSError) as exc:
                if not is_transient(exc):
                    raise self.error(exc, what) from exc
                if self.options.cluster:
                    await self.refresh_routes()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.unavailable(exc, what) from exc
                log.debug("%s failed (%s); retrying", what, self.describe(exc))
                await asyncio.sleep(min(left, pause * (0.5 + random.random())))
                pause = min(pause * 2, 1.0)

    # -- commands ----------------------------------------------------------------
    async def bounded(self, op: Awaitable[T]) -> T:
        """Await one redis-py call within :attr:`reply_timeout` (checked every 0.25 s,
        see :mod:`bus._watchdog`); :class:`TimeoutError` (transient) after it. Every
        call the backend makes goes through here, :meth:`pipeline` or :meth:`script`:
        the clients have no socket timeout of their own. A call cancelled mid-reply
        makes redis-py drop that connection, so no late reply is read by the next
        command."""
        return await self._watchdog.bound(op, self.reply_timeout)

    async def script(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``script`` once (EVALSHA, EVAL when the server does not know it yet)."""
        return await self.bounded(self._script(script, keys, args))

    async def _script(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        client = self.node(keys[0])
        try:
            return await _awaited(client.evalsha(script.sha, len(keys), *keys, *args))
        except rex.NoScriptError:
            return await _awaited(client.eval(script.source, len(keys), *keys, *args))

    async def pipeline(self, ops: Sequence[Op]) -> list[Any]:
        """Send ``ops`` in one round trip (one per node on a cluster); results in order.
        A failed command's result is its exception (so one bad command does not hide
        the others' results); a lost connection or moved slot raises. The whole
        exchange is bounded by :attr:`reply_timeout` (:class:`TimeoutError`)."""
        return await self.bounded(self._pipeline(ops))

    async def _pipeline(self, ops: Sequence[Op]) -> list[Any]:
        client = self.client
        if isinstance(client, aioredis.Redis):
            # not a cluster: one node serves every key (no routing per command)
            return await self._pipeline_on(client, ops)
        by_node: dict[int, tuple[aioredis.Redis, list[int]]] = {}
        for n, op in enumerate(ops):
            node = self.node((op.key or op.args[1]) if isinstance(op, Command) else op.keys[0])
            by_node.setdefault(id(node), (node, []))[1].append(n)
        if len(by_node) == 1:
            # every key on one node: no task per node, no gather
            ((node, _),) = by_node.values()
            return await self._pipeline_on(node, ops)
        results: list[Any] = [None] * len(ops)
        parts = list(by_node.values())
        done = await asyncio.gather(
            *(self._pipeline_on(node, [ops[n] for n in idx]) for node, idx in parts)
        )
        for (_, idx), part in zip(parts, done, strict=True):
            for n, result in zip(idx, part, strict=True):
                results[n] = result
        return results

    async def _pipeline_on(self, client: aioredis.Redis, ops: Sequence[Op]) -> list[Any]:
        if len(ops) == 1 and isinstance(ops[0], Command):
            # One plain command (a single publish): skip redis-py's pipeline machinery.
            # Its result or command error is returned as a pipeline would return it.
            untyped: Any = client  # execute_command is untyped in some redis-py releases
            try:
                return [await untyped.execute_command(*ops[0].args)]
            except rex.ResponseError as exc:
                return [exc]
        pipe = client.pipeline(transaction=False)
        for op in ops:
            if isinstance(op, Command):
                pipe.execute_command(*op.args)
            else:
                pipe.evalsha(op.script.sha, len(op.keys), *op.keys, *op.args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        for i, (op, result) in enumerate(zip(ops, results, strict=True)):
            if isinstance(result, rex.NoScriptError) and isinstance(op, ScriptCall):
                # did not run: run it now (EVAL also caches the script server-side)
                results[i] = await _awaited(
                    client.eval(op.script.source, len(op.keys), *op.keys, *op.args)
                )
            elif isinstance(result, BaseException) and is_transient(result):
                raise result
        return results


def _server_version(info: Any) -> tuple[int, ...]:
    if isinstance(info, dict) and "redis_version" not in info and info:
        # cluster: {node: info}
        info = next(iter(info.values()))
    raw = info.get("redis_version", "0") if isinstance(info, dict) else "0"
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        return tuple(int(p) for p in str(raw).split(".")[:2])
    except ValueError:
        return (0,)


def _awaited(result: Awaitable[Any] | Any) -> Awaitable[Any]:
    """redis-py types script calls as ``Awaitable[str] | str`` because one signature
    serves its sync and async clients; on the asyncio client it is always awaitable."""
    assert inspect.isawaitable(result)
    return result
