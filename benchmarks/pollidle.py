"""Keep idle CPUs polling instead of halting while a benchmark runs.

On a virtual machine an idle vCPU halts and hands its physical core back to the
host; the next wake-up (a broker's reply, the latency workload's send timer) then
waits for the host to run the vCPU again. A workload of round trips idles
thousands of times a second, so its figures follow how the host treats halted
guests that minute rather than the broker or the library. On this project's 2-core
VM (cpuidle driver ``haltpoll``) a fixed pure-Python loop timed after
0.1 s sleeps ran anywhere between 1.8 and 4.4 M items/s, and the figures of two
``bus bench --all --profile quick`` runs of the same code moved a median 12-13 %
(90th percentile 33-44 %, three pairs); with idle CPUs polling, 4.7-5.6 %
(18-20 %, three pairs).

:class:`PollIdle` asks the kernel, through Linux's PM QoS interface, for a CPU
wake-up latency of 0 us: it writes 0 to ``/dev/cpu_dma_latency`` and keeps the file
open. While it is open the cpuidle governor only picks idle states with no exit
latency, the ``POLL`` state, in which the kernel's idle task spins on the CPU until
there is work. Nothing else changes: the idle time is still idle time in
``/proc/stat``, no task of ours takes CPU from the client or the broker, and the
request ends when the file is closed, also when the process dies. This is what
low-latency host tunings do (``tuned``'s latency-performance profile holds the same
file); it makes every figure that of a host that does not halt, on both sides of
each ratio alike.

Measured with each state alternating five times (1 KiB messages, one at a time,
awaiting each reply): XADD to the local Redis 7,867 msg/s (6,888-9,530) idle,
14,254 (11,078-14,672) polling; publish with confirm to a RabbitMQ quorum queue
1,424 (1,307-1,518) idle, 2,008 (1,668-2,244) polling. (``SCHED_IDLE`` spinner
processes, the user-space way to keep a CPU from halting, were tried first and
rejected: RabbitMQ's schedulers yield the CPU and each yield gave a spinner its
slice, so the same RabbitMQ publishes fell to 271 msg/s.)

Opening the file needs root (mode 0600) and a kernel with PM QoS, and the request
only steers a cpuidle driver: where the kernel runs none
(``/sys/devices/system/cpu/cpuidle/current_driver`` reads ``none``, as on a
Firecracker guest seen here), an idle CPU halts through the architecture's default
idle whatever the request says. In both cases the run goes on with halting CPUs and
the results say why.
"""

from __future__ import annotations

import os
import struct
from types import TracebackType

__all__ = ["PollIdle"]

DEVICE = "/dev/cpu_dma_latency"
CPUIDLE_DRIVER = "/sys/devices/system/cpu/cpuidle/current_driver"


def _cpuidle_driver(path: str) -> str | None:
    """The kernel's cpuidle driver ("none" when it runs none), None if unknown."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


class PollIdle:
    """``with PollIdle(): ...`` keeps idle CPUs polling while the block runs.

    ``status`` says what it did, for the results: ``"on: ..."``, ``"off"`` when not
    enabled, or ``"unavailable: reason"`` (the block runs either way: a benchmark
    on a machine where this is not possible is still a benchmark, with idle CPUs).
    """

    def __init__(
        self, enabled: bool = True, device: str = DEVICE, cpuidle_driver: str = CPUIDLE_DRIVER
    ) -> None:
        self.enabled = enabled
        self.device = device
        self.cpuidle_driver = cpuidle_driver
        self.status = "off"
        self._fd: int | None = None

    @property
    def active(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> PollIdle:
        if not self.enabled:
            return self
        if _cpuidle_driver(self.cpuidle_driver) == "none":
            # the request would be accepted and change nothing: say so rather than
            # record polling CPUs that halt
            self.status = (
                f"unavailable: no cpuidle driver ({self.cpuidle_driver}: none), "
                "idle CPUs halt through the default idle, which PM QoS does not steer"
            )
            return self
        try:
            fd = os.open(self.device, os.O_WRONLY)
        except OSError as exc:
            self.status = f"unavailable: cannot open {self.device}: {exc.strerror or exc}"
            return self
        try:
            os.write(fd, struct.pack("=i", 0))  # a native 32-bit latency in microseconds
        except OSError as exc:
            os.close(fd)
            self.status = f"unavailable: {self.device} refused the request: {exc.strerror}"
            return self
        self._fd = fd
        self.status = f"on: {self.device} held at 0 us (idle CPUs poll)"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the file withdraws the request
