"""Reporter: a participant's RTCP reports, its link state and the loss-based REMB (real
Publication, Subscription and LinkFallback objects, packets in memory; no network)."""

from __future__ import annotations

import asyncio
import struct

from mediaserver.bandwidth import FallbackConfig
from mediaserver.codecs import CodecInfo
from mediaserver.config import MediaConfig
from mediaserver.events import NodeCounters
from mediaserver.fallback import LinkFallback
from mediaserver.forwarder import ExtensionIds
from mediaserver.publication import Publication
from mediaserver.reporter import Reporter
from mediaserver.rtp import rtcp
from mediaserver.subscription import Subscription

OPUS = CodecInfo("audio/opus", 48000, 2, {}, 111, 0, False)
VP8 = CodecInfo("video/VP8", 90000, None, {}, 96, 97, True)
RTCP_SSRC = 0xFEED
KEYFRAME = b"\x10\x00\x00\x9d\x01\x2a"


class Setup:
    """One participant's dicts and fallback, its reporter, and what went out on its transport."""

    def __init__(self, config: MediaConfig | None = None) -> None:
        self.config = config or MediaConfig()
        self.counters = NodeCounters()
        self.publications: dict[str, Publication] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.sent: list[bytes] = []
        self.forwarded: list[bytes] = []
        self.connected = True
        self.pauses: list[list[str]] = []
        self.fallback = LinkFallback(
            self.config.fallback,
            self.counters,
            emit_mode=lambda *_: None,
            emit_pause=self._pause,
            report_interval_s=self.config.rtcp_interval_s,
        )
        self.reporter = Reporter(
            config=self.config,
            fallback=self.fallback,
            publications=self.publications,
            subscriptions=self.subscriptions,
            send=self._send,
            connected=lambda: self.connected,
            rtcp_ssrc=RTCP_SSRC,
            cname="cname",
        )

    def _send(self, packet: bytes) -> bool:
        self.sent.append(packet)
        return True

    def _pause(self, sources: list[str], reason: str) -> None:
        self.pauses.append(sources)
        self.reporter.cap_video_now()  # as Participant._fallback_pause does

    def publication(self, codec: CodecInfo, ssrc: int, *, publisher: str = "p") -> Publication:
        kind = codec.mime_type.split("/")[0]
        pub = Publication(
            participant_id=publisher,
            kind=kind,
            source="camera" if kind == "video" else "microphone",
            mid=str(len(self.publications)),
            codec=codec,
            ssrc=ssrc,
            rtx_ssrc=None,
            audio_level_id=0,
            cache_size=64,
            counters=self.counters,
            send_rtcp=lambda data: True,
            rtcp_ssrc=RTCP_SSRC,
            pli_throttle_s=1.0,
        )
        if publisher == "p":
            self.publications[pub.track_id] = pub
        return pub

    def subscription(self, pub: Publication, ssrc: int) -> Subscription:
        sub = Subscription(pub, send_rtp=self._forward, counters=self.counters)
        sub.start(
            mid="5", ssrc=ssrc, rtx_ssrc=0, payload_type=96, rtx_payload_type=0, ext=ExtensionIds()
        )
        self.subscriptions[pub.track_id] = sub
        return sub

    def _forward(self, packet: bytes) -> bool:
        self.forwarded.append(packet)
        return True

    def take(self) -> list[rtcp.Feedback]:
        items = [item for packet in self.sent for item in rtcp.parse(packet)]
        self.sent.clear()
        return items


def feed(pub: Publication, seqs: range, *, drop_every: int = 0, size: int = 100) -> None:
    """The publisher's packets (one in `drop_every` lost on its uplink, never the last)."""
    for seq in seqs:
        if drop_every and seq % drop_every == drop_every - 1:
            continue
        header = struct.pack("!BBHII", 0x80, pub.codec.payload_type, seq, seq * 960, pub.ssrc)
        pub.on_rtp(header + KEYFRAME + bytes(size), 0.0)


def test_nothing_is_reported_while_the_connection_is_not_connected() -> None:
    s = Setup()
    feed(s.publication(OPUS, 0x1111), range(1, 11))
    s.connected = False
    s.reporter.report(1.0)
    assert s.sent == []


def test_an_empty_receiver_report_keeps_the_clients_watchdog_fed() -> None:
    s = Setup()
    s.publication(VP8, 0x2222)  # nothing received yet: no block for it
    s.reporter.report(1.0)
    assert s.take() == [rtcp.ReceiverReport(RTCP_SSRC, ())]


