"""Demux: a participant's inbound RTP by SSRC and RTCP by type (real Publication, Subscription
and LinkFallback objects, packets in memory; no network)."""

from __future__ import annotations

import struct

from mediaserver.bandwidth import FallbackConfig
from mediaserver.codecs import CodecInfo
from mediaserver.demux import Demux
from mediaserver.events import NodeCounters
from mediaserver.fallback import LinkFallback
from mediaserver.forwarder import ExtensionIds
from mediaserver.publication import Publication
from mediaserver.rtp import rtcp
from mediaserver.subscription import Subscription

OPUS = CodecInfo("audio/opus", 48000, 2, {}, 111, 0, False)
VP8 = CodecInfo("video/VP8", 90000, None, {}, 96, 97, True)
H264 = CodecInfo("video/H264", 90000, None, {}, 102, 103, True)
MID_EXT = 3


def rtp(ssrc: int, seq: int, pt: int, *, mid: str | None = None, payload: bytes = b"") -> bytes:
    """An RTP packet, with the mid in a one-byte header extension when given."""
    head = struct.pack("!BBHII", 0x90 if mid else 0x80, pt, seq, seq * 3000, ssrc)
    if mid is not None:
        element = bytes([(MID_EXT << 4) | (len(mid) - 1)]) + mid.encode()
        element += b"\x00" * (-len(element) % 4)
        head += struct.pack("!HH", 0xBEDE, len(element) // 4) + element
    return head + (payload or b"\x10\x00\x00\x9d\x01\x2a" + bytes(20))


def rtx(ssrc: int, seq: int, pt: int, osn: int) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, 0, ssrc) + osn.to_bytes(2, "big") + bytes(20)


class Setup:
    """A participant's tables: its publications dict, a fallback, the demux, and what its
    publications and subscriptions sent."""

    def __init__(self) -> None:
        self.counters = NodeCounters()
        self.publications: dict[str, Publication] = {}
        self.fallback = LinkFallback(
            FallbackConfig(),
            self.counters,
            emit_mode=lambda *_: None,
            emit_pause=lambda *_: None,
        )
        self.demux = Demux(self.publications, self.fallback)
        self.rtcp_out: list[bytes] = []
        self.rtp_out: list[bytes] = []

    def publication(
        self, codec: CodecInfo, mid: str, ssrc: int | None, rtx_ssrc: int | None = None
    ) -> Publication:
        pub = Publication(
            participant_id="p",
            kind=codec.mime_type.split("/")[0],
            source="camera" if codec.mime_type.startswith("video") else "microphone",
            mid=mid,
            codec=codec,
            ssrc=ssrc,
            rtx_ssrc=rtx_ssrc,
            audio_level_id=0,
            cache_size=64,
            counters=self.counters,
            send_rtcp=self._rtcp,
            rtcp_ssrc=1,
            pli_throttle_s=0.0,
        )
        self.publications[pub.track_id] = pub
        self.demux.add_publication(pub)
        return pub

    def subscription(self, pub: Publication, ssrc: int, rtx_ssrc: int = 0) -> Subscription:
        sub = Subscription(pub, send_rtp=self._rtp, counters=self.counters)
        sub.start(
            mid="9",
            ssrc=ssrc,
            rtx_ssrc=rtx_ssrc,
            payload_type=pub.codec.payload_type,
            rtx_payload_type=pub.codec.rtx_payload_type if rtx_ssrc else 0,
            ext=ExtensionIds(),
        )
        self.demux.add_subscription(sub)
        return sub

    def _rtcp(self, packet: bytes) -> bool:
        self.rtcp_out.append(packet)
        return True

    def _rtp(self, packet: bytes) -> bool:
        self.rtp_out.append(packet)
        return True


def test_rtp_goes_to_the_publication_of_its_ssrc() -> None:
    s = Setup()
    audio = s.publication(OPUS, "0", 0x1111)
    video = s.publication(VP8, "1", 0x2222, 0x3333)
    for seq in range(5):
        s.demux.on_rtp(rtp(0x1111, seq, 111), 1.0)
    for seq in range(3):
        s.demux.on_rtp(rtp(0x2222, seq, 96), 1.0)
    assert audio.stats.received == 5
    assert video.stats.received == 3
    assert s.counters.packets_in == 8


def test_rtx_is_unwrapped_by_the_publication_of_its_rtx_ssrc() -> None:
    s = Setup()
    video = s.publication(VP8, "1", 0x2222, 0x3333)
    s.demux.on_rtp(rtp(0x2222, 10, 96), 1.0)
    s.demux.on_rtp(rtp(0x2222, 12, 96), 1.0)  # 11 is missing
    assert 11 not in video.cache
    s.demux.on_rtp(rtx(0x3333, 500, 97, 11), 1.1)
    assert 11 in video.cache
    assert video.cache.get(11) is not None
    assert video.stats.received == 2  # a repaired packet is no received packet


def test_an_unannounced_ssrc_is_learned_by_its_mid_extension() -> None:
    s = Setup()
    s.demux.mid_ext_id = MID_EXT
    first = s.publication(VP8, "1", None)
    second = s.publication(VP8, "2", None)  # the same payload type: the mid decides
    s.demux.on_rtp(rtp(0x4444, 1, 96, mid="2"), 1.0)
    assert second.ssrc == 0x4444 and first.ssrc is None
    assert s.demux.pub_by_ssrc[0x4444] is second
    s.demux.on_rtp(rtp(0x4444, 2, 96), 1.0)  # then routed by SSRC, with or without the mid
    assert second.stats.received == 2


