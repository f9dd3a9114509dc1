"""Properties of the SDP checks, checked with hypothesis on random mutations of recorded offers
(tests/fixtures: Chromium, Firefox, Safari, Android) and of a device's plain-RTP SDP.

- `protocol.require_sdp` raises only ProtocolError, `protocol.mid_kinds` nothing;
- `participant.validate_sdp` raises only NegotiationError;
- a participant's `handle_offer` (validation, aiortc's parser and negotiation, our answer
  rewriting) and `handle_answer` (to a real server offer) raise only NegotiationError, on a
  real media node;
- `bundle.harmonize` never raises, and keeps one meaning per payload type and extension id;
- `ingest.parse_sdp` raises only IngestError, and what it accepts is usable RTP.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from compat.sdp import load_fixtures
from mediaserver.api import IceConfig, MediaConfig, Role, TrackMeta
from mediaserver.ingest import IngestError, parse_sdp
from mediaserver.node import Node
from mediaserver.participant import NegotiationError, Participant, validate_sdp
from mediaserver.room import Room
from mediaserver.rtc import bundle
from signaling.protocol import ProtocolError, mid_kinds, require_sdp

SETTINGS = settings(max_examples=200, deadline=None)

FIXTURES = Path(__file__).parent / "fixtures"
OFFERS = [f.sdp for f in load_fixtures(FIXTURES / "sdp")] + [
    json.loads((FIXTURES / "chromium_offer.json").read_text())["offer"]
]
# A c= address aiortc parses but cannot write back (found by the test below, 2026-12-05): the
# participant's connection-state handler read `pc.remoteDescription`, which serialises it, so
# every state change raised and the participant's close never finished (it stayed in its room).
_head, _c, _tail = OFFERS[0].rpartition("c=IN IP4 ")
UNWRITABLE_C_LINE = _head + _c + "9" * 400 + ".0.0.0" + _tail[_tail.index("\r\n") :]
DEVICE_SDP = "\r\n".join(
    [
        "v=0",
        "o=- 0 0 IN IP4 127.0.0.1",
        "s=device",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        "m=video 5004 RTP/AVP 96",
        "a=rtpmap:96 VP8/90000",
        "m=audio 5006 RTP/AVP 97",
        "a=rtpmap:97 opus/48000/2",
        "a=fmtp:97 minptime=10;useinbandfec=1",
        "m=audio 5008 RTP/AVP 0",
        "",
    ]
)

# What a mutation may write: SDP-ish tokens as well as anything.
sdp_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
            "m=audio 0 RTP/AVP 0",
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
            "m=text 9 RTP/AVP 96",
            "a=mid:",
            "a=mid:0",
            "a=rtpmap:96 VP8/90000",
            "a=rtpmap:96 H264/0",
            "a=rtpmap:111 opus/48000/2",
            "a=rtpmap:97 rtx/90000",
            "a=fmtp:97 apt=96",
            "a=fmtp:97 apt=",
            "a=fmtp:96 profile-level-id=zz;packetization-mode=9",
            "a=extmap:0 urn:ietf:params:rtp-hdrext:sdes:mid",
            "a=extmap:15 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "a=ssrc:1 cname:x",
            "a=ssrc-group:FID 1",
            "a=group:BUNDLE 0 1 2 3",
            "a=ice-ufrag:",
            "a=fingerprint:sha-256 00",
            "a=setup:bogus",
            "a=candidate:1 1 udp 1 1.2.3.4 9 typ host",
            "a=candidate:x",
            "a=rtcp-fb:96 nack",
            "a=sendonly",
            "a=inactive",
            "c=IN IP6 ::1",
            "v=0",
            "\r\n",
            ":",
            "=",
            " ",
        ]
    ),
)


@st.composite
def mutated(draw: st.DrawFn, texts: list[str]) -> str:
    """A recorded SDP with 1-6 random edits (lines removed, repeated, swapped or replaced,
    text inserted, numbers changed, the end cut off)."""
    lines = draw(st.sampled_from(texts)).split("\r\n")
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "repeat", "swap", "replace", "insert", "number", "cut"]))
        if op == "drop" and len(lines) > 1:
            del lines[i]
        elif op == "repeat":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "replace":
            lines[i] = draw(sdp_text)
        elif op == "insert":
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(sdp_text) + lines[i][at:]
        elif op == "number":
            numbers = list(re.finditer(r"\d+", lines[i]))
            if numbers:
                m = draw(st.sampled_from(numbers))
                value = draw(st.integers(-1, 2**70).map(str) | st.just("9" * 5000))
                lines[i] = lines[i][: m.start()] + value + lines[i][m.end() :]
        elif op == "cut":
            lines = lines[: i + 1]
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
    return "\r\n".join(lines)


offers = mutated(OFFERS)


@SETTINGS
@given(offers)
def test_require_sdp_and_mid_kinds(sdp: str) -> None:
    try:
        require_sdp({"type": "offer", "id": "1", "sdp": sdp})
    except ProtocolError:
        pass
    kinds = mid_kinds(sdp)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in kinds.items())


@SETTINGS
@given(offers)
def test_validate_sdp_raises_only_negotiation_error(sdp: str) -> None:
    try:
        validate_sdp(sdp)
    except NegotiationError:
        pass


def test_handle_offer_raises_only_negotiation_error() -> None:
    """A participant answers a mutated offer or refuses it with NegotiationError (what the
    `offer` handler turns into `bad-sdp`); a media node on this test's own event loop."""

    async def start() -> Node:
        node = Node(MediaConfig(ice=IceConfig(host_addresses=("127.0.0.1",))))
        await node.start()
        return node

    loop = asyncio.new_event_loop()
    node = loop.run_until_complete(start())
    try:
        room = node.create_room("props")
        counter = iter(range(10**9))

        async def one(sdp: str) -> None:
            participant = room.add_participant(f"p{next(counter)}", role=Role.DOCTOR)
            try:
                try:
                    await participant.handle_offer(sdp, {})
                except NegotiationError:
                    pass
            finally:
                await participant.close()

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(offers)
        @example(UNWRITABLE_C_LINE)
        def run(sdp: str) -> None:
            loop.run_until_complete(one(sdp))
            assert not room.participants, "a closed participant stayed in its room"

        run()
    finally:
        loop.run_until_complete(node.close())
        loop.close()


