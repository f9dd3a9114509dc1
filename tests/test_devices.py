"""Device track labels end to end, the Opus fmtp per source, and the exam camera mid-call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import numpy as np
import pytest
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from av import VideoFrame

from mediaserver.api import opus_fmtp, parse_opus_fmtp, validate_source
from mediaserver.devices import apply_opus_fmtp
from signaling.client import ConsultClient, ServerError

from .conftest import Server

Clients = Callable[[Server], ConsultClient]

SDP = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=rtpmap:96 opus/48000/2\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=rtpmap:96 opus/48000/2\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 97\r\na=mid:2\r\na=rtpmap:97 VP8/90000\r\n"
)


class Pattern(VideoStreamTrack):
    """A moving bar at a given resolution."""

    def __init__(self, width: int, height: int) -> None:
        super().__init__()
        self.size = (width, height)
        self.count = 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        width, height = self.size
        img = np.full((height, width, 3), 60, np.uint8)
        x = (self.count * 16) % width
        img[:, x : x + 32] = 250
        self.count += 1
        frame = VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


def test_sources_are_validated_against_their_kind() -> None:
    assert validate_source("audio", "stethoscope") == "stethoscope"
    assert validate_source("video", "exam-camera") == "exam-camera"
    with pytest.raises(ValueError, match="unknown track source"):
        validate_source("video", "otoscope-cam")
    with pytest.raises(ValueError, match="carries audio, not video"):
        validate_source("video", "stethoscope")


def test_opus_fmtp_follows_each_m_line_source() -> None:
    text = apply_opus_fmtp(SDP, {"0": ("microphone", 1), "1": ("stethoscope", 2)})
    assert parse_opus_fmtp(text, "0") == {"minptime": "10", "useinbandfec": "1"}
    steth = parse_opus_fmtp(text, "1")
    assert steth["maxaveragebitrate"] == "128000"
    assert (steth["stereo"], steth["sprop-stereo"], steth["usedtx"]) == ("1", "1", "0")
    assert steth["useinbandfec"] == "0" and steth["maxplaybackrate"] == "48000"
    assert "a=fmtp:97" not in text  # video untouched
    assert text.count("\r\n") == SDP.count("\r\n") + 2
    mono = opus_fmtp("stethoscope", 1)
    assert "stereo=1" in mono and "sprop-stereo" not in mono  # see devices.py: libwebrtc
    # an m-line nobody labelled gets the speech parameters, an existing fmtp is kept
    assert parse_opus_fmtp(apply_opus_fmtp(SDP, {}), "1") == {"minptime": "10", "useinbandfec": "1"}
    kept = SDP.replace("opus/48000/2\r\n", "opus/48000/2\r\na=fmtp:96 stereo=1\r\n", 1)
    assert parse_opus_fmtp(apply_opus_fmtp(kept, {"0": ("stethoscope", 1)}), "0") == {"stereo": "1"}


async def test_unknown_or_mismatched_sources_are_refused(server: Server, clients: Clients) -> None:
    device = clients(server)
    await device.connect(server.token("device"))
    await device.wait_state("admitted")
    for tracks, message in (
        ([{"kind": "video", "source": "otoscope-cam"}], "unknown track source"),
        ([{"kind": "video", "source": "stethoscope"}], "carries audio"),
        ([{"kind": "audio", "source": "stethoscope", "channels": 6}], "channels"),
    ):
        with pytest.raises(ServerError) as info:
            await device.request("publish", tracks=tracks)
        assert info.value.code == "bad-request" and message in info.value.message
    await device.send_raw(
        json.dumps(
            {"type": "offer", "id": "o1", "sdp": SDP, "tracks": {"2": {"source": "microphone"}}}
        )
    )
    error = await device.wait_for("error", lambda m: m["ref"] == "o1")
    assert error["code"] == "bad-request" and "carries audio" in error["message"]
    assert (await device.ping())["type"] == "pong"


async def test_exam_camera_added_mid_call_reaches_the_doctor_at_full_resolution(
    server: Server, clients: Clients
) -> None:
    doctor = clients(server)
    await doctor.connect(server.token("doctor"))
    nurse = clients(server)
    await nurse.connect(server.token("patient", name="Nurse"))
    await doctor.admit(nurse.participant_id or "")
    await nurse.wait_state("admitted")
    pid = nurse.participant_id or ""
    await nurse.publish(Pattern(320, 240), AudioStreamTrack(), sources=["camera", "microphone"])
    webcam = await doctor.wait_track(pid, "video", timeout_s=20)
    frame = await asyncio.wait_for(webcam.recv(), 20)
    negotiations = doctor.negotiations

    # mid-call: the examination camera is added (renegotiation), at 1280x720
    await nurse.publish(Pattern(1280, 720), sources=["exam-camera"])

    async def exam_track() -> None:
        while (pid, "exam-camera") not in doctor.remote_tracks:
            await doctor.wait_for("offer", timeout_s=20)
            await asyncio.sleep(0.1)

    await asyncio.wait_for(exam_track(), 30)
    exam = doctor.remote_tracks[(pid, "exam-camera")]
    for _ in range(5):
        frame = await asyncio.wait_for(exam.recv(), 30)
    assert isinstance(frame, VideoFrame)
    assert (frame.width, frame.height) == (1280, 720)  # no downscaling, no simulcast layer
    assert doctor.negotiations > negotiations
    # the webcam goes on beside it
    frame = await asyncio.wait_for(webcam.recv(), 20)
    assert isinstance(frame, VideoFrame)
    assert (frame.width, frame.height) == (320, 240)

    # labels travel in signaling (server offer tracks map) and in the room API
    offers = [m for m in doctor.received("offer") if m.get("tracks")]
    sources = {t.get("source") for m in offers for t in m["tracks"].values()}
    assert {"camera", "microphone", "exam-camera"} <= sources
    _, info = await server.api("GET", "/api/v1/rooms/r1")
    assert sorted(t["source"] for t in info["tracks"]) == ["camera", "exam-camera", "microphone"]
    listed = await doctor.request("telemetry-history", after=0)  # still usable
    assert listed["last"] == 0
