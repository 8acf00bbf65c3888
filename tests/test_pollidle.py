"""The benchmark's PM QoS request: idle CPUs poll while it is held, halt again after."""

from __future__ import annotations

import glob
import os
import struct
import time
from pathlib import Path

import pytest

from benchmarks.pollidle import PollIdle

# cpuidle states with a non-zero exit latency: the ones a held request rules out
_HALTING = [
    os.path.dirname(path)
    for path in glob.glob("/sys/devices/system/cpu/cpu*/cpuidle/state*/latency")
    if Path(path).read_text().strip() != "0"
]


def _entries() -> int:
    return sum(int(Path(state, "usage").read_text()) for state in _HALTING)


def _can_request() -> bool:
    with PollIdle() as p:
        return p.active


@pytest.mark.skipif(
    not _HALTING or not _can_request(),
    reason="needs cpuidle states to observe and write access to /dev/cpu_dma_latency (root)",
)
def test_idle_cpus_do_not_halt_while_the_request_is_held() -> None:
    before = _entries()
    time.sleep(0.5)
    assert _entries() > before  # idle CPUs halt on their own

    with PollIdle() as p:
        assert p.active
        assert p.status.startswith("on:")
        time.sleep(0.1)  # a CPU halted when the request came stays so until it wakes
        before = _entries()
        time.sleep(0.5)
        held = _entries() - before
    assert not p.active
    # a wake-up already inside a halt may still be counted once per CPU
    assert held <= os.cpu_count()  # type: ignore[operator]

    before = _entries()
    time.sleep(0.5)
    assert _entries() > before  # released: halting again


def test_an_unavailable_request_is_reported_and_the_block_still_runs(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-device"
    driver = tmp_path / "current_driver"
    driver.write_text("haltpoll\n")
    ran = False
    with PollIdle(device=str(missing), cpuidle_driver=str(driver)) as p:
        ran = True
        assert not p.active
    assert ran
    assert p.status.startswith(f"unavailable: cannot open {missing}")


def test_a_kernel_without_cpuidle_driver_is_reported_and_nothing_held(tmp_path: Path) -> None:
    # where no cpuidle driver runs, a PM QoS request is accepted and changes nothing:
    # the status must not claim polling CPUs
    driver = tmp_path / "current_driver"
    driver.write_text("none\n")
    device = tmp_path / "device"
    device.write_bytes(b"")
    with PollIdle(device=str(device), cpuidle_driver=str(driver)) as p:
        assert not p.active
    assert p.status.startswith("unavailable: no cpuidle driver")
    assert device.read_bytes() == b""  # no request written

    driver.write_text("haltpoll\n")  # the same with a driver: the request is made
    with PollIdle(device=str(device), cpuidle_driver=str(driver)) as p:
        assert p.active
        assert p.status.startswith("on:")
    assert device.read_bytes() == struct.pack("=i", 0)


def test_disabled_request_does_nothing() -> None:
    with PollIdle(enabled=False) as p:
        assert not p.active
        assert p.status == "off"
