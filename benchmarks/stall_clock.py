"""A wall clock that leaves out stalls: spans in which this process got no CPU at all (paused with
SIGSTOP by someone else's quiet-machine measurement, or starved on a shared machine). A daemon thread
ticks every `tick` seconds; any gap longer than `threshold` counts as stalled beyond its tick. Timed
sections on a shared machine then measure the engine, not the wait."""

from __future__ import annotations

import threading
import time


class StallClock:
    def __init__(self, tick: float = 0.02, threshold: float = 0.25) -> None:
        if not 0 < tick < threshold:
            raise ValueError(f"need 0 < tick < threshold, got {tick}, {threshold}")
        self.tick = tick
        self.threshold = threshold
        self._stalled = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-clock", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.wait(self.tick):
            now = time.perf_counter()
            gap = now - last
            if gap > self.threshold:
                with self._lock:
                    self._stalled += gap - self.tick
            last = now

    def now(self) -> float:
        """Seconds since an arbitrary origin, stalls excluded."""
        with self._lock:
            return time.perf_counter() - self._stalled

    @property
    def stalled(self) -> float:
        with self._lock:
            return self._stalled

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
