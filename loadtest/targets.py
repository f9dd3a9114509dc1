"""The SFU under test: our node or Janus, started in a network namespace, or a node at a URL.

Both servers run alike: inside a namespace joined to the host by a veth pair (the generator
stays outside, on the host side of the pair), pinned to a set of CPUs with `taskset` (our node
with `--workers N` media worker processes, Janus with one event loop per CPU). Janus never
gathers loopback candidates, hence the namespace; our node gets the same treatment so that
the comparison is fair. `ExternalTarget` is a node someone else runs (`loadtest run --url`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .janus import HTTP_PORT, wait_ready, write_config
from .netns import VethNS, netns_available
from .procs import proc_cpu, proc_rss_mb, process_tree, taskset

NODE_PORT = 8080


class TargetError(Exception):
    """The target cannot be started or reached (a clear message for the operator)."""


class Target:
    kind = "ours"
    url = ""  # what the generator talks to
    ice_host = "127.0.0.1"  # the generator's media address
    api_key = ""
    token_secret = ""
    metrics_url: str | None = None

    def pids(self) -> list[int]:
        return []

    def alive(self) -> str | None:
        """None while running, else why not."""
        return None

    def cpu_s(self) -> float | None:
        return self._sum_over_pids(proc_cpu)

    def rss_mb(self) -> float | None:
        return self._sum_over_pids(proc_rss_mb)

    def _sum_over_pids(self, read: Callable[[int], float]) -> float | None:
        """`read` summed over the target's processes (one that has gone counts 0), or None."""
        pids = self.pids()
        if not pids:
            return None
        total = 0.0
        for pid in pids:
            with contextlib.suppress(OSError):
                total += read(pid)
        return total

    def close(self) -> None:
        pass

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ExternalTarget(Target):
    """A node at a URL: no process of ours (CPU and memory only with `node_pid`)."""

    def __init__(self, url: str, api_key: str, token_secret: str, node_pid: int | None) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.token_secret = token_secret
        self.metrics_url = self.url + "/metrics"
        self.node_pid = node_pid
        self.ice_host = _local_address_towards(self.url)
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
                resp.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise TargetError(f"cannot reach the node at {self.url}: {exc}") from exc

    def pids(self) -> list[int]:
        return process_tree(self.node_pid) if self.node_pid else []

    def alive(self) -> str | None:
        if not self.node_pid:
            return None
        try:
            state = Path(f"/proc/{self.node_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            state = "X"
        if state in ("Z", "X"):
            return f"the node's process {self.node_pid} exited"
        return None


def _local_address_towards(url: str) -> str:
    """The generator's own address on the route to the node (UDP connect sends nothing)."""
    host = urllib.parse.urlsplit(url).hostname or "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((socket.gethostbyname(host), 9))
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


class _Managed(Target):
    """A server process inside a VethNS, pinned to `cpus`, logging to a file."""

    def __init__(self, cpus: tuple[int, ...] | None, log_dir: Path) -> None:
        ok, why = netns_available()
        if not ok:
            raise TargetError(f"cannot create the network namespace: {why}")
        self.cpus = cpus
        self.log_path = log_dir / f"{self.kind}.log"
        self.ns = VethNS().create()
        self.ice_host = self.ns.outside
        self.proc: subprocess.Popen[Any] | None = None
        self._log: IO[bytes] | None = None

    def _start(self, args: list[str]) -> None:
        self._log = self.log_path.open("wb")
        self.proc = self.ns.popen(
            [*taskset(self.cpus), *args], stdout=self._log, stderr=subprocess.STDOUT
        )

    def pids(self) -> list[int]:
        """The server and its children (our node's media workers)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return process_tree(self.proc.pid)

    def alive(self) -> str | None:
        if self.proc is None:
            return "not started"
        code = self.proc.poll()
        if code is not None:
            return f"the {self.kind} server exited (code {code}; log: {self.log_path})"
        return None

    def close(self) -> None:
        self.ns.close()
        if self._log is not None:
            self._log.close()
            self._log = None


class OursTarget(_Managed):
    kind = "ours"

    def __init__(self, cpus: tuple[int, ...] | None, log_dir: Path, workers: int = 0) -> None:
        super().__init__(cpus, log_dir)
        try:
            self.api_key = secrets.token_hex(16)  # hex: never starts with "-" (argv)
            self.token_secret = secrets.token_hex(32)
            inside = self.ns.inside
            self._start(
                [
                    *(sys.executable, "-m", "signaling", "run", "--host", inside),
                    *("--port", str(NODE_PORT), "--ice-host", inside),
                    *("--rtc-ports", "40000-49999", "--log-level", "WARNING"),
                    *("--api-key", self.api_key, "--token-secret", self.token_secret),
                    *("--workers", str(workers)),
                ]
            )
            self.url = f"http://{inside}:{NODE_PORT}"
            self.metrics_url = self.url + "/metrics"
            self._wait_ready(30)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self.metrics_url is not None
        while True:
            why = self.alive()
            if why:
                raise TargetError(why)
            try:
                with urllib.request.urlopen(self.metrics_url, timeout=2) as resp:
                    resp.read()
                return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TargetError(f"our node did not answer in {timeout:.0f} s ({self.log_path})")
            time.sleep(0.2)


class JanusTarget(_Managed):
    kind = "janus"

    def __init__(self, cpus: tuple[int, ...] | None, log_dir: Path) -> None:
        if shutil.which("janus") is None:
            raise TargetError("Janus is not installed: `make janus` (apt-get install janus)")
        super().__init__(cpus, log_dir)
        self._tmp = tempfile.mkdtemp(prefix="loadtest-janus-")
        try:
            folder = Path(self._tmp)
            loops = len(cpus) if cpus else 1  # as many media loops as CPUs, like our workers
            config = write_config(folder, address=self.ns.inside, event_loops=loops)
            self._start(["janus", "-C", str(config), "-F", str(folder), "-o"])
            self.url = f"http://{self.ns.inside}:{HTTP_PORT}/janus"
            asyncio.run(wait_ready(self.url, 30))
            why = self.alive()
            if why:
                raise TargetError(why)
        except TimeoutError as exc:
            self.close()
            raise TargetError(f"{exc} (log: {self.log_path})") from exc
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        super().close()
        shutil.rmtree(self._tmp, ignore_errors=True)


def start_target(
    kind: str, cpus: tuple[int, ...] | None, log_dir: Path, workers: int = 0
) -> Target:
    """Our node (with `workers` media worker processes; 0: in-process) or Janus, pinned to
    `cpus` (None: not pinned)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    if kind == "janus":
        return JanusTarget(cpus, log_dir)
    return OursTarget(cpus, log_dir, workers)


def scrape(url: str, timeout: float = 3) -> dict[str, float]:
    """A Prometheus text exposition, summed per metric name (labels dropped)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (ValueError, IndexError):
            continue
        out[name] = out.get(name, 0.0) + value
    return out


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))
