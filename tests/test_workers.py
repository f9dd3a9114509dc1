"""Media worker processes (`--workers N`, mediaserver/workers.py): real processes, real media.

A node with two workers puts two rooms on different workers and media flows in each (aiortc
ConsultClients, frames decoded both ways). A worker killed mid-call (SIGKILL): the other
room keeps flowing, the killed worker's room is created again on the live worker and its
clients get media back by themselves (`media-timeout` -> `reconnect`), chat intact, and the
pool starts the worker again. A hung worker (SIGSTOP) is found by its missing heartbeats. The
control process going away (SIGKILL or a normal stop) takes its workers with it. No worker
process outlives a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy

from mediaserver.api import (
    AddParticipant,
    ClientAnswer,
    ClientOffer,
    CreateRoom,
    IceConfig,
    MediaConfig,
    MediaEvent,
    MediaLost,
    RestartTransport,
    Role,
    ServerOffer,
    TrackMeta,
    UnknownRoom,
    bundle_data_channel,
)
from mediaserver.workers import WorkerPool, port_slices
from signaling.client import ConsultClient, JoinRefused

from .conftest import Server, ServerFactory
from .media_peers import PatternVideoTrack
from .test_e2e_media import SyntheticVideo

Clients = Callable[[Server], ConsultClient]


# -- processes (/proc) ------------------------------------------------------------------------


def worker_processes(parent: int) -> list[int]:
    """Live (not zombie) media worker processes started by `parent` (their --parent)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"mediaserver.worker" not in argv or b"--parent" not in argv or state in "ZX":
            continue
        if argv[argv.index(b"--parent") + 1] == str(parent).encode():
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


async def until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture(autouse=True)
def no_orphans() -> Iterator[None]:
    """Set up before the servers, checked after they are gone: no worker process is left."""
    yield
    left = worker_processes(os.getpid())
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"worker processes left behind: {left}"


def pool_of(server: Server) -> WorkerPool:
    plane = server.hub.plane
    assert isinstance(plane, WorkerPool)
    return plane


# -- media ------------------------------------------------------------------------------------


async def pair(server: Server, clients: Clients, room: str) -> tuple[ConsultClient, ConsultClient]:
    """A doctor and a patient in `room` (no waiting room), each publishing audio and video."""
    status, info = await server.api(
        "POST", "/api/v1/rooms", json={"id": room, "waiting_room": False}
    )
    assert status == 201, info
    doctor, patient = clients(server), clients(server)
    await doctor.connect(server.token("doctor", room=room, sub=f"{room}-doctor"))
    await patient.connect(server.token("patient", room=room, sub=f"{room}-patient"))
    await doctor.wait_state("admitted")
    await patient.wait_state("admitted")
    await doctor.publish(SyntheticVideo(40), AudioStreamTrack())
    await patient.publish(SyntheticVideo(200), AudioStreamTrack())
    return doctor, patient


async def frames(
    client: ConsultClient,
    participant: str | None,
    count: int,
    *,
    not_track: MediaStreamTrack | None = None,
    timeout_s: float = 60,
) -> MediaStreamTrack:
    """Decode `count` video frames of `participant` (from a track other than `not_track`)."""
    key = (participant or "", "camera")
    await until(
        lambda: client.remote_tracks.get(key) not in (None, not_track), timeout_s, "a track"
    )
    track = client.remote_tracks[key]
    for _ in range(count):
        await asyncio.wait_for(track.recv(), timeout_s)
    return track


async def both_ways(
    doctor: ConsultClient, patient: ConsultClient, count: int, **kwargs: object
) -> tuple[MediaStreamTrack, MediaStreamTrack]:
    seen_by_doctor, seen_by_patient = await asyncio.gather(
        frames(doctor, patient.participant_id, count, **kwargs),  # type: ignore[arg-type]
        frames(patient, doctor.participant_id, count, **kwargs),  # type: ignore[arg-type]
    )
    return seen_by_doctor, seen_by_patient


def forwarded(pool: WorkerPool, worker: str) -> int:
    for w in pool.snapshot().workers:
        if w.worker == worker:
            return w.counters["packets_forwarded"]
    return -1


# -- tests ------------------------------------------------------------------------------------


