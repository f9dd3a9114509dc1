"""Worker faults (issue 13): time from a media worker's death to media flowing again.

A real node (`python -m signaling run --dev --workers 2`, its own process) and K
consultations of aiortc ConsultClients (signaling/client.py), a doctor and a patient each
publishing video (a moving bar, 320x240, 30 fps) and audio, no waiting room. Every client
decodes the other's video all along (one task per client drains its current remote track).

Each kill: a fresh "chosen" consultation is created (it goes to the least-loaded worker: the
one restarted after the previous kill), its media is awaited both ways, then the worker
process holding its room is killed (SIGKILL). Measured from the kill:

- recovery: until a frame of a *new* remote track (the client's new peer connection) is
  decoded by both the doctor and the patient of each room of the killed worker (the chosen
  room's is the benchmark's number; target p95 <= 10 s over 20 kills);
- the rooms of the other worker: their longest gap between decoded frames from the kill until
  the recovery, against the same length of time just before the kill, and whether any of
  their clients restarted its media (it should not).

Then the chosen consultation ends (its clients close, the room is ended), the killed worker
is awaited back (the pool restarts it) and the next kill starts. The worker holding a room is
found by the node's UDP port slices (`--rtc-ports`, one slice per worker): the worker process
with a socket in the room's worker's slice.

The machine may be shared: the load average and the CPU other processes used during the kills
are printed and written with the results.

    .venv/bin/python -m benchmarks.worker_faults --kills 20 --docs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import MediaStreamTrack
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError

from benchmarks.common import percentile, table
from loadtest.report import machine_summary, write_section
from mediaserver.api import IceConfig, MediaConfig
from mediaserver.workers import port_slices
from signaling.auth import encode_token
from signaling.client import ConsultClient
from signaling.config import DEV_API_KEY, DEV_TOKEN_SECRET
from tests.test_e2e_media import SyntheticVideo
from tests.test_workers import worker_processes

FREEZE_S = 0.5  # a gap between decoded frames longer than this is a freeze (loadtest's)


# -- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def udp_ports(pid: int) -> set[int]:
    """Local ports of the UDP sockets process `pid` holds (/proc: its fds, the netns's tables)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    ports = set()
    for table_name in ("udp", "udp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table_name}") as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def cpu_ticks(pids: list[int]) -> int:
    """utime+stime+cutime+cstime of `pids` (clock ticks), the gone ones counting 0."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15])
    return total


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs (/proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


# -- consultations ----------------------------------------------------------------------------


@dataclass
class Watch:
    """One client decoding the other participant's video: every frame's time and track."""

    client: ConsultClient
    peer: str
    times: list[float] = field(default_factory=list)
    tracks: list[int] = field(default_factory=list)  # id() of the track of each frame
    task: asyncio.Task[None] | None = None

    def current(self) -> MediaStreamTrack | None:
        return self.client.remote_tracks.get((self.peer, "camera"))

    async def run(self) -> None:
        while True:
            track = self.current()
            if track is None:
                await asyncio.sleep(0.02)
                continue
            try:
                await asyncio.wait_for(track.recv(), 0.5)
            except (TimeoutError, MediaStreamError):
                if track.readyState == "ended":
                    await asyncio.sleep(0.02)
                continue
            self.times.append(time.monotonic())
            self.tracks.append(id(track))

    def state(self) -> str:
        """For a diagnosis: frames, the last one's age, the track, the task, the connection."""
        track, pc, task = self.current(), self.client.pc, self.task
        age = time.monotonic() - self.times[-1] if self.times else None
        return (
            f"{self.client.participant_id}: {len(self.times)} frames, last {fmt_s(age)} ago, "
            f"track {track.readyState if track else None}, "
            f"task {'done: ' + repr(task.exception()) if task and task.done() else 'running'}, "
            f"pc {pc.connectionState if pc else None}, reconnects {self.client.reconnects}"
        )

    def first_new_frame(self, after: float, old_track: int) -> float | None:
        """Time of the first frame decoded after `after` from a track other than `old_track`."""
        found = None
        for t, track in zip(reversed(self.times), reversed(self.tracks), strict=True):
            if t <= after:
                break
            if track != old_track:
                found = t
        return found

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time without a decoded frame within [start, end]."""
        inside = [t for t in self.times if start <= t <= end]
        edges = [start, *inside, end]
        return max(b - a for a, b in itertools.pairwise(edges))


@dataclass
class Consultation:
    room: str
    doctor: ConsultClient
    patient: ConsultClient
    watches: list[Watch]

    @property
    def reconnects(self) -> int:
        return self.doctor.reconnects + self.patient.reconnects

    async def close(self) -> None:
        for w in self.watches:
            if w.task is not None:
                w.task.cancel()
        for client in (self.doctor, self.patient):
            with contextlib.suppress(Exception):
                await client.close()


class Node:
    """The node process, its API and its workers' port slices."""

    def __init__(self, args: argparse.Namespace, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        low, high = args.rtc_ports
        slices = port_slices(MediaConfig(ice=IceConfig(min_port=low, max_port=high)), 2)
        self.slices = {
            f"w{i}": (c.ice.min_port, c.ice.max_port) for i, c in enumerate(slices)
        }  # w0, w1: mediaserver.workers names its workers so, in order
        cmd = [
            *(sys.executable, "-m", "signaling", "run", "--dev", "--port", str(self.port)),
            *("--ice-host", "127.0.0.1", "--workers", "2", "--log-level", args.node_log_level),
            *("--rtc-ports", f"{low}-{high}", "--peer-timeout", "30"),
        ]
        self.log = log.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.http: aiohttp.ClientSession | None = None

    async def api(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        assert self.http is not None
        headers = {"Authorization": f"Bearer {DEV_API_KEY}"}
        async with self.http.request(method, self.url + path, headers=headers, **kwargs) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, body

    async def ready(self, timeout_s: float = 60) -> None:
        self.http = aiohttp.ClientSession()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the node exited ({self.proc.returncode}): see {self.log.name}")
            with contextlib.suppress(aiohttp.ClientError):
                async with self.http.get(self.url + "/readyz") as r:
                    if r.status == 200 and len(worker_processes(self.proc.pid)) == 2:
                        return
            await asyncio.sleep(0.2)
        raise SystemExit("the node was not ready in time")

    async def worker_of(self, room: str) -> str:
        status, body = await self.api("GET", f"/api/v1/rooms/{room}")
        assert status == 200, body
        worker: str = body["worker"]
        return worker

    def pid_of(self, worker: str) -> int | None:
        low, high = self.slices[worker]
        for pid in worker_processes(self.proc.pid):
            if any(low <= p <= high for p in udp_ports(pid)):
                return pid
        return None

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def token(room: str, role: str) -> str:
    return encode_token(
        secret=DEV_TOKEN_SECRET,
        room=room,
        sub=f"{room}-{role}",
        role=role,
        name=f"{role} {room}",
        ttl_s=7200,
    )


async def consultation(node: Node, room: str, shade: int) -> Consultation:
    status, body = await node.api("POST", "/api/v1/rooms", json={"id": room, "waiting_room": False})
    assert status == 201, body
    doctor, patient = ConsultClient(node.url), ConsultClient(node.url)
    await doctor.connect(token(room, "doctor"))
    await patient.connect(token(room, "patient"))
    await doctor.wait_state("admitted")
    await patient.wait_state("admitted")
    await doctor.publish(SyntheticVideo(shade), AudioStreamTrack())
    await patient.publish(SyntheticVideo(255 - shade), AudioStreamTrack())
    assert doctor.participant_id and patient.participant_id
    watches = [Watch(doctor, patient.participant_id), Watch(patient, doctor.participant_id)]
    for w in watches:
        w.task = asyncio.create_task(w.run())
    return Consultation(room, doctor, patient, watches)


async def alone(node: Node, room: str, others: list[Consultation]) -> Consultation:
    """A consultation on a worker that holds none of `others` (the restarted worker becomes
    a placement candidate once its pool sees it up: until then, try again)."""
    taken = {await node.worker_of(c.room) for c in others}
    attempt = 0
    while True:
        c = await consultation(node, f"{room}-{attempt}", 120)
        if await node.worker_of(c.room) not in taken or len(taken) > 1 or attempt == 19:
            return c
        await c.close()
        await node.api("DELETE", f"/api/v1/rooms/{c.room}")
        await asyncio.sleep(0.5)
        attempt += 1


async def flowing(c: Consultation, timeout_s: float, frames: int = 10) -> None:
    """Until both clients of `c` decoded `frames` new frames."""
    start = [len(w.times) for w in c.watches]
    deadline = time.monotonic() + timeout_s
    while any(len(w.times) < s + frames for w, s in zip(c.watches, start, strict=True)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no media in {c.room}: " + "; ".join(w.state() for w in c.watches))
        await asyncio.sleep(0.05)


# -- the kills --------------------------------------------------------------------------------


async def one_kill(
    node: Node, chosen: Consultation, others: list[Consultation], args: argparse.Namespace
) -> dict[str, Any]:
    rooms = {c.room: await node.worker_of(c.room) for c in [chosen, *others]}
    worker = rooms[chosen.room]
    pid = node.pid_of(worker)
    if pid is None:
        raise SystemExit(f"no process found for worker {worker}")
    hit = [c for c in [chosen, *others] if rooms[c.room] == worker]
    spared = [c for c in others if rooms[c.room] != worker]
    old = {id(w): id(w.current()) for c in hit for w in c.watches}
    spared_reconnects = sum(c.reconnects for c in spared)

    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    recovery: dict[str, float | None] = {}
    deadline = t0 + args.timeout
    pending = {c.room: c for c in hit}
    while pending and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        for room, c in list(pending.items()):
            firsts = [w.first_new_frame(t0, old[id(w)]) for w in c.watches]
            if all(f is not None for f in firsts):
                recovery[room] = max(f for f in firsts if f is not None) - t0
                del pending[room]
    for room in pending:
        recovery[room] = None
    end = time.monotonic()
    window = end - t0
    gaps = [w.longest_gap(t0, end) for c in spared for w in c.watches]
    before = [w.longest_gap(t0 - window, t0) for c in spared for w in c.watches]
    return {
        "worker": worker,
        "pid": pid,
        "rooms_killed": len(hit),
        "rooms_spared": len(spared),
        "recovery_s": recovery.get(chosen.room),
        "recovery_other_killed_s": [recovery[c.room] for c in hit if c is not chosen],
        "spared_gap_s": max(gaps, default=None),
        "spared_gap_before_s": max(before, default=None),
        "spared_reconnects": sum(c.reconnects for c in spared) - spared_reconnects,
    }


async def restarted(node: Node, victim: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = worker_processes(node.proc.pid)
        if len(pids) == 2 and victim not in pids:
            status, _ = await node.api("GET", "/readyz")
            if status == 200:
                return
        await asyncio.sleep(0.1)
    raise SystemExit("the killed worker did not come back")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    log = Path(args.log)
    node = Node(args, log)
    consultations: list[Consultation] = []
    kills: list[dict[str, Any]] = []
    stopped = ""
    try:
        await node.ready()
        for i in range(args.consultations - 1):
            consultations.append(await consultation(node, f"steady{i}", 40 + 30 * i))
        for c in consultations:
            await flowing(c, 60)
        busy0, total0 = machine_busy_ticks()
        ours0 = cpu_ticks([os.getpid(), node.proc.pid, *worker_processes(node.proc.pid)])
        load0 = os.getloadavg()
        t_start = time.monotonic()
        try:
            await kill_loop(node, consultations, kills, args)
        except TimeoutError as exc:  # a consultation without media: report what was measured
            stopped = str(exc)
            print(f"stopped after {len(kills)} kills: {stopped}", flush=True)
        elapsed = time.monotonic() - t_start
        busy1, total1 = machine_busy_ticks()
        ours1 = cpu_ticks([os.getpid(), node.proc.pid, *worker_processes(node.proc.pid)])
        load1 = os.getloadavg()
    finally:
        for c in consultations:
            await c.close()
        await node.close()
    cpus = os.cpu_count() or 1
    other = max(0, (busy1 - busy0) - (ours1 - ours0)) / max(1, total1 - total0) * cpus
    return {
        "kills": kills,
        "stopped": stopped,
        "elapsed_s": elapsed,
        "load_average_start": load0,
        "load_average_end": load1,
        "other_cpu_cores": other,
    }


async def kill_loop(
    node: Node,
    consultations: list[Consultation],
    kills: list[dict[str, Any]],
    args: argparse.Namespace,
) -> None:
    """`args.kills` kills, each of a fresh consultation's worker; `kills` gets their results."""
    for k in range(args.kills):
        chosen = await alone(node, f"chosen{k}", consultations)
        for c in [chosen, *consultations]:
            await flowing(c, 60)
        await asyncio.sleep(args.settle)
        result = await one_kill(node, chosen, consultations, args)
        kills.append(result)
        rec = result["recovery_s"]
        print(
            f"kill {k + 1}/{args.kills}: {result['worker']} (pid {result['pid']}, "
            f"{result['rooms_killed']} rooms, {result['rooms_spared']} spared): recovery "
            + (f"{rec:.2f} s" if rec is not None else "NONE")
            + f", spared rooms' longest gap {fmt_s(result['spared_gap_s'])} "
            f"(before: {fmt_s(result['spared_gap_before_s'])}), "
            f"spared reconnects {result['spared_reconnects']}",
            flush=True,
        )
        await chosen.close()
        await node.api("DELETE", f"/api/v1/rooms/{chosen.room}")
        await restarted(node, result["pid"], 60)


def fmt_s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    kills = report["kills"]
    rec = [k["recovery_s"] for k in kills if k["recovery_s"] is not None]
    gaps = [k["spared_gap_s"] for k in kills if k["spared_gap_s"] is not None]
    before = [k["spared_gap_before_s"] for k in kills if k["spared_gap_before_s"] is not None]
    return {
        "kills": len(kills),
        "recovered": len(rec),
        "p50": percentile(rec, 50) if rec else None,
        "p95": percentile(rec, 95) if rec else None,
        "max": max(rec, default=None),
        "spared_kills": sum(1 for k in kills if k["rooms_spared"]),
        "spared_gap_max": max(gaps, default=None),
        "spared_gap_before_max": max(before, default=None),
        "spared_freezes": sum(1 for g in gaps if g > FREEZE_S),
        "spared_reconnects": sum(k["spared_reconnects"] for k in kills),
    }


KILL_HEADERS = [
    "kill",
    "worker",
    "rooms killed",
    "recovery",
    "rooms spared",
    "spared longest gap",
    "same before",
    "spared restarts",
]


def doc(args: argparse.Namespace, report: dict[str, Any], s: dict[str, Any]) -> str:
    l0, l1 = report["load_average_start"], report["load_average_end"]
    rows = [
        [
            str(i + 1),
            k["worker"],
            str(k["rooms_killed"]),
            fmt_s(k["recovery_s"]),
            str(k["rooms_spared"]),
            fmt_s(k["spared_gap_s"]),
            fmt_s(k["spared_gap_before_s"]),
            str(k["spared_reconnects"]),
        ]
        for i, k in enumerate(report["kills"])
    ]
    met = s["p95"] is not None and s["p95"] <= 10 and s["recovered"] == s["kills"] == args.kills
    verdict = "met" if met else "NOT met"
    stopped = (
        f"**Stopped after {s['kills']} of {args.kills} kills**: {report['stopped']}.\n\n"
        if report["stopped"]
        else ""
    )
    return f"""## Worker faults: media back after a worker's death

Command: `{args.command}`

Machine: {machine_summary()}.
Measured {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}. Nothing pinned. Load average
{l0[0]:.2f} at the start of the kills, {l1[0]:.2f} at the end; other processes used
{report["other_cpu_cores"]:.2f} of the {os.cpu_count()} CPUs on average over the
{report["elapsed_s"]:.0f} s of the kills (the machine is shared; the node, its workers and
this benchmark's clients share the same CPUs).

A node with 2 media workers (`python -m signaling run --dev --workers 2`) and
{args.consultations} consultations of aiortc ConsultClients (doctor and patient each publish
320x240 VP8 at 30 fps and Opus and decode the other's video). Each kill: a fresh consultation
is created (it lands on the least-loaded worker, the one restarted after the previous kill),
then the worker holding its room is killed with SIGKILL. Recovery: from the kill until both
its clients decoded a frame of a new remote track (their new peer connection: the room was
placed on the live worker, the clients were told `media-timeout` and reconnected). The
other worker's rooms ("spared"): their longest gap between decoded frames from the kill to
the recovery, against the same length of time just before the kill, and the media restarts
of their clients. Then the chosen consultation ends and the killed worker is awaited back.
After the first kill the moved rooms all sit on the surviving worker, so the fresh
consultation lands alone on the restarted one, and that one is killed next: kills from the
second on take one room each. Every client runs in this benchmark's one process (its event
loop also runs the reconnecting clients' ICE and DTLS and their new decoders), so a spared
room's gap is the clients' as much as its worker's.

{stopped}Recovery over {s["recovered"]}/{s["kills"]} kills: p50 {fmt_s(s["p50"])}, p95
{fmt_s(s["p95"])}, max {fmt_s(s["max"])}. Target (issue 13): p95 <= 10 s: **{verdict}**.
Spared rooms (in {s["spared_kills"]} kills): longest gap {fmt_s(s["spared_gap_max"])} during
the faults against {fmt_s(s["spared_gap_before_max"])} before them, {s["spared_freezes"]} gaps
over {FREEZE_S * 1000:.0f} ms, {s["spared_reconnects"]} media restarts.

{table(KILL_HEADERS, rows)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--consultations", type=int, default=3, help="K, the chosen included")
    parser.add_argument("--settle", type=float, default=2.0, help="s of media before a kill")
    parser.add_argument("--timeout", type=float, default=60.0, help="s to wait for recovery")
    parser.add_argument("--rtc-ports", type=int, nargs=2, default=(47000, 47999))
    parser.add_argument("--log", default="/tmp/worker-faults-node.log", help="node's log")
    parser.add_argument("--node-log-level", default="WARNING", help="the node's --log-level")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--docs", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()
    if args.consultations < 2:
        parser.error("--consultations: at least 2 (the chosen one and one spared)")
    files = ("--json", args.json, "--log", args.log)  # (where this run's files go)
    shown = [a for a in sys.argv[1:] if a not in files]
    args.command = ".venv/bin/python -m benchmarks.worker_faults " + " ".join(shown)
    report = asyncio.run(run(args))
    s = summarize(report)
    print(json.dumps(s, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report | {"summary": s}, indent=1))
    if args.docs:
        write_section("worker-faults", doc(args, report, s))
    # Out without joining aiortc's threads: once, a run hung there after the node was closed
    # (the results are written by then).
    sys.stdout.flush()
    os._exit(0 if s["kills"] == args.kills else 1)


if __name__ == "__main__":
    main()