def test_handle_answer_raises_only_negotiation_error() -> None:
    """A participant with a server offer pending takes a mutated answer (recorded from a real
    aiortc peer) or refuses it with NegotiationError (the `answer` handler's `bad-sdp`)."""
    tracks = [TrackMeta("audio", "microphone"), TrackMeta("video", "camera")]

    async def pending(room: Room, name: str) -> tuple[Participant, str]:
        participant = room.add_participant(name, role=Role.DOCTOR)
        offer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        participant.once("offer", lambda text, _tracks: offer.set_result(text))
        participant.request_publish(tracks)
        return participant, await asyncio.wait_for(offer, 20)

    async def start() -> tuple[Node, Room, Participant, str]:
        node = Node(MediaConfig(ice=IceConfig(host_addresses=("127.0.0.1",))))
        await node.start()
        room = node.create_room("props")
        participant, offer = await pending(room, "p0")
        client = RTCPeerConnection()
        await client.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await client.setLocalDescription(await client.createAnswer())
        answer = client.localDescription.sdp
        await client.close()
        return node, room, participant, answer

    loop = asyncio.new_event_loop()
    node, room, first, answer = loop.run_until_complete(start())
    current = [first]
    counter = iter(range(1, 10**9))
    try:

        async def one(sdp: str) -> None:
            participant = current[0]
            if participant.pc.signalingState != "have-local-offer":  # the last answer took
                await participant.close()
                current[0], _ = await pending(room, f"p{next(counter)}")
                participant = current[0]
            try:
                await participant.handle_answer(sdp)
            except NegotiationError:
                pass

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(mutated([answer]))
        def run(sdp: str) -> None:
            loop.run_until_complete(one(sdp))

        run()
    finally:
        loop.run_until_complete(node.close())
        loop.close()


numbers = st.one_of(st.integers(-1, 200_000).map(str), st.sampled_from(["", "x", "9" * 5000]))