def test_an_unannounced_ssrc_is_learned_by_a_payload_type_only_one_publication_uses() -> None:
    s = Setup()
    audio = s.publication(OPUS, "0", None)
    video = s.publication(H264, "1", None)
    s.demux.on_rtp(rtp(0x5555, 1, 111), 1.0)
    s.demux.on_rtp(rtp(0x6666, 1, 103), 1.0)  # H264's RTX payload type: its RTX stream
    assert audio.ssrc == 0x5555 and s.demux.pub_by_ssrc[0x5555] is audio
    assert video.rtx_ssrc == 0x6666 and s.demux.rtx_by_ssrc[0x6666] is video
    assert video.ssrc is None


def test_an_ambiguous_or_unknown_ssrc_is_dropped() -> None:
    s = Setup()
    first = s.publication(VP8, "1", None)
    second = s.publication(VP8, "2", None)
    s.demux.on_rtp(rtp(0x7777, 1, 96), 1.0)  # two publications use 96, no mid: ambiguous
    s.demux.on_rtp(rtp(0x8888, 1, 120), 1.0)  # nobody uses 120
    assert first.ssrc is None and second.ssrc is None
    assert not s.demux.pub_by_ssrc and not s.demux.rtx_by_ssrc
    assert s.counters.packets_in == 0


def test_a_learned_ssrc_does_not_replace_one_that_is_flowing() -> None:
    s = Setup()
    audio = s.publication(OPUS, "0", 0x1111)
    s.demux.on_rtp(rtp(0x9999, 1, 111), 1.0)  # the payload type fits, but 0x1111 is routed
    assert audio.ssrc == 0x1111
    assert 0x9999 not in s.demux.pub_by_ssrc


def test_rtcp_feedback_goes_to_the_subscription_of_its_ssrc() -> None:
    s = Setup()
    video = s.publication(VP8, "1", 0x2222)
    sub = s.subscription(video, 0xAAAA, 0xBBBB)
    other = s.subscription(s.publication(OPUS, "0", 0x1111), 0xCCCC)
    for seq in range(1, 4):
        s.demux.on_rtp(rtp(0x2222, seq, 96), 1.0)  # a VP8 keyframe starts the forwarding
    assert len(s.rtp_out) == 3
    out_seq = struct.unpack_from("!H", s.rtp_out[1], 2)[0]
    plis = s.counters.plis_sent
    compound = (
        rtcp.receiver_report(
            0x77,
            [
                rtcp.ReportBlock(0xAAAA, 64, 2, out_seq + 1, 90, 0, 0),
                rtcp.ReportBlock(0xBBBB, 255, 9, 0, 0, 0, 0),  # its RTX stream: not its report
            ],
        )
        + rtcp.nack(0x77, 0xAAAA, [out_seq])
        + rtcp.pli(0x77, 0xAAAA)
        + rtcp.remb(0x77, 300_000, [0xAAAA, 0xCCCC])
    )
    s.demux.on_rtcp(compound)
    assert sub.reports == 1 and sub.fraction_lost == 0.25 and sub.jitter == 90
    assert s.counters.retransmissions == 1 and len(s.rtp_out) == 4  # from the packet cache
    assert s.counters.plis_received == 1 and s.counters.plis_sent == plis + 1
    assert s.rtcp_out[-1] == rtcp.pli(1, 0x2222)  # upstream, to the publisher
    assert sub.remb_bps == 300_000 and other.remb_bps == 300_000
    assert other.reports == 0


def test_a_sender_report_goes_to_the_publication_and_rtcp_feeds_the_fallback() -> None:
    s = Setup()
    audio = s.publication(OPUS, "0", 0x1111)
    assert s.fallback.last_rtcp == 0.0
    sr = rtcp.SenderReport(0x1111, 0x1234_5678_9ABC_DEF0, 48000, 10, 1000)
    s.demux.on_rtcp(rtcp.sender_report(sr) + rtcp.sdes_cname(0x1111, "cname"))
    assert audio.last_sr is not None and audio.last_sr[:2] == (sr.ntp, 48000)
    assert s.fallback.last_rtcp > 0
    s.demux.on_rtcp(rtcp.pli(5, 0x4242))  # nobody's SSRC: ignored
    s.demux.on_rtcp(b"\x80\xc9\x00")  # truncated: ignored


def test_closed_streams_leave_the_tables() -> None:
    s = Setup()
    video = s.publication(VP8, "1", 0x2222, 0x3333)
    sub = s.subscription(video, 0xAAAA, 0xBBBB)
    s.demux.on_rtp(rtp(0x2222, 1, 96), 1.0)
    assert set(s.demux.sub_by_ssrc) == {0xAAAA, 0xBBBB}
    s.demux.remove_subscription(sub)
    s.demux.remove_publication(video)
    del s.publications[video.track_id]  # as its participant does when it closes
    assert not s.demux.sub_by_ssrc and not s.demux.pub_by_ssrc and not s.demux.rtx_by_ssrc
    s.demux.on_rtp(rtp(0x2222, 2, 96), 1.0)
    s.demux.on_rtcp(rtcp.remb(0x77, 300_000, [0xAAAA]))
    assert video.stats.received == 1 and sub.remb_bps is None


def test_the_packet_path_is_one_bound_method() -> None:
    """The transport calls `on_rtp` itself: no wrapper per datagram (Demux has no __dict__)."""
    s = Setup()
    assert not hasattr(s.demux, "__dict__")
    assert s.demux.on_rtp.__func__ is Demux.on_rtp  # type: ignore[attr-defined]
