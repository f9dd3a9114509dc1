"""Forwarding benchmark: N consultations through one media-server process, CPU per packet.

    .venv/bin/python -m benchmarks.forwarding --consultations 5 10 20 --duration 30
    .venv/bin/python -m benchmarks.forwarding --sweep --duration 20

The server (`benchmarks/server.py`: a mediaserver Node behind a tiny local endpoint) runs in
its own process pinned to CPU 0; the generator (`loadtest.generator`: tapped aiortc peers
sending pre-encoded VP8 ~1 Mbps + Opus, never decoding) runs in worker processes pinned to
CPU 1. Each consultation is two participants, each publishing video + audio and receiving
the other's (the room subscribes them). After a warm-up, over the measurement window:

- server CPU per forwarded packet = (utime+stime of the server process, /proc/PID/stat)
  / (node.counters.packets_forwarded delta);
- loss of every received stream (after retransmission: receivers NACK gaps), jitter and the
  longest inter-packet gap, at the generator's receivers;
- generator CPU per forwarded packet (all workers' utime+stime / the same delta) and its share
  of its core: when it is near a full core, or its pacer wakes late, the generator (not the
  server) was the bottleneck and the run says so.

`--sweep` looks for the largest N with loss < 1% on every stream (and neither side saturated
by the generator). Results are printed and written to docs/benchmarks.md (section
"forwarding"), with the command and the machine. Every child process is bounded in time and
killed on exit or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import Stalls, table
from loadtest.procs import CLK_TCK, Children, cpu_jiffies, proc_cpu, proc_rss_mb, read_line
from loadtest.report import machine_summary, write_section

LOSS_LIMIT = 0.01
GEN_BUSY_LIMIT = 0.90  # generator share of its core above which it is called the bottleneck
SERVER_BUSY_LIMIT = 0.95
DELAY_LIMIT_MS = 50
DELIVERED_MIN = 0.95  # a run forwarding less than this share of the nominal rate fails


# -- parent: processes ------------------------------------------------------------------------


def wait_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (at most max_wait s) until the machine's CPUs are mostly idle; returns the last
    measured busy share (other processes' load makes a run's delay and gaps meaningless)."""
    deadline = time.monotonic() + max_wait
    while True:
        a = cpu_jiffies()
        time.sleep(2)
        b = cpu_jiffies()
        busy = sum(b[c][0] - a[c][0] for c in b) / CLK_TCK / 2 / max(1, len(b))
        if busy < threshold or time.monotonic() >= deadline:
            if busy >= threshold:
                print(f"machine still {busy:.0%} busy: running anyway", file=sys.stderr)
            return busy


def delay_p95(before: dict[str, int], after: dict[str, int]) -> float:
    """p95 of the added delay (ms) over the window, from two cumulative histograms."""
    from loadtest.generator import percentile

    hist = {int(k): n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}
    return percentile(hist, 0.95)


