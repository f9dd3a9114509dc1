"""LinkFallback on real publications (packets in memory, no network): what the server measures
of a publisher's uplink, the REMB cap while its video is shed, and the second step judged on
evidence that the first one took effect."""

from __future__ import annotations

import struct

from mediaserver.bandwidth import FallbackConfig, Mode, State
from mediaserver.codecs import CodecInfo
from mediaserver.events import NodeCounters
from mediaserver.fallback import LinkFallback
from mediaserver.publication import Publication

OPUS = CodecInfo("audio/opus", 48000, 2, {}, 111, 0, False)
VP8 = CodecInfo("video/VP8", 90000, None, {}, 96, 97, False)


def publication(
    kind: str, source: str, codec: CodecInfo, ssrc: int, *, participant: str = "p", cache: int = 64
) -> Publication:
    """A publication as the node makes one, its packets given by the test."""
    return Publication(
        participant_id=participant,
        kind=kind,
        source=source,
        mid="0" if kind == "audio" else "1",
        codec=codec,
        ssrc=ssrc,
        rtx_ssrc=None,
        audio_level_id=0,
        cache_size=cache,
        counters=NodeCounters(),
        send_rtcp=lambda data: True,
        rtcp_ssrc=1,
        pli_throttle_s=1.0,
    )


class Publisher:
    """A publisher's audio (50 packets/s) and video (30 packets/s of 1000 bytes), on an uplink
    that loses every `drop_every`-th packet."""

    def __init__(self) -> None:
        self.audio = publication("audio", "microphone", OPUS, 0x1111)
        self.video = publication("video", "camera", VP8, 0x2222)
        self.seq = {"audio": 0, "video": 0}

    def second(self, *, drop_every: int, video: bool = True, skip_video: int = 0) -> None:
        self.seq["video"] += skip_video  # sent and lost before this second
        for kind, pub, count, size in (
            ("audio", self.audio, 50, 100),
            ("video", self.video, 30 if video else 0, 1000),
        ):
            for _ in range(count):
                seq = self.seq[kind]
                self.seq[kind] += 1
                if drop_every and seq % drop_every == 0:
                    continue  # lost on the uplink
                header = struct.pack("!BBHII", 0x80, pub.codec.payload_type, seq, seq, pub.ssrc)
                pub.on_rtp(header + b"\x10" + bytes(size), 0.0)


def link() -> tuple[LinkFallback, list[tuple[str, str, str]], list[list[str]]]:
    modes: list[tuple[str, str, str]] = []
    pauses: list[list[str]] = []
    fallback = LinkFallback(
        FallbackConfig(),
        NodeCounters(),
        emit_mode=lambda d, m, r: modes.append((d, m, r)),
        emit_pause=lambda sources, reason: pauses.append(sources),
    )
    return fallback, modes, pauses


def tick(fallback: LinkFallback, publisher: Publisher, t: float) -> None:
    fallback.last_rtcp = t  # reports keep arriving: no outage
    fallback.tick(t, [publisher.audio, publisher.video], [])


def test_shed_video_is_capped_by_remb_and_chat_only_waits_for_it_to_stop() -> None:
    fallback, modes, pauses = link()
    publisher = Publisher()
    t = 0.0
    for _ in range(3):  # past the initial settle time; one lost packet in three
        t += 1
        publisher.second(drop_every=3)
        tick(fallback, publisher, t)
    assert modes == [("uplink", "audio-only", "loss")]
    assert pauses == [["camera"]]
    # The REMB cap holds the publisher's encoder while the `pause` crosses the link.
    assert fallback.video_cap("camera") == FallbackConfig().video_cap_bps
    # The publisher has not obeyed yet: its video still fills the link and the audio loss is
    # that video's doing. Not a reason to stop audio too.
    for _ in range(6):
        t += 1
        publisher.second(drop_every=3)
        tick(fallback, publisher, t)
    assert modes == [("uplink", "audio-only", "loss")]
    # Video stopped and audio still loses a third: the link is too short even for audio.
    for _ in range(3):
        t += 1
        publisher.second(drop_every=3, video=False)
        tick(fallback, publisher, t)
    assert modes[-1] == ("uplink", "chat-only", "loss")
    assert sorted(pauses[-1]) == ["camera", "microphone"]


def test_video_back_lifts_the_cap() -> None:
    fallback, _modes, _pauses = link()
    publisher = Publisher()
    for second in range(1, 4):
        publisher.second(drop_every=3)
        tick(fallback, publisher, float(second))
    assert fallback.video_cap("camera") is not None
    t = 3.0
    while fallback.up.mode.value != "video":
        t += 1
        assert t < 60, "the uplink never climbed back"
        publisher.second(drop_every=0, video="camera" not in fallback.paused_sources())
        tick(fallback, publisher, t)
    assert fallback.video_cap("camera") is None


def test_a_publication_resuming_after_a_silence_is_not_charged_the_gap_before_it() -> None:
    fallback, modes, _pauses = link()
    publisher = Publisher()
    t = 0.0
    for _ in range(3):
        t += 1
        publisher.second(drop_every=0)
        tick(fallback, publisher, t)
    for _ in range(3):  # its video stops (a pause, a muted camera)
        t += 1
        publisher.second(drop_every=0, video=False)
        tick(fallback, publisher, t)
    # It resumes; the last 100 packets it sent before stopping were lost (the tail of a
    # congested period): that gap is not this interval's loss.
    t += 1
    publisher.second(drop_every=0, skip_video=100)
    tick(fallback, publisher, t)
    t += 1
    publisher.second(drop_every=0)
    tick(fallback, publisher, t)
    assert modes == []


def test_one_video_probe_at_a_time_audio_probes_together() -> None:
    fallback, _modes, _pauses = link()
    publisher = Publisher()
    publisher.second(drop_every=0)
    fallback.down.probe = State(Mode.VIDEO)  # the downlink tries video again
    tick(fallback, publisher, 1.0)
    assert not fallback.up.may_probe
    fallback.down.probe = State(Mode.AUDIO_ONLY)  # back from chat-only: audio only, cheap
    tick(fallback, publisher, 2.0)
    assert fallback.up.may_probe
