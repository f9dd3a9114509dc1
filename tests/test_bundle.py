"""Server offers keep the payload types and extension ids a browser negotiated."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiortc import sdp

from mediaserver.api import IceConfig, MediaConfig, Role, TrackMeta
from mediaserver.node import Node
from mediaserver.participant import Participant
from mediaserver.rtc.bundle import drop_rejected_from_bundle, harmonize

CHROMIUM_OFFER = json.loads(
    (Path(__file__).parent / "fixtures" / "chromium_offer.json").read_text()
)["offer"]


def assert_consistent(*texts: str) -> None:
    """One meaning per extension id and per payload type across every m-line of every text."""
    ext: dict[int, set[str]] = defaultdict(set)
    pts: dict[int, set[str]] = defaultdict(set)
    for text in texts:
        for media in sdp.SessionDescription.parse(text).media:
            for h in media.rtp.headerExtensions:
                ext[h.id].add(h.uri)
            for c in media.rtp.codecs:
                pts[c.payloadType].add(c.mimeType.lower())  # type: ignore[index]
    assert all(len(v) == 1 for v in ext.values()), dict(ext)
    assert all(len(v) == 1 for v in pts.values()), dict(pts)


def test_harmonize_maps_aiortc_defaults_onto_chromium_numbers() -> None:
    aiortc_style = CHROMIUM_OFFER.replace(
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
    )
    fixed = harmonize(aiortc_style, [CHROMIUM_OFFER])
    assert_consistent(fixed, CHROMIUM_OFFER)


@pytest.fixture
async def participant() -> AsyncIterator[Participant]:
    node = Node(MediaConfig(ice=IceConfig(host_addresses=("127.0.0.1",))))
    yield node.create_room("r").add_participant("d", role=Role.DOCTOR)
    await node.close()


async def next_server_offer(participant: Participant, tracks: list[TrackMeta]) -> str:
    """Ask for recvonly m-lines and return the server offer that carries them."""
    offer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    participant.once("offer", lambda text, _tracks: offer.set_result(text))
    participant.request_publish(tracks)
    return await asyncio.wait_for(offer, 10)


async def test_server_offer_after_a_chromium_offer_is_consistent(
    participant: Participant,
) -> None:
    assert ".local " in CHROMIUM_OFFER
    answer = await participant.handle_offer(CHROMIUM_OFFER, {})
    assert answer is not None
    # mDNS names are never resolved by the server (that would multicast off the machine)
    assert ".local " not in participant.pc.remoteDescription.sdp
    offer = await next_server_offer(
        participant, [TrackMeta("audio", "stethoscope"), TrackMeta("video", "exam-camera")]
    )
    assert_consistent(CHROMIUM_OFFER, answer, offer)
    media = sdp.SessionDescription.parse(offer).media
    assert len(media) == 5  # the three negotiated m-lines keep their place, two are new
    mid_ids = {h.id for m in media for h in m.rtp.headerExtensions if h.uri.endswith("sdes:mid")}
    assert mid_ids == {4}  # Chromium's id for mid


async def test_a_first_server_offer_uses_chromium_numbering(participant: Participant) -> None:
    offer = await next_server_offer(
        participant, [TrackMeta("audio", "microphone"), TrackMeta("video", "camera")]
    )
    # What Chromium rolled back in a glare must not clash with what the server offers.
    assert_consistent(CHROMIUM_OFFER, offer)
    media = sdp.SessionDescription.parse(offer).media
    codecs = {c.mimeType.lower(): c.payloadType for m in media for c in m.rtp.codecs}
    assert codecs["audio/opus"] == 111 and codecs["video/vp8"] == 96


def test_rejected_m_lines_leave_the_answer_bundle() -> None:
    offer = CHROMIUM_OFFER.replace("m=application 9 ", "m=application 0 ")
    answer = "v=0\r\na=group:BUNDLE 0 1 2\r\nm=audio 9 X 0\r\n"
    fixed = drop_rejected_from_bundle(answer, offer)
    assert "a=group:BUNDLE 0 1\r\n" in fixed
    assert drop_rejected_from_bundle(answer, CHROMIUM_OFFER) == answer
