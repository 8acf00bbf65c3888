"""The JetStream management API as plain JSON requests (``$JS.API.*``).

Requests are built by hand rather than through nats-py's dataclasses so that
exactly the fields a NATS 2.9 server understands are sent, and so the error
codes the backend reacts to are visible in one place.
"""

from __future__ import annotations

import json
from typing import Any

import nats.errors
from nats.aio.client import Client

__all__ = [
    "CONSUMER_NOT_FOUND",
    "STREAM_NAME_IN_USE",
    "STREAM_NOT_FOUND",
    "SUBJECTS_OVERLAP",
    "ApiError",
    "JetStreamApi",
    "Unreachable",
]

STREAM_NAME_IN_USE = 10058
STREAM_NOT_FOUND = 10059
SUBJECTS_OVERLAP = 10065
CONSUMER_NOT_FOUND = 10014

_NS = 1_000_000_000


def ns(seconds: float) -> int:
    return int(seconds * _NS)


class ApiError(Exception):
    """The server answered a management request with an error."""

    def __init__(self, code: int, status: int, description: str) -> None:
        self.code = code
        self.status = status
        self.description = description
        super().__init__(f"{description} (JetStream error {code}, status {status})")


class Unreachable(Exception):
    """No answer: JetStream is not enabled, not ready (no leader) or the link is down."""


class JetStreamApi:
    def __init__(self, nc: Client, prefix: str = "$JS.API") -> None:
        self._nc = nc
        self._prefix = prefix

    async def request(
        self, subject: str, body: dict[str, Any] | None, timeout: float
    ) -> dict[str, Any]:
        payload = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
        try:
            msg = await self._nc.request(f"{self._prefix}.{subject}", payload, timeout=timeout)
        except nats.errors.NoRespondersError as exc:
            raise Unreachable("JetStream did not respond (no responders)") from exc
        except (nats.errors.TimeoutError, TimeoutError) as exc:
            raise Unreachable(f"JetStream did not answer within {timeout:.1f}s") from exc
        except nats.errors.Error as exc:
            raise Unreachable(f"JetStream request failed: {type(exc).__name__}") from exc
        try:
            answer = json.loads(msg.data)
        except ValueError as exc:
            raise Unreachable("JetStream sent a malformed answer") from exc
        if not isinstance(answer, dict):
            raise Unreachable("JetStream sent a malformed answer")
        error = answer.get("error")
        if error:
            raise ApiError(
                int(error.get("err_code", 0)),
                int(error.get("code", 0)),
                str(error.get("description", "unknown error")),
            )
        return answer

    async def account_info(self, timeout: float) -> dict[str, Any]:
        return await self.request("INFO", None, timeout)

    async def create_stream(self, config: dict[str, Any], timeout: float) -> dict[str, Any]:
        return await self.request(f"STREAM.CREATE.{config['name']}", config, timeout)

    async def stream_info(self, name: str, timeout: float) -> dict[str, Any]:
        return await self.request(f"STREAM.INFO.{name}", None, timeout)

    async def stream_for_subject(self, subject: str, timeout: float) -> str | None:
        answer = await self.request("STREAM.NAMES", {"subject": subject}, timeout)
        names = answer.get("streams") or []
        return str(names[0]) if names else None

    async def delete_stream(self, name: str, timeout: float) -> None:
        await self.request(f"STREAM.DELETE.{name}", None, timeout)

    async def purge_subject(self, name: str, subject: str, timeout: float) -> None:
        """Remove the messages of stream ``name`` stored on ``subject``."""
        await self.request(f"STREAM.PURGE.{name}", {"filter": subject}, timeout)

    async def create_durable(
        self, stream: str, config: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        body = {"stream_name": stream, "config": config}
        return await self.request(
            f"CONSUMER.DURABLE.CREATE.{stream}.{config['durable_name']}", body, timeout
        )

    async def create_ephemeral(
        self, stream: str, config: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        body = {"stream_name": stream, "config": config}
        return await self.request(f"CONSUMER.CREATE.{stream}", body, timeout)

    async def consumer_info(self, stream: str, consumer: str, timeout: float) -> dict[str, Any]:
        return await self.request(f"CONSUMER.INFO.{stream}.{consumer}", None, timeout)

    async def delete_consumer(self, stream: str, consumer: str, timeout: float) -> None:
        await self.request(f"CONSUMER.DELETE.{stream}.{consumer}", None, timeout)

    def next_subject(self, stream: str, consumer: str) -> str:
        """Where pull requests for ``consumer`` go."""
        return f"{self._prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
