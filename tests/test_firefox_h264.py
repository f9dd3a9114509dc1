"""Issue 12: Firefox ESR 140 in an H264 room (a recorded offer, tests/fixtures/sdp).

Firefox 140's `RTCRtpReceiver.getCapabilities("video")` lists H264, so consult.js declares
H264 at join, but without its OpenH264 plugin its SDP offers only VP8, VP9 and AV1. The node
used to trust the declaration: it refused the browser's offer (H264 preference on the new
m-line: "Failed to set remote video description send parameters") and offered it the doctor's
H264 camera, which Firefox rejected (port 0, no ICE credentials: "ICE username fragment or
password is missing"). Now what the SDP shows wins: the offer is answered in VP8, the room
settles on VP8, the doctor's camera is switched to VP8 and offered to the patient in VP8.
"""

from __future__ import annotations

from pathlib import Path

from aiortc.mediastreams import AudioStreamTrack

from compat import sdp as compat_sdp
from signaling.client import ConsultClient

from .conftest import Server
from .test_codec_switch import _until, _video_codecs, _video_rtpmaps, h264_room_with_doctor
from .test_e2e_media import SyntheticVideo

FIXTURE = Path(__file__).parent / "fixtures" / "sdp" / "firefox140-sendonly.sdp"


async def test_firefox140_offer_in_an_h264_room(server: Server) -> None:
    fx = compat_sdp.load_fixture(FIXTURE)
    assert fx.video_codecs == ["VP8", "H264"]  # what Firefox 140 declares at join
    status, _ = await server.api(
        "POST", "/api/v1/rooms", json={"id": "late", "video_codec": "H264"}
    )
    assert status == 201
    doctor = ConsultClient(server.url, codecs=["H264", "VP8"])
    firefox = ConsultClient(server.url, codecs=fx.video_codecs, auto_answer=False)
    try:
        await doctor.connect(server.token("doctor", room="late"))
        await firefox.connect(server.token("patient", sub="firefox140", room="late"))
        await doctor.admit(firefox.participant_id or "")
        await firefox.wait_state("admitted")
        _, room = await server.api("GET", "/api/v1/rooms/late")
        assert room["video_codec"] == "H264"  # both declared H264
        # The browser's offer (its camera and microphone) gets a valid answer, in VP8.
        reply = await firefox.request(
            "offer",
            timeout_s=30,
            sdp=fx.sdp,
            tracks={"1": {"source": "microphone"}, "2": {"source": "camera"}},
        )
        problems, picked = compat_sdp.check_answer(fx.sdp, reply["sdp"], "H264")
        assert problems == [], problems
        assert picked["2"]["codec"] == "VP8" and picked["1"]["codec"] == "OPUS"
        # The room settles on VP8, the doctor then publishes in VP8 and the patient is
        # offered the doctor's camera in VP8.
        _, room = await server.api("GET", "/api/v1/rooms/late")
        assert room["video_codec"] == "VP8"
        await doctor.publish(AudioStreamTrack())
        await doctor.publish(SyntheticVideo(60))
        did = doctor.participant_id or ""

        async def doctor_in_vp8() -> bool:
            return await _video_codecs(server, did) == ["VP8"]

        await _until(doctor_in_vp8, "the doctor's VP8 camera")
        _, room = await server.api("GET", "/api/v1/rooms/late")
        track = next(t for t in room["tracks"] if t["participant"] == did and t["kind"] == "video")

        async def offered_in_vp8() -> bool:
            for msg in firefox.received("offer"):
                tracks = msg.get("tracks") or {}
                mid = next((m for m, t in tracks.items() if t.get("track") == track["id"]), None)
                if mid is not None:
                    return _video_rtpmaps(msg["sdp"], mid)[:1] == ["VP8"]
            return False

        await _until(offered_in_vp8, "a server offer of the doctor's VP8 camera")
    finally:
        await firefox.close()
        await doctor.close()


async def test_h264_subscription_offers_vp8_after_h264(server: Server) -> None:
    """A browser that declared H264 but cannot negotiate it answers the VP8 that follows H264
    on the m-line instead of rejecting it (port 0, which aiortc cannot take); one that can
    answers H264 and receives H264."""
    doctor = ConsultClient(server.url, codecs=["H264", "VP8"])
    patient = ConsultClient(server.url, codecs=["H264", "VP8"])
    try:
        did = await h264_room_with_doctor(server, doctor)
        await patient.connect(server.token("patient", room="late"))
        await doctor.admit(patient.participant_id or "")
        await patient.wait_state("admitted")
        _, room = await server.api("GET", "/api/v1/rooms/late")
        track = next(t for t in room["tracks"] if t["participant"] == did and t["kind"] == "video")
        offer = await patient.wait_for("offer")
        mid = next(m for m, t in offer["tracks"].items() if t.get("track") == track["id"])
        names = [n.upper() for n in _video_rtpmaps(offer["sdp"], mid) if n.lower() != "rtx"]
        assert names[0] == "H264" and names[-1] == "VP8", names
        got = await patient.wait_track(did, "video")
        assert got is not None
        assert await _video_codecs(server, did) == ["H264"]  # nobody had to switch
    finally:
        await patient.close()
        await doctor.close()
