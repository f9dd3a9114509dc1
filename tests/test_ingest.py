"""Ingest from a plain-RTP device: an SDP posted to the API, a PyAV sender over UDP, an aiortc
doctor that decodes what the room forwards (or transcodes), and bad input on the way."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from av import AudioFrame, VideoFrame

from loadtest.rtp_sender import RtpSender
from mediaserver.ingest import IngestError, parse_sdp
from signaling.client import ConsultClient

from .conftest import Server

Clients = Callable[[Server], ConsultClient]


def sdp(*media: tuple[str, int, str]) -> str:
    lines = ["v=0", "o=- 0 0 IN IP4 127.0.0.1", "s=device", "c=IN IP4 127.0.0.1", "t=0 0"]
    for kind, pt, rtpmap in media:
        lines += [f"m={kind} 5004 RTP/AVP {pt}"]
        if rtpmap:
            lines += [f"a=rtpmap:{pt} {rtpmap}"]
    return "\r\n".join(lines) + "\r\n"


@pytest.fixture
async def senders() -> AsyncIterator[list[RtpSender]]:
    made: list[RtpSender] = []
    yield made
    for sender in made:
        sender.stop()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hello", "not an SDP"),
        ("v=0\r\ns=-\r\n", "no media section"),
        (sdp(("video", 96, "VP8/90000")).replace("RTP/AVP", "UDP/TLS/RTP/SAVPF"), "plain RTP"),
        (sdp(("video", 96, "")), "has no rtpmap"),
        (sdp(("video", 96, "MJPEG/90000")), "video codec MJPEG unsupported"),
        (sdp(("audio", 9, "G722/8000")), "audio codec G722 unsupported"),
        (sdp(("text", 98, "t140/1000")), "kind must be audio or video"),
    ],
)
def test_unusable_sdp_is_refused(text: str, message: str) -> None:
    with pytest.raises(IngestError, match=message):
        parse_sdp(text)


def test_sdp_media_get_device_sources() -> None:
    media = parse_sdp(sdp(("video", 96, "VP8/90000"), ("audio", 0, "")))
    assert [(m.kind, m.codec, m.source) for m in media] == [
        ("video", "VP8", "exam-camera"),
        ("audio", "PCMU", "stethoscope"),
    ]


async def create(server: Server, body: dict[str, Any]) -> dict[str, Any]:
    status, info = await server.api("POST", "/api/v1/rooms/r1/devices", json=body)
    assert status == 201, info
    return info


async def frames_of(client: ConsultClient, pid: str, kind: str, count: int) -> list[Any]:
    track = await client.wait_track(pid, kind, timeout_s=30)
    return [await asyncio.wait_for(track.recv(), 30) for _ in range(count)]


async def test_vp8_and_opus_are_forwarded_without_transcoding(
    server: Server, clients: Clients, senders: list[RtpSender]
) -> None:
    doctor = clients(server)
    await doctor.connect(server.token("doctor"))
    body = {
        "name": "Exam kit",
        "sdp": sdp(("video", 100, "VP8/90000"), ("audio", 98, "opus/48000/2")),
    }
    info = await create(server, body)
    pid = info["id"]
    video, audio = info["media"]
    assert (video["mode"], video["source"], audio["mode"]) == ("forward", "exam-camera", "forward")
    joined = await doctor.wait_for("participant-joined")
    assert joined["participant"]["role"] == "device"
    assert {t["source"] for t in joined["participant"]["tracks"]} == {"exam-camera", "stethoscope"}

    # payload types other than those the room negotiated: rewritten per subscriber
    senders.append(RtpSender("127.0.0.1", video["port"], "VP8", payload_type=100))
    senders.append(RtpSender("127.0.0.1", audio["port"], "OPUS", payload_type=98))
    for s in senders:
        s.start()
    frames = await frames_of(doctor, pid, "video", 10)
    assert all(isinstance(f, VideoFrame) for f in frames)
    assert (frames[-1].width, frames[-1].height) == (320, 240)
    sound = await frames_of(doctor, pid, "audio", 5)
    assert all(isinstance(f, AudioFrame) for f in sound)
    state = await doctor.wait_for("device-state")
    assert state == {"type": "device-state", "participant": pid, "state": "receiving"}

    status, room = await server.api("GET", "/api/v1/rooms/r1")
    assert status == 200
    assert sorted(t["source"] for t in room["tracks"]) == ["exam-camera", "stethoscope"]
    status, device = await server.api("GET", f"/api/v1/rooms/r1/devices/{pid}")
    assert device["state"] == "receiving" and device["media"][0]["packets"] > 10
    assert device["media"][0]["frames_transcoded"] == 0
    media = next(p for p in room["participants"] if p["id"] == pid)["media"]
    assert media["connection"] == "receiving" and media["link"]["uplink"]["loss"] < 0.5
    # another sender on the same port is not mixed in while the device is receiving
    bad_before = device["media"][0]["bad_packets"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(bytes([0x80, 100]) + os.urandom(200), ("127.0.0.1", video["port"]))
    deadline = time.monotonic() + 20
    while device["media"][0]["bad_packets"] == bad_before and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        _, device = await server.api("GET", f"/api/v1/rooms/r1/devices/{pid}")
    assert device["media"][0]["bad_packets"] == bad_before + 1

    # the device leaves through the API like any participant
    status, _ = await server.api("DELETE", f"/api/v1/rooms/r1/participants/{pid}")
    assert status == 200
    left = await doctor.wait_for("participant-left")
    assert left["participant"] == pid


async def test_h264_and_pcmu_are_transcoded_into_the_rooms_codecs(
    server: Server, clients: Clients, senders: list[RtpSender]
) -> None:
    doctor = clients(server)
    await doctor.connect(server.token("doctor"))
    info = await create(server, {"sdp": sdp(("video", 102, "H264/90000"), ("audio", 0, ""))})
    pid = info["id"]
    video, audio = info["media"]
    assert (video["mode"], video["room_codec"]) == ("transcode", "VP8")
    assert (audio["mode"], audio["room_codec"]) == ("transcode", "OPUS")
    senders.append(RtpSender("127.0.0.1", video["port"], "H264", payload_type=102))
    senders.append(RtpSender("127.0.0.1", audio["port"], "PCMU", payload_type=0))
    for s in senders:
        s.start()
    frames = await frames_of(doctor, pid, "video", 10)
    assert (frames[-1].width, frames[-1].height) == (320, 240)
    await frames_of(doctor, pid, "audio", 5)
    for _ in range(50):  # (with workers, the counters are a snapshot sent periodically)
        _, device = await server.api("GET", f"/api/v1/rooms/r1/devices/{pid}")
        if device["media"][0]["frames_transcoded"] >= 10:
            break
        await asyncio.sleep(0.2)
    assert device["media"][0]["frames_transcoded"] >= 10
    _, room = await server.api("GET", "/api/v1/rooms/r1")
    assert sorted(t["codec"] for t in room["tracks"]) == ["OPUS", "VP8"]


async def test_garbage_and_a_stopped_stream_leave_the_consultation_going(
    make_server: Callable[..., Any], clients: Clients, senders: list[RtpSender]
) -> None:
    server: Server = await make_server()
    doctor = clients(server)
    await doctor.connect(server.token("doctor"))
    info = await create(server, {"sdp": sdp(("video", 96, "VP8/90000"))})
    pid, port = info["id"], info["media"][0]["port"]
    status, _ = await server.api("POST", "/api/v1/rooms/r1/devices", json={"sdp": "v=0\r\n"})
    assert status == 400

    # garbage before any media: counted, nothing forwarded, the state stays waiting
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for size in (3, 12, 200, 1200):
            sock.sendto(bytes([0x40]) + os.urandom(size - 1), ("127.0.0.1", port))  # not v2
        sock.sendto(bytes([0x80, 0x7F]) + os.urandom(40), ("127.0.0.1", port))  # wrong PT
    deadline = time.monotonic() + 20
    while True:
        _, device = await server.api("GET", f"/api/v1/rooms/r1/devices/{pid}")
        if device["media"][0]["bad_packets"] >= 4 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert device["media"][0]["bad_packets"] >= 4
    assert device["media"][0]["packets"] <= 1 and device["state"] in ("waiting", "receiving")

    sender = RtpSender("127.0.0.1", port, "VP8", payload_type=96)
    senders.append(sender)
    sender.start()
    await frames_of(doctor, pid, "video", 5)
    await doctor.wait_for("device-state", lambda m: m["state"] == "receiving", timeout_s=30)
    sender.stop()
    state = await doctor.wait_for("device-state", lambda m: m["state"] == "stalled", timeout_s=30)
    assert state["participant"] == pid
    assert (await doctor.ping())["type"] == "pong"
    _, device = await server.api("GET", f"/api/v1/rooms/r1/devices/{pid}")
    assert device["state"] == "stalled"

    # it comes back
    again = RtpSender("127.0.0.1", port, "VP8", payload_type=96)
    senders.append(again)
    again.start()
    await doctor.wait_for("device-state", lambda m: m["state"] == "receiving", timeout_s=30)


async def test_telemetry_over_http_reaches_the_doctor(server: Server, clients: Clients) -> None:
    doctor = clients(server)
    await doctor.connect(server.token("doctor"))
    info = await create(server, {"name": "Pulse oximeter"})
    assert info["state"] == "telemetry-only"
    path = f"/api/v1/rooms/r1/devices/{info['id']}/telemetry"
    now = int(time.time() * 1000)
    status, body = await server.api(
        "POST",
        path,
        json={"seq": 1, "readings": [{"kind": "spo2", "value": 200, "unit": "%", "t": now}]},
    )
    assert status == 400 and body["error"] == "bad-telemetry"
    reading = {"kind": "spo2", "value": 98, "unit": "%", "t": now}
    status, body = await server.api("POST", path, json={"seq": 2, "readings": [reading]})
    assert (status, body["stored"]) == (200, 1)
    status, body = await server.api("POST", path, json={"seq": 2, "readings": [reading]})
    assert (status, body["stored"]) == (200, 0)  # a retry is not stored twice
    msg = await doctor.wait_for("telemetry")
    assert msg["record"]["value"] == 98.0 and msg["record"]["seq"] == 1
    status, _ = await server.api("POST", "/api/v1/rooms/r1/devices/p_nope/telemetry", json={})
    assert status == 404
