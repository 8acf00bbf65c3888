"""The ``bus`` command line, run as a user runs it."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bus.cli import capability_block
from conformance.brokers import provisioning_required

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


# -- `bus broker`: cleanup on signals and a vanished reader; OS errors ------------------


def _bus_cmd() -> list[str]:
    exe = shutil.which("bus")
    return [exe] if exe else [sys.executable, "-m", "bus.cli"]


def _processes_under(directory: Path) -> list[int]:
    """Pids of live processes working in ``directory`` (brokers run in their data dir)
    or naming it on their command line (redis-server rewrites its own)."""
    import os

    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(directory)) or str(directory) in cmdline:
            pids.append(int(entry.name))
    return pids


def _assert_cleaned_up(tmp: Path, bound: float = 20.0) -> None:
    """No broker process and no data directory left under ``tmp`` within ``bound``."""
    import time

    deadline = time.monotonic() + bound
    while True:
        left = _processes_under(tmp)
        dirs = sorted(tmp.glob("bus-*"))
        if not left and not dirs:
            return
        assert time.monotonic() < deadline, f"left behind: pids {left}, dirs {dirs}"
        time.sleep(0.1)


def _broker_env(tmp: Path, path_prefix: Path | None = None) -> dict[str, str]:
    import os

    env = dict(os.environ, TMPDIR=str(tmp))  # the broker's data dir goes under tmp
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    return env


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_broker_command_stops_broker_on_signal_after_start(signame: str, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(
        [*_bus_cmd(), "broker", "redis"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_broker_env(tmp),
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("redis://127.0.0.1:"), url
        assert _processes_under(tmp), "no redis-server with its data dir under TMPDIR"
        proc.send_signal(getattr(signal, signame))
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    assert "Traceback" not in proc.stderr.read()
    _assert_cleaned_up(tmp)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_broker_command_stops_broker_on_signal_during_start_up(
    signame: str, tmp_path: Path
) -> None:
    """The signal arrives while the broker boots (a real redis-server behind a wrapper
    that first sleeps): the half-started broker and its data dir are gone."""
    real = shutil.which("redis-server")
    if real is None:
        if provisioning_required():
            pytest.fail("no redis-server binary and CI=true requires it", pytrace=False)
        pytest.skip("no redis-server binary")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "booting"
    wrapper = bin_dir / "redis-server"
    wrapper.write_text(f'#!/bin/sh\ntouch "{marker}"\nsleep 5\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    proc = subprocess.Popen(
        [*_bus_cmd(), "broker", "redis"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_broker_env(tmp, path_prefix=bin_dir),
    )
    try:
        import time

        deadline = time.monotonic() + 30
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the broker never started booting"
            time.sleep(0.02)
        assert _processes_under(tmp), "the booting broker is not running"
        proc.send_signal(getattr(signal, signame))
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert out == "", "no URL is printed for a broker that never came up"
    assert "Traceback" not in err
    _assert_cleaned_up(tmp)


def test_broker_command_with_a_closed_stdout_stops_the_broker(tmp_path: Path) -> None:
    """`bus broker redis | true`: no traceback, the broker is stopped, exit 1."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(
        [*_bus_cmd(), "broker", "redis"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_broker_env(tmp),
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the URL is printed
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    assert b"Traceback" not in err
    assert b"BrokenPipe" not in err
    _assert_cleaned_up(tmp)


def test_broker_url_can_be_read_while_the_broker_runs(tmp_path: Path) -> None:
    """The pattern bus/cli.py documents reads the URL without waiting for the broker
    to exit (`URL=$(bus broker kafka | head -1)` would hang)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = (
        'exec 3< <("$@" broker redis); pid=$!; read -r URL <&3; echo "$URL"; '
        'kill "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done'
    )
    result = subprocess.run(
        ["bash", "-c", script, "bash", *_bus_cmd()],
        capture_output=True,
        text=True,
        timeout=60,
        env=_broker_env(tmp),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("redis://127.0.0.1:"), result.stdout
    _assert_cleaned_up(tmp)


def test_os_errors_are_reported_without_traceback(tmp_path: Path) -> None:
    as_dir = tmp_path / "results"
    as_dir.mkdir()
    result = _bus("conformance", "memory://", "--only", "payload_empty", "--json", str(as_dir))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("bus: error:"), result.stderr
    assert "Traceback" not in result.stderr
    result = _bus("capabilities", "--readme", str(tmp_path / "missing.md"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("bus: error:"), result.stderr
    assert "missing.md" in result.stderr
    assert "Traceback" not in result.stderr


def test_capabilities_show_a_backend_without_its_client_library() -> None:
    code = (
        "import sys; sys.modules['aiokafka'] = None\n"  # aiokafka is not installed
        "from bus.cli import main; sys.exit(main(['capabilities']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0]
    assert header.startswith("| feature | memory | redis | rabbitmq | nats |"), header
    assert "kafka" not in header
    assert "- **kafka**: not installed" in result.stdout
    assert "bus-messaging[kafka]" in result.stdout


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--bus-url", "memory://", "--bus-scenario", "nosuch"], "no scenario named nosuch"),
        ([], "needs --bus-url URL"),
    ],
)
def test_the_pytest_plugin_refuses_what_would_select_nothing(args: list[str], said: str) -> None:
    """A mistyped scenario name, or the shipped suite without --bus-url, is a usage
    error (the typo ran nothing and passed; the missing URL errored 43 times alike)."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--pyargs",
            "conformance",
            "-q",
            "-p",
            "no:cacheprovider",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1] / "tests",
    )
    assert run.returncode != 0, run.stdout
    assert said in run.stdout + run.stderr
