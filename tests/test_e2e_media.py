"""Media end to end: two ConsultClients (aiortc, real encoders and decoders) through a real node.

Each side publishes audio and video with `publish` (it never offers), answers the server's
offers, and decodes frames of the other side's video.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import numpy as np
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from av import VideoFrame

from signaling.client import ConsultClient

from .conftest import Server, ServerFactory

Clients = Callable[[Server], ConsultClient]


class SyntheticVideo(VideoStreamTrack):
    """A moving bar: something to encode, frames to decode."""

    def __init__(self, shade: int) -> None:
        super().__init__()
        self.shade = shade
        self.count = 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        img = np.full((240, 320, 3), self.shade, np.uint8)
        x = (self.count * 8) % 320
        img[:, x : x + 16] = 255
        self.count += 1
        frame = VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


async def decode(client: ConsultClient, participant: str, frames: int) -> VideoFrame:
    track = await client.wait_track(participant, "video", timeout_s=20)
    frame = None
    for _ in range(frames):
        frame = await asyncio.wait_for(track.recv(), 20)
    assert isinstance(frame, VideoFrame)
    return frame


async def admitted(server: Server, clients: Clients) -> tuple[ConsultClient, ConsultClient]:
    """A doctor, and a patient the doctor admitted from the waiting room."""
    doctor = clients(server)
    await doctor.connect(server.token("doctor"))
    patient = clients(server)
    await patient.connect(server.token("patient"))
    await doctor.admit(patient.participant_id or "")
    await patient.wait_state("admitted")
    return doctor, patient


async def test_doctor_and_patient_exchange_audio_and_video(
    server: Server, clients: Clients
) -> None:
    doctor, patient = await admitted(server, clients)
    assert doctor.participant_id and patient.participant_id

    await doctor.publish(SyntheticVideo(40), AudioStreamTrack())
    await patient.publish(SyntheticVideo(200), AudioStreamTrack())

    seen_by_doctor, seen_by_patient = await asyncio.gather(
        decode(doctor, patient.participant_id, 5), decode(patient, doctor.participant_id, 5)
    )
    assert (seen_by_doctor.width, seen_by_doctor.height) == (320, 240)
    assert (seen_by_patient.width, seen_by_patient.height) == (320, 240)
    audio = await patient.wait_track(doctor.participant_id, "audio", timeout_s=20)
    await asyncio.wait_for(audio.recv(), 20)
    assert (patient.participant_id, "camera") in doctor.remote_tracks

    status, info = await server.api("GET", "/api/v1/rooms/r1")
    assert status == 200
    assert sorted(t["kind"] for t in info["tracks"]) == ["audio", "audio", "video", "video"]

    # chat over the data channel is handled like a WebSocket chat message
    assert patient.channel is not None
    for _ in range(100):
        if patient.channel.readyState == "open":
            break
        await asyncio.sleep(0.1)
    patient.send_data(json.dumps({"type": "chat", "text": "via data channel"}))
    message = await doctor.wait_for("chat", lambda m: m["message"]["text"] == "via data channel")
    assert message["message"]["from"] == patient.participant_id


async def test_broken_sdp_in_negotiation_keeps_session(server: Server, clients: Clients) -> None:
    doctor = clients(server)
    await doctor.connect(server.token("doctor"))
    broken = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF\r\n"
    await doctor.send_raw(json.dumps({"type": "offer", "id": "o1", "sdp": broken, "tracks": {}}))
    error = await doctor.wait_for("error")
    assert (error["code"], error["ref"]) == ("bad-sdp", "o1")
    await doctor.send_raw(json.dumps({"type": "answer", "id": "a1", "sdp": broken}))
    error = await doctor.wait_for("error")
    assert (error["code"], error["ref"]) == ("bad-sdp", "a1")
    assert (await doctor.ping())["type"] == "pong"


async def test_server_offer_missed_during_drop_is_resent_on_resume(
    server: Server, clients: Clients
) -> None:
    doctor, patient = await admitted(server, clients)
    await patient.publish(SyntheticVideo(90), AudioStreamTrack())
    await decode(doctor, patient.participant_id or "", 2)

    await patient.drop()
    await doctor.publish(SyntheticVideo(160))  # the server offers the patient a subscription
    await asyncio.sleep(0.5)
    joined = await patient.resume()
    assert joined["resumed"] is True
    frame = await decode(patient, doctor.participant_id or "", 3)
    assert frame.width == 320


async def test_media_peer_that_vanishes_is_closed(
    make_server: ServerFactory, clients: Clients
) -> None:
    server = await make_server(peer_timeout_s=1.0)
    doctor = clients(server)
    await doctor.connect(server.token("doctor"))
    device = clients(server)
    await device.connect(server.token("device"))
    await device.publish(AudioStreamTrack())
    await doctor.wait_track(device.participant_id or "", "audio", timeout_s=20)
    assert device.pc is not None
    await device.pc.close()  # media gone, socket still open
    left = await doctor.wait_for("participant-left", timeout_s=30)
    assert left["participant"] == device.participant_id
    assert left["reason"] in ("failed", "timeout")
    assert await device.wait_closed() == 4008


async def test_client_offer_publishes_and_crossing_offers_get_glare(
    server: Server, clients: Clients
) -> None:
    from aiortc import RTCSessionDescription

    doctor = ConsultClient(server.url, auto_answer=False)
    patient = clients(server)
    try:
        await doctor.connect(server.token("doctor"))
        await patient.connect(server.token("patient"))
        await doctor.admit(patient.participant_id or "")
        await patient.wait_state("admitted")

        # a browser-style publisher: the client offers
        pc = doctor._ensure_pc()
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        mid = pc.getTransceivers()[0].mid
        reply = await doctor.request(
            "offer", sdp=pc.localDescription.sdp, tracks={mid: {"source": "microphone"}}
        )
        assert reply["type"] == "answer"
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
        audio = await patient.wait_track(doctor.participant_id or "", "audio", timeout_s=20)
        await asyncio.wait_for(audio.recv(), 20)

        # the patient publishes: the server offers to the doctor, who does not answer yet and
        # offers again itself: the server (impolite) answers glare
        await patient.publish(SyntheticVideo(10))
        await doctor.wait_for("offer", timeout_s=20)
        pc.addTransceiver(SyntheticVideo(20), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        await doctor.send(
            {"type": "offer", "id": "glare-1", "sdp": pc.localDescription.sdp, "tracks": {}}
        )
        error = await doctor.wait_for("error")
        assert (error["code"], error["ref"]) == ("glare", "glare-1")
        assert (await doctor.ping())["type"] == "pong"
    finally:
        await doctor.close()


async def test_declared_codecs_reach_the_media_plane(server: Server, clients: Clients) -> None:
    status, _ = await server.api("POST", "/api/v1/rooms", json={"id": "h", "video_codec": "H264"})
    assert status == 201
    doctor = ConsultClient(server.url, codecs=["VP8", "H264"])
    patient = ConsultClient(server.url, codecs=["H264", "VP8"])
    try:
        await doctor.connect(server.token("doctor", room="h"))
        await patient.connect(server.token("patient", room="h"))
        await doctor.admit(patient.participant_id or "")
        await patient.wait_state("admitted")
        status, info = await server.api("GET", "/api/v1/rooms/h")
        assert info["video_codec"] == "H264"
        await patient.publish(SyntheticVideo(120))
        frame = await decode(doctor, patient.participant_id or "", 3)
        assert frame.width == 320
        status, info = await server.api("GET", "/api/v1/rooms/h")
        assert [t["codec"] for t in info["tracks"]] == ["H264"]
    finally:
        await doctor.close()
        await patient.close()
