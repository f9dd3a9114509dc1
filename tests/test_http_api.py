"""The platform HTTP API, health routes and static files, against a real node."""

from __future__ import annotations

import json
from collections.abc import Callable

import aiohttp
import pytest

from signaling.client import ConsultClient, JoinRefused

from .conftest import Server, ServerFactory

Clients = Callable[[Server], ConsultClient]


async def test_api_key_required(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            async with http.get(server.url + "/api/v1/rooms", headers=headers) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert server.hub.consultations == {}


async def test_room_crud(server: Server, clients: Clients) -> None:
    status, room = await server.api(
        "POST",
        "/api/v1/rooms",
        json={"id": "c-1", "waiting_room": True, "video_codec": "vp8", "max_participants": 4},
    )
    assert status == 201
    assert room["id"] == "c-1" and room["options"]["max_participants"] == 4
    status, _ = await server.api("POST", "/api/v1/rooms", json={"id": "c-1"})
    assert status == 409
    status, generated = await server.api("POST", "/api/v1/rooms")
    assert status == 201 and generated["id"].startswith("r_")

    doctor = clients(server)
    await doctor.connect(server.token("doctor", room="c-1", sub="u-doc"))
    patient = clients(server)
    await patient.connect(server.token("patient", room="c-1", sub="u-pat"))

    status, listing = await server.api("GET", "/api/v1/rooms")
    assert status == 200
    summary = {r["id"]: r for r in listing["rooms"]}
    assert summary["c-1"]["participants"] == 1 and summary["c-1"]["waiting"] == 1

    status, info = await server.api("GET", "/api/v1/rooms/c-1")
    assert status == 200
    by_id = {p["id"]: p for p in info["participants"]}
    assert by_id[doctor.participant_id]["role"] == "doctor"
    assert by_id[doctor.participant_id]["state"] == "admitted"
    assert "link" in by_id[doctor.participant_id]["media"]
    assert "media" not in by_id[patient.participant_id]  # no media session while waiting
    assert by_id[patient.participant_id]["state"] == "waiting"
    assert by_id[patient.participant_id]["sub"] == "u-pat"
    assert "name" not in by_id[patient.participant_id]
    assert info["tracks"] == []

    status, _ = await server.api("DELETE", "/api/v1/rooms/c-1")
    assert status == 200
    for client in (doctor, patient):
        assert await client.wait_closed() == 4005
    status, _ = await server.api("GET", "/api/v1/rooms/c-1")
    assert status == 404
    status, _ = await server.api("DELETE", "/api/v1/rooms/c-1")
    assert status == 404


@pytest.mark.parametrize(
    "body",
    [
        {"id": "bad id with spaces"},
        {"waiting_room": "yes"},
        {"video_codec": "AV1"},
        {"max_participants": 0},
        {"max_participants": "8"},
        {"id": 5},
    ],
)
async def test_create_room_validation(server: Server, body: dict[str, object]) -> None:
    status, error = await server.api("POST", "/api/v1/rooms", json=body)
    assert status == 400 and error["error"] == "bad-request"


async def test_bad_json_body(server: Server) -> None:
    status, error = await server.api("POST", "/api/v1/rooms", data=b"{nope")
    assert status == 400 and error["error"] == "bad-json"


async def test_remove_participant(server: Server, clients: Clients) -> None:
    await server.api("POST", "/api/v1/rooms", json={"id": "k"})
    doctor = clients(server)
    await doctor.connect(server.token("doctor", room="k"))
    status, _ = await server.api("DELETE", f"/api/v1/rooms/k/participants/{doctor.participant_id}")
    assert status == 200
    assert await doctor.wait_closed() == 4004


async def test_drain(make_server: ServerFactory, clients: Clients) -> None:
    server = await make_server(auto_create_rooms=False)
    await server.api("POST", "/api/v1/rooms", json={"id": "live"})
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/readyz") as r:
            assert r.status == 200
        status, body = await server.api("POST", "/api/v1/node/drain")
        assert status == 200 and body["draining"] is True
        async with http.get(server.url + "/readyz") as r:
            assert r.status == 503
        async with http.get(server.url + "/healthz") as r:
            assert r.status == 200
    status, _ = await server.api("POST", "/api/v1/rooms", json={"id": "new"})
    assert status == 503
    doctor = clients(server)
    await doctor.connect(server.token("doctor", room="live"))  # existing rooms go on
    assert doctor.state == "admitted"
    with pytest.raises(JoinRefused) as info:
        await clients(server).connect(server.token("doctor", room="other"))
    assert info.value.code == 4007


async def test_client_files_and_demo(make_server: ServerFactory) -> None:
    prod = await make_server()
    dev = await make_server(dev=True)
    async with aiohttp.ClientSession() as http:
        for server in (prod, dev):
            async with http.get(server.url + "/client/..%2Fapp.py") as r:
                assert r.status == 404
            async with http.get(server.url + "/client/missing.js") as r:
                assert r.status == 404
        async with http.get(prod.url + "/demo") as r:
            assert r.status == 404
        from signaling.app import STATIC_DIR

        if (STATIC_DIR / "consult.js").is_file():
            async with http.get(prod.url + "/client/consult.js") as r:
                assert r.status == 200
                assert r.content_type == "text/javascript"
        if (STATIC_DIR / "demo.html").is_file():
            async with http.get(dev.url + "/demo?room=demo&token=x") as r:
                assert r.status == 200 and r.content_type == "text/html"


def test_config_from_flags_and_env() -> None:
    import argparse

    from signaling.config import DEV_API_KEY, add_run_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    dev = config_from_args(parser.parse_args(["--dev"]), env={})
    assert (dev.host, dev.port, dev.api_key, dev.auto_create_rooms) == (
        "127.0.0.1",
        8080,
        DEV_API_KEY,
        True,
    )
    assert dev.media.ice.ice_servers == ()
    key, secret = "k" * 16 + "0123456789abcdef", "s" * 16 + "0123456789abcdef"  # 32 bytes
    env = {
        "CONSULT_API_KEY": key,
        "CONSULT_TOKEN_SECRET": secret,
        "CONSULT_PORT": "9000",
        "CONSULT_RTC_PORTS": "40000-40100",
        "CONSULT_ICE_SERVERS": json.dumps(
            [{"urls": "turn:t.example:3478", "username": "u", "credential": "c"}]
        ),
    }
    args = parser.parse_args(
        ["--port", "9100", "--ice-host", "10.0.0.5", "--ice-announce", "1.2.3.4"]
    )
    prod = config_from_args(args, env=env)
    assert (prod.port, prod.api_key, prod.dev, prod.auto_create_rooms) == (9100, key, False, False)
    assert prod.token_secret == secret
    ice = prod.media.ice
    assert (ice.min_port, ice.max_port, ice.host_addresses) == (40000, 40100, ("10.0.0.5",))
    assert ice.announced_address == "1.2.3.4"
    assert ice.ice_servers[0].as_dict() == {
        "urls": ["turn:t.example:3478"],
        "username": "u",
        "credential": "c",
    }
    with pytest.raises(ValueError):
        config_from_args(parser.parse_args([]), env={})  # no key or secret outside dev mode
