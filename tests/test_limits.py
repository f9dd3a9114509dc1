"""Limits (issue 11, items 1-2) against a real node: what one participant, one socket, one
room and the node may send or hold, with the errors and close codes of docs/protocol.md."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from signaling.client import ConsultClient, JoinRefused, ServerError
from signaling.ratelimit import Rate, TokenBucket

from .client_js import run_client_script
from .conftest import Server, ServerFactory

Clients = Callable[[Server], ConsultClient]
FAST_CHAT = {"chat_rate": 10_000.0, "chat_burst": 10_000}  # tests that fill a room's chat


def size(msg: dict[str, Any]) -> int:
    """Bytes of a server message as the server encodes it (compact, ASCII-escaped)."""
    return len(json.dumps(msg, separators=(",", ":")))


async def join(
    server: Server, clients: Clients, role: str, *, room: str = "r1", **token: Any
) -> ConsultClient:
    client = clients(server)
    await client.connect(server.token(role, room=room, **token))
    return client


async def refused(server: Server, clients: Clients, token: str) -> JoinRefused:
    client = clients(server)
    with pytest.raises(JoinRefused) as info:
        await client.connect(token)
    return info.value


async def error_of(call: Any) -> str:
    with pytest.raises(ServerError) as info:
        await call
    return info.value.code


def now_ms() -> int:
    return int(time.time() * 1000)


# -- the token bucket (pure logic) -------------------------------------------------------------


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    bucket = TokenBucket(Rate(2.0, 3), now=0.0)
    assert [bucket.take(now=0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(now=0.5)  # one token back after 1/rate
    assert not bucket.take(now=0.5)
    assert [bucket.take(now=100.0) for _ in range(4)] == [True, True, True, False]  # capped
    assert not bucket.take(5, now=200.0)  # more than the burst never goes through
    with pytest.raises(ValueError):
        Rate(0.0, 1)


# -- item 1: chat and telemetry -----------------------------------------------------------------


async def test_chat_flood_is_rate_limited_and_the_session_stays_usable(
    make_server: ServerFactory, clients: Clients
) -> None:
    server = await make_server(chat_rate=0.01, chat_burst=5)
    doctor = await join(server, clients, "doctor")
    await doctor.wait_state("admitted")
    codes = []
    for i in range(12):
        try:
            await doctor.chat(f"message {i}")
            codes.append("ack")
        except ServerError as exc:
            codes.append(exc.code)
    assert codes == ["ack"] * 5 + ["rate-limited"] * 7
    await doctor.ping()  # the session goes on
    assert len(server.hub.get("r1").chat) == 5  # type: ignore[union-attr]
    # over the data channel's path too (same participant, same bucket): refused, not stored
    consultation = server.hub.get("r1")
    assert consultation is not None
    session = consultation.sessions[doctor.participant_id or ""]
    consultation._on_media_data(session, json.dumps({"type": "chat", "text": "over dc"}))
    error = await doctor.wait_for("error", lambda m: m["ref"] is None)
    assert error["code"] == "rate-limited"
    assert len(consultation.chat) == 5


async def test_a_room_keeps_a_bounded_chat_and_drops_the_oldest(
    make_server: ServerFactory, clients: Clients
) -> None:
    server = await make_server(room_chat_messages=20, room_chat_bytes=10_000, **FAST_CHAT)
    doctor = await join(server, clients, "doctor")
    await doctor.wait_state("admitted")
    for i in range(30):
        await doctor.chat(f"short {i}")
    _, info = await server.api("GET", "/api/v1/rooms/r1")
    assert info["chat_messages"] == 20  # the count bound
    patient = await join(server, clients, "observer")
    room = await patient.wait_for("room")
    assert [m["id"] for m in room["chat"]] == [f"m{i}" for i in range(11, 31)]
    assert room["chat_more"] is False
    for _ in range(10):
        await doctor.chat("x" * 3000)  # about 3.1 KB each: the byte bound keeps 3 of them
    kept = server.hub.get("r1").chat  # type: ignore[union-attr]
    assert len(kept) == 3 and kept.bytes <= 10_000
    assert [m["id"] for m in kept.history()] == ["m38", "m39", "m40"]


async def test_room_and_resume_replies_are_bounded_and_older_chat_comes_by_pages(
    make_server: ServerFactory, clients: Clients
) -> None:
    server = await make_server(**FAST_CHAT)
    limit = server.config.max_message_bytes
    doctor = await join(server, clients, "doctor")
    await doctor.wait_state("admitted")
    await doctor.wait_for("room")
    for i in range(100):  # 2000 characters escaped to 6 bytes each: 12 KB a message
        await doctor.chat(f"{i} " + "\u00e9" * 2000)
    kept = server.hub.get("r1").chat  # type: ignore[union-attr]
    assert 50 < len(kept) < 100  # the 1 MiB room bound dropped the oldest
    newcomer = await join(server, clients, "observer")
    room = await newcomer.wait_for("room")
    assert size(room) <= limit
    assert room["chat"] and room["chat"][-1]["id"] == "m100" and room["chat_more"] is True
    # page back to the oldest message kept: every page within the limit, nothing twice
    have = list(room["chat"])
    more = room["chat_more"]
    while more:
        page = await newcomer.chat_history(before=have[0]["id"])
        assert size(page) <= limit and page["messages"]
        have = page["messages"] + have
        more = page["more"]
    assert [m["id"] for m in have] == [m["id"] for m in kept.history()]
    assert (await newcomer.chat_history(before=have[0]["id"]))["messages"] == []
    small = await newcomer.chat_history(limit=1)
    assert [m["id"] for m in small["messages"]] == ["m100"] and small["more"]
    # a resume gets the same bounded state
    await newcomer.drop()
    assert (await newcomer.resume())["resumed"] is True
    again = await newcomer.wait_for("room")
    assert size(again) <= limit and again["chat"][-1]["id"] == "m100"
    # bad requests get clear errors
    assert await error_of(newcomer.chat_history(before="nope")) == "bad-request"
    assert await error_of(newcomer.chat_history(limit=0)) == "bad-request"


async def test_a_chat_too_large_for_one_message_is_refused(
    make_server: ServerFactory, clients: Clients
) -> None:
    server = await make_server(max_message_bytes=8192)
    doctor = await join(server, clients, "doctor")
    await doctor.wait_state("admitted")
    # 7.5 KB escaped: the request fits in 8 KB, the message with its envelope would not
    assert await error_of(doctor.chat("\u00e9" * 1250)) == "too-large"
    await doctor.chat("\u00e9" * 1000)
    assert [m["message"]["id"] for m in doctor.received("chat")] == ["m1"]


async def test_telemetry_is_rate_limited_per_participant(
    make_server: ServerFactory, clients: Clients
) -> None:
    server = await make_server(telemetry_rate=0.01, telemetry_burst=100)
    device = await join(server, clients, "device")
    await device.wait_state("admitted")
    reading = {"kind": "heart_rate", "value": 72, "unit": "bpm", "t": now_ms()}
    await device.request("telemetry", seq=1, readings=[reading] * 100)  # the whole burst
    code = await error_of(device.request("telemetry", seq=2, readings=[reading]))
    assert code == "rate-limited"
    await device.ping()
    assert len(server.hub.get("r1").telemetry) == 100  # type: ignore[union-attr]
    # a device of the HTTP API has its own bucket: 429 once it is spent
    status, created = await server.api("POST", "/api/v1/rooms/r1/devices", json={})
    assert status == 201
    path = f"/api/v1/rooms/r1/devices/{created['id']}/telemetry"
    status, _ = await server.api("POST", path, json={"seq": 1, "readings": [reading] * 100})
    assert status == 200
    status, body = await server.api("POST", path, json={"seq": 2, "readings": [reading]})
    assert (status, body["error"]) == (429, "rate-limited")
    assert len(server.hub.get("r1").telemetry) == 200  # type: ignore[union-attr]


async def test_telemetry_history_pages_stay_within_the_message_limit(
    make_server: ServerFactory, clients: Clients
) -> None:
    server = await make_server(max_message_bytes=16384)
    doctor = await join(server, clients, "doctor")
    device = await join(server, clients, "device")
    await device.wait_state("admitted")
    rng = random.Random(11)
    for n in range(8):  # an ECG strip of 1000 samples is about 10 KB of JSON
        samples = [round(rng.uniform(-9, 9), 6) for _ in range(1000)]
        reading = {"kind": "ecg", "rate": 500, "unit": "mV", "t": now_ms(), "samples": samples}
        await device.request("telemetry", seq=n + 1, readings=[reading])
    after, seen = 0, []
    while True:
        reply = await doctor.request("telemetry-history", after=after)
        assert size(reply) <= 16384
        if not reply["records"]:
            break
        seen += [r["seq"] for r in reply["records"]]
        after = reply["records"][-1]["seq"]
    assert seen == list(range(1, 9))


async def test_a_room_keeps_a_bounded_telemetry_log(
    make_server: ServerFactory, clients: Clients
) -> None:
    server = await make_server(room_telemetry_bytes=2000)
    device = await join(server, clients, "device")
    await device.wait_state("admitted")
    reading = {"kind": "heart_rate", "value": 72, "unit": "bpm", "t": now_ms()}
    await device.request("telemetry", seq=1, readings=[reading] * 10)  # about 1.2 KB
    with pytest.raises(ServerError) as info:
        await device.request("telemetry", seq=2, readings=[reading] * 10)
    assert (info.value.code, info.value.message) == (
        "bad-telemetry",
        "the room's telemetry log is full",
    )
    log = server.hub.get("r1").telemetry  # type: ignore[union-attr]
    assert len(log) == 10 and log.bytes <= 2000


# -- item 2: sockets, rooms and the node -------------------------------------------------------


async def test_a_socket_over_its_rate_gets_errors_and_stays_open(
    make_server: ServerFactory, clients: Clients
) -> None:
    server = await make_server(ws_rate=0.01, ws_burst=10, ws_flood=50)
    doctor = await join(server, clients, "doctor")
    for i in range(30):
        await doctor.send({"type": "ping", "id": f"p{i}"})
    await doctor.wait_for("error", lambda m: m["ref"] == "p29")
    assert len(doctor.received("pong")) == 10
    errors = [m for m in doctor.received("error") if m["code"] == "rate-limited"]
    assert [m["ref"] for m in errors] == [f"p{i}" for i in range(10, 30)]
    assert doctor.ws is not None and not doctor.ws.closed


async def test_a_deeply_nested_frame_over_the_rate_is_refused_and_the_socket_stays(
    make_server: ServerFactory, clients: Clients
) -> None:
    """A refused frame is parsed only for its id: nesting must not raise out of the loop."""
    server = await make_server(ws_rate=0.01, ws_burst=1, ws_flood=50)
    doctor = await join(server, clients, "doctor")
    await doctor.send({"type": "ping", "id": "p0"})
    assert doctor.ws is not None
    await doctor.ws.send_str("[" * 2000 + "]" * 2000)
    await doctor.send({"type": "ping", "id": "p1"})
    await doctor.wait_for("error", lambda m: m["ref"] == "p1")
    refused = [m for m in doctor.received("error") if m["code"] == "rate-limited"]
    assert [m["ref"] for m in refused] == [None, "p1"]
    assert not doctor.ws.closed


async def test_a_socket_flood_is_closed_and_another_room_keeps_working(
    make_server: ServerFactory, clients: Clients
) -> None:
    server = await make_server(ws_rate=50.0, ws_burst=50, ws_flood=100, flood_penalty_s=1.0)
    flooder = await join(server, clients, "doctor", room="a")
    other = await join(server, clients, "doctor", room="b", sub="other")
    ping = json.dumps({"type": "ping", "id": "x"})
    sent = 0
    assert flooder.ws is not None
    with pytest.raises((ConnectionError, RuntimeError)):
        for _ in range(100_000):
            await flooder.ws.send_str(ping)  # as fast as the socket takes them
            sent += 1
            if flooder.ws.closed:
                raise ConnectionError("closed")
            if sent % 500 == 0:
                await other.ping()  # the other room is answered meanwhile
    assert await flooder.wait_closed(timeout_s=30) == 4009
    assert flooder.close_reason == "rate limit"
    assert sent < 100_000
    await other.ping()
    # the flooder's session stays for the grace period like any dropped socket, but its user
    # may not come back at once (a reconnect storm costs the node a refusal each)
    assert flooder.participant_id in server.hub.get("a").sessions  # type: ignore[union-attr]
    again = await refused(server, clients, server.token("doctor", room="a"))
    assert (again.code, again.reason) == (4009, "rate limit")
    colleague = await join(server, clients, "doctor", room="a", sub="colleague")
    await colleague.ping()


async def test_room_and_participant_caps_refuse_with_documented_errors(
    make_server: ServerFactory, clients: Clients
) -> None:
    server = await make_server(max_rooms=2, max_room_participants=2, max_node_participants=3)
    assert (await server.api("POST", "/api/v1/rooms", json={"id": "a"}))[0] == 201
    assert (await server.api("POST", "/api/v1/rooms", json={"id": "b"}))[0] == 201
    status, body = await server.api("POST", "/api/v1/rooms", json={"id": "c"})
    assert (status, body["error"]) == (429, "node-full")
    error = await refused(server, clients, server.token("doctor", room="c"))  # auto-create
    assert (error.code, error.reason) == (4010, "node is full (rooms)")
    doctor = await join(server, clients, "doctor", room="a")
    await join(server, clients, "patient", room="a")  # waiting: counts too
    error = await refused(server, clients, server.token("patient", room="a", sub="p2"))
    assert (error.code, error.reason) == (4007, "room is full")
    status, body = await server.api("POST", "/api/v1/rooms/a/devices", json={})
    assert (status, body["error"]) == (429, "room-full")
    await join(server, clients, "doctor", room="b", sub="d2")  # the node's third
    error = await refused(server, clients, server.token("observer", room="b"))
    assert (error.code, error.reason) == (4010, "node is full (participants)")
    status, body = await server.api("POST", "/api/v1/rooms/b/devices", json={})
    assert (status, body["error"]) == (429, "node-full")
    await doctor.ping()  # the refusals changed nothing for those in
    assert len(server.hub.consultations) == 2
    _, node = await server.api("GET", "/api/v1/node")
    assert node["participants"] == 3
    # a join that would auto-create a room on a node full of participants creates nothing
    small = await make_server(max_node_participants=1)
    await join(small, clients, "doctor", room="x")
    error = await refused(small, clients, small.token("doctor", room="y", sub="d3"))
    assert (error.code, error.reason) == (4010, "node is full (participants)")
    assert set(small.hub.consultations) == {"x"}


async def test_limit_options_come_from_flags_and_env() -> None:
    import argparse

    from signaling.config import add_run_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    args = parser.parse_args(["--dev", "--chat-rate", "3.5", "--max-rooms", "7"])
    config = config_from_args(args, env={"CONSULT_WS_FLOOD": "40"})
    assert (config.chat_rate, config.max_rooms, config.ws_flood) == (3.5, 7, 40)
    with pytest.raises(ValueError):
        config_from_args(parser.parse_args(["--dev", "--ws-rate", "0"]), env={})


async def test_a_flooding_socket_does_not_stop_the_loop_between_messages(
    make_server: ServerFactory, clients: Clients
) -> None:
    """Frames buffered on one socket are handled one per loop turn: a task of another room
    runs between them (counted, not timed)."""
    server = await make_server(ws_rate=10_000.0, ws_burst=10_000, ws_flood=10_000)
    flooder = await join(server, clients, "doctor", room="a")
    turns = 0
    running = True

    async def spin() -> None:
        nonlocal turns
        while running:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(spin())
    assert flooder.ws is not None
    await flooder.ping()
    before = turns
    for i in range(2000):
        await flooder.ws.send_str(json.dumps({"type": "ping", "id": f"f{i}"}))
    await flooder.wait_for("pong", lambda m: m["ref"] == "f1999", timeout_s=60)
    running = False
    await task
    assert turns - before >= 2000  # at least one turn of the loop per message handled


def test_consult_js_pages_chat_history(tmp_path: Path) -> None:
    """consult.js's loadEarlierChat()/chatMore (tests/js/chat_history.mjs: pure client logic
    with a fake socket serving pages as the node does)."""
    result = run_client_script("chat_history.mjs", tmp_path)
    assert result["ok"], result
    assert result["checks"][-1]["what"] == "no client errors"
