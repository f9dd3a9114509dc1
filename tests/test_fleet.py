"""A fleet of nodes sharing a real redis-server (signaling/fleet.py, signaling/redis_fleet.py).

Three real node processes (`python -m signaling run --redis-url ...`) and one redis-server,
all on loopback, started here: rooms are placed by load, a client that reaches the wrong node
is redirected, a node that dies with a live consultation (kill -9) has its room taken over by
another node where its clients resume by themselves (media, chat, telemetry and waiting
places intact), a drained node gets no new room, and a frozen Redis stops no call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiortc.mediastreams import AudioStreamTrack

from mediaserver.api import Role
from signaling.auth import encode_token
from signaling.client import ConsultClient, JoinRefused
from signaling.config import DEV_API_KEY, DEV_TOKEN_SECRET
from tests.client_js import run_client_script
from tests.media_peers import PatternVideoTrack

WAIT_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _until(what: str, predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
        )

    async def ready(self) -> None:
        client = aioredis.Redis.from_url(self.url)
        try:
            deadline = time.monotonic() + WAIT_S
            while True:
                with contextlib.suppress(Exception):
                    if await client.ping():
                        return
                if time.monotonic() > deadline:
                    raise AssertionError("redis-server never answered")
                await asyncio.sleep(0.1)
        finally:
            await client.aclose()

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(10)


@dataclass
class NodeProcess:
    id: str
    port: int
    redis_url: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "signaling",
                "run",
                "--dev",
                "--port",
                str(self.port),
                "--workers",
                "0",
                "--auto-create-rooms",
                "false",
                "--redis-url",
                self.redis_url,
                "--node-id",
                self.id,
                "--log-level",
                "WARNING",
            ],
            stdout=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@dataclass
class Fleet:
    redis: RedisServer
    nodes: list[NodeProcess]
    http: aiohttp.ClientSession
    clients: list[ConsultClient] = field(default_factory=list)

    def node(self, node_id: str) -> NodeProcess:
        return next(n for n in self.nodes if n.id == node_id)

    async def api(
        self, node: NodeProcess, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {DEV_API_KEY}"}
        async with self.http.request(method, node.url + path, json=body, headers=headers) as r:
            return r.status, await r.json()

    async def fleet_view(self, node: NodeProcess) -> list[str]:
        status, info = await self.api(node, "GET", "/api/v1/node")
        assert status == 200
        return sorted(n["id"] for n in info["fleet"])

    def client(self, node: NodeProcess, **kwargs: Any) -> ConsultClient:
        client = ConsultClient(node.url, **kwargs)
        self.clients.append(client)
        return client


def token(room: str, role: Role, sub: str, **claims: Any) -> str:
    return encode_token(
        secret=DEV_TOKEN_SECRET,
        room=room,
        sub=sub,
        role=role,
        name=f"Name {sub}",
        claims=claims or None,
    )


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is missing: `make test` installs it (Debian redis-server)")
    redis = RedisServer(_free_port())
    redis.start()
    nodes = [NodeProcess(f"n{i}", _free_port(), redis.url) for i in range(3)]
    http = aiohttp.ClientSession()
    fleet = Fleet(redis, nodes, http)
    try:
        await redis.ready()
        for node in nodes:
            node.start()
        expected = [n.id for n in nodes]

        async def all_seen() -> None:
            for node in nodes:
                while True:
                    with contextlib.suppress(aiohttp.ClientError, AssertionError):
                        if await fleet.fleet_view(node) == expected:
                            break
                    await asyncio.sleep(0.2)

        await asyncio.wait_for(all_seen(), 60)
        yield fleet
    finally:
        for client in fleet.clients:
            with contextlib.suppress(Exception):
                await client.close()
        await http.close()
        for node in nodes:
            node.kill()
        redis.stop()


async def _place(fleet: Fleet, entry: NodeProcess, prefix: str, count: int) -> dict[str, str]:
    """Create `count` rooms through `entry`: room id -> the node id it was placed on."""
    placed: dict[str, str] = {}
    for i in range(count):
        room = f"{prefix}-{i}"
        status, body = await fleet.api(entry, "POST", "/api/v1/rooms", {"id": room})
        assert status == 201, body
        placed[room] = body["node"]["id"]
    return placed


async def test_rooms_spread_by_load_and_any_node_reaches_a_room(fleet: Fleet) -> None:
    a, b, c = fleet.nodes
    placed = await _place(fleet, a, "spread", 6)
    per_node = collections.Counter(placed.values())
    assert set(per_node) == {"n0", "n1", "n2"} and max(per_node.values()) == 2, per_node
    for node in fleet.nodes:  # each node holds the rooms placed on it, no other
        status, rooms = await fleet.api(node, "GET", "/api/v1/rooms")
        assert status == 200
        assert sorted(r["id"] for r in rooms["rooms"]) == sorted(
            room for room, where in placed.items() if where == node.id
        )
    async with fleet.http.get(a.url + "/metrics") as r:
        metrics = await r.text()
    assert "consult_fleet_nodes 3.0" in metrics
    assert 'consult_fleet_placements_total{outcome="local"} 2.0' in metrics
    assert 'consult_fleet_placements_total{outcome="remote"} 4.0' in metrics
    assert 'consult_fleet_node_rooms{node="n1"}' in metrics and "spread-" not in metrics
    # The API works on any node: another node's room is answered by its node.
    room = next(r for r, where in placed.items() if where == "n1")
    status, info = await fleet.api(c, "GET", f"/api/v1/rooms/{room}")
    assert status == 200 and info["id"] == room
    status, again = await fleet.api(c, "POST", "/api/v1/rooms", {"id": room})
    assert status == 409, again  # one room per id in the whole fleet

    # A client that reaches the wrong node is sent to the room's node and joins there.
    doctor = fleet.client(c)
    joined = await doctor.connect(token(room, Role.DOCTOR, "doc-spread"))
    assert joined["type"] == "joined" and joined["room"] == room
    assert doctor.redirects == 1 and f":{b.port}/" in doctor.ws_url
    status, info = await fleet.api(a, "GET", f"/api/v1/rooms/{room}")
    assert [p["role"] for p in info["participants"]] == ["doctor"]

    # Ending it through a third node: gone from the fleet, its token refused everywhere.
    status, _ = await fleet.api(a, "DELETE", f"/api/v1/rooms/{room}")
    assert status == 200
    await doctor.wait_closed()
    late = fleet.client(a)
    with pytest.raises(JoinRefused):  # unknown room
        await late.connect(token(room, Role.DOCTOR, "doc-late"))
    assert late.close_code == 4007


async def test_a_drained_node_gets_no_new_room(fleet: Fleet) -> None:
    a, b, _ = fleet.nodes
    status, _ = await fleet.api(b, "POST", "/api/v1/node/drain")
    assert status == 200
    # the drain is in b's next stats (every 2 s)
    await _until_async(lambda: _draining(fleet, a, "n1"))
    placed = await _place(fleet, a, "drain", 4)
    assert "n1" not in placed.values(), placed
    assert collections.Counter(placed.values()) == {"n0": 2, "n2": 2}


async def _draining(fleet: Fleet, node: NodeProcess, node_id: str) -> bool:
    _, info = await fleet.api(node, "GET", "/api/v1/node")
    return any(n["id"] == node_id and n["draining"] for n in info["fleet"])


async def _until_async(predicate: Callable[[], Any], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.2)


async def _frames(client: ConsultClient, participant: str, kind: str, count: int) -> None:
    """`count` frames of `participant`'s track of `kind` decoded by `client`."""
    track = await client.wait_track(participant, kind, timeout_s=WAIT_S)
    for _ in range(count):
        await asyncio.wait_for(track.recv(), WAIT_S)


