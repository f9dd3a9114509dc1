"""The WebSocket protocol against a real node: real sockets, real tokens, no mocks."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from mediaserver.api import GetRoom
from signaling.app import CONFIG
from signaling.client import ConsultClient, JoinRefused, ServerError
from signaling.ws import HANDLERS

from .conftest import Server, ServerFactory

Clients = Callable[[Server], ConsultClient]

ROOM_DATA = {"room", "chat", "participant-joined", "participant-left", "offer", "knock"}


async def join(
    server: Server, clients: Clients, role: str, *, room: str = "r1", **token: Any
) -> ConsultClient:
    client = clients(server)
    await client.connect(server.token(role, room=room, **token))
    return client


async def admitted_pair(server: Server, clients: Clients) -> tuple[ConsultClient, ConsultClient]:
    doctor = await join(server, clients, "doctor")
    await doctor.wait_state("admitted")
    patient = await join(server, clients, "patient")
    knock = await doctor.wait_for("knock")
    await doctor.admit(knock["participant"]["id"])
    await patient.wait_state("admitted")
    await patient.wait_for("room")
    return doctor, patient


async def refused(server: Server, clients: Clients, token: str, **join: Any) -> JoinRefused:
    client = clients(server)
    with pytest.raises(JoinRefused) as info:
        if join:
            await client.connect_raw({"type": "join", "id": "1", "token": token, **join})
        else:
            await client.connect(token)
    return info.value


# -- refusals at join -------------------------------------------------------------------------


async def test_bad_signature_refused_and_nothing_changes(server: Server, clients: Clients) -> None:
    error = await refused(server, clients, server.token("doctor", secret="not-the-secret"))
    assert (error.code, error.reason) == (4001, "bad signature")
    assert server.hub.consultations == {}


async def test_expired_token_refused(server: Server, clients: Clients) -> None:
    error = await refused(server, clients, server.token("doctor", ttl_s=-120))
    assert (error.code, error.reason) == (4001, "token expired")
    assert server.hub.consultations == {}


async def test_malformed_token_refused(server: Server, clients: Clients) -> None:
    error = await refused(server, clients, "abc.def")
    assert (error.code, error.reason) == (4001, "malformed token")


async def test_other_room_token_refused(server: Server, clients: Clients) -> None:
    doctor = await join(server, clients, "doctor", room="r2")
    error = await refused(server, clients, server.token("patient", room="r1"), room="r2")
    assert (error.code, error.reason) == (4001, "wrong room")
    assert set(server.hub.consultations) == {"r2"}
    assert len(server.hub.get("r2").sessions) == 1  # type: ignore[union-attr]
    await doctor.ping()


async def test_unknown_room_refused_without_auto_create(
    make_server: ServerFactory, clients: Clients
) -> None:
    server = await make_server(auto_create_rooms=False)
    error = await refused(server, clients, server.token("doctor", room="nope"))
    assert (error.code, error.reason) == (4007, "unknown room")


async def test_first_message_must_be_join(server: Server, clients: Clients) -> None:
    for first in ('{"type":"ping","id":"1"}', "{broken", '{"type":"chat","id":"1","text":"x"}'):
        client = clients(server)
        with pytest.raises(JoinRefused) as info:
            await client.connect_raw_text(first)
        assert info.value.code == 4002
    assert server.hub.consultations == {}


# -- bad input after join: error, and the session stays usable -------------------------------


async def expect_error(client: ConsultClient, raw: str, code: str) -> dict[str, Any]:
    await client.send_raw(raw)
    error = await client.wait_for("error", lambda m: m["code"] == code)
    assert (await client.ping())["type"] == "pong"
    return error


async def test_bad_messages_get_errors_and_session_survives(
    server: Server, clients: Clients
) -> None:
    doctor = await join(server, clients, "doctor")
    await expect_error(doctor, "{not json", "bad-json")
    error = await expect_error(doctor, '{"type":"teleport","id":"x1"}', "unknown-type")
    assert error["ref"] == "x1"
    big = json.dumps({"type": "chat", "id": "x2", "text": "a" * 70_000})
    await expect_error(doctor, big, "too-large")
    await expect_error(doctor, '{"type":"chat","id":"x3"}', "bad-request")
    await expect_error(doctor, '{"type":"admit","id":"x4"}', "bad-request")
    await expect_error(doctor, '{"type":"admit","id":"x5","participant":"p_x"}', "not-found")
    error = await expect_error(doctor, '{"type":"offer","id":"x6","sdp":"garbage"}', "bad-sdp")
    assert error["ref"] == "x6"
    await expect_error(doctor, '{"type":"join","id":"x7","token":"t"}', "already-joined")
    assert doctor.state == "admitted"


async def test_internal_error_is_contained(
    server: Server, clients: Clients, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    async def explode(*_: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setitem(HANDLERS, "publish", explode)
    doctor = await join(server, clients, "doctor")
    other = await join(server, clients, "doctor", room="r2")
    with pytest.raises(ServerError) as info:
        await doctor.request("publish", tracks=[{"kind": "audio"}])
    assert info.value.code == "internal"
    await doctor.ping()
    await other.chat("unaffected")
    assert (await other.wait_for("chat"))["message"]["text"] == "unaffected"


# -- waiting room -----------------------------------------------------------------------------


@pytest.mark.workers(0)  # reaches the in-process media objects
async def test_waiting_room_admit(server: Server, clients: Clients) -> None:
    doctor = await join(server, clients, "doctor", name="Dr Alice")
    await doctor.chat("before the patient")
    patient = await join(server, clients, "patient", name="Pat Bob")
    assert patient.state == "waiting"
    assert (await patient.wait_for("waiting"))["position"] == 1
    knock = await doctor.wait_for("knock")
    pid = knock["participant"]["id"]
    assert knock["participant"] == {"id": pid, "role": "patient", "name": "Pat Bob"}
    assert pid not in server.media_room("r1").participants

    await doctor.chat("while the patient waits")
    await doctor.wait_for("chat", lambda m: m["message"]["text"] == "while the patient waits")
    await patient.ping()
    assert not [m for m in patient.messages if m["type"] in ROOM_DATA]

    await doctor.admit(pid)
    await patient.wait_state("admitted")
    snapshot = await patient.wait_for("room")
    assert [m["type"] for m in patient.messages if m["type"] in ("admitted", "room")] == [
        "admitted",
        "room",
    ]
    texts = [m["text"] for m in snapshot["chat"]]
    assert texts == ["before the patient", "while the patient waits"]
    assert {p["id"] for p in snapshot["participants"]} == {pid, doctor.participant_id}
    assert "waiting" not in snapshot
    joined = await doctor.wait_for("participant-joined")
    assert joined["participant"]["id"] == pid
    assert pid in server.media_room("r1").participants


async def test_waiting_room_deny(server: Server, clients: Clients) -> None:
    doctor = await join(server, clients, "doctor")
    patient = await join(server, clients, "patient")
    knock = await doctor.wait_for("knock")
    await doctor.deny(knock["participant"]["id"])
    assert await patient.wait_closed() == 4003
    assert patient.state == "denied"
    assert [m["type"] for m in patient.messages] == ["joined", "waiting", "denied"]
    left = await doctor.wait_for("participant-left")
    assert left["reason"] == "denied"
    room = server.hub.get("r1")
    assert room is not None and list(room.sessions) == [doctor.participant_id]


async def test_only_doctors_admit(server: Server, clients: Clients) -> None:
    await join(server, clients, "doctor")
    device = await join(server, clients, "device")
    patient = await join(server, clients, "patient")
    assert device.state == "admitted"
    with pytest.raises(ServerError) as info:
        await device.admit(patient.participant_id or "")
    assert info.value.code == "forbidden"
    with pytest.raises(ServerError) as info:
        await patient.chat("hello?")
    assert info.value.code == "not-admitted"


async def test_late_doctor_sees_waiting_list(server: Server, clients: Clients) -> None:
    patient = await join(server, clients, "patient")
    doctor = await join(server, clients, "doctor")
    snapshot = await doctor.wait_for("room")
    assert [w["id"] for w in snapshot["waiting"]] == [patient.participant_id]


async def test_room_without_waiting_room(server: Server, clients: Clients) -> None:
    status, _ = await server.api(
        "POST", "/api/v1/rooms", json={"id": "open", "waiting_room": False}
    )
    assert status == 201
    patient = await join(server, clients, "patient", room="open")
    assert patient.state == "admitted"


# -- chat, resume -----------------------------------------------------------------------------


async def test_chat_delivered_and_replayed_after_resume(server: Server, clients: Clients) -> None:
    doctor, patient = await admitted_pair(server, clients)
    ack = await patient.chat("hello doctor")
    assert ack["type"] == "ack"
    for client in (doctor, patient):
        message = (await client.wait_for("chat"))["message"]
        assert message["text"] == "hello doctor"
        assert message["from"] == patient.participant_id
        assert message["id"] and isinstance(message["ts"], int)

    pid = patient.participant_id
    await patient.drop()
    await doctor.chat("are you there?")
    joined = await patient.resume()
    assert joined["resumed"] is True and joined["participant"]["id"] == pid
    snapshot = await patient.wait_for("room", lambda m: len(m["chat"]) == 2)
    assert [m["text"] for m in snapshot["chat"]] == ["hello doctor", "are you there?"]
    ids = [m["id"] for m in snapshot["chat"]]
    assert len(set(ids)) == 2
    assert not doctor.received("participant-left")
    await patient.chat("back")
    await doctor.wait_for("chat", lambda m: m["message"]["text"] == "back")


async def test_resume_keeps_waiting_position(server: Server, clients: Clients) -> None:
    doctor = await join(server, clients, "doctor")
    first = await join(server, clients, "patient", sub="u1")
    second = await join(server, clients, "patient", sub="u2")
    assert (await second.wait_for("waiting"))["position"] == 2
    await first.drop()
    joined = await first.resume()
    assert joined["resumed"] is True and joined["state"] == "waiting"
    assert (await first.wait_for("waiting", lambda m: True))["position"] == 1
    knocks = [m["participant"]["id"] for m in doctor.received("knock")]
    assert knocks == [first.participant_id, second.participant_id]


async def test_a_resume_whose_reply_was_lost_can_be_made_again(
    server: Server, clients: Clients
) -> None:
    doctor, patient = await admitted_pair(server, clients)
    pid, token = patient.participant_id, patient.resume_token
    await patient.drop()
    # The patient's next socket carries the resume, and dies before `joined` (with the new
    # token) reaches it: `lost` stands for that socket.
    lost = clients(server)
    assert (await lost.connect(server.token("patient"), resume=token))["resumed"] is True
    await lost.drop()
    joined = await patient.resume()  # with the token it still has
    assert joined["resumed"] is True and joined["participant"]["id"] == pid
    assert joined["state"] == "admitted"  # not back in the waiting room
    assert not doctor.received("participant-left")


async def test_resume_token_superseded_and_bound(server: Server, clients: Clients) -> None:
    doctor = await join(server, clients, "doctor")
    stale = doctor.resume_token
    await doctor.drop()
    await doctor.resume()
    await doctor.drop()
    await doctor.resume()  # presents the token the first resume gave: `stale` is gone
    other = clients(server)
    joined = await other.connect(server.token("doctor"), resume=stale)
    assert joined["resumed"] is False  # a superseded token gives a fresh join...
    assert await doctor.wait_closed() == 4006  # ...which replaces the user's old session
    thief = clients(server)
    joined = await thief.connect(
        server.token("doctor", sub="someone-else"), resume=other.resume_token
    )
    assert joined["resumed"] is False
    await other.drop()
    assert (await other.resume())["resumed"] is True  # the owner's token survived the attempt


async def test_resume_replaces_open_socket(server: Server, clients: Clients) -> None:
    doctor = await join(server, clients, "doctor")
    second = clients(server)
    joined = await second.connect(server.token("doctor"), resume=doctor.resume_token)
    assert joined["resumed"] is True
    assert await doctor.wait_closed() == 4006
    await second.ping()


async def test_fresh_join_replaces_the_same_users_session(server: Server, clients: Clients) -> None:
    doctor, patient = await admitted_pair(server, clients)
    old_id = patient.participant_id
    await patient.drop()  # in its grace period, and its resume token is lost
    again = await join(server, clients, "patient")  # waits again: a new session
    left = await doctor.wait_for("participant-left")
    assert left == {"type": "participant-left", "participant": old_id, "reason": "replaced"}
    consultation = server.hub.get("r1")
    assert consultation is not None
    assert [s.id for s in consultation.sessions.values() if s.sub == "user-patient"] == [
        again.participant_id
    ]
    assert old_id != again.participant_id


async def test_vanished_peer_removed_after_grace(
    make_server: ServerFactory, clients: Clients
) -> None:
    server = await make_server(resume_grace_s=0.5)
    doctor, patient = await admitted_pair(server, clients)
    pid = patient.participant_id
    await patient.drop()
    left = await doctor.wait_for("participant-left")
    assert left == {"type": "participant-left", "participant": pid, "reason": "timeout"}
    joined = await patient.resume()
    assert joined["resumed"] is False and joined["participant"]["id"] != pid


# -- kick, end, leave -------------------------------------------------------------------------


@pytest.mark.workers(0)  # reaches the in-process media objects
async def test_kick(server: Server, clients: Clients) -> None:
    doctor, patient = await admitted_pair(server, clients)
    await doctor.kick(patient.participant_id or "")
    assert await patient.wait_closed() == 4004
    assert patient.state == "kicked"
    left = await doctor.wait_for("participant-left")
    assert left["reason"] == "kicked"
    assert patient.participant_id not in server.media_room("r1").participants


async def test_end(server: Server, clients: Clients) -> None:
    doctor, patient = await admitted_pair(server, clients)
    waiting = await join(server, clients, "patient", sub="u-late")
    await doctor.end()
    for client in (doctor, patient, waiting):
        assert await client.wait_closed() == 4005
        assert (await client.wait_for("ended"))["reason"] == "ended"
    assert server.hub.get("r1") is None  # gone at once for signaling
    for _ in range(100):  # its media room closes in the background (a round trip to a worker)
        if server.hub.plane.query(GetRoom(room_id="r1")) is None:
            break
        await asyncio.sleep(0.1)
    assert server.hub.plane.query(GetRoom(room_id="r1")) is None


async def test_leave(server: Server, clients: Clients) -> None:
    doctor, patient = await admitted_pair(server, clients)
    await patient.leave()
    assert patient.close_code == 1000
    left = await doctor.wait_for("participant-left")
    assert left["reason"] == "left"
    with pytest.raises(ServerError) as info:
        await doctor.kick(patient.participant_id or "")
    assert info.value.code == "not-found"


# -- isolation, privacy -----------------------------------------------------------------------


async def test_rooms_are_isolated(server: Server, clients: Clients) -> None:
    doc_a = await join(server, clients, "doctor", room="a", sub="da")
    pat_a = await join(server, clients, "patient", room="a", sub="pa")
    doc_b = await join(server, clients, "doctor", room="b", sub="db")
    pat_b = await join(server, clients, "patient", room="b", sub="pb")
    with pytest.raises(ServerError) as info:
        await doc_a.admit(pat_b.participant_id or "")  # another room's patient
    assert info.value.code == "not-found"
    await doc_a.admit(pat_a.participant_id or "")
    await pat_a.wait_state("admitted")
    await doc_a.chat("room a only")
    await pat_a.wait_for("chat")
    await doc_a.send_raw("{bad")
    await doc_a.end()
    await pat_a.wait_closed()
    await doc_b.ping()
    assert pat_b.state == "waiting"
    for client in (doc_b, pat_b):
        assert not [m for m in client.messages if m["type"] in ("chat", "ended", "error")]
        assert not [
            m for m in client.received("knock") if m["participant"]["id"] != pat_b.participant_id
        ]
    assert set(server.hub.consultations) == {"b"}


async def test_logs_carry_no_names_or_user_ids(
    server: Server, clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    doctor = await join(server, clients, "doctor", sub="doc-sub-8812", name="Gregory House")
    patient = await join(server, clients, "patient", sub="pat-sub-7731", name="Jane Patientname")
    await doctor.admit(patient.participant_id or "")
    await patient.wait_state("admitted")
    await patient.chat("my chest hurts")
    await patient.send_raw("{bad json")
    await patient.wait_for("error")
    await patient.drop()
    await patient.resume()
    await doctor.kick(patient.participant_id or "")
    await patient.wait_closed()
    await refused(server, clients, server.token("patient", sub="pat-sub-7731", ttl_s=-100))
    url_token = server.token("patient", sub="pat-sub-7731", name="Jane Patientname")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/demo?room=r1&token={url_token}") as response:
            assert response.status == 404
    await asyncio.sleep(0.1)
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert str(patient.participant_id) in text  # the logs do talk about the participant...
    assert "GET /demo 404" in text and url_token not in text
    for secret in ("doc-sub-8812", "pat-sub-7731", "Gregory House", "Jane Patientname", "chest"):
        assert secret not in text  # ...but by opaque id only


async def test_auto_created_room_ends_when_empty(server: Server, clients: Clients) -> None:
    doctor = await join(server, clients, "doctor")
    await doctor.chat("first consultation")
    await doctor.leave()
    assert server.hub.get("r1") is None
    again = await join(server, clients, "doctor")
    assert (await again.wait_for("room"))["chat"] == []
    status, _ = await server.api("POST", "/api/v1/rooms", json={"id": "kept"})
    assert status == 201
    visitor = await join(server, clients, "doctor", room="kept")
    await visitor.leave()
    assert server.hub.get("kept") is not None  # rooms the platform created live until ended


async def test_shutdown_closes_sockets_going_away(clients: Clients) -> None:
    from aiohttp import web

    from signaling.app import create_app

    from .conftest import make_config

    app = create_app(config=make_config(workers=0))  # it reads the in-process node
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server = Server(url=f"http://127.0.0.1:{runner.addresses[0][1]}", app=app, config=app[CONFIG])
    doctor = await join(server, clients, "doctor")
    node = server.node
    await runner.cleanup()
    assert await doctor.wait_closed() == 1001
    assert node.closed and node.rooms == {}


async def test_full_room(server: Server, clients: Clients) -> None:
    status, _ = await server.api(
        "POST", "/api/v1/rooms", json={"id": "small", "max_participants": 1}
    )
    assert status == 201
    doctor = await join(server, clients, "doctor", room="small")
    error = await refused(server, clients, server.token("device", room="small"))
    assert (error.code, error.reason) == (4007, "room is full")
    patient = await join(server, clients, "patient", room="small")
    with pytest.raises(ServerError) as info:
        await doctor.admit(patient.participant_id or "")
    assert info.value.code == "room-full"
    assert patient.state == "waiting"
    await doctor.ping()