def test_port_range_is_sliced_per_worker() -> None:
    from mediaserver.api import IceConfig

    config = MediaConfig(ice=IceConfig(min_port=40000, max_port=40100))
    slices = [(c.ice.min_port, c.ice.max_port) for c in port_slices(config, 3)]
    assert slices == [(40000, 40032), (40033, 40065), (40066, 40100)]
    assert port_slices(MediaConfig(), 2)[1].ice.min_port == 0
    with pytest.raises(ValueError, match="too small"):
        port_slices(MediaConfig(ice=IceConfig(min_port=40000, max_port=40000)), 2)


async def test_two_rooms_on_two_workers_and_a_killed_worker(
    make_server: ServerFactory, clients: Clients
) -> None:
    server = await make_server(workers=2, peer_timeout_s=30.0)
    pool = pool_of(server)
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/readyz") as r:
            assert r.status == 200
    a_doctor, a_patient = await pair(server, clients, "ra")
    b_doctor, b_patient = await pair(server, clients, "rb")
    _, room_a = await server.api("GET", "/api/v1/rooms/ra")
    _, room_b = await server.api("GET", "/api/v1/rooms/rb")
    assert {room_a["worker"], room_b["worker"]} == {"w0", "w1"}
    a_tracks, _ = await asyncio.gather(
        both_ways(a_doctor, a_patient, 5), both_ways(b_doctor, b_patient, 5)
    )
    await a_doctor.chat("before the fault")
    await a_patient.wait_for("chat", lambda m: m["message"]["text"] == "before the fault")

    # kill -9 room A's worker mid-call
    killed = room_a["worker"]
    victim = pool.worker_pids()[killed]
    assert victim is not None
    os.kill(victim, signal.SIGKILL)

    # room B's worker keeps forwarding, its clients keep decoding
    before = forwarded(pool, room_b["worker"])
    await both_ways(b_doctor, b_patient, 10)
    await until(lambda: forwarded(pool, room_b["worker"]) > before + 100, 30, "room B forwarding")
    assert b_doctor.reconnects == b_patient.reconnects == 0

    # room A: moved to the live worker, its clients told `media-timeout`, media back by itself
    for client in (a_doctor, a_patient):
        error = await client.wait_for("error", lambda m: m["code"] == "media-timeout", 30)
        assert error["ref"] is None
    await both_ways(a_doctor, a_patient, 5, not_track=a_tracks[0])  # (new tracks both ways)
    assert a_doctor.reconnects >= 1 and a_patient.reconnects >= 1
    _, moved = await server.api("GET", "/api/v1/rooms/ra")
    assert moved["worker"] == room_b["worker"]
    assert {p["id"] for p in moved["participants"]} == {
        a_doctor.participant_id,
        a_patient.participant_id,
    }
    assert all(p["media"]["connection"] == "connected" for p in moved["participants"])

    # chat intact: the history, and new messages
    history = await a_patient.chat_history()
    assert [m["text"] for m in history["messages"]] == ["before the fault"]
    await a_patient.chat("after the fault")
    await a_doctor.wait_for("chat", lambda m: m["message"]["text"] == "after the fault")

    # the pool started the killed worker again (the same name, a new process)
    await until(
        lambda: pool.worker_pids()[killed] not in (None, victim), 60, "the worker restarted"
    )
    assert not alive(victim)
    assert pool.restarts == 1
    assert {w.worker for w in pool.snapshot().workers} == {"w0", "w1"}
    # a new room goes to the restarted worker (the least loaded)
    status, room_c = await server.api("POST", "/api/v1/rooms", json={"id": "rc"})
    assert status == 201 and room_c["worker"] == killed
    assert sorted(worker_processes(os.getpid())) == sorted(
        p for p in pool.worker_pids().values() if p is not None
    )


