"""A step watchdog: one warning when training stops making progress.

A rank that died or stalled leaves the others waiting inside a collective until
runtime.collective_timeout_s runs out (10 minutes by default) with nothing on the console.
:class:`StepWatchdog` says so early: a daemon thread that prints ONE line per stall when no
step finished for ``max(factor x average step time, min_s)``. It only warns; the collective
timeout is what ends the run.

    wd = StepWatchdog(rt.watchdog_factor, log.message,
                      timeout_s=rt.collective_timeout_s).start()
    ...  wd.beat(step)  # after every finished step
    wd.close()
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def _secs(s: float) -> str:
    return f"{s:.0f}" if s >= 10 else f"{s:.1f}"


class StepWatchdog:
    """Warns (through ``print_fn``, from its own thread) when steps stop finishing.

    The average step time is an exponential average (weight 0.1, like the trainer's ETA) of
    the intervals between beats (each capped at the warning threshold), seeded by the time
    from :meth:`start` to the first beat;
    before the first beat nothing is timed (start-up and the first step's compilation vary
    too much), so a rank stalled in step one is left to the collective timeout.
    """

    def __init__(
        self,
        factor: float = 10.0,
        print_fn: Callable[[str], None] = print,
        *,
        timeout_s: float | None = None,
        min_s: float = 60.0,
        poll_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if factor <= 0 or min_s < 0:
            raise ValueError(f"factor must be > 0 and min_s >= 0, got {factor}, {min_s}")
        self.factor, self.print_fn, self.timeout_s, self.min_s = factor, print_fn, timeout_s, min_s
        self.poll_s = poll_s if poll_s is not None else max(0.01, min(1.0, min_s / 4))
        self.clock = clock
        self.warnings = 0  # warnings printed so far (tests, summaries)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t_start = self._t_last = 0.0
        self._avg: float | None = None
        self._step: int | None = None
        self._warned = False

    # ------------------------------------------------------------------ trainer side
    def start(self) -> StepWatchdog:
        """Start the thread (once); returns self."""
        if self._thread is None:
            self._t_start = self._t_last = self.clock()
            self._thread = threading.Thread(
                target=self._watch, name="cgpt-step-watchdog", daemon=True
            )
            self._thread.start()
        return self

    def beat(self, step: int) -> None:
        """Record that ``step`` just finished."""
        now = self.clock()
        with self._lock:
            dt = now - self._t_last
            if self._avg is None:
                self._avg = dt
            else:  # a stall counts as at most one threshold: it cannot hide the next one
                dt = min(dt, max(self.factor * self._avg, self.min_s))
                self._avg = 0.9 * self._avg + 0.1 * dt
            self._t_last, self._step, self._warned = now, step, False

    def close(self) -> None:
        """Stop the thread (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> StepWatchdog:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the thread
    def threshold(self) -> float | None:
        """Seconds without a beat before the warning; None before the first beat."""
        with self._lock:
            return None if self._avg is None else max(self.factor * self._avg, self.min_s)

    def check(self) -> str | None:
        """One look (what the thread does every poll_s): the warning, if one is due now."""
        with self._lock:
            if self._avg is None or self._warned:
                return None
            waited = self.clock() - self._t_last
            if waited < max(self.factor * self._avg, self.min_s):
                return None
            self._warned = True
            avg, step = self._avg, self._step
        msg = (
            f"no step finished for {_secs(waited)} s (average {avg:.3g} s per step) after "
            f"step {step}: a rank may be stalled or dead"
        )
        if self.timeout_s is not None:
            msg += f"; collectives time out after runtime.collective_timeout_s={self.timeout_s:g}s"
        return msg

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            msg = self.check()
            if msg is not None:
                self.warnings += 1
                try:
                    self.print_fn(msg)
                except Exception:  # a closed console must never kill the thread's process
                    pass