def test_a_block_per_publication_a_remb_per_video_and_the_uplink_state() -> None:
    s = Setup()
    audio = s.publication(OPUS, 0x1111)
    video = s.publication(VP8, 0x2222)
    feed(audio, range(1, 51))
    feed(video, range(1, 41), drop_every=4)  # 10 of 40 lost
    s.reporter.report(2.0)
    items = s.take()
    rr = items[0]
    assert isinstance(rr, rtcp.ReceiverReport) and rr.ssrc == RTCP_SSRC
    blocks = {b.ssrc: b for b in rr.reports}
    assert set(blocks) == {0x1111, 0x2222}
    assert blocks[0x1111].fraction_lost == 0
    assert blocks[0x2222].fraction_lost == 256 * 10 // 40  # lost / expected, in 1/256
    (remb,) = (i for i in items if isinstance(i, rtcp.Remb))
    assert video.estimate_bps is not None
    assert [remb] == list(rtcp.parse(rtcp.remb(RTCP_SSRC, video.estimate_bps, [0x2222])))
    # 25% loss: the estimate falls from the ceiling by half of it (Galene).
    ceiling = s.config.max_video_bitrate_bps
    assert video.estimate_bps == int(ceiling * (1 - 0.5 * (64 / 256)))
    up = s.reporter.link.uplink
    assert up.loss == 64 / 256
    assert up.bitrate_bps == (audio.stats.bytes + video.stats.bytes) * 8 // 2
    assert up.estimated_bps == video.estimate_bps
    # The next interval counts only its own bytes.
    feed(audio, range(51, 61))
    s.reporter.report(1.0)
    assert s.reporter.link.uplink.bitrate_bps == 10 * (12 + len(KEYFRAME) + 100) * 8


def test_sender_reports_and_the_downlink_state_from_the_subscribers_feedback() -> None:
    s = Setup()
    remote = s.publication(VP8, 0x3333, publisher="q")  # another participant's video
    sub = s.subscription(remote, 0xAAAA)
    feed(remote, range(1, 21))
    assert len(s.forwarded) == 20
    s.reporter.report(1.0)
    items = s.take()
    (sr,) = (i for i in items if isinstance(i, rtcp.SenderReport))
    assert sr.ssrc == 0xAAAA and sr.packets == 20 and sr.octets == sub.octets_sent
    # The subscriber's receiver report answers that SR: loss, jitter and RTT; its REMB.
    lsr = (sr.ntp >> 16) & 0xFFFFFFFF
    sub.on_report(rtcp.ReportBlock(0xAAAA, 32, 2, 20, 900, lsr, 0))
    sub.on_remb(400_000)
    feed(remote, range(21, 31))
    s.reporter.report(1.0)
    down = s.reporter.link.downlink
    assert down.loss == 32 / 256
    assert down.jitter_ms == 900 / 90000 * 1000
    assert down.rtt_ms is not None and down.rtt_ms >= 0
    assert down.estimated_bps == 400_000
    assert down.bitrate_bps == 10 * (len(KEYFRAME) + 100) * 8  # RTP payload octets (the SR's)


def test_the_estimate_follows_loss_within_its_bounds_and_the_slowest_subscriber() -> None:
    config = MediaConfig(max_video_bitrate_bps=1_000_000, min_video_bitrate_bps=100_000)
    s = Setup(config)
    video = s.publication(VP8, 0x2222)
    estimate = s.reporter.estimate
    assert estimate(video, 0.0) == 1_000_000  # +8% but never above the ceiling
    video.estimate_bps = 500_000
    assert estimate(video, 0.0) == 540_000
    assert estimate(video, 0.05) == 500_000  # between 2% and 10%: held
    assert estimate(video, 0.5) == 375_000
    video.estimate_bps = 120_000
    assert estimate(video, 0.9) == 100_000  # never below the floor
    # Subscribers (of other participants) cap it at 1.5x the slowest one's REMB.
    fast = Subscription(video, send_rtp=s._forward, counters=s.counters)
    slow = Subscription(video, send_rtp=s._forward, counters=s.counters)
    for sub, ssrc in ((fast, 1), (slow, 2)):
        sub.start(
            mid="1", ssrc=ssrc, rtx_ssrc=0, payload_type=96, rtx_payload_type=0, ext=ExtensionIds()
        )
    fast.on_remb(900_000)
    slow.on_remb(200_000)
    video.estimate_bps = 800_000
    assert estimate(video, 0.05) == 300_000
    # Paused by their own fallback: nobody receives it, keep it small.
    fast.set_paused(True)
    slow.set_paused(True)
    assert estimate(video, 0.0) == 100_000


def test_an_uplink_that_sheds_video_caps_it_at_once_and_in_every_report() -> None:
    s = Setup()
    audio = s.publication(OPUS, 0x1111)
    video = s.publication(VP8, 0x2222)
    cap = FallbackConfig().video_cap_bps
    t = 0.0
    for second in range(3):  # past the initial settle time; one packet in three lost
        t += 1
        feed(audio, range(second * 50, second * 50 + 50), drop_every=3)
        feed(video, range(second * 30, second * 30 + 30), drop_every=3, size=1000)
        s.fallback.last_rtcp = t  # the publisher's RTCP keeps coming: no outage
        s.reporter.tick(t)
    assert s.pauses == [["camera"]]
    assert s.take() == [rtcp.Remb(RTCP_SSRC, cap, (0x2222,))]  # before the `pause` goes out
    s.reporter.report(1.0)
    (remb,) = (i for i in s.take() if isinstance(i, rtcp.Remb))
    assert remb.bitrate == cap and video.estimate_bps == cap


async def test_the_loop_reports_every_interval_until_closed() -> None:
    s = Setup(MediaConfig(rtcp_interval_s=0.05))
    feed(s.publication(OPUS, 0x1111), range(1, 11))
    s.reporter.start()
    for _ in range(200):
        if len(s.sent) >= 3:
            break
        await asyncio.sleep(0.05)
    assert len(s.sent) >= 3
    await s.reporter.close()
    count = len(s.sent)
    await asyncio.sleep(0.2)
    assert len(s.sent) == count
    await s.reporter.close()  # idempotent