def get_counters(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/counters", timeout=10) as resp:
        result: dict[str, Any] = json.load(resp)
        return result


# -- parent: one run --------------------------------------------------------------------------


@dataclass
class RunResult:
    consultations: int
    duration: float
    forwarded: int = 0
    packets_in: int = 0
    server_cpu_s: float = 0.0
    server_rss_mb: float = 0.0
    gen_cpu_s: float = 0.0
    streams: list[dict[str, Any]] = field(default_factory=list)
    expected_streams: int = 0
    setup_s: float = 0.0
    pacer_late_ticks: int = 0
    pacer_ticks: int = 0
    sender_late_max_ms: float = 0.0
    retransmissions: int = 0
    server_lag_max_ms: float = 0.0
    server_gc_max_ms: float = 0.0
    server_gc_ms: float = 0.0
    gen_lag_max_ms: float = 0.0
    server_setup_lag_max_ms: float = 0.0  # while the consultations joined
    server_setup_gc_max_ms: float = 0.0
    gen_gc_max_ms: float = 0.0
    other_load: dict[str, float] = field(default_factory=dict)  # foreign CPU share per CPU
    steal: dict[str, float] = field(default_factory=dict)
    nacks: int = 0
    nominal_pps: float = 0.0  # packets/s the consultations should forward
    error: str = ""

    @property
    def us_per_packet(self) -> float:
        return self.server_cpu_s / self.forwarded * 1e6 if self.forwarded else float("nan")

    @property
    def gen_us_per_packet(self) -> float:
        return self.gen_cpu_s / self.forwarded * 1e6 if self.forwarded else float("nan")

    @property
    def server_busy(self) -> float:
        return self.server_cpu_s / self.duration

    @property
    def gen_busy(self) -> float:
        return self.gen_cpu_s / self.duration

    def stream_loss(self, s: dict[str, Any]) -> float:
        return 1 - s["received"] / s["expected"] if s["expected"] > 0 else 1.0

    @property
    def max_loss(self) -> float:
        if len(self.streams) < self.expected_streams:
            return 1.0
        return max((self.stream_loss(s) for s in self.streams), default=1.0)

    @property
    def mean_loss(self) -> float:
        exp = sum(s["expected"] for s in self.streams)
        return 1 - sum(s["received"] for s in self.streams) / exp if exp else 1.0

    @property
    def generator_bound(self) -> bool:
        return self.gen_busy > GEN_BUSY_LIMIT

    @property
    def generator_late(self) -> bool:
        """The pacer woke more than a tick late on over 5% of its ticks."""
        return self.pacer_ticks > 0 and self.pacer_late_ticks / self.pacer_ticks > 0.05

    @property
    def server_bound(self) -> bool:
        return self.server_busy > SERVER_BUSY_LIMIT

    @property
    def delivered(self) -> float:
        """Forwarded packets over the window against the nominal rate (1.0 = all of it)."""
        return self.forwarded / self.duration / self.nominal_pps if self.nominal_pps else 1.0

    @property
    def ok(self) -> bool:
        return not self.error and self.max_loss < LOSS_LIMIT and self.delivered >= DELIVERED_MIN

    def verdict(self) -> str:
        if self.error:
            return f"failed: {self.error}"
        parts = ["loss ok" if self.max_loss < LOSS_LIMIT else "LOSS >= 1%"]
        if self.delivered < DELIVERED_MIN:
            parts.append(f"UNDER-DELIVERED ({self.delivered:.0%} of the nominal rate)")
        if self.generator_bound:
            parts.append("GENERATOR-BOUND (not a server limit)")
        elif self.generator_late:
            parts.append("generator paced late")
        busy = max(self.other_load.values(), default=0.0)
        if busy > 0.1:
            parts.append(f"other processes used up to {busy * 100:.0f}% of a CPU")
        if self.server_bound:
            parts.append("server core saturated")
        return ", ".join(parts)

    def jitter_max_ms(self, kind: str) -> float:
        return max((s["jitter_ms"] for s in self.streams if s["kind"] == kind), default=0.0)

    @property
    def delay_p95_max_ms(self) -> float:
        return max((s["delay_p95_ms"] for s in self.streams), default=0.0)

    def gap_max_ms(self, kind: str) -> float:
        return max((s["gap_max_ms"] for s in self.streams if s["kind"] == kind), default=0.0)


def run_once(
    n: int,
    *,
    duration: float,
    warmup: float,
    workers: int,
    server_cpu: int,
    gen_cpu: int,
    profile: str | None = None,
    quiet_wait: float = 0.0,
) -> RunResult:
    from loadtest.media import load_media

    video, audio = load_media()
    if quiet_wait > 0:
        wait_quiet(quiet_wait)
    result = RunResult(
        consultations=n,
        duration=duration,
        expected_streams=4 * n,
        nominal_pps=2 * n * (video.packet_rate + audio.packet_rate),
    )
    children = Children()
    py = sys.executable
    budget = warmup + duration + 120 + 2 * n
    try:
        server = children.start(
            [
                *(py, "-m", "benchmarks.server", "--port", "0", "--cpu", str(server_cpu)),
                *("--max-seconds", str(budget)),
            ]
        )
        assert server.stdout is not None
        port = int(read_line(server.stdout, 30).split()[1])
        t_setup = time.monotonic()
        gens: list[subprocess.Popen[str]] = []
        per = [n // workers + (1 if i < n % workers else 0) for i in range(workers)]
        first = 0
        for count in per:
            if count == 0:
                continue
            gens.append(
                children.start(
                    [
                        *(py, "-m", "benchmarks.forwarding", "--worker", "--port", str(port)),
                        *("--first", str(first), "--count", str(count), "--cpu", str(gen_cpu)),
                        *("--max-seconds", str(budget)),
                    ]
                )
            )
            first += count
        for gen in gens:
            assert gen.stdout is not None
            ready = json.loads(read_line(gen.stdout, 60 + 3 * n))
            if not ready.get("ready"):
                raise RuntimeError(f"generator not ready: {ready.get('error')}")
        result.setup_s = time.monotonic() - t_setup
        time.sleep(warmup)

        def snapshot() -> tuple[float, dict[str, Any], list[dict[str, Any]]]:
            for gen in gens:
                assert gen.stdin is not None
                gen.stdin.write("SNAP\n")
                gen.stdin.flush()
            cpu = proc_cpu(server.pid)
            counters = get_counters(port)
            snaps = [json.loads(read_line(g.stdout, 30)) for g in gens if g.stdout]
            return cpu, counters, snaps

        cpu0, c0, g0 = snapshot()
        j0 = cpu_jiffies()
        t0 = time.monotonic()
        spy: subprocess.Popen[str] | None = None
        if profile:
            spy = children.start(
                [
                    *(os.path.join(os.path.dirname(py), "py-spy"), "record", "--nonblocking"),
                    *("-r", "50", "-d", str(int(duration)), "-f", "raw", "-o", profile),
                    *("-p", str(server.pid)),
                ]
            )
        time.sleep(duration)
        cpu1, c1, g1 = snapshot()
        j1 = cpu_jiffies()
        result.duration = time.monotonic() - t0
        if spy is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
        result.server_cpu_s = cpu1 - cpu0
        result.server_rss_mb = proc_rss_mb(server.pid)
        result.forwarded = c1["packets_forwarded"] - c0["packets_forwarded"]
        result.packets_in = c1["packets_in"] - c0["packets_in"]
        result.retransmissions = c1["retransmissions"] - c0["retransmissions"]
        result.nacks = c1["nacks_received"] - c0["nacks_received"]
        flushes = c1.get("send_flushes", 0) - c0.get("send_flushes", 0)
        syscalls = c1.get("send_syscalls", 0) - c0.get("send_syscalls", 0)
        sent = c1.get("send_datagrams", 0) - c0.get("send_datagrams", 0)
        if flushes and syscalls:  # the batched send path (mediaserver/rtc/batch.py)
            print(
                f"server send path: {sent} datagrams, {sent / flushes:.2f} per flush"
                f" (one per transport and loop pass), {sent / syscalls:.2f} per system call,"
                f" {c1.get('send_errors', 0)} send errors",
                file=sys.stderr,
                flush=True,
            )
        result.server_setup_lag_max_ms = c0["loop_lag_max_ms"]
        result.server_setup_gc_max_ms = c0["gc_pause_max_ms"]
        result.server_lag_max_ms = c1["loop_lag_max_ms"]
        result.server_gc_max_ms = c1["gc_pause_max_ms"]
        result.server_gc_ms = c1["gc_total_ms"] - c0["gc_total_ms"]
        for a, b in zip(g0, g1, strict=True):
            result.gen_cpu_s += b["cpu"] - a["cpu"]
            result.pacer_ticks += b["ticks"] - a["ticks"]
            result.pacer_late_ticks += b["late_ticks"] - a["late_ticks"]
            result.sender_late_max_ms = max(result.sender_late_max_ms, b["late_max_ms"])
            result.gen_lag_max_ms = max(result.gen_lag_max_ms, b["loop_lag_max_ms"])
            result.gen_gc_max_ms = max(result.gen_gc_max_ms, b["gc_pause_max_ms"])
            for pa, pb in zip(a["peers"], b["peers"], strict=True):
                for ra, rb in zip(pa["received"], pb["received"], strict=False):
                    result.streams.append(
                        {
                            "peer": pb["name"],
                            "kind": rb["kind"],
                            "expected": rb["expected"] - ra["expected"],
                            "received": rb["received"] - ra["received"],
                            "bytes": rb["bytes"] - ra["bytes"],
                            "jitter_ms": rb["jitter_ms"],
                            "gap_max_ms": rb["gap_max_ms"],
                            "delay_p95_ms": delay_p95(ra["delay_hist"], rb["delay_hist"]),
                        }
                    )
        ours = {server_cpu: result.server_cpu_s}
        ours[gen_cpu] = ours.get(gen_cpu, 0.0) + result.gen_cpu_s
        for cpu in j1:
            busy = (j1[cpu][0] - j0[cpu][0]) / CLK_TCK - ours.get(cpu, 0.0)
            result.other_load[f"cpu{cpu}"] = max(0.0, busy / result.duration)
            result.steal[f"cpu{cpu}"] = (j1[cpu][1] - j0[cpu][1]) / CLK_TCK / result.duration
        for gen in gens:
            assert gen.stdin is not None
            gen.stdin.write("END\n")
            gen.stdin.flush()
    except (RuntimeError, TimeoutError, OSError, ValueError, KeyError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        children.stop()
    return result


# -- parent: report ---------------------------------------------------------------------------

HEADERS = [
    "N",
    "fwd pkt/s",
    "server CPU",
    "server us/pkt",
    "gen CPU",
    "gen us/pkt",
    "max loss",
    "mean loss",
    "video jitter",
    "p95 delay",
    "longest gap",
    "RTX",
    "other load cpu0/cpu1",
    "verdict",
]


def row(r: RunResult) -> list[str]:
    if r.error:
        return [str(r.consultations), *["-"] * (len(HEADERS) - 2), r.verdict()]
    return [
        str(r.consultations),
        f"{r.forwarded / r.duration:.0f}",
        f"{r.server_busy * 100:.0f}%",
        f"{r.us_per_packet:.1f}",
        f"{r.gen_busy * 100:.0f}%",
        f"{r.gen_us_per_packet:.1f}",
        f"{r.max_loss * 100:.2f}%",
        f"{r.mean_loss * 100:.3f}%",
        f"{r.jitter_max_ms('video'):.1f} ms",
        f"{r.delay_p95_max_ms:.0f} ms",
        f"{max(r.gap_max_ms('video'), r.gap_max_ms('audio')):.0f} ms",
        str(r.retransmissions),
        "/".join(f"{v * 100:.0f}%" for _, v in sorted(r.other_load.items())),
        r.verdict(),
    ]


def report(
    results: list[RunResult], command: str, sweep_best: int | None, *, swept: bool, write: bool
) -> None:
    text = table(HEADERS, [row(r) for r in results])
    print(text)
    verdict: list[str] = []
    if swept:
        verdict = [f"Sweep: largest N with loss < 1% on every stream: **{sweep_best}**"]
        if results and results[-1].generator_bound and results[-1].ok:
            verdict[-1] += " (a lower bound: the generator saturated its core there)"
        verdict[-1] += "."
        calm = [
            r.consultations
            for r in results
            if r.ok and not r.server_bound and r.delay_p95_max_ms <= DELAY_LIMIT_MS
        ]
        verdict += [
            f"Largest N that also kept the server core below {SERVER_BUSY_LIMIT:.0%} and every",
            f"stream's p95 added delay within {DELAY_LIMIT_MS} ms: "
            f"**{max(calm) if calm else 'none'}**.",
        ]
        print("\n".join(verdict))
    if not write:
        return
    body = [
        "## Forwarding: capacity sweep" if swept else "## Forwarding (macro)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine_summary()}.",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "Server process pinned to CPU 0 (uvloop), generator workers pinned to CPU 1. Each",
        "consultation: 2 participants, each publishing pre-encoded VP8 (640x480, 30 fps,",
        "~0.93 Mbps, keyframe every 2 s, ~122 pkt/s) + Opus (20 ms, 50 pkt/s) and receiving",
        "the other's. `server us/pkt` = server utime+stime / packets_forwarded over the window;",
        "`gen us/pkt` = all generator workers' CPU / the same packets (it sends and receives each",
        "one); CPU % is of one core. Loss is per received stream, after NACK/RTX, over the",
        "window; jitter is RFC 3550 interarrival jitter (max over video streams; a video frame's",
        "packets leave in one burst); p95 delay is the worst stream's 95th percentile of added",
        "one-way delay (arrival minus RTP send time, above that stream's minimum: queueing in",
        "the server and both hosts, plus up to one 5 ms pacer tick); longest gap is the largest",
        "inter-packet gap on any stream.",
        "`other load` is the CPU time other processes (not this benchmark) used on each CPU",
        "during the window (/proc/stat), in % of that CPU: this machine is shared, and such load",
        "preempts the pinned processes (event-loop stalls of 100 ms and more), which shows up as",
        "gaps and jitter, not as CPU per packet. `GENERATOR-BOUND` marks a generator above 90%",
        "of its core: the run then measured the generator, not the server.",
        "",
        text,
    ]
    if verdict:
        body += ["", *verdict]
    write_section("forwarding-sweep" if swept else "forwarding", "\n".join(body))


def profile_report(path: str, command: str, r: RunResult, *, write: bool) -> None:
    """Top functions of the server's py-spy profile (self and inclusive share of samples)."""
    from benchmarks.profile_summary import summarize

    with open(path) as f:
        total, self_time, inclusive = summarize(f.read())
    if not total:
        return
    rows = [[f"{n / total * 100:.1f}%", name] for name, n in self_time.most_common(15)]
    incl = [
        [f"{n / total * 100:.1f}%", name]
        for name, n in inclusive.most_common(60)
        if "mediaserver/" in name or "pylibsrtp" in name or "aioice" in name
    ][:15]
    text = "\n".join(
        [
            table(["self", "function (server process)"], rows),
            "",
            table(["inclusive", "function (mediaserver, pylibsrtp, aioice)"], incl),
        ]
    )
    print(text)
    if not write:
        return
    body = [
        "## Forwarding: server profile",
        "",
        f"Command: `{command}` (py-spy record --nonblocking, 50 Hz, over the window of the",
        f"N={r.consultations} run; {total} samples of the server process, idle excluded).",
        "",
        f"Machine: {machine_summary()}.",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "Time spent in C (uvloop's loop and its recvmsg/epoll, sendto inside uvloop's",
        "transport) is charged to the innermost Python frame: `Runner.run` self time is the",
        "event loop itself (receive syscalls included), `MediaTransport.send` self time includes",
        "the sendto syscall. Sampling perturbs the run: its CPU numbers are not the benchmark's.",
        "",
        text,
    ]
    write_section("forwarding-profile", "\n".join(body))


def run_and_report(
    args: argparse.Namespace, n: int, results: list[RunResult], *, profile: str | None = None
) -> RunResult:
    """One run with the command line's settings, printed and kept as it finishes."""
    r = run_once(
        n,
        duration=args.duration,
        warmup=args.warmup,
        workers=args.workers,
        server_cpu=args.server_cpu,
        gen_cpu=args.gen_cpu,
        profile=profile,
        quiet_wait=args.quiet_wait,
    )
    print(" ".join(row(r)), flush=True)
    results.append(r)
    return r


def sweep(args: argparse.Namespace, results: list[RunResult]) -> int | None:
    """Step up by --step from --start until a run fails (loss >= 1% on some stream), then
    bisect between the last good and the first bad. A generator-bound run ends the sweep
    without a verdict: beyond it the generator, not the server, would be measured.
    Fills `results` as runs finish (kept when interrupted)."""

    def run(n: int) -> RunResult:
        return run_and_report(args, n, results)

    good, bad = 0, None
    n = args.start
    while n <= args.max_consultations:
        r = run(n)
        if not r.ok:
            bad = n
            break
        good = n
        if r.generator_bound:
            print(f"generator-bound at N={n}: the sweep stops (capacity >= {n})", flush=True)
            break
        n += args.step
    if bad is not None:
        while bad - good > 1:
            mid = (good + bad) // 2
            r = run(mid)
            if r.ok:
                good = mid
            else:
                bad = mid
    return good or None


# -- worker (generator process) ---------------------------------------------------------------


async def _signal(ws: Any, peer: Any) -> None:
    from aiohttp import WSMsgType

    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            return
        data = json.loads(msg.data)
        if data.get("type") == "offer":
            answer = await peer.answer(data["sdp"], data.get("tracks") or {})
            await ws.send_json({"type": "answer", "sdp": answer})


async def worker(args: argparse.Namespace) -> None:
    import aiohttp

    from loadtest.generator import Pacer, SyntheticPeer
    from loadtest.media import load_media

    deadline = time.monotonic() + args.max_seconds
    stalls = Stalls()
    watch = asyncio.create_task(stalls.watch())
    if os.environ.get("BENCH_WATCHDOG"):
        stalls.start_watchdog("generator")
    video, audio = load_media()
    pacer = Pacer()
    pacer_task = asyncio.create_task(pacer.run(deadline))
    peers: list[SyntheticPeer] = []
    tasks: list[asyncio.Task[None]] = []
    session = aiohttp.ClientSession()
    url = f"http://127.0.0.1:{args.port}/ws"
    publish = [{"kind": "audio", "source": "microphone"}, {"kind": "video", "source": "camera"}]
    joins = asyncio.Semaphore(4)

    async def join(room: str, role: str) -> None:
        async with joins:
            peer = SyntheticPeer(f"{room}-{role}", video=video, audio=audio, pacer=pacer)
            peers.append(peer)
            ws = await session.ws_connect(url, heartbeat=None)
            await ws.send_json(
                {"type": "join", "room": room, "id": role, "role": role, "publish": publish}
            )
            tasks.append(asyncio.create_task(_signal(ws, peer)))
            await asyncio.sleep(0.05)

    def flowing() -> bool:
        return len(peers) == 2 * args.count and all(
            len(p.senders) == 2 and len(p.receivers) == 2 and all(r.received for r in p.receivers)
            for p in peers
        )

    loop = asyncio.get_running_loop()
    try:
        await asyncio.gather(
            *(
                join(f"c{c}", role)
                for c in range(args.first, args.first + args.count)
                for role in ("doctor", "patient")
            )
        )
        t = time.monotonic()
        while not flowing():
            if time.monotonic() - t > 30 + args.count:
                states = sorted({p.connection_state for p in peers})
                print(json.dumps({"ready": False, "error": f"not flowing ({states})"}), flush=True)
                return
            await asyncio.sleep(0.1)
        print(json.dumps({"ready": True}), flush=True)
        while time.monotonic() < deadline:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or line.strip() == "END":
                return
            cpu = os.times()
            snaps = [p.snapshot() for p in peers]
            late = max((s["late_max_ms"] for p in snaps for s in p["sent"].values()), default=0.0)
            print(
                json.dumps(
                    {
                        "cpu": cpu.user + cpu.system,
                        "ticks": pacer.ticks,
                        "late_ticks": pacer.late_ticks,
                        "late_max_ms": late,
                        "peers": snaps,
                    }
                    | stalls.read()
                ),
                flush=True,
            )
    finally:
        pacer_task.cancel()
        watch.cancel()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*(p.close() for p in peers)), 10)
        await session.close()


# -- entry point ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--consultations", type=int, nargs="+", default=[10])
    parser.add_argument("--duration", type=float, default=30, help="measurement window (s)")
    parser.add_argument("--warmup", type=float, default=8)
    parser.add_argument("--workers", type=int, default=1, help="generator processes")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--gen-cpu", type=int, default=1)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--start", type=int, default=10, help="sweep: first N")
    parser.add_argument("--step", type=int, default=5, help="sweep: step before bisecting")
    parser.add_argument("--max-consultations", type=int, default=60)
    parser.add_argument("--profile", help="py-spy raw (collapsed) profile of the server window")
    parser.add_argument("--json", help="write the results as JSON here")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        help="before each run, wait up to this many seconds for other load to go (0: never)",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    # worker mode (internal)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=600, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        if args.cpu is not None:
            os.sched_setaffinity(0, {args.cpu})
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.run(worker(args))
        return

    from loadtest.media import load_media

    load_media()  # encode once, before any timing, into the on-disk cache the workers read
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    command = ".venv/bin/python -m benchmarks.forwarding " + shlex.join(sys.argv[1:])
    results: list[RunResult] = []
    best: int | None = None
    try:
        if args.sweep:
            best = sweep(args, results)
        else:
            for n in args.consultations:
                run_and_report(args, n, results, profile=args.profile)
    except KeyboardInterrupt:
        print("interrupted: reporting the runs that finished", file=sys.stderr)
    results.sort(key=lambda r: r.consultations)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in results], f, indent=1)
    write = not args.no_docs and bool(results)
    report(results, command, best, swept=args.sweep, write=write and not args.profile)
    if args.profile and results and os.path.exists(args.profile):
        profile_report(args.profile, command, results[-1], write=not args.no_docs)
    if any(r.error for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