@st.composite
def device_sdps(draw: st.DrawFn) -> str:
    """A plain-RTP SDP built from random fields (kind, transport, payload type, rtpmap)."""
    lines = ["v=0", "o=- 0 0 IN IP4 127.0.0.1", "s=device", "t=0 0"]
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["audio", "video", "text"]))
        proto = draw(st.sampled_from(["RTP/AVP", "RTP/AVPF", "RTP/SAVP"]))
        pt = draw(numbers)
        lines.append(f"m={kind} {draw(numbers)} {proto} {pt}")
        if draw(st.booleans()):
            name = draw(st.sampled_from(["VP8", "H264", "opus", "PCMU", "PCMA", "G722"]))
            rate = draw(st.sampled_from(["90000", "48000", "8000"]) | numbers)
            channels = draw(st.sampled_from(["", "/1", "/2"]) | numbers.map(lambda n: "/" + n))
            lines.append(f"a=rtpmap:{draw(st.sampled_from([pt, '96']))} {name}/{rate}{channels}")
    return "\r\n".join(lines) + "\r\n"


@SETTINGS
@given(st.one_of(mutated([DEVICE_SDP]), device_sdps()))
@example("v=0\r\nm=video 5004 RTP/AVP 96\r\na=rtpmap:96 VP8/0\r\n")  # jitter / 0
@example("v=0\r\nm=video 5004 RTP/AVP 96\r\na=rtpmap:96 VP8/" + "9" * 5000 + "\r\n")
@example("v=0\r\nm=audio 5004 RTP/AVP 300\r\na=rtpmap:300 opus/48000/2\r\n")
def test_ingest_parse_sdp_raises_only_ingest_error(sdp: str) -> None:
    """What parse_sdp accepts, the ingest can use: RTP payload types, the codec's own clock
    rate (RFC 7587, 7741, 6184, 3551: the stats divide by it) and 1 or 2 channels."""
    try:
        media = parse_sdp(sdp)
    except IngestError:
        return
    assert 1 <= len(media) <= 4
    for m in media:
        assert 0 <= m.payload_type <= 127
        assert m.clock_rate == {"OPUS": 48000, "PCMU": 8000, "PCMA": 8000}.get(m.codec, 90000)
        assert m.channels in (1, 2)


# -- harmonize(): one number, one meaning inside a bundle ------------------------------------------


def _numbers(text: str) -> tuple[dict[int, tuple[Any, ...]], dict[str, int]]:
    """payload type -> codec key and extension uri -> id of one description's RTP m-lines."""
    pts: dict[int, tuple[Any, ...]] = {}
    ext: dict[str, int] = {}
    for media in aiortc_sdp.SessionDescription.parse(text).media:
        if media.kind in ("audio", "video"):
            pts.update(bundle._keys(media))
            ext.update({e.uri: e.id for e in media.rtp.headerExtensions})
    return pts, ext


def _consistent(text: str) -> bool:
    seen_pt: dict[int, tuple[Any, ...]] = {}
    seen_id: dict[int, str] = {}
    for media in aiortc_sdp.SessionDescription.parse(text).media:
        if media.kind not in ("audio", "video"):
            continue
        for pt, key in bundle._keys(media).items():
            if seen_pt.setdefault(pt, key) != key:
                return False
        for e in media.rtp.headerExtensions:
            if seen_id.setdefault(e.id, e.uri) != e.uri:
                return False
    return True


CONSISTENT = [o for o in OFFERS if _consistent(o)]


@st.composite
def sections_of(draw: st.DrawFn, texts: list[str]) -> str:
    """A recorded description keeping a random subset of its m-sections."""
    head, *sections = draw(st.sampled_from(texts)).split("\r\nm=")
    kept = draw(st.lists(st.sampled_from(sections), min_size=1, max_size=len(sections)))
    return "\r\nm=".join([head, *kept]) + ("" if kept[-1].endswith("\r\n") else "\r\n")


@SETTINGS
@given(sections_of(OFFERS), st.lists(sections_of(CONSISTENT), max_size=1))
@example(OFFERS[3], [CONSISTENT[1]])  # Safari's codecs after Chrome 85's: 96-127 all taken
def test_harmonize_gives_one_meaning_per_number(offer: str, established: list[str]) -> None:
    """Every payload type and extension id the established description uses keeps its
    meaning in the harmonized offer; no number means two things; never an exception."""
    out = bundle.harmonize(offer, established)
    assert _consistent(out) or not _consistent(offer)
    pts, ext = _numbers(out)
    for text in established:
        old_pts, old_ext = _numbers(text)
        for pt, key in pts.items():
            assert old_pts.get(pt, key) == key, (pt, key, old_pts.get(pt))
        for uri, ident in ext.items():
            assert old_ext.get(uri, ident) == ident
