"""Run scenarios against a backend URL and collect machine-readable results."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import bus
from bus._redact import redact_url
from conformance._scenario import SCENARIOS, ConformanceFailure, Scenario
from conformance.brokers import provisioning_required
from conformance.context import Context, IsolatedBrokerFactory
from conformance.isolated import IsolatedBrokerUnavailable

__all__ = ["ScenarioResult", "SuiteResult", "run_conformance", "run_scenario", "scenarios"]

Status = Literal["pass", "fail", "skip"]


@dataclass
class ScenarioResult:
    name: str
    status: Status
    doc: str
    reason: str = ""
    detail: str = ""
    duration_s: float = 0.0
    requires: list[str] = field(default_factory=list)


@dataclass
class SuiteResult:
    backend: str
    url: str
    started: str
    duration_s: float
    capabilities: dict[str, dict[str, str]]
    max_message_bytes: int
    scenarios: list[ScenarioResult]
    environment: dict[str, str]

    @property
    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "fail": 0, "skip": 0}
        for r in self.scenarios:
            out[r.status] += 1
        return out

    @property
    def ok(self) -> bool:
        return self.counts["fail"] == 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = self.counts
        return data

    def write_json(self, path: str | Path) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return target


def scenarios() -> list[Scenario]:
    """Every registered scenario, in suite order."""
    import conformance.scenarios  # noqa: F401 - registers them

    return list(SCENARIOS.values())


async def _probe(url: str, options: dict[str, Any]) -> tuple[bus.Capabilities, int, str]:
    async with bus.connect(url, **options) as b:
        return b.capabilities, b.backend.max_message_bytes, b.backend.scheme


async def run_scenario(
    sc: Scenario,
    url: str,
    *,
    options: dict[str, Any] | None = None,
    isolated: IsolatedBrokerFactory | None = None,
    capabilities: bus.Capabilities | None = None,
    max_message_bytes: int | None = None,
) -> ScenarioResult:
    """Run one scenario; capability gaps are skips with the backend's stated reason.

    A ``restart`` scenario whose isolated broker cannot be started
    (:class:`~conformance.isolated.IsolatedBrokerUnavailable`) is a skip with that
    reason, or a fail when provisioning is required (``CI=true``).
    """
    options = dict(options or {})
    if capabilities is None or max_message_bytes is None:
        capabilities, max_message_bytes, _ = await _probe(url, options)
    requires = [f.value for f in sc.requires]
    for feature in sc.requires:
        cap = capabilities[feature]
        if not cap.available:
            return ScenarioResult(
                sc.name,
                "skip",
                sc.doc,
                f"{feature.value} unsupported: {cap.how}",
                requires=requires,
            )
    if "restart" in sc.tags and isolated is None:
        return ScenarioResult(
            sc.name,
            "skip",
            sc.doc,
            "the harness gave no isolated broker to restart (pass isolated=...)",
            requires=requires,
        )
    ctx = Context(url, options, capabilities, max_message_bytes, isolated)
    started = time.monotonic()
    status: Status = "pass"
    reason = detail = ""
    try:
        async with asyncio.timeout(sc.timeout):
            detail = await sc.fn(ctx) or ""
    except ConformanceFailure as exc:
        status, reason = "fail", str(exc)
    except IsolatedBrokerUnavailable as exc:
        status = "fail" if provisioning_required() else "skip"
        reason = f"no isolated broker to restart: {exc}"
        if status == "fail":
            reason += " (CI=true requires one)"
    except TimeoutError:
        status, reason = "fail", f"did not finish within {sc.timeout}s"
    except Exception as exc:
        status, reason = "fail", f"{type(exc).__name__}: {exc}"
    finally:
        await ctx.aclose()
    return ScenarioResult(
        sc.name, status, sc.doc, reason, detail, round(time.monotonic() - started, 3), requires
    )


async def run_conformance(
    url: str,
    *,
    options: dict[str, Any] | None = None,
    only: Iterable[str] | None = None,
    isolated: IsolatedBrokerFactory | Literal["auto"] | None = "auto",
    progress: Callable[[ScenarioResult], None] | None = None,
) -> SuiteResult:
    """Run the suite (or the scenarios named in ``only``) against ``url``.

    ``isolated`` gives the restart scenario a broker of its own: ``"auto"`` uses
    :mod:`conformance.isolated` for the built-in schemes; a third-party backend
    passes its own factory, or ``None`` (the restart scenario is then skipped
    with that reason).
    """
    options = dict(options or {})
    selected = scenarios()
    if only is not None:
        wanted = set(only)
        unknown = wanted - {s.name for s in selected}
        if unknown:
            raise bus.ConfigurationError(f"unknown scenario(s): {', '.join(sorted(unknown))}")
        selected = [s for s in selected if s.name in wanted]
    if isolated == "auto":
        from conformance.isolated import factory_for

        isolated = factory_for(url)
    started_at = dt.datetime.now(dt.UTC).isoformat()
    started = time.monotonic()
    capabilities, max_bytes, scheme = await _probe(url, options)
    results = []
    for sc in selected:
        result = await run_scenario(
            sc,
            url,
            options=options,
            isolated=isolated,
            capabilities=capabilities,
            max_message_bytes=max_bytes,
        )
        results.append(result)
        if progress is not None:
            progress(result)
    return SuiteResult(
        backend=scheme,
        url=redact_url(url),
        started=started_at,
        duration_s=round(time.monotonic() - started, 3),
        capabilities={
            f.value: {"support": capabilities[f].support.value, "how": capabilities[f].how}
            for f in capabilities
        },
        max_message_bytes=max_bytes,
        scenarios=results,
        environment={
            "python": platform.python_version(),
            "platform": platform.platform(),
            "bus": bus.__version__,
        },
    )