def _last_position(client: ConsultClient) -> int | None:
    waiting = client.received("waiting")
    return waiting[-1].get("position") if waiting else None


def reading() -> dict[str, Any]:
    return {"kind": "heart_rate", "value": 72, "unit": "bpm", "t": int(time.time() * 1000)}


async def test_a_node_killed_mid_consultation_hands_its_room_over(fleet: Fleet) -> None:
    """kill -9 the node of a live consultation: every client resumes on another node by
    itself, media flows again, and the chat, the telemetry and the waiting room are intact:
    not one message or record lost or duplicated, each waiting patient at its place."""
    entry = fleet.nodes[0]
    placed = await _place(fleet, entry, "move", 3)
    room = next(r for r, where in placed.items() if where != entry.id)
    holder = fleet.node(placed[room])

    doctor = fleet.client(entry, auto_reconnect=True)
    patient = fleet.client(entry, auto_reconnect=True)
    waiting = [fleet.client(entry, auto_reconnect=True) for _ in range(2)]
    await doctor.connect(token(room, Role.DOCTOR, "doc-move"))
    await patient.connect(token(room, Role.PATIENT, "pat-move", telemetry=True))
    for i, other in enumerate(waiting):
        await other.connect(token(room, Role.PATIENT, f"wait-move-{i}"))
    assert all(c.redirects == 1 for c in (doctor, patient, *waiting))
    await doctor.admit(patient.participant_id or "")
    await _until("admitted", lambda: patient.state == "admitted")
    await patient.publish(PatternVideoTrack(), AudioStreamTrack())
    pid = patient.participant_id or ""
    await _frames(doctor, pid, "video", 5)
    sent = []
    for i in range(5):
        sender = doctor if i % 2 else patient
        reply = await sender.chat(f"note {i}")
        assert reply["type"] == "ack"
        sent.append(f"note {i}")
    for seq in range(1, 4):
        reply = await patient.request("telemetry", seq=seq, readings=[reading()])
        assert reply["type"] == "ack" and reply["stored"] == 1
    positions = [_last_position(w) for w in waiting]
    assert positions == [1, 2]
    intruder = fleet.client(entry)  # kicked: barred from the room, on any node it moves to
    await intruder.connect(token(room, Role.PATIENT, "kicked-move"))
    await doctor.kick(intruder.participant_id or "")
    assert await intruder.wait_closed() == 4004
    ids = {c: c.participant_id for c in (doctor, patient, *waiting)}

    killed_at = time.monotonic()
    holder.kill()
    await _until("every client back", lambda: all(c.resumes >= 1 for c in ids), timeout=WAIT_S)
    assert all(c.participant_id == ids[c] for c in ids)  # the same participants
    assert all(c.received("joined")[-1].get("moved") for c in ids)
    assert all(holder.url.split("//")[1] not in c.ws_url for c in ids)
    await _until(
        "fresh media connections", lambda: all(c.reconnects >= 1 for c in (doctor, patient))
    )
    await _frames(doctor, pid, "video", 5)  # a fresh connection on the new node
    media_back_s = time.monotonic() - killed_at
    print(f"media back on the new node {media_back_s:.1f} s after the kill")

    history = await doctor.chat_history()
    assert [m["text"] for m in history["messages"]] == sent
    assert [m["id"] for m in history["messages"]] == [f"m{i}" for i in range(1, 6)]
    reply = await patient.chat("after the move")
    assert reply["type"] == "ack"
    history = await patient.chat_history()
    assert [m["id"] for m in history["messages"]][-1] == "m6"
    records = await doctor.request("telemetry-history", after=0)
    assert [r["seq"] for r in records["records"]] == [1, 2, 3]
    # A batch re-sent after the move (its ack lost) is acknowledged, not stored twice.
    reply = await patient.request("telemetry", seq=3, readings=[reading()])
    assert reply["stored"] == 0
    await _until("waiting places", lambda: [_last_position(w) for w in waiting] == [1, 2])
    assert all(w.state == "waiting" for w in waiting)
    again = fleet.client(entry)
    with pytest.raises(JoinRefused):
        await again.connect(token(room, Role.PATIENT, "kicked-move"))
    assert again.close_code == 4004
    new_holder = next(n for n in fleet.nodes if f":{n.port}/" in doctor.ws_url)
    status, info = await fleet.api(new_holder, "GET", f"/api/v1/rooms/{room}")
    assert status == 200
    assert sorted(p["id"] for p in info["participants"]) == sorted(str(i) for i in ids.values())


