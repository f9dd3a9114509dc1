"""codec-late (issue 3): a room that asks for H264 settles on a codec every member decodes.

The doctor publishes H264 while alone in an H264 room; a patient that declares only VP8 is
admitted afterwards. The node offers the doctor its camera's m-line again with VP8 only, and
once the doctor answered, the doctor's camera is a VP8 publication that the patient is offered.
A browser publisher then sends VP8 (compat `codec-late`); aiortc's sender keeps the encoder of
its first negotiation, so here the check stops at the signaling and the room's tracks.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc.mediastreams import AudioStreamTrack

from signaling.client import ConsultClient

from .conftest import Server
from .test_e2e_media import SyntheticVideo


async def _video_codecs(server: Server, participant: str) -> list[str]:
    _, info = await server.api("GET", "/api/v1/rooms/late")
    tracks = info["tracks"]
    return [t["codec"] for t in tracks if t["participant"] == participant and t["kind"] == "video"]


async def _until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    async def loop() -> None:
        while not await predicate():
            await asyncio.sleep(0.2)

    try:
        await asyncio.wait_for(loop(), 30)
    except TimeoutError as exc:
        raise AssertionError(f"timed out waiting for {what}") from exc


def _video_rtpmaps(sdp: str, mid: str) -> list[str]:
    for section in sdp.split("\r\nm=")[1:]:
        if section.startswith("video") and f"\r\na=mid:{mid}\r\n" in section + "\r\n":
            return re.findall(r"a=rtpmap:\d+ ([\w-]+)/", section)
    return []


async def h264_room_with_doctor(server: Server, doctor: ConsultClient) -> str:
    """Room "late" asks for H264; the doctor publishes its camera there, in H264."""
    status, _ = await server.api(
        "POST", "/api/v1/rooms", json={"id": "late", "video_codec": "H264"}
    )
    assert status == 201
    await doctor.connect(server.token("doctor", room="late"))
    await doctor.publish(SyntheticVideo(60))
    did = doctor.participant_id or ""

    async def published_in_h264() -> bool:
        return await _video_codecs(server, did) == ["H264"]

    await _until(published_in_h264, "the doctor's H264 camera")
    return did


async def test_late_member_without_h264_gets_the_publisher_in_vp8(server: Server) -> None:
    doctor = ConsultClient(server.url, codecs=["H264", "VP8"])
    patient = ConsultClient(server.url, codecs=["VP8"])
    try:
        did = await h264_room_with_doctor(server, doctor)

        async def published_in(codec: str) -> bool:
            return await _video_codecs(server, did) == [codec]

        offers_before = len([m for m in doctor.messages if m.get("type") == "offer"])

        await patient.connect(server.token("patient", room="late"))
        await doctor.admit(patient.participant_id or "")
        await patient.wait_state("admitted")

        # The doctor is offered its camera's m-line again, with VP8 only; the room says VP8.
        await _until(lambda: published_in("VP8"), "the doctor's camera in VP8")
        _, info = await server.api("GET", "/api/v1/rooms/late")
        mid = next(t["mid"] for t in info["tracks"] if t["participant"] == did)
        offers = [m for m in doctor.messages if m.get("type") == "offer"][offers_before:]
        assert offers and set(_video_rtpmaps(offers[-1]["sdp"], mid)) == {"VP8", "rtx"}

        # The patient is offered the doctor's camera, in VP8.
        async def offered() -> bool:
            return any(
                t.get("participant") == did and t.get("source") == "camera"
                for m in patient.messages
                if m.get("type") == "offer"
                for t in m.get("tracks", {}).values()
            )

        await _until(offered, "the doctor's camera offered to the patient")
        last: dict[str, Any] = [m for m in patient.messages if m.get("type") == "offer"][-1]
        mids = [
            mid
            for mid, t in last["tracks"].items()
            if t.get("participant") == did and t.get("source") == "camera"
        ]
        assert mids and _video_rtpmaps(last["sdp"], mids[-1])[0] == "VP8"
    finally:
        await doctor.close()
        await patient.close()


async def test_switch_while_a_server_offer_is_unanswered(server: Server) -> None:
    """The switch starts while an offer of ours to the publisher still awaits its answer (that
    offer carries H264 on the camera's m-line). The answer must still apply (aiortc checks it
    against the transceiver's codec preferences, so they change only at our next offer); the
    next offer then carries VP8 only. Seen in compat's chromium-firefox `codec-late` cell: the
    doctor's answer was refused ('Failed to set remote video description send parameters')
    and the doctor never got the patient's media."""
    doctor = ConsultClient(server.url, codecs=["H264", "VP8"])
    nurse = ConsultClient(server.url, codecs=["H264", "VP8"])
    patient = ConsultClient(server.url, codecs=["VP8"])
    try:
        did = await h264_room_with_doctor(server, doctor)

        async def published_in(codec: str) -> bool:
            return await _video_codecs(server, did) == [codec]

        # A member who decodes H264 publishes audio: the node offers it to the doctor, who
        # does not answer yet.
        doctor.auto_answer = False
        offers_before = len(doctor.received("offer"))
        await nurse.connect(server.token("patient", room="late", sub="nurse"))
        await doctor.admit(nurse.participant_id or "")
        await nurse.wait_state("admitted")
        await nurse.publish(AudioStreamTrack())
        nid = nurse.participant_id

        def offers_nurse(m: dict[str, Any]) -> bool:
            return any(t.get("participant") == nid for t in (m.get("tracks") or {}).values())

        pending = await doctor.wait_for("offer", offers_nurse, timeout_s=30)
        assert len(doctor.received("offer")) > offers_before

        # A member who cannot decode H264 comes in while that offer is unanswered.
        await patient.connect(server.token("patient", room="late", sub="patient"))
        await doctor.admit(patient.participant_id or "")
        await patient.wait_state("admitted")

        # The doctor answers the old offer now: the node accepts it.
        doctor.auto_answer = True
        await doctor._answer_offer(pending)
        assert not [m for m in doctor.received("error")], doctor.received("error")

        await _until(lambda: published_in("VP8"), "the doctor's camera in VP8")
        assert not doctor.received("error")
    finally:
        await doctor.close()
        await nurse.close()
        await patient.close()
