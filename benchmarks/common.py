"""Shared helpers of the benchmarks: the machine description and docs/benchmarks.md sections."""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import re
import time
from importlib import metadata
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Every number below was produced by the command written next to it, on the machine described
with it; each section is rewritten in place by its command and says what it measures.

- `benchmarks/micro.py`: timeit of the hot path (header rewrite, packet cache, publication
  fan-out, SRTP, RTCP parsing), no I/O.
- `benchmarks/forwarding.py`: N consultations of pre-encoded media through one media-server
  process (`benchmarks/server.py`, a Node behind a minimal local endpoint) pinned to CPU 0,
  with the cheap generator (`loadtest/`) pinned to CPU 1; server CPU per forwarded packet,
  per-stream loss, delay and gaps, generator cost. `--sweep` searches the largest N with loss
  under 1% on every stream. `--profile FILE` adds a py-spy profile of the server.
- `benchmarks/profile_summary.py FILE`: self/inclusive shares of a py-spy raw profile.
- `loadtest compare --docs` (docs/loadtest.md): the macro comparison, consultations through
  the real signaling against our node and against Janus's VideoRoom, each in a network
  namespace pinned to CPU 0, generator on CPU 1 (section "Load test: ours against Janus").

Target (issue 2): at most 100 us of server CPU per forwarded packet and at least 25
consultations with loss under 1%, server on one core. CPU per packet falls as load rises
(more datagrams per event-loop wake-up), so compare runs at the same N. The machine these
ran on is shared with other work: each forwarding row reports the CPU other processes used
during its window, and rows taken under such load have worse delay and gaps.
"""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def machine() -> str:
    return (
        f"{os.cpu_count()} CPUs ({cpu_model()}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, aiortc {version('aiortc')}, "
        f"aioice {version('aioice')}, pylibsrtp {version('pylibsrtp')}, "
        f"uvloop {version('uvloop')}"
    )


def write_section(name: str, body: str, path: Path = DOCS) -> None:
    """Replace the section delimited by `<!-- name:begin -->`/`<!-- name:end -->`, or append."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


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
