"""Simulcast: SDP (rid/simulcast in the answer), layer demultiplexing by rtp-stream-id, and
layer switching with the VP8 payload descriptor rewritten, on real VP8 from aiortc's encoder
(real Publication, Subscription and Demux objects; packets in memory)."""

from __future__ import annotations

import itertools
import random
import struct
from fractions import Fraction

import numpy as np
from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, VpxPayloadDescriptor
from aiortc.jitterbuffer import JitterFrame
from av import VideoFrame

from mediaserver.bandwidth import FallbackConfig, LinkSample
from mediaserver.codecs import CodecInfo
from mediaserver.demux import Demux
from mediaserver.events import NodeCounters
from mediaserver.fallback import LinkFallback
from mediaserver.forwarder import ExtensionIds
from mediaserver.publication import Publication
from mediaserver.simulcast import (
    RID_URI,
    RRID_URI,
    add_simulcast,
    answer_simulcast,
    offer_rid_extensions,
    offered_simulcast,
)
from mediaserver.subscription import Subscription

VP8 = CodecInfo(
    mime_type="video/VP8",
    clock_rate=90000,
    channels=None,
    parameters={},
    payload_type=96,
    rtx_payload_type=97,
    nack=True,
)
RID_ID = 10
MID_ID = 9

OFFER_VIDEO = (
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=mid:1\r\n"
    "a=extmap:9 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
    f"a=extmap:10 {RID_URI}\r\n"
    f"a=extmap:11 {RRID_URI}\r\n"
    "a=sendonly\r\n"
    "a=rtpmap:96 VP8/90000\r\n"
    "a=rtpmap:97 rtx/90000\r\n"
    "a=fmtp:97 apt=96\r\n"
    "a=rid:q send\r\n"
    "a=rid:h send\r\n"
    "a=rid:f send\r\n"
    "a=simulcast:send q;h;~f\r\n"
)
OFFER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n" + OFFER_VIDEO
ANSWER = (
    "v=0\r\no=- 3 4 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=recvonly\r\n"
    "a=mid:1\r\n"
    "a=extmap:9 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
    "a=rtpmap:96 VP8/90000\r\n"
)


def test_offer_rids_and_answer_lines() -> None:
    offered = offered_simulcast(OFFER)["1"]
    assert offered.rids == ("q", "h", "f")
    assert offered.ext_id(RID_URI) == 10 and offered.ext_id(RRID_URI) == 11
    answer = answer_simulcast(ANSWER, OFFER)
    lines = answer.split("\r\n")
    assert "a=rid:q recv" in lines and "a=rid:h recv" in lines and "a=rid:f recv" in lines
    assert "a=simulcast:recv q;h;f" in lines
    assert f"a=extmap:10 {RID_URI}" in lines and f"a=extmap:11 {RRID_URI}" in lines
    assert lines.index(f"a=extmap:10 {RID_URI}") < lines.index("a=rid:q recv")
    assert "a=fmtp:96 x-google-start-bitrate=800" in lines  # room for two layers at once
    assert answer.endswith("\r\n") and "\n" not in answer.replace("\r\n", "")
    # no simulcast offered, or the m-line rejected: the answer is left alone
    plain = OFFER.replace("a=simulcast:send q;h;~f\r\n", "")
    assert answer_simulcast(ANSWER, plain) == ANSWER
    rejected = ANSWER.replace("m=video 9", "m=video 0")
    assert "a=simulcast" not in answer_simulcast(rejected, OFFER)
    # our offers carry the rid extensions on video m-sections (ids in use kept, else free)
    offer = offer_rid_extensions(ANSWER.replace("a=recvonly", "a=sendonly"))
    assert f"a=extmap:10 {RID_URI}" in offer and f"a=extmap:11 {RRID_URI}" in offer
    assert offer_rid_extensions(answer) == answer
    # a later offer of ours keeps them (aiortc's own SDP has none), once
    again = add_simulcast(answer, offered_simulcast(OFFER))
    assert again == answer


# -- real VP8 ------------------------------------------------------------------------------