async def test_a_frozen_redis_stops_no_call_and_is_caught_up(fleet: Fleet) -> None:
    """redis-server frozen (SIGSTOP) for 10 s: a call in progress goes on (media and chat),
    a new room and its join work on the node asked, and once Redis answers again the node
    records the room it created meanwhile and the chat it kept."""
    entry = fleet.nodes[0]
    placed = await _place(fleet, entry, "freeze", 3)
    room = next(r for r, where in placed.items() if where == entry.id)
    doctor = fleet.client(entry)
    patient = fleet.client(entry)
    await doctor.connect(token(room, Role.DOCTOR, "doc-freeze"))
    await patient.connect(token(room, Role.PATIENT, "pat-freeze"))
    await doctor.admit(patient.participant_id or "")
    await _until("admitted", lambda: patient.state == "admitted")
    await patient.publish(PatternVideoTrack(), AudioStreamTrack())
    pid = patient.participant_id or ""
    await _frames(doctor, pid, "video", 3)

    assert fleet.redis.proc is not None
    os.kill(fleet.redis.proc.pid, signal.SIGSTOP)
    try:
        frozen_at = time.monotonic()
        reply = await doctor.chat("while redis is frozen")
        assert reply["type"] == "ack"
        await _frames(doctor, pid, "video", 10)
        status, body = await fleet.api(entry, "POST", "/api/v1/rooms", {"id": "during-outage"})
        assert status == 201 and body["node"]["id"] == entry.id
        late = fleet.client(entry)
        joined = await late.connect(token("during-outage", Role.DOCTOR, "doc-outage"))
        assert joined["type"] == "joined" and late.redirects == 0
        await asyncio.sleep(max(0.0, 10 - (time.monotonic() - frozen_at)))
        await _frames(doctor, pid, "video", 10)  # still flowing after 10 s
    finally:
        os.kill(fleet.redis.proc.pid, signal.SIGCONT)

    check = aioredis.Redis.from_url(fleet.redis.url, decode_responses=True)
    try:

        async def caught_up() -> bool:
            node = await check.hget("consult:room:during-outage", "node")
            chat = await check.xlen(f"consult:room:{room}:chat")
            return bool(node == entry.id and chat == 1)

        await _until_async(caught_up)
    finally:
        await check.aclose()
    # and the other nodes reach the room made during the outage
    status, info = await fleet.api(fleet.nodes[2], "GET", "/api/v1/rooms/during-outage")
    assert status == 200 and info["id"] == "during-outage"


