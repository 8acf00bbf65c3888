"""Broker cost: CPU seconds and peak RSS of a broker running on this machine.

The broker process is found by its listening port (``psutil``); for each workload
a :class:`CostMeter` takes the process's CPU times before and after and samples
its resident memory from a background thread (every 100 ms, so the hot path of
the benchmark is untouched; the process tree is listed only at each end, since
listing it scans every process on the machine). A child the broker starts during
a workload counts towards its CPU, and towards its memory only at the end. Brokers
elsewhere, or processes we may not inspect, simply have no cost figures.

On a shared broker the figures include whatever other clients made the broker do
during the workload; the report says so.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["CostMeter", "CostSample", "find_listener"]


def find_listener(port: int) -> Any | None:
    """The ``psutil.Process`` listening on TCP ``port`` on this machine, or None."""
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                return None
            try:
                return psutil.Process(conn.pid)
            except psutil.Error:
                return None
    return None


def _tree(proc: Any) -> list[Any]:
    """The process and its descendants (a scan of every process: milliseconds)."""
    return [proc, *proc.children(recursive=True)]


def _cpu_seconds(procs: list[Any]) -> float:
    times = procs[0].cpu_times()
    total = float(times.user + times.system)
    for child in procs[1:]:
        try:
            ct = child.cpu_times()
            total += float(ct.user + ct.system)
        except Exception:
            continue  # exited since the tree was read
    return total


def _rss(procs: list[Any]) -> int:
    total = int(procs[0].memory_info().rss)
    for child in procs[1:]:
        try:
            total += int(child.memory_info().rss)
        except Exception:
            continue  # exited since the tree was read
    return total


@dataclass
class CostSample:
    cpu_s: float
    peak_rss_mb: float


def _machine_busy() -> tuple[float, float, float] | None:
    """(busy CPU seconds of the whole machine, CPU seconds of this process, steal
    seconds: time the hypervisor ran something else while this guest's CPUs had work;
    0 where the kernel does not report it)."""
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]

        t = psutil.cpu_times()
        # guest time is already inside user/nice; steal is the hypervisor's, not ours
        busy = sum(
            float(getattr(t, name, 0.0)) for name in ("user", "nice", "system", "irq", "softirq")
        )
        own = psutil.Process().cpu_times()
        return busy, float(own.user + own.system), float(getattr(t, "steal", 0.0))
    except Exception:
        return None


class CostMeter:
    """``with meter: ...`` measures the broker process while the block runs."""

    def __init__(self, proc: Any | None, interval: float = 0.1) -> None:
        self.proc = proc
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu0 = 0.0
        self._peak = 0
        self._procs: list[Any] = []
        self.sample: CostSample | None = None
        #: Share of the machine's CPU (percent of all cores) used by processes other
        #: than this one and the broker while the block ran: the noise indicator.
        self.other_load_pct: float | None = None
        #: Steal time over the block as a share of all cores: CPU the hypervisor
        #: withheld from this virtual machine (other guests on the host). Unlike the
        #: share above, no process here can show it.
        self.steal_pct: float | None = None
        self._machine0: tuple[float, float, float] | None = None
        self._wall0 = 0.0

    def _watch(self) -> None:
        # The tree is read once, before the block: listing a process's children
        # scans all of /proc (~2 ms of Python, GIL held), which every 100 ms
        # stalled the benchmark's event loop enough to lift its latency p99.
        # Reading the RSS of known processes costs ~20 us each.
        procs = self._procs
        while not self._stop.wait(self.interval):
            try:
                self._peak = max(self._peak, _rss(procs))
            except Exception:
                return

    def __enter__(self) -> CostMeter:
        self._machine0 = _machine_busy()
        self._wall0 = time.monotonic()
        if self.proc is None:
            return self
        try:
            self._procs = _tree(self.proc)
            self._cpu0 = _cpu_seconds(self._procs)
            self._peak = _rss(self._procs)
        except Exception:
            self.proc = None
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="bench-cost", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        broker_cpu = self._broker_exit()
        machine1 = _machine_busy()
        wall = time.monotonic() - self._wall0
        # CPU times tick every 10 ms: shorter sections would give meaningless shares
        if self._machine0 is not None and machine1 is not None and wall >= 0.25:
            busy = machine1[0] - self._machine0[0]
            own = machine1[1] - self._machine0[1]
            other = max(0.0, busy - own - (broker_cpu or 0.0))
            steal = max(0.0, machine1[2] - self._machine0[2])
            cores = os.cpu_count() or 1
            self.other_load_pct = round(min(100.0, 100.0 * other / (wall * cores)), 1)
            self.steal_pct = round(min(100.0, 100.0 * steal / (wall * cores)), 1)

    def _broker_exit(self) -> float | None:
        if self.proc is None:
            return None
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            procs = _tree(self.proc)  # children started during the block count too
            cpu = _cpu_seconds(procs) - self._cpu0
            self._peak = max(self._peak, _rss(procs))
        except Exception:
            return None
        self.sample = CostSample(round(cpu, 3), round(self._peak / 2**20, 1))
        return cpu
