"""Processes of a load test: CPU and memory from /proc, child processes bounded in time."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import time
from typing import IO

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (a node and its media workers), from /proc."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
    return out


def parse_cpus(text: str) -> tuple[int, ...] | None:
    """A taskset-style CPU list ("0", "0-3", "0,2,4-5") as a sorted tuple; "-1" or "" is None
    (no pinning). ValueError on anything else."""
    text = text.strip()
    if text in ("", "-1"):
        return None
    cpus: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"not a CPU list: {text!r} (e.g. 0, 0-3, 0,2,4-5; -1: no pinning)")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise ValueError(f"not a CPU list: {text!r} ({part} is empty)")
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def cpu_label(cpus: tuple[int, ...]) -> str:
    """ "cpu0-3" for a contiguous set, "cpu0,2,5" otherwise, "cpu1" for one."""
    if len(cpus) > 1 and cpus == tuple(range(cpus[0], cpus[-1] + 1)):
        return f"cpu{cpus[0]}-{cpus[-1]}"
    return "cpu" + ",".join(str(c) for c in cpus)


def taskset(cpus: tuple[int, ...] | None) -> list[str]:
    """The command prefix that pins a process (and its children) to `cpus`."""
    return ["taskset", "-c", ",".join(str(c) for c in cpus)] if cpus else []


def cpu_jiffies() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy, steal) jiffies from /proc/stat (busy: user+nice+system+irq+softirq)."""
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if name.startswith("cpu") and name != "cpu":
                v = [int(x) for x in vals]
                out[int(name[3:])] = (v[0] + v[1] + v[2] + v[5] + v[6], v[7])
    return out


def read_line(stream: IO[str], timeout: float) -> str:
    """One line from a child's stdout, or TimeoutError / RuntimeError (it exited)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("child did not answer in time")
        ready, _, _ = select.select([stream], [], [], left)
        if ready:
            line = stream.readline()
            if not line:
                raise RuntimeError("child exited")
            return line


class Children:
    """Child processes, killed (by their own pid) when the run ends in any way."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, args: list[str], *, stderr: IO[str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            bufsize=1,
        )
        self.procs.append(proc)
        return proc

    def stop(self, grace: float = 10) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                if proc.stdin:
                    proc.stdin.close()
        deadline = time.monotonic() + grace
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.procs = []
