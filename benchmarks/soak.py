"""Soak benchmark: steady consultations with join/leave churn; does the node's footprint grow?

    .venv/bin/python -m benchmarks.soak --duration 1800 --write      # the 30-minute run
    .venv/bin/python -m benchmarks.soak --duration 150 --warmup 45   # a quick check

A real node (`python -m signaling run --workers 0` on 127.0.0.1, its own process; `--workers N` for
N media workers) and, in this process,
the cheap generator's peers (`loadtest.generator.SyntheticPeer`: aiortc negotiation, ICE and
DTLS, pre-encoded VP8 + Opus, never decoding) driven through the real signaling
(`loadtest.worker.LoadClient`). Each of N rooms (created through the HTTP API, waiting room
on) has a doctor who stays for the whole run, publishing audio and video; its second place
churns: a patient joins, knocks, is admitted, publishes, receives and sends media for
`--hold` seconds, sends `leave`, and the next patient joins after `--gap` seconds. So every
join is followed by a departure while the doctor stays: what a departed publisher leaves
behind (subscriptions, transports, packet caches, tasks) accumulates in the node.

Every `--interval` seconds: the node's RSS (/proc/PID/status), open file descriptors
(/proc/PID/fd) and event-loop tasks (the `mediaserver_asyncio_tasks` gauge on /metrics), and
the joins so far. After `--warmup` seconds, growth per 1,000 joins is the least-squares slope
of each against the join count; target (issue 11): RSS <= 1 MB per 1,000 joins. Results are
printed and, with `--write`, written to docs/benchmarks.md (section "soak") with the command
and the machine. The node is killed on exit or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import aiohttp

from benchmarks.common import table
from loadtest.generator import Pacer, SyntheticPeer
from loadtest.media import load_media
from loadtest.procs import proc_rss_mb
from loadtest.report import machine_summary, write_section
from loadtest.worker import PUBLISH, LoadClient
from mediaserver.config import IceConfig
from mediaserver.rtc.ice import PortAllocator
from signaling.auth import encode_token

TARGET_MB_PER_1000 = 1.0
MIN_JOINS = 500  # after the warm-up, for a verdict
STEP_TIMEOUT_S = 30.0


@dataclass
class Sample:
    t: float  # seconds since the start
    joins: int
    rss_mb: float
    fds: int
    tasks: float | None


@dataclass
class Stats:
    joins: int = 0  # patient joins that got as far as media flowing
    failures: int = 0
    last_error: str = ""
    samples: list[Sample] = field(default_factory=list)
    final: Sample | None = None  # after the run, every patient gone
    m_lines: int = 0  # most transceivers a doctor's peer connection had


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys against xs (None with fewer than 2 distinct xs)."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


class Node:
    """`python -m signaling run` on loopback, logging to a file; killed on close."""

    def __init__(self, log_path: str, workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = secrets.token_hex(32)
        self.token_secret = secrets.token_hex(32)
        self.log = open(log_path, "wb")  # closed in close()
        args = [
            *(sys.executable, "-m", "signaling", "run", "--host", "127.0.0.1"),
            *("--port", str(self.port), "--ice-host", "127.0.0.1", "--log-level", "WARNING"),
            *("--workers", str(workers)),
        ]
        env = os.environ | {  # secrets in the environment, not in `ps`
            "CONSULT_API_KEY": self.api_key,
            "CONSULT_TOKEN_SECRET": self.token_secret,
        }
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the node exited with {self.proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(self.url + "/metrics", headers=self.headers) as r:
                    if r.status < 500:  # any answer: listening (metrics may be elsewhere)
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node did not answer in {timeout:.0f} s")
            await asyncio.sleep(0.3)

    def token(self, room: str, role: str, sub: str) -> str:
        return encode_token(
            secret=self.token_secret, room=room, sub=sub, role=role, name=role, ttl_s=24 * 3600
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Soak:
    def __init__(self, args: argparse.Namespace, node: Node, http: aiohttp.ClientSession) -> None:
        self.args = args
        self.node = node
        self.http = http
        self.video, self.audio = load_media()
        self.pacer = Pacer()
        self.ports = PortAllocator(IceConfig(host_addresses=("127.0.0.1",)))
        self.stats = Stats()
        self.run_id = secrets.token_hex(3)
        self.start = time.monotonic()
        self.deadline = self.start + args.duration
        self.cleanup: list[tuple[LoadClient, SyntheticPeer]] = []

    def peer(self, name: str) -> tuple[SyntheticPeer, LoadClient]:
        peer = SyntheticPeer(
            name, video=self.video, audio=self.audio, pacer=self.pacer, ports=self.ports
        )
        return peer, LoadClient(self.node.url, peer, self.http)

    async def flowing(self, peer: SyntheticPeer) -> None:
        """Until this peer receives both kinds from the other participant."""
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while not all(k in peer.receiving and peer.receiving[k].received for k in PUBLISH_KINDS):
            if time.monotonic() > deadline:
                raise TimeoutError("media did not flow both ways")
            await asyncio.sleep(0.05)

    async def room(self, i: int) -> None:
        room = f"soak-{self.run_id}-{i}"
        async with self.http.post(
            self.node.url + "/api/v1/rooms",
            json={"id": room, "waiting_room": True, "max_participants": 2},
            headers=self.node.headers,
        ) as r:
            if r.status != 201:
                raise RuntimeError(f"creating a room: HTTP {r.status} {await r.text()}")
        doc_peer, doctor = self.peer(f"{i}-doctor")
        self.cleanup.append((doctor, doc_peer))
        await doctor.connect(self.node.token(room, "doctor", f"soak-doctor-{i}"))
        doctor._ensure_pc()
        await doctor.request("publish", tracks=PUBLISH)
        k = 0
        while time.monotonic() < self.deadline:
            k += 1
            try:
                await self.visit(room, doctor, f"{i}-{k}")
            except Exception as exc:  # counted and reported; the churn goes on
                self.stats.failures += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"[:200]
            await asyncio.sleep(self.args.gap)

    async def visit(self, room: str, doctor: LoadClient, name: str) -> None:
        """One patient: join, be admitted, publish, exchange media, hold, leave."""
        peer, patient = self.peer(name)
        try:
            joined = await asyncio.wait_for(
                patient.connect(self.node.token(room, "patient", f"soak-patient-{name}")),
                STEP_TIMEOUT_S,
            )
            await doctor.admit(joined["participant"]["id"])
            await patient.wait_state("admitted", timeout_s=STEP_TIMEOUT_S)
            patient._ensure_pc()
            await patient.request("publish", tracks=PUBLISH)
            await self.flowing(peer)
            self.stats.joins += 1
            await asyncio.sleep(min(self.args.hold, max(0.0, self.deadline - time.monotonic())))
            await asyncio.wait_for(patient.leave(), STEP_TIMEOUT_S)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(patient.close(), 10)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(peer.close(), 10)

    async def sample(self) -> Sample:
        tasks = None
        with contextlib.suppress(aiohttp.ClientError, OSError, ValueError, TimeoutError):
            async with self.http.get(
                self.node.url + "/metrics",
                headers=self.node.headers,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as r:
                if r.status == 200:
                    tasks = metric(await r.text(), "mediaserver_asyncio_tasks")
        pid = self.node.proc.pid
        return Sample(
            t=time.monotonic() - self.start,
            joins=self.stats.joins,
            rss_mb=proc_rss_mb(pid),
            fds=open_fds(pid),
            tasks=tasks,
        )

    async def sampler(self) -> None:
        while time.monotonic() < self.deadline:
            for client, _ in self.cleanup:  # the doctors: does their SDP grow with the churn?
                if client.pc is not None:
                    self.stats.m_lines = max(self.stats.m_lines, len(client.pc.getTransceivers()))
            if self.node.proc.poll() is not None:
                raise RuntimeError(f"the node exited with {self.node.proc.returncode}")
            s = await self.sample()
            self.stats.samples.append(s)
            tasks = "-" if s.tasks is None else f"{s.tasks:.0f}"
            print(
                f"  t={s.t:6.0f} s  joins={s.joins:5d}  rss={s.rss_mb:7.1f} MB  "
                f"fds={s.fds:4d}  tasks={tasks:>5}  failures={self.stats.failures}",
                flush=True,
            )
            await asyncio.sleep(self.args.interval)

    async def run(self) -> None:
        pacer = asyncio.create_task(self.pacer.run(self.deadline + 60))
        rooms = [asyncio.create_task(self.room(i)) for i in range(self.args.consultations)]
        try:
            await self.sampler()
            await asyncio.gather(*rooms)
        finally:
            for task in rooms:
                task.cancel()
            await asyncio.gather(*rooms, return_exceptions=True)
            for client, peer in self.cleanup:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 10)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(peer.close(), 10)
            pacer.cancel()
            await asyncio.gather(pacer, return_exceptions=True)


PUBLISH_KINDS = tuple(t["kind"] for t in PUBLISH)


def growth(samples: list[Sample], warmup: float) -> dict[str, float | None]:
    """Per 1,000 joins after the warm-up: slopes of RSS (MB), fds and tasks."""
    warm = [s for s in samples if s.t >= warmup]
    joins = [float(s.joins) for s in warm]

    def per_1000(values: list[float], xs: list[float]) -> float | None:
        k = slope(xs, values)
        return None if k is None else k * 1000

    with_tasks = [s for s in warm if s.tasks is not None]
    return {
        "rss_mb": per_1000([s.rss_mb for s in warm], joins),
        "fds": per_1000([float(s.fds) for s in warm], joins),
        "tasks": per_1000(
            [float(s.tasks or 0) for s in with_tasks], [float(s.joins) for s in with_tasks]
        ),
        "joins": (warm[-1].joins - warm[0].joins) if len(warm) >= 2 else 0,
    }


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def report(args: argparse.Namespace, stats: Stats, command: str, elapsed: float) -> str:
    g = growth(stats.samples, args.warmup)
    rss = g["rss_mb"]
    verdict = (
        f"none: {g['joins']:.0f} joins after the warm-up, fewer than {MIN_JOINS} (the slope "
        "above is a trend only)"
        if rss is None or (g["joins"] or 0) < MIN_JOINS
        else (
            f"PASS (<= {TARGET_MB_PER_1000:g} MB per 1,000 joins)"
            if rss <= TARGET_MB_PER_1000
            else f"FAIL (target <= {TARGET_MB_PER_1000:g} MB per 1,000 joins)"
        )
    )
    summary = table(
        ["", "RSS (MB)", "open fds", "event-loop tasks"],
        [
            [
                "growth per 1,000 joins after the warm-up",
                fmt(g["rss_mb"]),
                fmt(g["fds"]),
                fmt(g["tasks"]),
            ],
        ],
    )
    # Over time: about 12 rows, evenly spaced.
    samples = stats.samples
    step = max(1, len(samples) // 12)
    picked = samples[::step] + ([samples[-1]] if samples and (len(samples) - 1) % step else [])
    picked += [stats.final] if stats.final is not None else []
    over_time = table(
        ["t (s)", "joins", "RSS (MB)", "open fds", "tasks"],
        [
            [
                f"{s.t:.0f}",
                str(s.joins),
                f"{s.rss_mb:.1f}",
                str(s.fds),
                "-" if s.tasks is None else f"{s.tasks:.0f}",
            ]
            for s in picked
        ],
    )
    if stats.final is not None:
        over_time += "\n\nLast row: after the run, every patient gone, the doctors still in."
    rate = stats.joins / elapsed if elapsed > 0 else 0.0
    return (
        "## Soak: steady consultations with join/leave churn\n\n"
        f"Command: `{command}`\n\n"
        f"Machine: {machine_summary()}; node and generator share it (and whatever else ran).\n\n"
        f"The node with {args.workers} media workers (0: the media in its own process). "
        f"{args.consultations} rooms, each a doctor who stays (publishing audio + video) and a "
        f"patient place that churns (join, knock, admit, publish, media both ways for "
        f"{args.hold:g} s, leave, {args.gap:g} s pause); {elapsed:.0f} s, {stats.joins} patient "
        f"joins ({rate:.2f}/s), {stats.failures} failed visits"
        + (f" (last: {stats.last_error})" if stats.last_error else "")
        + f". Growth: least-squares slope against the join count over the samples taken after "
        f"the {args.warmup:g} s warm-up ({g['joins']} joins). A doctor's peer connection had "
        f"at most {stats.m_lines} transceivers.\n\n"
        f"{summary}\n\nVerdict: {verdict}.\n\n{over_time}\n"
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    p.add_argument("--consultations", type=int, default=5, help="steady rooms (5)")
    p.add_argument("--duration", type=float, default=1800.0, help="seconds (1800)")
    p.add_argument("--warmup", type=float, default=300.0, help="seconds not measured (300)")
    p.add_argument("--hold", type=float, default=3.0, help="seconds a patient stays (3)")
    p.add_argument("--gap", type=float, default=0.5, help="seconds before the next patient")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples (5)")
    p.add_argument(
        "--workers", type=int, default=0, help="the node's media workers (0, as recorded)"
    )
    p.add_argument("--log", default="/tmp/soak-node.log", help="the node's log file")
    p.add_argument("--write", action="store_true", help="write docs/benchmarks.md (soak)")
    return p


async def main_async(args: argparse.Namespace) -> int:
    command = "python -m benchmarks.soak " + shlex.join(sys.argv[1:])
    node = Node(args.log, args.workers)
    try:
        async with aiohttp.ClientSession() as http:
            await node.wait_ready(http)
            soak = Soak(args, node, http)
            print(
                f"soak: node pid {node.proc.pid} at {node.url}, {args.consultations} rooms, "
                f"{args.duration:.0f} s (warm-up {args.warmup:.0f} s)",
                flush=True,
            )
            t0 = time.monotonic()
            await soak.run()
            elapsed = time.monotonic() - t0
            soak.stats.final = await soak.sample()
    finally:
        node.close()
    text = report(args, soak.stats, command, elapsed)
    print("\n" + text)
    if args.write:
        write_section("soak", text)
        print("written to docs/benchmarks.md (section soak)")
    return 0


def main() -> None:
    args = parser().parse_args()
    if args.warmup >= args.duration:
        raise SystemExit("--warmup must be shorter than --duration")
    try:
        sys.exit(asyncio.run(main_async(args)))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