async def test_a_drain_deadline_or_a_stop_moves_rooms_with_their_clients(fleet: Fleet) -> None:
    """`drain {move_after_s}`: at the deadline the node's rooms move to other nodes; their
    clients are told `redirect`, resume there by themselves (same participants, a fresh media
    connection) and find the chat they had. The drained node ends up with no room. A node
    stopped with SIGTERM moves its rooms the same way before it exits."""
    entry = fleet.nodes[0]
    placed = await _place(fleet, entry, "handover", 3)
    room = next(r for r, where in placed.items() if where != entry.id)
    holder = fleet.node(placed[room])
    doctor = fleet.client(entry, auto_reconnect=True)
    patient = fleet.client(entry, auto_reconnect=True)
    await doctor.connect(token(room, Role.DOCTOR, "doc-handover"))
    await patient.connect(token(room, Role.PATIENT, "pat-handover"))
    await doctor.admit(patient.participant_id or "")
    await _until("admitted", lambda: patient.state == "admitted")
    await patient.publish(PatternVideoTrack(), AudioStreamTrack())
    pid = patient.participant_id or ""
    await _frames(doctor, pid, "video", 3)
    assert (await doctor.chat("before the move"))["type"] == "ack"
    ids = {c: c.participant_id for c in (doctor, patient)}

    status, reply = await fleet.api(holder, "POST", "/api/v1/node/drain", {"move_after_s": 1})
    assert status == 200 and reply["move_after_s"] == 1
    await _until("both moved", lambda: all(c.received("joined")[-1].get("moved") for c in ids))
    assert all(c.participant_id == ids[c] for c in ids)
    assert all(f":{holder.port}/" not in c.ws_url for c in ids)
    await _until("fresh media connections", lambda: all(c.reconnects >= 1 for c in ids))
    await _frames(doctor, pid, "video", 5)
    history = await patient.chat_history()
    assert [m["text"] for m in history["messages"]] == ["before the move"]
    status, rooms = await fleet.api(holder, "GET", "/api/v1/rooms")
    assert rooms["rooms"] == [r for r in rooms["rooms"] if r["id"] != room]
    status, bad = await fleet.api(holder, "POST", "/api/v1/node/drain", {"move_after_s": "soon"})
    assert status == 400 and bad["error"] == "bad-request"

    # A node that stops (SIGTERM) hands its rooms over the same way, before it goes.
    stopping = next(n for n in fleet.nodes if f":{n.port}/" in doctor.ws_url)
    last = next(n for n in fleet.nodes if n not in (holder, stopping))
    before = {c: c.reconnects for c in ids}
    assert stopping.proc is not None
    stopping.proc.send_signal(signal.SIGTERM)
    await _until("moved again", lambda: all(c.reconnects > before[c] for c in ids))
    assert all(f":{last.port}/" in c.ws_url for c in ids)
    assert all(c.participant_id == ids[c] for c in ids)
    await _frames(doctor, pid, "video", 5)
    assert stopping.proc.wait(WAIT_S) == 0


def test_consult_js_follows_redirects_and_comes_back_through_the_entry(tmp_path: Path) -> None:
    """consult.js (tests/js/redirect.mjs, pure client logic on a fake socket): a `redirect`
    reply to join is followed; a pushed one sends the resume to the room's new node, where
    `moved` starts a fresh peer connection; a node that refuses the resume sends the client
    back through its entry address; a join closed with 1013 (the fleet cannot say where the
    room is) is retried and leaves no stale refusal behind."""
    result = run_client_script("redirect.mjs", tmp_path)
    assert result["ok"], result
    assert len(result["checks"]) == 10
