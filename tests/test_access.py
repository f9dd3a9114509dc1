"""Kick, deny and end that stick; who may send vital signs; nested JSON (issue 11, items 3, 4, 7).

A real node on loopback, real sockets and real tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from signaling.auth import encode_token
from signaling.client import ConsultClient, JoinRefused, ServerError

from .conftest import API_KEY, SECRET, Server, ServerFactory
from .test_signaling import admitted_pair, join, refused

Clients = Callable[[Server], ConsultClient]
STRONG_API_KEY = "access-test-api-key-0123456789abcdef"  # config_from_args wants 32+ bytes


def token(role: str, *, sub: str, room: str = "r1", **claims: Any) -> str:
    return encode_token(
        secret=SECRET, room=room, sub=sub, role=role, name=f"Name {sub}", claims=claims
    )


# -- item 3: a kick bars the identity until the API lifts the bar ----------------------------


async def test_kicked_identity_is_barred_until_the_api_lifts_it(
    server: Server, clients: Clients
) -> None:
    doctor = await join(server, clients, "doctor")
    second = clients(server)
    second_token = token("doctor", sub="doc-2")
    await second.connect(second_token)
    await doctor.kick(second.participant_id or "")
    assert await second.wait_closed() == 4004
    await doctor.chat("written after the kick")

    again = await refused(server, clients, second_token)  # the same token, at once
    assert (again.code, again.reason) == (4004, "kicked from this room")
    status, info = await server.api("GET", "/api/v1/rooms/r1")
    assert status == 200
    assert info["barred"] == [
        {"participant": second.participant_id, "sub": "doc-2", "reason": "kicked"}
    ]
    assert len(info["participants"]) == 1

    status, _ = await server.api("DELETE", "/api/v1/rooms/r1/bars/p_nobody")
    assert status == 404
    status, body = await server.api("DELETE", f"/api/v1/rooms/r1/bars/{second.participant_id}")
    assert (status, body["lifted"]) == (200, True)
    back = clients(server)
    await back.connect(second_token)
    assert back.state == "admitted"
    room = await back.wait_for("room")
    assert [m["text"] for m in room["chat"]] == ["written after the kick"]  # lifted on purpose


async def test_api_removal_bars_too_and_a_device_can_leave_and_come_back(
    server: Server, clients: Clients
) -> None:
    doctor, patient = await admitted_pair(server, clients)
    status, _ = await server.api(
        "DELETE", f"/api/v1/rooms/r1/participants/{patient.participant_id}"
    )
    assert status == 200 and await patient.wait_closed() == 4004
    error = await refused(server, clients, server.token("patient"))
    assert (error.code, error.reason) == (4004, "kicked from this room")
    assert not doctor.received("knock")[1:]  # the doctor saw the first knock only

    status, device = await server.api("POST", "/api/v1/rooms/r1/devices", json={})
    assert status == 201
    status, _ = await server.api("DELETE", f"/api/v1/rooms/r1/participants/{device['id']}")
    assert status == 200
    status, info = await server.api("GET", "/api/v1/rooms/r1")
    assert [bar["reason"] for bar in info["barred"]] == ["kicked"]  # the patient only
    status, _ = await server.api("POST", "/api/v1/rooms/r1/devices", json={})
    assert status == 201


# -- item 3: an ended room's tokens are refused ------------------------------------------------


async def test_tokens_of_a_room_ended_by_the_doctor_are_refused(
    server: Server, clients: Clients
) -> None:
    doctor, patient = await admitted_pair(server, clients)
    await doctor.end()
    assert await patient.wait_closed() == 4005
    for role in ("doctor", "patient"):  # no auto-create of the ended id, no read of anything
        error = await refused(server, clients, server.token(role))
        assert (error.code, error.reason) == (4005, "room ended")
    assert server.hub.get("r1") is None


async def test_tokens_of_a_room_ended_through_the_api_are_refused_until_created_again(
    make_server: ServerFactory, clients: Clients
) -> None:
    server = await make_server(auto_create_rooms=False)
    status, _ = await server.api("POST", "/api/v1/rooms", json={"id": "c1"})
    assert status == 201
    doctor = clients(server)
    doctor_token = server.token("doctor", room="c1")
    await doctor.connect(doctor_token)
    await doctor.chat("before the end")
    status, _ = await server.api("DELETE", "/api/v1/rooms/c1")
    assert status == 200 and await doctor.wait_closed() == 4005
    error = await refused(server, clients, doctor_token)
    assert (error.code, error.reason) == (4005, "room ended")
    status, _ = await server.api("POST", "/api/v1/rooms", json={"id": "c1"})  # on purpose
    assert status == 201
    again = clients(server)
    await again.connect(doctor_token)
    assert (await again.wait_for("room"))["chat"] == []


async def test_an_emptied_auto_created_room_is_not_ended_for_good(
    server: Server, clients: Clients
) -> None:
    doctor = await join(server, clients, "doctor")
    await doctor.leave()
    assert server.hub.get("r1") is None
    back = await join(server, clients, "doctor")
    assert back.state == "admitted"


def test_ended_room_ids_are_bounded_and_expire() -> None:
    from signaling.hub import EndedRooms

    ended = EndedRooms(keep_s=100.0, max_ids=2)
    ended.add("a", now=0.0)
    ended.add("b", now=1.0)
    assert ended.contains("a", now=50.0) and ended.contains("b", now=50.0)
    ended.add("c", now=2.0)  # over the bound: the oldest goes
    assert not ended.contains("a", now=50.0) and len(ended) == 2
    assert not ended.contains("b", now=101.5)  # older than the longest token lifetime
    assert ended.contains("c", now=101.5)
    ended.add("d", now=500.0)
    assert len(ended) == 1


# -- item 3: re-knocks after a deny are limited; the doctor can block ------------------------


async def deny_next_knock(doctor: ConsultClient, patient: ConsultClient, **fields: Any) -> None:
    knock = await doctor.wait_for(
        "knock", lambda m: m["participant"]["id"] == patient.participant_id
    )
    await doctor.request("deny", participant=knock["participant"]["id"], **fields)
    assert await patient.wait_closed() == 4003


async def test_reknocks_after_a_deny_are_limited(
    make_server: ServerFactory, clients: Clients
) -> None:
    server = await make_server(max_reknocks=1)
    doctor = await join(server, clients, "doctor")
    patient_token = server.token("patient")
    for _ in range(2):  # the first knock and one re-knock
        patient = clients(server)
        await patient.connect(patient_token)
        assert patient.state == "waiting"
        await deny_next_knock(doctor, patient)
    error = await refused(server, clients, patient_token)
    assert (error.code, error.reason) == (4003, "too many knocks")
    other = await join(server, clients, "patient", sub="someone-else")  # others still knock
    assert other.state == "waiting"
    status, info = await server.api("GET", "/api/v1/rooms/r1")
    [bar] = info["barred"]
    assert bar["reason"] == "denied"
    status, _ = await server.api("DELETE", f"/api/v1/rooms/r1/bars/{bar['participant']}")
    assert status == 200
    again = clients(server)
    await again.connect(patient_token)
    assert again.state == "waiting"


async def test_the_doctor_blocks_a_patient(server: Server, clients: Clients) -> None:
    doctor = await join(server, clients, "doctor")
    patient = await join(server, clients, "patient")
    with pytest.raises(ServerError) as info:
        await doctor.request("deny", participant=patient.participant_id, block="yes")
    assert info.value.code == "bad-request"
    await deny_next_knock(doctor, patient, block=True)
    assert (await patient.wait_for("denied"))["blocked"] is True
    error = await refused(server, clients, server.token("patient"))
    assert (error.code, error.reason) == (4003, "blocked")
    await doctor.ping()
    assert len(doctor.received("knock")) == 1  # the blocked identity knocked once


# -- item 4: who may send vital signs ---------------------------------------------------------


def vitals() -> list[dict[str, Any]]:
    return [{"kind": "spo2", "value": 60, "unit": "%", "t": int(time.time() * 1000)}]


async def test_only_devices_and_granted_participants_send_vital_signs(
    server: Server, clients: Clients
) -> None:
    doctor, patient = await admitted_pair(server, clients)
    observer = clients(server)
    await observer.connect(token("observer", sub="obs", telemetry=True))  # the claim: no matter
    granted = clients(server)
    await granted.connect(token("patient", sub="nurse-app", telemetry=True))
    knock = await doctor.wait_for(
        "knock", lambda m: m["participant"]["id"] == granted.participant_id
    )
    await doctor.admit(knock["participant"]["id"])
    await granted.wait_state("admitted")

    for sender in (patient, observer):
        with pytest.raises(ServerError) as info:
            await sender.request("telemetry", seq=1, readings=vitals())
        assert info.value.code == "forbidden"
    _, body = await server.api("GET", "/api/v1/rooms/r1")
    assert body["telemetry_records"] == 0

    ack = await granted.request("telemetry", seq=1, readings=vitals())
    assert ack["stored"] == 1
    device = await join(server, clients, "device", sub="oximeter")
    await device.request("telemetry", seq=1, readings=vitals())
    await doctor.wait_for("telemetry", lambda m: m["record"]["seq"] == 2)
    records = [m["record"] for m in doctor.received("telemetry")]
    assert [(r["seq"], r["from"], r["role"]) for r in records] == [
        (1, granted.participant_id, "patient"),
        (2, device.participant_id, "device"),
    ]
    history = await doctor.request("telemetry-history", after=0)
    assert [r["role"] for r in history["records"]] == ["patient", "device"]


# -- item 7: nested JSON and nested token headers ---------------------------------------------


async def test_nested_json_on_the_socket_gets_bad_json(server: Server, clients: Clients) -> None:
    doctor = await join(server, clients, "doctor")
    deep = "[" * 30_000 + "]" * 30_000
    for nested in ("[" * 60_000, '{"type":"chat","id":"n","text":"x","x":' + deep + "}"):
        await doctor.send_raw(nested)
        await doctor.ping()
    errors = doctor.received("error")
    assert [e["code"] for e in errors] == ["bad-json", "bad-json"]
    assert not doctor.received("chat")
    first = clients(server)
    with pytest.raises(JoinRefused) as info:
        await first.connect_raw_text("[" * 60_000)
    assert info.value.code == 4002


async def test_nested_token_header_is_a_bad_token(server: Server, clients: Clients) -> None:
    header = base64.urlsafe_b64encode(b"[" * 5000).rstrip(b"=").decode()
    body = server.token("doctor").split(".")[1]
    error = await refused(server, clients, f"{header}.{body}.AAAA")
    assert (error.code, error.reason) == (4001, "malformed token")
    assert server.hub.consultations == {}


@pytest.mark.parametrize("path", ["/api/v1/rooms", "/api/v1/rooms/r1/devices"])
async def test_nested_json_over_http_gets_400_bad_json(server: Server, path: str) -> None:
    await server.api("POST", "/api/v1/rooms", json={"id": "r1"})
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        for body in ("[" * 100_000, '{"a":' + "[" * 100_000):
            async with http.post(server.url + path, data=body, headers=headers) as response:
                assert response.status == 400
                assert (await response.json())["error"] == "bad-json"
    status, _ = await server.api("GET", "/api/v1/node")
    assert status == 200


async def test_nested_json_in_a_device_telemetry_body_gets_400(server: Server) -> None:
    await server.api("POST", "/api/v1/rooms", json={"id": "r1"})
    status, device = await server.api("POST", "/api/v1/rooms/r1/devices", json={})
    assert status == 201
    path = f"/api/v1/rooms/r1/devices/{device['id']}/telemetry"
    status, body = await server.api("POST", path, data="[" * 100_000)
    assert (status, body["error"]) == (400, "bad-json")
    status, body = await server.api("POST", path, data=json.dumps({"readings": vitals()}))
    assert (status, body["stored"]) == (200, 1)


# -- item 7: a node that holds only the platform's public key ----------------------------------


async def test_a_node_with_the_public_key_only_accepts_what_the_platform_signed(
    make_server: ServerFactory, clients: Clients, tmp_path: Any
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from signaling.config import add_run_arguments, config_from_args

    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_file = tmp_path / "platform.pub"
    public_file.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    args = parser.parse_args(
        ["--api-key", STRONG_API_KEY, "--token-public-key", str(public_file), "--max-reknocks", "0"]
    )
    env = {"CONSULT_TOKEN_MAX_LIFETIME_S": "3600", "CONSULT_TOKEN_AUDIENCE": "consult"}
    config = config_from_args(args, env)
    assert config.token_secret == "" and config.max_reknocks == 0
    assert config.token_verifier().algorithms == ("ES256",)
    server = await make_server(
        token_public_key=config.token_public_key, token_secret="", token_audience="consult"
    )

    def signed(role: str, **claims: Any) -> str:
        return encode_token(
            private_key=private, room="r1", sub=f"u-{role}", role=role, name=role, claims=claims
        )

    doctor = clients(server)
    await doctor.connect(signed("doctor", aud="consult"))
    assert doctor.state == "admitted"
    for bad, reason in (
        (server.token("patient"), "malformed token: alg not allowed"),  # HS256: the node can't
        (signed("patient"), "malformed token: missing aud"),
        (signed("patient", aud="elsewhere"), "wrong audience"),
    ):
        error = await refused(server, clients, bad)
        assert (error.code, error.reason) == (4001, reason)
    with pytest.raises(ValueError, match="token public key"):
        public_file.write_text("not a key")
        config_from_args(args, env)


def test_safe_json_counts_nesting_outside_strings_only() -> None:
    from signaling.safejson import BadJson, loads

    text = "[[[{{ " * 2000 + '\\" [[ \\\\'  # brackets, escaped quotes and backslashes in a string
    assert loads(json.dumps({"type": "chat", "text": text}))["text"] == text
    assert loads("[" * 32 + "]" * 32) is not None
    wide = [[[[[[[[1]]]]]]]] * 500
    assert loads(json.dumps(wide)) == wide
    for bad in ("[" * 33 + "]" * 33, "[" * 100_000, '{"a":' * 40 + "1" + "}" * 40, b"\xff[]", "{"):
        with pytest.raises(BadJson):
            loads(bad)


async def test_vital_signs_over_the_data_channel_follow_the_same_rule(
    server: Server, clients: Clients
) -> None:
    from aiortc.mediastreams import AudioStreamTrack

    doctor = await join(server, clients, "doctor")
    observer = clients(server)
    await observer.connect(token("observer", sub="obs", telemetry=True))
    await observer.publish(AudioStreamTrack())  # negotiates the transport, data channel included
    await doctor.wait_track(observer.participant_id or "", "audio", timeout_s=30)
    assert observer.channel is not None
    for _ in range(400):
        if observer.channel.readyState == "open":
            break
        await asyncio.sleep(0.05)
    observer.send_data("[" * 100_000)  # ignored, like any other non-message
    batch = {"type": "telemetry", "id": "d1", "seq": 1, "readings": vitals()}
    observer.send_data(json.dumps(batch))
    error = await observer.wait_for("error", lambda m: m["ref"] == "d1")
    assert error["code"] == "forbidden"
    await doctor.ping()
    assert not doctor.received("telemetry")
    _, info = await server.api("GET", "/api/v1/rooms/r1")
    assert info["telemetry_records"] == 0