def frames(width: int, height: int, count: int, *, keyframes: set[int]) -> list[list[bytes]]:
    """`count` frames of VP8 from aiortc's encoder (grain in every frame), each as its RTP
    payloads; frame i is a keyframe when i is in `keyframes` (and frame 0)."""
    encoder = Vp8Encoder()
    rng = np.random.default_rng(width)
    out = []
    for i in range(count):
        image = rng.integers(0, 255, (height * 3 // 2, width), dtype=np.uint8)
        frame = VideoFrame.from_ndarray(image, format="yuv420p")
        frame.pts, frame.time_base = i * 3000, Fraction(1, 90000)
        payloads, _ = encoder.encode(frame, force_keyframe=i in keyframes)
        out.append(payloads)
    return out


class Layer:
    """One simulcast layer as a browser sends it: its own SSRC, sequence numbers,
    timestamps, picture ids and TL0PICIDX; the rid in every packet's header extension."""

    def __init__(self, rid: str, ssrc: int, payloads: list[list[bytes]]) -> None:
        self.rid = rid
        self.ssrc = ssrc
        self.payloads = payloads
        self.seq = random.randrange(0x10000)
        self.ts = random.randrange(1 << 32)
        self.tl0 = random.randrange(256)

    def packets(self, i: int) -> list[bytes]:
        """Frame i's packets."""
        out = []
        ext = bytes((RID_ID << 4 | (len(self.rid) - 1),)) + self.rid.encode()
        ext += b"\x00" * (-len(ext) % 4)
        tl0 = (self.tl0 + i) & 0xFF
        chunks = self.payloads[i]
        for n, payload in enumerate(chunks):
            desc, rest = VpxPayloadDescriptor.parse(payload)
            desc.tl0picidx = tl0
            marker = 0x80 if n == len(chunks) - 1 else 0
            header = struct.pack(
                "!BBHII", 0x90, marker | 96, self.seq, (self.ts + 3000 * i) & 0xFFFFFFFF, self.ssrc
            )
            header += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
            out.append(header + bytes(desc) + rest)
            self.seq = (self.seq + 1) & 0xFFFF
        return out


def simulcast_setup() -> tuple[Demux, Publication, Subscription, list[bytes], list[int]]:
    counters = NodeCounters()
    plis: list[int] = []

    def send_rtcp(data: bytes) -> bool:
        if data[1] == 206:  # PSFB: a PLI, for the media SSRC it names
            plis.append(struct.unpack_from("!I", data, 8)[0])
        return True

    pub = Publication(
        participant_id="p",
        kind="video",
        source="camera",
        mid="1",
        codec=VP8,
        ssrc=None,
        rtx_ssrc=None,
        audio_level_id=0,
        cache_size=256,
        counters=counters,
        send_rtcp=send_rtcp,
        rtcp_ssrc=1,
        pli_throttle_s=0.0,
    )
    pub.rids = ("q", "f")
    fallback = LinkFallback(
        FallbackConfig(), counters, emit_mode=lambda *a: None, emit_pause=lambda *a: None
    )
    demux = Demux({pub.track_id: pub}, fallback)
    demux.rid_ext_id = RID_ID
    sent: list[bytes] = []

    def send(data: bytes) -> bool:
        sent.append(data)
        return True

    sub = Subscription(pub, send_rtp=send, counters=counters)
    sub.start(
        mid="0", ssrc=0x5678, rtx_ssrc=0, payload_type=100, rtx_payload_type=0, ext=ExtensionIds()
    )
    return demux, pub, sub, sent, plis


def vp8_fields(packet: bytes) -> tuple[int, int, int, int, bool]:
    """seq, ts, picture id, TL0PICIDX, keyframe start of a forwarded packet."""
    seq, ts = struct.unpack_from("!HI", packet, 2)
    desc, rest = VpxPayloadDescriptor.parse(packet[12:])
    assert desc.picture_id is not None and desc.tl0picidx is not None
    key = desc.partition_start == 1 and desc.partition_id == 0 and not rest[0] & 1
    return seq, ts, desc.picture_id, desc.tl0picidx, key


def decode(packets: list[bytes]) -> list[tuple[int, int]]:
    """What a receiver decodes from forwarded packets: (width, height) per frame."""
    decoder = Vp8Decoder()
    sizes: list[tuple[int, int]] = []
    by_ts: dict[int, list[bytes]] = {}
    for p in packets:
        by_ts.setdefault(struct.unpack_from("!I", p, 4)[0], []).append(p[12:])
    for ts, chunks in by_ts.items():
        data = b"".join(VpxPayloadDescriptor.parse(c)[1] for c in chunks)
        for frame in decoder.decode(JitterFrame(data=data, timestamp=ts)):
            assert isinstance(frame, VideoFrame)
            sizes.append((frame.width, frame.height))
    return sizes


def test_layers_are_demultiplexed_by_rid_and_switched_on_a_keyframe() -> None:
    demux, pub, sub, sent, plis = simulcast_setup()
    low = Layer("q", 0x1111, frames(160, 120, 24, keyframes={0, 14}))
    high = Layer("f", 0x2222, frames(320, 240, 24, keyframes={0, 8}))
    sizes_sent: list[int] = []

    def frame(i: int) -> None:
        for layer in (low, high):
            for p in layer.packets(i):
                demux.on_rtp(p, 0.0)
        sizes_sent.append(len(sent))

    frame(0)
    assert set(pub.layers) == {"q", "f"} and pub.layers["q"].ssrc == 0x1111
    assert demux.pub_by_ssrc[0x2222] is pub.layers["f"]
    assert sub.layer is pub.layers["q"]  # the first layer seen; the next tick re-ranks
    for i in range(1, 4):
        frame(i)
    # the best layer (highest bitrate): aimed at; switched to on its next keyframe only
    pub.layers["q"].bitrate_bps, pub.layers["f"].bitrate_bps = 100_000, 400_000
    ranked = sorted(pub.layers.values(), key=lambda p: p.bitrate_bps)
    sub.choose_layer(ranked)
    assert sub.target_layer is pub.layers["f"] and 0x2222 in plis
    for i in range(4, 8):
        frame(i)
    assert sub.layer is pub.layers["q"]  # no keyframe of "f" yet: still the low layer
    frame(8)  # "f"'s keyframe
    assert sub.layer is pub.layers["f"] and sub.layer_switches == 1
    for i in range(9, 12):
        frame(i)
    # down again (the ladder's rung): the low layer's keyframe at frame 14
    sub.layer_drop = 1
    sub.choose_layer(ranked)
    assert sub.target_layer is pub.layers["q"] and plis[-1] == 0x1111
    for i in range(12, 24):
        frame(i)
    assert sub.layer is pub.layers["q"] and sub.layer_switches == 2

    fields = [vp8_fields(p) for p in sent]
    seqs = [f[0] for f in fields]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    # one picture id and TL0PICIDX per frame, each frame the next one, across both switches:
    # the low layer's frame 8 still goes out (its packets came before the high layer's
    # keyframe of the same frame), then the high layer from its keyframe; at frame 14 the low
    # layer's keyframe comes first and the high layer's frame 14 is not sent.
    per_frame: list[tuple[int, int, int, bool]] = []
    for _, ts, pic, tl0, key in fields:
        if not per_frame or per_frame[-1][0] != ts:
            per_frame.append((ts, pic, tl0, key))
    assert len(per_frame) == 25
    pics = [f[1] for f in per_frame]
    tl0s = [f[2] for f in per_frame]
    assert all((b - a) & 0x7FFF == 1 for a, b in itertools.pairwise(pics)), pics
    assert all((b - a) & 0xFF == 1 for a, b in itertools.pairwise(tl0s)), tl0s
    tss = [f[0] for f in per_frame]
    assert all(0 < (b - a) & 0xFFFFFFFF < 9000 for a, b in itertools.pairwise(tss))
    # each switch starts on a keyframe's first packet
    assert [i for i, f in enumerate(per_frame) if f[3]] == [0, 9, 15]
    assert sizes_sent[8] > sizes_sent[7]
    # a receiver decodes every frame: low, high from its keyframe, low again
    sizes = decode(sent)
    assert sizes == [(160, 120)] * 9 + [(320, 240)] * 6 + [(160, 120)] * 10


def test_nack_after_a_switch_answers_only_the_current_layer() -> None:
    demux, pub, sub, sent, _ = simulcast_setup()
    low = Layer("q", 0x1111, frames(160, 120, 6, keyframes={0}))
    high = Layer("f", 0x2222, frames(320, 240, 6, keyframes={0, 3}))
    for i in range(6):
        for layer in (low, high):
            for p in layer.packets(i):
                demux.on_rtp(p, 0.0)
        if i == 1:
            pub.layers["q"].bitrate_bps, pub.layers["f"].bitrate_bps = 1, 2
            sub.choose_layer([pub.layers["q"], pub.layers["f"]])
    assert sub.layer is pub.layers["f"]
    before = len(sent)
    seqs = [struct.unpack_from("!H", p, 2)[0] for p in sent]
    sub.on_nack((seqs[0], seqs[-1]))  # one from the low layer's time, one from the high's
    resent = sent[before:]
    assert len(resent) == 1 and resent[0][12:] == sent[before - 1][12:]


def test_the_ladder_steps_layers_before_the_mode() -> None:
    _demux, pub, sub, _sent, _ = simulcast_setup()
    for rid, ssrc in (("q", 0x1111), ("f", 0x2222)):
        layer = pub.layer(rid)
        layer.ssrc = ssrc
        layer.stats.update(1, 0, 0.0, 1000)
    pub.layers["q"].bitrate_bps, pub.layers["f"].bitrate_bps = 100_000, 900_000
    pub.layers["q"]._rate_mark = pub.layers["f"]._rate_mark = (1e9, 0)  # keep those rates
    sub.choose_layer(pub.rank_layers(0.0))
    fb = LinkFallback(
        FallbackConfig(), NodeCounters(), emit_mode=lambda *a: None, emit_pause=lambda *a: None
    )
    lossy = LinkSample(loss=0.4, audio_loss=None, packets=100, goodput_bps=300_000)
    clean = LinkSample(loss=0.0, audio_loss=None, packets=100, goodput_bps=300_000)
    assert fb._ladder(10.0, lossy, [sub])
    # nothing forwarded yet: the switch is immediate (a keyframe starts the stream anyway)
    assert fb.layer_drop == 1 and sub.layer is pub.layers["q"]
    assert fb.down.mode.value == "video"
    assert fb._ladder(11.0, lossy, [sub])  # settling: not judged
    assert not fb._ladder(12.0, lossy, [sub])  # no rung left: the mode controller decides
    assert fb._ladder(12.0 + 5.0, clean, [sub]) and fb.layer_drop == 0  # climbed back
    assert sub.layer is pub.layers["f"]
    # the climb is a probe: NACKs of what it forwarded take the rung back down at once
    fb._subs = [sub]
    assert sub.forwarder is not None
    nacked = tuple((sub.forwarder.last_seq + i) & 0xFFFF for i in range(1, 6))
    fb.video_nacked(17.5, sub, nacked)
    assert fb.layer_drop == 1 and sub.layer is pub.layers["q"]
    assert fb._layer_dwell == 2 * FallbackConfig().min_dwell_s  # the next climb waits longer
    # the climb is a probe: NACKs of what it forwarded take the rung back down at once
    fb._subs = [sub]
    assert sub.forwarder is not None
    nacked = tuple((sub.forwarder.last_seq + i) & 0xFFFF for i in range(1, 6))
    fb.video_nacked(17.5, sub, nacked)
    assert fb.layer_drop == 1 and sub.layer is pub.layers["q"]
    assert fb._layer_dwell == 2 * FallbackConfig().min_dwell_s  # the next climb waits longer


def test_a_layer_seen_only_in_rtx_probes_is_not_chosen() -> None:
    demux, pub, sub, sent, _ = simulcast_setup()
    demux.rrid_ext_id = 11
    ext = bytes((11 << 4,)) + b"f" + b"\x00\x00"  # repaired-rtp-stream-id "f"
    probe = struct.pack("!BBHII", 0xB0, 97, 1, 0, 0x3333) + struct.pack("!HH", 0xBEDE, 1) + ext
    probe += b"\x00" * 200 + b"\xc8"  # padding only, as a browser probes
    demux.on_rtp(probe, 0.0)
    assert pub.layers["f"].rtx_ssrc == 0x3333 and pub.layers["f"].ssrc is None
    low = Layer("q", 0x1111, frames(160, 120, 2, keyframes={0}))
    for i in range(2):
        for p in low.packets(i):
            demux.on_rtp(p, 0.0)
    assert pub.ranked == [pub.layers["q"]] and sub.layer is pub.layers["q"]
    assert sent  # forwarded from the first keyframe


def test_a_recording_follows_the_highest_layer() -> None:
    """A recorder's sink on a simulcast publication gets one layer's packets: the highest
    (the offer's last rid), moving to it when it appears after a lower one."""
    _, pub, _, _, _ = simulcast_setup()

    class Sink:
        def on_rtp(self, data: bytes, arrival: float) -> None:
            pass

    sink = Sink()
    pub.add_sink(sink)
    low = pub.layer("q")
    assert low.sinks == (sink,)
    high = pub.layer("f")
    assert high.sinks == (sink,) and low.sinks == ()
    pub.remove_sink(sink)
    assert high.sinks == () and low.sinks == ()
