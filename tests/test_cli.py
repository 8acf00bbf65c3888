"""The ``bus`` command line, run as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from bus.cli import capability_block

ROOT = Path(__file__).resolve().parent.parent


def _bus(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("bus")
    cmd = [exe] if exe else [sys.executable, "-m", "bus.cli"]
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_conformance_cli_prints_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = _bus(
        "conformance", "memory://", "--only", "nack_redelivers", "--only", "payload_empty",
        "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "nack_redelivers" in result.stdout
    assert "PASS" in result.stdout
    assert f"written to {out}" in result.stdout
    data = json.loads(out.read_text())
    assert data["summary"] == {"pass": 2, "fail": 0, "skip": 0}
    assert {s["name"] for s in data["scenarios"]} == {"nack_redelivers", "payload_empty"}
    assert data["capabilities"]["priority"]["support"] == "native"


def test_unknown_scheme_exits_2_with_known_schemes() -> None:
    result = _bus("conformance", "foo://x")
    assert result.returncode == 2
    assert "known schemes" in result.stderr
    assert "memory" in result.stderr


def test_unknown_scenario_is_an_error() -> None:
    result = _bus("conformance", "memory://", "--only", "no_such_scenario")
    assert result.returncode == 2
    assert "no_such_scenario" in result.stderr


def test_readme_capability_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    assert capability_block() in readme, (
        "README capability table is out of date: run `bus capabilities --readme README.md`"
    )


def test_pytest_plugin_runs_the_suite_from_any_directory(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", "--pyargs", "conformance", "-q",
            "-p", "no:cacheprovider", "--bus-url", "memory://",
            "--bus-scenario", "payload_empty", "--bus-scenario", "priority_order",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_broker_command_serves_a_private_broker_until_terminated() -> None:
    """`bus broker nats` prints a URL that a Bus can use; SIGTERM stops the broker."""
    import asyncio
    import signal
    import socket

    import bus

    exe = shutil.which("bus")
    cmd = [exe] if exe else [sys.executable, "-m", "bus.cli"]
    proc = subprocess.Popen([*cmd, "broker", "nats"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("nats://127.0.0.1:"), url
        assert url != "nats://127.0.0.1:4222"  # a private broker, not the shared service

        async def round_trip() -> bytes:
            async with bus.connect(url) as b:
                topic = "cli.broker.check"
                await b.declare(topic, groups=["g"])
                await b.publish(topic, b"hello")
                async with b.subscribe(topic, group="g") as sub:
                    d = await sub.receive(timeout=10)
                    await d.ack()
                    return d.message.data

        assert asyncio.run(round_trip()) == b"hello"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "broker still listening after SIGTERM"
