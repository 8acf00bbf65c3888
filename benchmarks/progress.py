"""Progress on stderr: one line per workload (rewritten in place on a terminal,
appended otherwise), never touched from a per-message hot path."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = time.monotonic()
        self._label = ""
        self._step_started = self.started

    def _bar(self) -> str:
        width = 20
        filled = int(width * self.done / self.total)
        return "#" * filled + "." * (width - filled)

    def _prefix(self) -> str:
        elapsed = time.monotonic() - self.started
        return f"[{self._bar()}] {self.done:>3}/{self.total} {elapsed:6.0f}s"

    def start(self, label: str) -> None:
        """A workload begins."""
        self._label = label
        self._step_started = time.monotonic()
        self.detail("")

    def detail(self, text: str) -> None:
        """What the current workload is doing (run 2/4, rate 2000/s, ...)."""
        if not self.enabled:
            return
        line = f"{self._prefix()}  {self._label}  {text}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line[:200])
            self.stream.flush()

    def finish(self, summary: str) -> None:
        """The workload ended: a permanent line with its headline figure."""
        self.done += 1
        if not self.enabled:
            return
        took = time.monotonic() - self._step_started
        line = f"{self._prefix()}  {self._label}  {summary}  ({took:.1f}s)"
        if self.tty:
            self.stream.write("\r\x1b[2K")
        self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\x1b[2K")
        self.stream.write(f"  {text}\n")
        self.stream.flush()