async def test_a_hung_worker_is_found_by_its_heartbeat(make_server: ServerFactory) -> None:
    server = await make_server(workers=2)
    pool = pool_of(server)
    status, room = await server.api("POST", "/api/v1/rooms", json={"id": "hung"})
    assert status == 201
    name = room["worker"]
    victim = pool.worker_pids()[name]
    assert victim is not None
    os.kill(victim, signal.SIGSTOP)
    try:
        started = time.monotonic()
        await until(lambda: pool.worker_pids()[name] != victim, 20, "the hung worker dropped")
        detected = time.monotonic() - started
        assert detected >= pool.heartbeat_timeout_s * 0.8  # by the heartbeat, not earlier
        await until(lambda: not alive(victim), 10, "the hung worker killed")
        await until(lambda: pool.room_worker("hung") not in (None, name), 30, "the room moved")
        _, moved = await server.api("GET", "/api/v1/rooms/hung")
        assert moved["worker"] != name
        await until(lambda: pool.worker_pids()[name] is not None, 60, "the worker restarted")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


async def test_pool_errors_cross_the_channel_as_the_same_types() -> None:
    from mediaserver.api import (
        AddParticipant,
        ClientAnswer,
        GetRoom,
        IceConfig,
        NegotiationError,
        ParticipantExists,
        Role,
        RoomExists,
        WorkerLost,
    )

    pool = WorkerPool(MediaConfig(ice=IceConfig(host_addresses=("127.0.0.1",))), 1)
    await pool.start()
    try:
        assert pool.ready
        await pool.execute(CreateRoom(room_id="x"))
        with pytest.raises(RoomExists):
            await pool.execute(CreateRoom(room_id="x"))
        added = await pool.execute(
            AddParticipant(room_id="x", participant_id="p", role=Role.PATIENT)
        )
        assert added.connection == "new" and pool.participant("x", "p") is not None
        room = pool.query(GetRoom(room_id="x"))
        assert room is not None and room.worker == "w0"
        with pytest.raises(ParticipantExists):
            await pool.execute(AddParticipant(room_id="x", participant_id="p", role=Role.PATIENT))
        with pytest.raises(NegotiationError):
            await pool.execute(ClientAnswer(room_id="x", participant_id="p", sdp="not sdp"))
        with pytest.raises(UnknownRoom):
            await pool.execute(ClientAnswer(room_id="nope", participant_id="p", sdp="v=0"))
        # the only worker goes: not ready until it is back, commands for its room wait
        pid = pool.worker_pids()["w0"]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await until(lambda: not pool.ready, 10, "the pool not ready")
        with pytest.raises(WorkerLost):
            await pool.execute(CreateRoom(room_id="y"))
        await until(lambda: pool.ready, 60, "the pool ready again")
        snapshot = pool.participant("x", "p")  # (the mirror: the connection is gone)
        assert snapshot is not None and snapshot.connection == "closed"
        await until(lambda: pool.room_worker("x") == "w0", 30, "room x on w0 again")
        await until(lambda: pool.room("x") is not None, 30, "room x back")
        snapshot = pool.participant("x", "p")
        assert snapshot is not None and snapshot.connection == "closed"  # until `reconnect`
    finally:
        await pool.close()
    assert not pool.ready and not worker_processes(os.getpid())


