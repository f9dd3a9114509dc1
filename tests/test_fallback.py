"""Bandwidth fallback without shaping: paused forwarding restarts cleanly, the mode metrics
and the room API show the modes, `pause` and `reconnect` over the real protocol."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

import pytest

from mediaserver.bandwidth import LinkSample, Mode, State
from mediaserver.rtc.peer import sender_enabled
from signaling.client import ConsultClient

from .conftest import Server
from .test_e2e_media import SyntheticVideo, admitted
from .test_forwarder import make, rtp
from .test_metrics import samples, scrape

Clients = Callable[[Server], ConsultClient]


def test_paused_video_resumes_on_a_keyframe_with_continuous_numbering() -> None:
    fwd = make(gate=True)
    out = [
        fwd.rewrite(rtp(s, 9000 + s * 3000), 12, s, 9000 + s * 3000, True, b"\0\0\0", -1)
        for s in (10, 11, 12)
    ]
    assert all(o is not None for o in out)
    last_seq = fwd.last_seq
    fwd.pause()
    # Forwarding stops (the subscription drops packets while paused); then resumes:
    assert fwd.rewrite(rtp(40, 129000), 12, 40, 129000, False, b"\0\0\0", -1) is None
    first = fwd.rewrite(rtp(41, 132000), 12, 41, 132000, True, b"\0\0\0", -1)
    assert first is not None
    seq, ts = struct.unpack_from("!HI", first, 2)
    assert seq == (last_seq + 1) & 0xFFFF  # no gap for the receiver to NACK
    assert out[0] is not None
    first_ts = struct.unpack_from("!I", out[0], 4)[0]
    assert (ts - first_ts) & 0xFFFFFFFF == 132000 - 39000  # the source clock is kept


@pytest.mark.workers(0)  # reaches the in-process media objects
async def test_modes_reach_everyone_the_api_and_the_metrics(
    server: Server, clients: Clients
) -> None:
    doctor, patient = await admitted(server, clients)
    assert doctor.participant_id and patient.participant_id
    await doctor.publish(SyntheticVideo(40))
    await patient.wait_track(doctor.participant_id, "video", timeout_s=20)
    media = server.participant(patient.participant_id)
    sub = next(iter(media.subscriptions.values()))
    await asyncio.sleep(0)
    # Drive the patient's downlink controller with a starved sample, as the RTCP loop does.
    fallback = media.fallback
    fallback.down.start(0.0)
    starved = LinkSample(loss=0.9, packets=50, goodput_bps=5000)
    change = fallback.down.update(100.0, starved, 1, 0)
    assert change is not None and change.mode is Mode.AUDIO_ONLY  # one step at a time
    change = fallback.down.update(102.0, starved, 1, 0)  # settled, no video: still starved
    assert change is not None and change.mode is Mode.CHAT_ONLY
    fallback._step("downlink", fallback.down, 100.0, LinkSample(), [])  # no change: no event
    media._fallback_mode("downlink", change.mode.value, change.reason)
    fallback._apply_downlink([sub])
    assert sub.paused
    for client in (doctor, patient):
        msg = await client.wait_for("mode", timeout_s=5)
        assert msg["participant"] == patient.participant_id
        assert (msg["direction"], msg["mode"], msg["reason"]) == (
            "downlink",
            "chat-only",
            "bandwidth",
        )
    status, body = await server.api("GET", "/api/v1/rooms/r1")
    assert status == 200
    entry = next(p for p in body["participants"] if p["id"] == patient.participant_id)
    assert entry["media"]["modes"] == {"uplink": "video", "downlink": "chat-only"}
    media.fallback.close(200.0)
    values = samples(await scrape(server))
    key = (("direction", "downlink"), ("mode", "chat-only"))
    assert values[("consult_link_mode_participants", key)] == 1
    assert (
        values[
            (
                "consult_link_mode_seconds_total",
                (("direction", "downlink"), ("mode", "chat-only"), ("worker", "local")),
            )
        ]
        > 0
    )


@pytest.mark.workers(0)  # reaches the in-process media objects
async def test_pause_reaches_the_publisher_and_stops_its_sender(
    server: Server, clients: Clients
) -> None:
    doctor = clients(server)
    doctor.auto_reconnect = True
    await doctor.connect(server.token("doctor"))
    await doctor.publish(SyntheticVideo(40))
    await doctor.wait_for("offer", timeout_s=10)
    media = server.participant(doctor.participant_id)
    for _ in range(100):
        if doctor._sender_sources:
            break
        await asyncio.sleep(0.1)
    media._fallback_pause(["camera"], "loss")
    msg = await doctor.wait_for("pause", timeout_s=5)
    assert msg == {"type": "pause", "sources": ["camera"], "reason": "loss"}
    (sender,) = doctor._sender_sources
    assert sender_enabled(sender) is False
    media._fallback_pause([], "recovered")
    await doctor.wait_for("pause", timeout_s=5)
    assert sender_enabled(sender) is True


@pytest.mark.workers(0)  # reaches the in-process media objects
async def test_reconnect_replaces_the_transport_and_keeps_publications(
    server: Server, clients: Clients
) -> None:
    doctor, patient = await admitted(server, clients)
    assert doctor.participant_id and patient.participant_id
    patient.auto_reconnect = True
    await patient.publish(SyntheticVideo(200))
    track = await doctor.wait_track(patient.participant_id, "video", timeout_s=20)
    await asyncio.wait_for(track.recv(), 20)
    media = server.participant(patient.participant_id)
    ids = set(media.publications)
    negotiations = doctor.negotiations
    await patient._restart_media()  # what the watchdog does when the connection is lost
    for _ in range(5):  # the doctor's track goes on: same receiver, frames keep coming
        await asyncio.wait_for(track.recv(), 20)
    assert set(media.publications) == ids
    assert media.transport_restarts == 1
    assert doctor.negotiations == negotiations


@pytest.mark.workers(0)  # reaches the in-process media objects
async def test_a_resume_restores_modes_and_pause(server: Server, clients: Clients) -> None:
    """What `mode` and `pause` said while the socket was down reaches the client on resume."""
    _, patient = await admitted(server, clients)
    await patient.publish(SyntheticVideo(40))
    media = server.participant(patient.participant_id)
    for _ in range(100):  # the node knows the camera once the patient's offer is answered
        if media.publications:
            break
        await asyncio.sleep(0.1)
    await patient.drop()
    # The patient's uplink goes audio-only meanwhile: the node pauses its camera.
    fallback = media.fallback
    fallback.up.state = State(Mode.AUDIO_ONLY)
    media._fallback_mode("uplink", "audio-only", "bandwidth")  # as LinkFallback._step does
    fallback._apply_uplink(list(media.publications.values()))
    assert fallback.paused_sources() == ["camera"]
    assert not patient.received("pause")
    mark = len(patient.messages)
    joined = await patient.resume()
    assert joined["resumed"] is True
    for _ in range(50):
        after = [m for m in patient.messages[mark:] if m.get("type") in ("room", "pause")]
        if len(after) == 2:
            break
        await asyncio.sleep(0.1)
    room, pause = after
    me = next(p for p in room["participants"] if p["id"] == patient.participant_id)
    assert me["modes"] == {"uplink": "audio-only", "downlink": "video"}
    assert pause == {"type": "pause", "sources": ["camera"], "reason": "bandwidth"}
