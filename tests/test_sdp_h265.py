"""The node never answers H265 (it forwards VP8 and H264 only), even when a browser offers it
first, as Safari 17+ does once H265 is on (its offers list H265/90000 between H264 and VP8)."""

from __future__ import annotations

from pathlib import Path

from compat import sdp as compat_sdp
from signaling.client import ConsultClient

from .conftest import Server

SAFARI = Path(__file__).parent / "fixtures" / "sdp" / "safari-macos-kvs-recvonly.sdp"


def _h265_first(offer: str) -> str:
    """The recorded Safari offer with H265 (and its RTX) put first on the video m-line, the
    way Safari lists it with H265 enabled."""
    offer = offer.replace(
        "m=video 9 UDP/TLS/RTP/SAVPF 96 ", "m=video 9 UDP/TLS/RTP/SAVPF 110 111 96 ", 1
    )
    h265 = (
        "a=rtpmap:110 H265/90000\r\na=rtcp-fb:110 nack\r\na=rtcp-fb:110 nack pli\r\n"
        "a=fmtp:110 level-id=93;profile-id=1;tier-flag=0;tx-mode=SRST\r\n"
        "a=rtpmap:111 rtx/90000\r\na=fmtp:111 apt=110\r\n"
    )
    return offer.replace("a=rtpmap:96 H264/90000\r\n", h265 + "a=rtpmap:96 H264/90000\r\n", 1)


async def test_h265_offered_first_is_never_chosen(server: Server) -> None:
    offer = _h265_first(compat_sdp.load_fixture(SAFARI).sdp)
    assert offer.index("H265/90000") < offer.index("H264/90000")
    for room, codec in (("plain", "VP8"), ("h264room", "H264")):
        if codec == "H264":
            status, _ = await server.api(
                "POST", "/api/v1/rooms", json={"id": room, "video_codec": "H264"}
            )
            assert status == 201
        client = ConsultClient(server.url, codecs=["H264", "VP8", "H265"], auto_answer=False)
        try:
            await client.connect(server.token("doctor", room=room))
            reply = await client.request("offer", timeout_s=30, sdp=offer, tracks={})
            answer = reply["sdp"]
            problems, picked = compat_sdp.check_answer(offer, answer, codec)
            assert problems == [], problems
            assert picked["0"]["codec"] == codec
            assert "H265" not in answer
        finally:
            await client.close()


def test_checker_flags_an_h265_answer() -> None:
    offer = _h265_first(compat_sdp.load_fixture(SAFARI).sdp)
    answer = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 110\r\na=mid:0\r\na=sendonly\r\na=rtcp-mux\r\n"
        "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\n"
        "a=fingerprint:sha-256 AA:BB\r\na=setup:active\r\na=rtpmap:110 H265/90000\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n"
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n"
    )
    problems, _ = compat_sdp.check_answer(offer, answer, "VP8")
    assert any("picked H265" in p for p in problems), problems


def test_checker_flags_h265_listed_after_the_first_codec() -> None:
    """An answer listing H265 after VP8 lets the browser send H265, which the node cannot
    forward: the checker flags it even when the first codec is right."""
    offer = _h265_first(compat_sdp.load_fixture(SAFARI).sdp)
    answer = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 100 110\r\na=mid:0\r\na=sendonly\r\na=rtcp-mux\r\n"
        "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\n"
        "a=fingerprint:sha-256 AA:BB\r\na=setup:active\r\na=rtpmap:100 VP8/90000\r\n"
        "a=rtpmap:110 H265/90000\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n"
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n"
    )
    problems, picked = compat_sdp.check_answer(offer, answer, "VP8")
    assert picked["0"]["codec"] == "VP8"
    assert any("lists H265" in p for p in problems), problems


# Extensions of Safari 17+ (libwebrtc of that era), two of them at two-byte ids that only
# `a=extmap-allow-mixed` allows.
SAFARI17_EXTENSIONS = (
    "a=extmap:10 http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time\r\n"
    "a=extmap:15 https://aomediacodec.github.io/av1-rtp-spec/"
    "#dependency-descriptor-rtp-header-extension\r\n"
    "a=extmap:16 http://www.webrtc.org/experiments/rtp-hdrext/video-layers-allocation00\r\n"
)


def _safari17(offer: str) -> str:
    """The recorded Safari offer laid out as Safari 17+ offers it: session-level
    `a=extmap-allow-mixed`, H265 among the video codecs, and the newer header extensions."""
    offer = _h265_first(offer).replace("a=group:BUNDLE", "a=extmap-allow-mixed\r\na=group:BUNDLE")
    return offer.replace(
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n" + SAFARI17_EXTENSIONS,
        1,
    )


async def test_safari17_extensions_and_mixed_extmap_are_answered_consistently(
    server: Server,
) -> None:
    offer = _safari17(compat_sdp.load_fixture(SAFARI).sdp)
    assert offer.count("extmap-allow-mixed") == 1 and offer.count("video-layers") == 1
    for room, codec in (("plain17", "VP8"), ("h264room17", "H264")):
        if codec == "H264":
            status, _ = await server.api(
                "POST", "/api/v1/rooms", json={"id": room, "video_codec": codec}
            )
            assert status == 201
        client = ConsultClient(server.url, codecs=["H264", "VP8", "H265"], auto_answer=False)
        try:
            await client.connect(server.token("doctor", room=room))
            reply = await client.request("offer", timeout_s=30, sdp=offer, tracks={})
            answer = reply["sdp"]
            problems, picked = compat_sdp.check_answer(offer, answer, codec)
            assert problems == [], problems
            assert picked["0"]["codec"] == codec
            assert "H265" not in answer
        finally:
            await client.close()


REAL = ("safari-h265-tau-sendrecv", "safari16-macos-whep-recvonly", "safari26-macos-sendrecv")


async def test_recorded_safari_offers_with_h265_and_mixed_extmap(server: Server) -> None:
    """Three recorded Safari offers (two with H265, at pt 104 and at pt 35 before VP8, all with
    `a=extmap-allow-mixed`; Safari 16.6 and 26.5.2 by their sources): in a default room the node
    answers VP8, in an H264 room mode-1 H264 with a profile Safari offered; never H265, flexfec
    or an extension Safari did not offer."""
    for name in REAL:
        fx = compat_sdp.load_fixture(SAFARI.parent / f"{name}.sdp")
        for codec in ("VP8", "H264"):
            room = f"{name}-{codec}".lower()
            if codec == "H264":
                status, _ = await server.api(
                    "POST", "/api/v1/rooms", json={"id": room, "video_codec": codec}
                )
                assert status == 201
            client = ConsultClient(server.url, codecs=fx.video_codecs, auto_answer=False)
            try:
                await client.connect(server.token("doctor", room=room))
                tracks = compat_sdp.sent_tracks(fx.sdp)  # as the SDP suite declares them
                reply = await client.request("offer", timeout_s=30, sdp=fx.sdp, tracks=tracks)
                answer = reply["sdp"]
                problems, picked = compat_sdp.check_answer(fx.sdp, answer, codec)
                assert problems == [], (name, codec, problems)
                video = [v for v in picked.values() if v.get("kind") == "video"]
                assert [v["codec"] for v in video] == [codec], (name, picked)
                assert "H265" not in answer and "flexfec" not in answer.lower()
            finally:
                await client.close()