# -- the control process ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def node_process() -> AsyncIterator[Callable[[], tuple[subprocess.Popen[bytes], int]]]:
    """`python -m signaling run --dev --workers 2` on a free port: (process, port)."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> tuple[subprocess.Popen[bytes], int]:
        port = _free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "signaling",
                "run",
                "--dev",
                "--port",
                str(port),
                "--workers",
                "2",
                "--log-level",
                "WARNING",
            ],
            stdout=subprocess.DEVNULL,
        )
        started.append(proc)
        return proc, port

    yield start
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)


async def _ready(port: int) -> str:
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                    if r.status == 200:
                        async with http.get(f"http://127.0.0.1:{port}/metrics") as m:
                            return await m.text()
            await asyncio.sleep(0.2)
    raise AssertionError("the node never got ready")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
async def test_the_control_process_going_takes_its_workers(
    node_process: Callable[[], tuple[subprocess.Popen[bytes], int]], how: signal.Signals
) -> None:
    proc, port = node_process()
    metrics = await _ready(port)
    assert 'worker="w0"' in metrics and 'worker="w1"' in metrics
    workers = worker_processes(proc.pid)
    assert len(workers) == 2
    proc.send_signal(how)
    await until(lambda: proc.poll() is not None, 30, "the control process gone")
    await until(lambda: not any(alive(pid) for pid in workers), 15, "its workers gone")


def test_a_moved_participant_requests_what_it_published_once() -> None:
    from mediaserver.api import AddParticipant, Role, TrackMeta
    from mediaserver.workers import _Member

    add = AddParticipant(room_id="r", participant_id="p", role=Role.DOCTOR)
    member = _Member(add=add)
    camera, mic = TrackMeta(kind="video", source="camera"), TrackMeta(kind="audio", source="mic")
    member.publish = [camera, mic]
    assert member.tracks() == (camera, mic)
    screen = TrackMeta(kind="video", source="screen")
    member.offered = {"0": camera, "2": screen}  # an offer lists every track it sends
    assert member.tracks() == (camera, screen, mic)


class OfferingPeer:
    """A client that publishes by its own offer (as a browser does) and, on MediaLost, starts
    a fresh connection and attaches its tracks to the server's recvonly m-lines (consult.js's
    media restart), driving a WorkerPool through commands and events only."""

    def __init__(self, pool: WorkerPool, room: str, participant_id: str) -> None:
        self.pool, self.room, self.id = pool, room, participant_id
        self.tracks: dict[str, MediaStreamTrack] = {}
        self.frames = 0
        self.lost = 0
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.pc = self._new_pc()
        self.unsubscribe = pool.subscribe(self._on_event)

    def _new_pc(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        pc.createDataChannel("consult", negotiated=True, id=0)
        bundle_data_channel(pc)
        pc.on("track", lambda track: self._tasks.append(asyncio.ensure_future(self._read(track))))
        return pc

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                await track.recv()
            except Exception:
                return
            if track.kind == "video":
                self.frames += 1

    def _on_event(self, event: MediaEvent) -> None:
        if getattr(event, "participant_id", None) != self.id:
            return
        if isinstance(event, ServerOffer):
            self._tasks.append(asyncio.ensure_future(self._answer(event)))
        elif isinstance(event, MediaLost):
            self.lost += 1
            self._tasks.append(asyncio.ensure_future(self._restart()))

    async def _answer(self, offer: ServerOffer) -> None:
        async with self._lock:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            for t in self.pc.getTransceivers():
                meta = offer.tracks.get(t.mid or "") or {}
                track = self.tracks.get(str(meta.get("source")))
                if meta.get("direction") == "recvonly" and track and t.sender.track is None:
                    t.sender.replaceTrack(track)
                    t.direction = "sendonly"
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            answer = ClientAnswer(
                room_id=self.room, participant_id=self.id, sdp=self.pc.localDescription.sdp
            )
            await self.pool.execute(answer)

    async def publish(self, tracks: dict[str, MediaStreamTrack]) -> None:
        async with self._lock:
            self.tracks.update(tracks)
            for track in tracks.values():
                self.pc.addTransceiver(track, direction="sendonly")
            await self.pc.setLocalDescription(await self.pc.createOffer())
            meta = {
                t.mid: TrackMeta(kind=track.kind, source=source)
                for t in self.pc.getTransceivers()
                for source, track in tracks.items()
                if t.sender.track is track and t.mid is not None
            }
            sdp = self.pc.localDescription.sdp
            answer = await self.pool.execute(
                ClientOffer(room_id=self.room, participant_id=self.id, sdp=sdp, tracks=meta)
            )
            assert answer is not None
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def _restart(self) -> None:
        async with self._lock:
            old, self.pc = self.pc, self._new_pc()
            for t in old.getTransceivers():
                t.sender.replaceTrack(None)  # (aiortc stops a sender's track with its sender)
            await old.close()
        await self.pool.execute(RestartTransport(room_id=self.room, participant_id=self.id))

    async def close(self) -> None:
        self.unsubscribe()
        for task in self._tasks:
            task.cancel()
        await self.pc.close()


async def test_a_publisher_by_offer_gets_its_tracks_back_on_another_worker() -> None:
    """What a browser does: it publishes by its own offer; its worker is lost; it restarts its
    connection on MediaLost and the server's offer asks for its camera again (recvonly)."""
    pool = WorkerPool(MediaConfig(ice=IceConfig(host_addresses=("127.0.0.1",))), 2)
    await pool.start()
    await pool.execute(CreateRoom(room_id="b"))
    for who, role in (("d", Role.DOCTOR), ("p", Role.PATIENT)):
        await pool.execute(AddParticipant(room_id="b", participant_id=who, role=role))
    doctor, patient = OfferingPeer(pool, "b", "d"), OfferingPeer(pool, "b", "p")
    try:
        await doctor.publish({"camera": PatternVideoTrack()})
        await until(lambda: patient.frames >= 5, 60, "frames before the fault")
        holder = pool.room_worker("b")
        assert holder is not None
        pid = pool.worker_pids()[holder]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await until(lambda: doctor.lost == patient.lost == 1, 30, "MediaLost")
        assert pool.room_worker("b") != holder
        before = patient.frames
        await until(lambda: patient.frames >= before + 5, 60, "frames after the fault")
        room = pool.room("b")
        assert room is not None and [t.source for t in room.tracks] == ["camera"]
        d = pool.participant("b", "d")
        assert d is not None and d.connection == "connected" and d.transport_restarts == 1
    finally:
        await doctor.close()
        await patient.close()
        await pool.close()


