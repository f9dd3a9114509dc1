"""TURN with ephemeral credentials (signaling/turn.py, docs/turn.md) against a real coturn.

- The credential format: a known-answer vector (computed with `openssl dgst -sha1 -hmac`, not
  with the code under test), the expiry, the bounds of the lifetime and of the URLs.
- The configuration: flags, CONSULT_* env vars, the secret file's checks and strength.
- `joined` carries a TURN entry minted for the participant, fresh on every `joined` (a resume
  too), before the static --ice-servers; no secret, username or credential in logs or metrics.
- Two aiortc clients restricted to relay candidates hold a call through coturn: media flows
  both ways, every candidate they have is a relay one, and coturn logged their allocations.
- coturn refuses expired credentials and a wrong secret (401 after the authenticated Allocate);
  an allocation made in time outlives its credentials (refreshes go on).
- `python -m signaling run --turn-urls ... --turn-secret-file ...` hands out credentials coturn
  accepts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc.mediastreams import AudioStreamTrack

from mediaserver.api import IceConfig, IceServer, MediaConfig
from signaling.auth import encode_token
from signaling.client import ConsultClient
from signaling.config import ServerConfig, add_run_arguments, config_from_args
from signaling.turn import (
    DEFAULT_LIFETIME_S,
    MAX_LIFETIME_S,
    MIN_LIFETIME_S,
    TurnCredentials,
    parse_turn_urls,
    turn_password,
    turn_username,
)

from .client_js import run_client_script
from .conftest import Server, ServerFactory
from .coturn import Coturn, TurnClient, coturn
from .test_e2e_media import SyntheticVideo, decode
from .test_exposure import NODE_KEY, NODE_SECRET, node_process

Clients = Callable[[Server], ConsultClient]

TURN_SECRET = "turn-test-shared-secret-0123456789abcdef"  # 32+ bytes of 8+ symbols
URLS = "turn:turn.example.org:3478?transport=udp,turns:turn.example.org:5349?transport=tcp"
# A known-answer vector: the credential was computed with
#   printf '%s' "1700003600:p_0123456789abcdef" \
#     | openssl dgst -sha1 -hmac "kN3x-turn-shared-secret-for-a-known-answer-vector" -binary \
#     | base64
KAT_SECRET = "kN3x-turn-shared-secret-for-a-known-answer-vector"
KAT_USERNAME = "1700003600:p_0123456789abcdef"
KAT_CREDENTIAL = "9MYXzUfKbdeZkxMWbfYEE808j8Y="


@pytest.fixture
async def turn(tmp_path: Path) -> AsyncIterator[Coturn]:
    """A real coturn on loopback (stopped at teardown, whatever the test did)."""
    async with coturn(tmp_path / "coturn") as server:
        yield server


def _config(argv: list[str], env: Mapping[str, str] | None = None) -> ServerConfig:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    base = ["--api-key", NODE_KEY, "--token-secret", NODE_SECRET]
    return config_from_args(parser.parse_args([*base, *argv]), env=env or {})


def _secret_file(path: Path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def _expiry(username: str) -> int:
    return int(username.split(":", 1)[0])


def _turn_entries(joined: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in joined["iceServers"] if "credential" in s]


# -- the credentials ----------------------------------------------------------------------------


def test_known_answer_vector() -> None:
    assert turn_username("p_0123456789abcdef", 1_700_003_600) == KAT_USERNAME
    assert turn_password(KAT_SECRET, KAT_USERNAME) == KAT_CREDENTIAL
    minted = TurnCredentials(urls=("turn:t.example",), secret=KAT_SECRET, lifetime_s=3600)
    server = minted.ice_server("p_0123456789abcdef", now=1_700_000_000.0)
    assert server == IceServer(
        urls=["turn:t.example"], username=KAT_USERNAME, credential=KAT_CREDENTIAL
    )


def test_expiry_is_now_plus_the_lifetime_rounded_up() -> None:
    minted = TurnCredentials(urls=parse_turn_urls(URLS), secret=TURN_SECRET, lifetime_s=600)
    server = minted.ice_server("p_1", now=1_000.25)
    assert server.username == "1601:p_1"  # never a second early
    assert server.urls == [
        "turn:turn.example.org:3478?transport=udp",
        "turns:turn.example.org:5349?transport=tcp",
    ]
    digest = hmac.new(TURN_SECRET.encode(), b"1601:p_1", hashlib.sha1).digest()
    assert server.credential == base64.b64encode(digest).decode()
    before = time.time()
    now_minted = minted.ice_server("p_1")
    assert now_minted.username is not None
    assert math.ceil(before + 600) <= _expiry(now_minted.username) <= math.ceil(time.time() + 600)
    default = TurnCredentials(urls=("turn:t.example",), secret=TURN_SECRET)
    assert default.lifetime_s == DEFAULT_LIFETIME_S == 4 * 3600
    assert TURN_SECRET not in repr(default)


@pytest.mark.parametrize("lifetime", [0, MIN_LIFETIME_S - 1, MAX_LIFETIME_S + 1, -5])
def test_lifetime_is_bounded(lifetime: float) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        TurnCredentials(urls=("turn:t.example",), secret=TURN_SECRET, lifetime_s=lifetime)


@pytest.mark.parametrize(
    "url",
    [
        "turn:[::1]:3478",
        "turn:10.0.0.1",
        "turns:turn.example.org",
        "turn:turn.example.org:3478?transport=tcp",
    ],
)
def test_good_turn_urls(url: str) -> None:
    assert parse_turn_urls(f" {url} ,") == (url,)


@pytest.mark.parametrize(
    "url",
    [
        "stun:turn.example.org:3478",
        "http://turn.example.org",
        "turn:",
        "turn:turn.example.org:70000",
        "turn:turn.example.org?transport=sctp",
        "turns:turn.example.org:5349?transport=udp",
        "turn:user@turn.example.org",
    ],
)
def test_bad_turn_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="bad TURN URL"):
        parse_turn_urls(url)


def test_minting_needs_urls_a_secret_and_a_participant() -> None:
    with pytest.raises(ValueError, match="URL"):
        TurnCredentials(urls=(), secret=TURN_SECRET)
    with pytest.raises(ValueError, match="secret"):
        TurnCredentials(urls=("turn:t.example",), secret="")
    with pytest.raises(ValueError, match="participant"):
        TurnCredentials(urls=("turn:t.example",), secret=TURN_SECRET).ice_server("")


# -- the configuration --------------------------------------------------------------------------


def test_turn_from_flags_and_env(tmp_path: Path) -> None:
    secret = _secret_file(tmp_path / "turn", TURN_SECRET + "\n")
    assert _config([]).turn_credentials() is None
    config = _config(["--turn-urls", URLS, "--turn-secret-file", secret, "--turn-lifetime", "900"])
    minted = config.turn_credentials()
    assert minted is not None
    assert (minted.urls, minted.secret, minted.lifetime_s) == (
        parse_turn_urls(URLS),
        TURN_SECRET,
        900,
    )
    env = {
        "CONSULT_TURN_URLS": "turn:env.example:3478",
        "CONSULT_TURN_SECRET_FILE": secret,
        "CONSULT_TURN_LIFETIME_S": "1800",
    }
    from_env = _config([], env)
    assert (from_env.turn_urls, from_env.turn_secret, from_env.turn_lifetime_s) == (
        ("turn:env.example:3478",),
        TURN_SECRET,
        1800,
    )
    # the command line wins over the env
    other = _secret_file(tmp_path / "other", "another-turn-secret-0123456789abcdef")
    flags = _config(
        ["--turn-urls", URLS, "--turn-secret-file", other, "--turn-lifetime", "60"], env
    )
    assert (flags.turn_urls, flags.turn_secret, flags.turn_lifetime_s) == (
        parse_turn_urls(URLS),
        "another-turn-secret-0123456789abcdef",
        60,
    )
    assert TURN_SECRET not in repr(config)


def test_bad_turn_configurations_are_refused(tmp_path: Path) -> None:
    secret = _secret_file(tmp_path / "turn", TURN_SECRET)
    with pytest.raises(ValueError, match="go together"):
        _config(["--turn-urls", URLS])
    with pytest.raises(ValueError, match="go together"):
        _config(["--turn-secret-file", secret])
    with pytest.raises(ValueError, match="bad TURN URL"):
        _config(["--turn-urls", "turn.example.org:3478", "--turn-secret-file", secret])
    with pytest.raises(ValueError, match="turn_lifetime_s"):
        _config(["--turn-urls", URLS, "--turn-secret-file", secret, "--turn-lifetime", "30"])
    with pytest.raises(ValueError, match="turn_lifetime_s"):
        _config(["--turn-urls", URLS, "--turn-secret-file", secret, "--turn-lifetime", "1e6"])
    with pytest.raises(ValueError, match="cannot read"):
        _config(["--turn-urls", URLS, "--turn-secret-file", str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="empty"):
        _config(["--turn-urls", URLS, "--turn-secret-file", _secret_file(tmp_path / "e", "\n")])
    shared = _secret_file(tmp_path / "shared", TURN_SECRET, mode=0o666)
    with pytest.raises(ValueError, match="writable by others"):
        _config(["--turn-urls", URLS, "--turn-secret-file", shared])
    reused = _secret_file(tmp_path / "reused", NODE_SECRET)
    with pytest.raises(ValueError, match="must differ"):
        _config(["--turn-urls", URLS, "--turn-secret-file", reused])
    weak = _secret_file(tmp_path / "weak", "short-turn-secret")
    with pytest.raises(ValueError, match="TURN secret is too weak"):
        _config(["--turn-urls", URLS, "--turn-secret-file", weak])
    assert _config(["--dev", "--turn-urls", URLS, "--turn-secret-file", weak]).turn_secret


def test_a_bad_turn_configuration_stops_the_node_with_a_clear_message() -> None:
    from .test_exposure import _run_cli

    proc = _run_cli("--api-key", NODE_KEY, "--token-secret", NODE_SECRET, "--turn-urls", URLS)
    assert proc.returncode == 2, proc.stderr
    assert "configuration error: --turn-urls and --turn-secret-file go together" in proc.stderr


# -- joined -------------------------------------------------------------------------------------


async def test_joined_carries_fresh_credentials_and_no_log_or_metric_shows_them(
    make_server: ServerFactory, clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stun = IceServer(urls=["stun:stun.example.org:3478"])
    server = await make_server(
        turn_urls=parse_turn_urls(URLS),
        turn_secret=TURN_SECRET,
        turn_lifetime_s=600,
        media=MediaConfig(ice=IceConfig(host_addresses=("127.0.0.1",), ice_servers=(stun,))),
    )
    doctor = clients(server)
    before = time.time()
    joined = await doctor.connect(server.token("doctor"))
    minted, static = joined["iceServers"]
    assert static == {"urls": ["stun:stun.example.org:3478"]}
    assert minted["urls"] == list(parse_turn_urls(URLS))
    expiry, participant = minted["username"].split(":", 1)
    assert participant == joined["participant"]["id"] == doctor.participant_id
    assert math.ceil(before + 600) <= int(expiry) <= math.ceil(time.time() + 600)
    assert minted["credential"] == turn_password(TURN_SECRET, minted["username"])
    assert doctor.ice_servers == joined["iceServers"]  # what the client's pc is given

    await asyncio.sleep(1.1)  # a second later: a fresh credential expires later
    await doctor.drop()
    before_resume = time.time()
    resumed = await doctor.resume()
    assert resumed["resumed"] is True
    (again,) = _turn_entries(resumed)
    assert again["username"] != minted["username"]
    assert again["username"].endswith(f":{doctor.participant_id}")
    assert _expiry(again["username"]) >= math.ceil(before_resume + 600)
    assert again["credential"] == turn_password(TURN_SECRET, again["username"])

    patient = clients(server)
    (other,) = _turn_entries(await patient.connect(server.token("patient")))  # waiting room
    assert other["username"].endswith(":" + (patient.participant_id or "?"))
    assert other["credential"] != again["credential"]

    async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as r:
        metrics = await r.text()
    logged = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    for text in (TURN_SECRET, minted["username"], again["credential"], other["username"]):
        assert text not in logged
        assert text not in metrics


async def test_no_turn_entry_without_turn(server: Server, clients: Clients) -> None:
    doctor = clients(server)
    assert (await doctor.connect(server.token("doctor")))["iceServers"] == []


# -- through a real coturn ----------------------------------------------------------------------


def _relay_candidates(client: ConsultClient) -> list[str]:
    """The types of the client's local ICE candidates (aiortc's public API)."""
    assert client.pc is not None and client.pc.sctp is not None
    gatherer = client.pc.sctp.transport.transport.iceGatherer
    return [c.type for c in gatherer.getLocalCandidates()]


async def test_relay_only_clients_hold_a_call_through_coturn(
    make_server: ServerFactory, turn: Coturn
) -> None:
    server = await make_server(turn_urls=(turn.url,), turn_secret=turn.secret)
    doctor = ConsultClient(server.url, ice_transport_policy="relay")
    patient = ConsultClient(server.url, ice_transport_policy="relay")
    try:
        await doctor.connect(server.token("doctor"))
        await patient.connect(server.token("patient"))
        await doctor.admit(patient.participant_id or "")
        await patient.wait_state("admitted")
        assert doctor.participant_id and patient.participant_id
        await doctor.publish(SyntheticVideo(40), AudioStreamTrack())
        await patient.publish(SyntheticVideo(200), AudioStreamTrack())
        seen_by_doctor, seen_by_patient = await asyncio.gather(
            decode(doctor, patient.participant_id, 3), decode(patient, doctor.participant_id, 3)
        )
        assert (seen_by_doctor.width, seen_by_patient.width) == (320, 320)
        for listener, speaker in ((doctor, patient), (patient, doctor)):
            audio = await listener.wait_track(speaker.participant_id or "", "audio", timeout_s=20)
            await asyncio.wait_for(audio.recv(), 20)
        # relay candidates only: every packet went through coturn
        assert _relay_candidates(doctor) and set(_relay_candidates(doctor)) == {"relay"}
        assert _relay_candidates(patient) and set(_relay_candidates(patient)) == {"relay"}
        log = turn.log()
        for client in (doctor, patient):
            (entry,) = _turn_entries({"iceServers": client.ice_servers})
            user = f"user <{entry['username']}>"
            assert f"{user}: incoming packet ALLOCATE processed, success" in log, log[-4000:]
            # aioice binds a channel to the node's address (a permission comes with it)
            assert f"{user}: incoming packet CHANNEL_BIND processed, success" in log
    finally:
        await asyncio.gather(doctor.close(), patient.close())


async def test_coturn_refuses_expired_credentials_and_a_wrong_secret(turn: Coturn) -> None:
    minted = TurnCredentials(urls=(turn.url,), secret=turn.secret, lifetime_s=600)
    good = minted.ice_server("p_fresh")
    expired = minted.ice_server("p_expired", now=time.time() - 600 - 60)  # expired a minute ago
    wrong = TurnCredentials(urls=(turn.url,), secret="not-" + turn.secret).ice_server("p_wrong")
    assert expired.username is not None and _expiry(expired.username) < time.time()
    for server, allowed in ((good, True), (expired, False), (wrong, False)):
        assert server.username is not None and server.credential is not None
        async with TurnClient(turn.address) as client:
            challenge, answer = await client.allocate(server.username, server.credential)
        assert challenge.error_code == 401  # the unauthenticated first try, always
        assert client.realm == turn.realm.encode() and client.nonce
        if allowed:
            assert answer.success, answer
        else:
            assert not answer.success and answer.error_code == 401, answer


async def test_an_allocation_outlives_its_credentials(turn: Coturn) -> None:
    """coturn checks the expiry when an allocation is made, not when it is refreshed: a call
    set up in time keeps its relay (docs/turn.md, "Lifetime")."""
    minted = TurnCredentials(urls=(turn.url,), secret=turn.secret, lifetime_s=600)
    soon = minted.ice_server("p_soon", now=time.time() - 600 + 2)  # expires in about 2 s
    assert soon.username is not None and soon.credential is not None
    async with TurnClient(turn.address) as client:
        _, answer = await client.allocate(soon.username, soon.credential)
        assert answer.success, answer
        # coturn's clock ticks in whole seconds: a second or so past the expiry, it is expired
        while time.time() <= _expiry(soon.username) + 2.5:
            await asyncio.sleep(0.2)
        assert (await client.refresh(600)).success
    async with TurnClient(turn.address) as late:  # a new allocation with it is refused
        _, answer = await late.allocate(soon.username, soon.credential)
        assert answer.error_code == 401


async def test_the_node_run_from_the_command_line_mints_what_coturn_accepts(
    tmp_path: Path, turn: Coturn
) -> None:
    secret = _secret_file(tmp_path / "turn-secret", turn.secret + "\n")
    async with node_process(
        tmp_path, "--turn-urls", turn.url, "--turn-secret-file", secret, "--turn-lifetime", "300"
    ) as node:
        token = encode_token(
            secret=NODE_SECRET, room="r1", sub="u1", role="doctor", name="Dr", ttl_s=600
        )
        client = ConsultClient(node.url)
        try:
            await node_api_room(node.url)
            joined = await client.connect(token)
        finally:
            await client.close()
        (entry,) = _turn_entries(joined)
        assert entry["urls"] == [turn.url]
        assert _expiry(entry["username"]) <= math.ceil(time.time() + 300)
        async with TurnClient(turn.address) as turn_client:
            _, answer = await turn_client.allocate(entry["username"], entry["credential"])
        assert answer.success, answer
        stderr = "\n".join(node.lines())
        assert turn.secret not in stderr and entry["username"] not in stderr


async def node_api_room(url: str) -> None:
    """Create room r1 through the node's HTTP API (rooms are not auto-created outside dev)."""
    headers = {"Authorization": f"Bearer {NODE_KEY}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/api/v1/rooms", json={"id": "r1"}, headers=headers) as r:
            assert r.status == 201, await r.text()


# -- the browser client ---------------------------------------------------------------------


def test_consult_js_hands_joined_ice_servers_and_the_policy_to_its_peer_connection(
    tmp_path: Path,
) -> None:
    result = run_client_script("ice_config.mjs", tmp_path)
    assert result["ok"], result
    assert result["checks"][-1]["what"] == "the pc's policy (relay)"
