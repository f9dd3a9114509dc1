"""Shared helpers of the benchmarks: markdown tables, event-loop and GC stall watch.

The machine description and docs/benchmarks.md's sections are `loadtest.report`'s
(`machine_summary`, `write_section`): benchmarks import loadtest, never the other way.
"""

from __future__ import annotations

import asyncio
import gc
import time


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


class Stalls:
    """Event-loop lag and garbage-collector pauses (max since the last read), for diagnosis."""

    def __init__(self) -> None:
        self.lag_max = 0.0
        self.gc_max = 0.0
        self.gc_total = 0.0
        self.gc_count = 0
        self._gc_start = 0.0
        self._beat = time.perf_counter()
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
            return
        pause = time.perf_counter() - self._gc_start
        self.gc_total += pause
        self.gc_count += 1
        self.gc_max = max(self.gc_max, pause)

    async def watch(self, interval: float = 0.01) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(interval)
            self._beat = time.perf_counter()
            self.lag_max = max(self.lag_max, time.perf_counter() - t - interval)

    def start_watchdog(self, name: str, threshold: float = 0.08) -> None:
        """A thread that prints the main thread's stack when the loop stalls (diagnosis)."""
        import sys
        import threading
        import traceback

        main = threading.main_thread().ident
        self._beat = time.perf_counter()

        def run() -> None:
            reported = 0.0
            while True:
                time.sleep(0.02)
                age = time.perf_counter() - self._beat
                if age > threshold and self._beat != reported:
                    reported = self._beat
                    frame = sys._current_frames().get(main or 0)
                    stack = "".join(traceback.format_stack(frame, limit=12)) if frame else "?"
                    print(
                        f"STALL {name} {time.time():.3f} {age * 1000:.0f} ms in:\n{stack}",
                        file=sys.stderr,
                        flush=True,
                    )

        threading.Thread(target=run, daemon=True).start()

    def read(self) -> dict[str, float]:
        out = {
            "loop_lag_max_ms": self.lag_max * 1000,
            "gc_pause_max_ms": self.gc_max * 1000,
            "gc_total_ms": self.gc_total * 1000,
            "gc_count": self.gc_count,
        }
        self.lag_max = self.gc_max = 0.0
        return out


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`, linear between the closest ranks (numpy's
    default); ValueError on no values."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0-100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