async def test_readyz_while_no_worker_is_up(make_server: ServerFactory) -> None:
    server = await make_server(workers=1)
    pool = pool_of(server)

    async def readyz() -> int:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + "/readyz") as r:
                return r.status

    assert await readyz() == 200
    pid = pool.worker_pids()["w0"]
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # hung: not ready once the heartbeat is missed
    try:
        await until(lambda: not pool.ready, 20, "the pool not ready")
        assert await readyz() == 503
        status, body = await server.api("POST", "/api/v1/rooms", json={"id": "late"})
        assert (status, body["error"]) == (503, "no-media-worker")
        await until(lambda: pool.ready, 60, "the worker back")
        assert await readyz() == 200
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_a_late_joiner_gets_the_offer_of_what_is_published(
    make_server: ServerFactory, clients: Clients
) -> None:
    """AddParticipant into a room with a publisher: the server offers at once, and the event
    must reach the session, which signaling registers once the command returned (the reply is
    delivered, and its caller resumes, before any event the command causes)."""
    server = await make_server(workers=1)
    status, _ = await server.api(
        "POST", "/api/v1/rooms", json={"id": "late", "waiting_room": False}
    )
    assert status == 201
    doctor = clients(server)
    await doctor.connect(server.token("doctor", room="late"))
    await doctor.wait_state("admitted")
    await doctor.publish(SyntheticVideo(40))
    await until(
        lambda: bool((r := server.hub.plane.room("late")) and r.tracks), 30, "the doctor's track"
    )
    for i in range(3):
        patient = clients(server)
        await patient.connect(server.token("patient", room="late", sub=f"patient-{i}"))
        await patient.wait_state("admitted")
        await frames(patient, doctor.participant_id, 3, timeout_s=30)


def test_workers_option_from_flag_and_env() -> None:
    import argparse

    from signaling.app import _media_plane
    from signaling.config import (
        ServerConfig,
        add_run_arguments,
        config_from_args,
        default_workers,
    )

    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    config = config_from_args(parser.parse_args(["--dev"]), env={})
    assert config.workers == (os.cpu_count() or 1)  # the default: the machine's cores
    assert isinstance(_media_plane(config), WorkerPool)
    narrow = parser.parse_args(["--dev", "--rtc-ports", "40000-40000"])
    assert config_from_args(narrow, env={}).workers == 1  # one port: one slice
    assert default_workers(cores=1000) == 256 and default_workers(40000, 40003, cores=8) == 4
    assert ServerConfig(api_key="k", token_secret="s").workers == 0  # built in code: in-process
    config = config_from_args(parser.parse_args(["--dev"]), env={"CONSULT_WORKERS": "3"})
    assert config.workers == 3 and isinstance(_media_plane(config), WorkerPool)
    config = config_from_args(parser.parse_args(["--dev", "--workers", "0"]), env={})
    assert not isinstance(_media_plane(config), WorkerPool)
    with pytest.raises(ValueError, match="workers"):
        config_from_args(parser.parse_args(["--dev", "--workers", "-1"]), env={})
    # how long a silent worker is given before it is taken as hung
    assert config.worker_heartbeat_timeout_s == 3.0
    flag = parser.parse_args(["--dev", "--workers", "2", "--worker-heartbeat-timeout", "7.5"])
    pool = _media_plane(config_from_args(flag, env={}))
    assert isinstance(pool, WorkerPool) and pool.heartbeat_timeout_s == 7.5
    env = {"CONSULT_WORKER_HEARTBEAT_TIMEOUT_S": "12"}
    assert config_from_args(parser.parse_args(["--dev"]), env=env).worker_heartbeat_timeout_s == 12
    with pytest.raises(ValueError, match="worker_heartbeat_timeout_s"):
        config_from_args(parser.parse_args(["--dev", "--worker-heartbeat-timeout", "0.2"]), env={})


