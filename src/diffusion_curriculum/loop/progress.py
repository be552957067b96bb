"""What a person watching a run sees: the progress display and the throughput.  Timing readings vary
from run to run, so they go to the display and the live log only, never into a checkpoint or an output."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm.auto import tqdm

PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class Progress:
    """A tqdm bar on a terminal; elsewhere (a log file, a pipe) plain lines, at most one per
    ``plain_interval`` seconds at log rows and one at the end, so that log files hold no ``\\r`` frames.

    ``stream`` defaults to ``sys.stderr`` at construction; ``enabled=False`` shows nothing."""

    def __init__(
        self,
        total: int,
        initial: int = 0,
        *,
        enabled: bool = True,
        desc: str = "train",
        stream: TextIO | None = None,
        plain_interval: float = 30.0,
    ):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        isatty = getattr(self.stream, "isatty", None)
        self.plain = enabled and not (callable(isatty) and isatty())
        self.total, self.initial, self.n, self.desc = total, initial, initial, desc
        self.plain_interval, self.postfix = plain_interval, ""
        self.started = self.last_line = time.monotonic()
        self.bar = None
        if enabled and not self.plain:
            self.bar = tqdm(total=total, initial=initial, desc=desc, file=self.stream, mininterval=2.0)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)

    def log_row(self, loss: float, stage: int) -> None:
        """Show a log row's loss and stage (and, in plain mode, write a line when one is due)."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", stage=stage, refresh=False)
        elif self.plain:
            self.postfix = f"loss={loss:.4f}, stage={stage}"
            if time.monotonic() - self.last_line >= self.plain_interval:
                self._line()

    def _line(self) -> None:
        elapsed = time.monotonic() - self.started
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else None
        line = tqdm.format_meter(
            self.n,
            self.total,
            elapsed,
            prefix=self.desc,
            rate=rate,
            initial=self.initial,
            bar_format=PLAIN_FORMAT,
            postfix=self.postfix,
        )
        print(line, file=self.stream, flush=True)
        self.last_line = time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.plain and self.n > self.initial:
            self._line()
        self.plain = False  # closed: nothing more is written


class Rate:
    """Steps per second between successive readings (the first since construction)."""

    def __init__(self, step: int):
        self.step, self.time = step, time.perf_counter()

    def __call__(self, step: int) -> float:
        now = time.perf_counter()
        rate = (step - self.step) / (now - self.time) if now > self.time else float("nan")
        self.step, self.time = step, now
        return rate