async def test_an_emptied_room_is_gone_at_once_and_a_rejoin_lands_in_a_fresh_one(
    make_server: ServerFactory, clients: Clients
) -> None:
    """Closing a worker's media room is a round trip: signaling forgets the consultation at
    once (its last participant left, or it was ended), and a join meanwhile creates the room
    afresh once the old media room is closed, never landing in the ended one."""
    server = await make_server(workers=2)
    pool = pool_of(server)

    def media_ids(room: str) -> set[str]:
        snapshot = pool.room(room)
        return {p.participant_id for p in snapshot.participants} if snapshot else set()

    def has_media(participant_id: str | None) -> bool:
        return participant_id in media_ids("again")

    first = clients(server)
    await first.connect(server.token("doctor", room="again", sub="u-0"))
    await first.wait_state("admitted")
    await first.chat("before")
    await first.leave()
    assert server.hub.get("again") is None  # at once: the worker's close is still on its way
    for i in range(1, 4):  # a join right after the leave, then joins racing the leave
        newcomer = clients(server)
        await asyncio.gather(
            first.leave() if i > 1 else asyncio.sleep(0),
            newcomer.connect(server.token("doctor", room="again", sub=f"u-{i}")),
        )
        await newcomer.wait_state("admitted")
        room = await newcomer.wait_for("room")
        assert [m for m in room["chat"] if m["text"] == "before"] == []
        await until(functools.partial(has_media, newcomer.participant_id), 30, "its media")
        consultation = server.hub.get("again")
        assert consultation is not None and not consultation.ended
        assert set(consultation.sessions) == {newcomer.participant_id}
        first = newcomer
    await first.leave()
    assert server.hub.get("again") is None
    await until(lambda: pool.room("again") is None, 30, "the media room closed")


async def test_a_join_on_its_way_into_an_ended_room_is_refused_not_landed(
    make_server: ServerFactory, clients: Clients
) -> None:
    """The patient's join waits on the room's worker (stopped: SIGSTOP) when the room is ended:
    the room is gone at once for signaling, the join finds it ended and is refused (4005),
    never a session of the ended room; the end completes once the worker is found lost."""
    server = await make_server(workers=2)
    pool = pool_of(server)
    status, _ = await server.api("POST", "/api/v1/rooms", json={"id": "x", "waiting_room": False})
    assert status == 201
    doctor = clients(server)
    await doctor.connect(server.token("doctor", room="x"))
    await doctor.wait_state("admitted")
    worker = pool.room_worker("x")
    assert worker is not None
    pid = pool.worker_pids()[worker]
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # its replies stop: the patient's AddParticipant waits
    try:
        patient = clients(server)
        joining = asyncio.create_task(patient.connect(server.token("patient", room="x")))
        await asyncio.sleep(0.5)
        consultation = server.hub.get("x")
        assert consultation is not None and len(consultation.sessions) == 1  # on its way
        ending = asyncio.create_task(server.api("DELETE", "/api/v1/rooms/x"))
        await until(lambda: server.hub.get("x") is None, 5, "the room gone for signaling")
        assert not ending.done()  # its media room's close waits for the stopped worker
        assert await doctor.wait_closed() == 4005
        with pytest.raises(JoinRefused) as info:
            await asyncio.wait_for(joining, 30)
        assert (info.value.code, info.value.reason) == (4005, "room ended")
        status, _ = await asyncio.wait_for(ending, 60)
        assert status == 200
        assert consultation.sessions == {} and server.hub.get("x") is None
        await until(lambda: pool.room("x") is None, 30, "the media room closed")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
