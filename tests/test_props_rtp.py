"""Properties of the RTP packet path, checked with hypothesis: header and extension parsing
(mediaserver/publication.py), keyframe detection, receive statistics, the packet cache, a
publication fed arbitrary datagrams, and the forwarder's header rewrite.

- any bytes: the parsers raise nothing but their documented error (`payload_offset`:
  IndexError for a cut header) and a publication drops what it cannot use;
- the forwarder never touches the payload, and numbers what it sends continuously modulo 2^16
  (across losses, source switches, pauses and sequence restarts), never further back than
  libsrtp's replay window accepts;
- the packet cache answers like a dict of the last packet put in each slot.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver.codecs import CodecInfo
from mediaserver.events import NodeCounters
from mediaserver.forwarder import MAX_BEHIND, MAX_JUMP, ExtensionIds, Forwarder
from mediaserver.packetcache import PacketCache
from mediaserver.publication import Publication, extension_value, payload_offset
from mediaserver.rtp import rtcp
from mediaserver.rtp.keyframe import h264_keyframe_start, vp8_keyframe_start
from mediaserver.rtp.stats import ReceiveStats
from mediaserver.subscription import Subscription

SETTINGS = settings(max_examples=200, deadline=None)

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
ABS = b"\x01\x02\x03"


def rtp(
    seq: int,
    ts: int,
    payload: bytes,
    *,
    pt: int = 100,
    marker: bool = False,
    csrcs: int = 0,
    ext: bytes = b"",
    padding: bool = False,
) -> bytes:
    b0 = 0x80 | (0x20 if padding else 0) | (0x10 if ext else 0) | csrcs
    head = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq, ts, 0x11111111)
    head += b"\x00\x00\x00\x07" * csrcs
    if ext:
        ext += b"\x00" * (-len(ext) % 4)
        head += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
    return head + payload


# -- parsing arbitrary bytes -------------------------------------------------------------------

# RTP-looking datagrams: version 2, random flags, CSRC count and extension length, then anything.
rtp_like = st.builds(
    lambda b0, b1, rest: bytes((0x80 | b0, b1)) + rest,
    st.integers(0, 0x3F),
    st.integers(0, 0xFF),
    st.binary(max_size=120),
)
datagrams = st.one_of(st.binary(max_size=120), rtp_like)


@SETTINGS
@given(datagrams)
def test_payload_offset_raises_only_index_error(data: bytes) -> None:
    try:
        off = payload_offset(data)
    except IndexError:
        return
    assert off >= 12


@SETTINGS
@given(datagrams, st.integers(0, 15))
def test_extension_value_never_raises(data: bytes, wanted: int) -> None:
    value = extension_value(data, wanted)
    assert value is None or (isinstance(value, bytes) and len(value) <= 16)


@SETTINGS
@given(st.binary(max_size=60), st.integers(0, 80))
def test_keyframe_detectors_never_raise(data: bytes, off: int) -> None:
    assert isinstance(vp8_keyframe_start(data, off), bool)
    assert isinstance(h264_keyframe_start(data, off), bool)


@SETTINGS
@given(st.lists(st.tuples(u16, u32, st.floats(0, 1e6)), max_size=60))
def test_receive_stats_never_raise(packets: list[tuple[int, int, float]]) -> None:
    stats = ReceiveStats(90000)
    for seq, ts, arrival in packets:
        assert stats.update(seq, ts, arrival, 100) >= 0
    block = stats.report_block(1, stats.interval()[0], 0, 0)
    assert len(bytes(block)) == 24  # the report block it writes packs


def _publication(mime: str, sent: list[bytes]) -> Publication:
    video = mime.startswith("video")

    def send_rtcp(packet: bytes) -> bool:
        sent.append(packet)
        return True

    return Publication(
        participant_id="p",
        kind="video" if video else "audio",
        source="camera" if video else "microphone",
        mid="0",
        codec=CodecInfo(mime, 90000 if video else 48000, None, {}, 100, 101, True),
        ssrc=0x11111111,
        rtx_ssrc=0x22222222,
        audio_level_id=0 if video else 1,
        cache_size=64,
        counters=NodeCounters(),
        send_rtcp=send_rtcp,
        rtcp_ssrc=1,
        pli_throttle_s=0.5,
    )


@SETTINGS
@given(st.sampled_from(["video/VP8", "video/H264", "audio/opus"]), st.lists(datagrams, max_size=20))
def test_publication_takes_any_datagram(mime: str, datagrams: list[bytes]) -> None:
    """Garbage on an announced SSRC (RTP or RTX) is dropped or forwarded, never raises."""
    sent: list[bytes] = []
    pub = _publication(mime, sent)
    for i, data in enumerate(datagrams):
        if i % 2:
            pub.on_rtx(data, float(i))
        else:
            pub.on_rtp(data, float(i))
    for packet in sent:  # any NACK it wrote upstream parses
        assert packet[1] == 205


# -- the packet cache ----------------------------------------------------------------------------


@SETTINGS
@given(st.lists(st.tuples(st.booleans(), u16), max_size=200))
def test_packet_cache_matches_a_model(ops: list[tuple[bool, int]]) -> None:
    cache = PacketCache(16)
    slots: dict[int, tuple[int, bytes]] = {}
    for put, seq in ops:
        if put:
            data = seq.to_bytes(2, "big")
            cache.put(seq, data)
            slots[seq & 15] = (seq, data)
        else:
            held = slots.get(seq & 15)
            want = held[1] if held is not None and held[0] == seq else None
            assert cache.get(seq) == want
            assert (seq in cache) == (want is not None)


# -- the forwarder -------------------------------------------------------------------------------

ext_ids = st.lists(st.integers(1, 14), min_size=3, max_size=3, unique=True).map(
    lambda ids: ExtensionIds(mid=ids[0], abs_send_time=ids[1], audio_level=ids[2])
) | st.just(ExtensionIds())
mids = st.none() | st.text(min_size=1, max_size=20)


def _forwarder(ext: ExtensionIds, mid: str | None, *, rtx: bool = False) -> Forwarder:
    return Forwarder(
        ssrc=0xABCDEF01,
        payload_type=96,
        mid=mid,
        ext=ext,
        gate_on_keyframe=False,
        rtx_ssrc=0xABCDEF02 if rtx else 0,
        rtx_payload_type=97 if rtx else 0,
    )


def _check_payload(out: bytes, data: bytes, off: int, ext: ExtensionIds, mid: str | None) -> None:
    at = payload_offset(out)
    assert out[at:] == data[off:]
    assert out[0] & 0x20 == data[0] & 0x20  # padding flag travels with the payload
    assert out[1] & 0x80 == data[1] & 0x80  # marker
    if ext.mid and mid:
        assert extension_value(out, ext.mid) == mid.encode()[:16]


packet_bodies = st.builds(
    lambda payload, marker, csrcs, ext, padding: (payload, marker, csrcs, ext, padding),
    st.binary(max_size=40),
    st.booleans(),
    st.integers(0, 3),
    st.binary(max_size=12),
    st.booleans(),
)


@SETTINGS
@given(
    ext_ids,
    mids,
    u16,
    u32,
    st.lists(st.tuples(st.integers(1, 20), packet_bodies), min_size=1, max_size=40),
)
def test_rewrite_keeps_payload_and_sequence(
    ext: ExtensionIds,
    mid: str | None,
    first: int,
    ts: int,
    steps: list[tuple[int, tuple[bytes, bool, int, bytes, bool]]],
) -> None:
    """A stream with losses: the output numbers follow the input's, offset, modulo 2^16."""
    fwd = _forwarder(ext, mid)
    seq = first
    start_in = start_out = None
    for gap, (payload, marker, csrcs, hdr_ext, padding) in steps:
        data = rtp(seq, ts, payload, marker=marker, csrcs=csrcs, ext=hdr_ext, padding=padding)
        off = payload_offset(data)
        out = fwd.rewrite(data, off, seq, ts, False, ABS, 5)
        assert out is not None
        out_seq = struct.unpack_from("!H", out, 2)[0]
        if start_in is None:
            start_in, start_out = seq, out_seq
        assert start_out is not None
        assert out_seq == (start_out + seq - start_in) & 0xFFFF
        assert fwd.source_seq(out_seq) == seq
        _check_payload(out, data, off, ext, mid)
        seq = (seq + gap) & 0xFFFF


ops = st.one_of(
    st.tuples(st.just("packet"), u16, st.booleans()),
    st.tuples(st.just("next"), st.integers(1, 3), st.booleans()),
    st.tuples(st.just("switch"), st.integers(0, 5000), st.just(False)),
    st.tuples(st.just("pause"), st.just(0), st.just(False)),
)


@SETTINGS
@given(st.booleans(), u16, st.lists(ops, max_size=120))
def test_rewrite_any_input_stays_in_the_replay_window(
    gate: bool, first: int, steps: list[tuple[str, int, bool]]
) -> None:
    """Whatever sequence numbers arrive (jumps, restarts, reordering, switches, pauses), each
    packet sent is at most MAX_JUMP ahead of the newest one sent or at most MAX_BEHIND behind;
    after a switch, a pause or a restart the next one sent is exactly the newest + 1."""
    fwd = Forwarder(ssrc=1, payload_type=96, mid="0", ext=ExtensionIds(), gate_on_keyframe=gate)
    newest: int | None = None
    restart = True
    seq = first
    for op, value, keyframe in steps:
        if op == "switch":
            fwd.switch_source(value)
            restart = True
            continue
        if op == "pause":
            fwd.pause()
            restart = True
            continue
        seq = value if op == "packet" else (seq + value) & 0xFFFF
        data = rtp(seq, 1000, b"payload")
        was_started = fwd.started
        out = fwd.rewrite(data, 12, seq, 1000, keyframe, ABS, -1)
        if out is None:
            continue
        assert out[12:] == b"payload"
        out_seq = struct.unpack_from("!H", out, 2)[0]
        if newest is not None:
            d = (out_seq - newest) & 0xFFFF
            if restart or not was_started:
                assert d == 1, "a restarted forwarder continues after the newest packet sent"
            else:
                assert d <= MAX_JUMP or 0x10000 - d <= MAX_BEHIND
            if d < 0x8000:
                newest = out_seq
        else:
            newest = out_seq
        restart = False


@SETTINGS
@given(ext_ids, mids, st.booleans(), u16, st.lists(packet_bodies, min_size=1, max_size=10))
def test_retransmission_keeps_payload(
    ext: ExtensionIds,
    mid: str | None,
    use_rtx: bool,
    first: int,
    bodies: list[tuple[bytes, bool, int, bytes, bool]],
) -> None:
    """A resent packet carries the same payload; over RTX, the sequence number the
    subscriber got first (RFC 4588's OSN) comes before it."""
    fwd = _forwarder(ext, mid, rtx=use_rtx)
    for i, (payload, marker, csrcs, hdr_ext, padding) in enumerate(bodies):
        seq = (first + i) & 0xFFFF
        data = rtp(seq, 90, payload, marker=marker, csrcs=csrcs, ext=hdr_ext, padding=padding)
        off = payload_offset(data)
        sent = fwd.rewrite(data, off, seq, 90, False, ABS, -1)
        assert sent is not None
        again = fwd.retransmission(data, off, ABS)
        at = payload_offset(again)
        if use_rtx:
            assert again[1] & 0x7F == 97
            assert again[at : at + 2] == sent[2:4]
            assert again[at + 2 :] == data[off:]
        else:
            assert again[2:8] == sent[2:8]
            assert again[at:] == data[off:]


# -- a publication and a subscription, fed anything a publisher and a subscriber may send --------

report_blocks = st.builds(
    rtcp.ReportBlock,
    ssrc=u32,
    fraction_lost=st.integers(0, 255),
    packets_lost=st.integers(-0x800000, 0x7FFFFF),
    highest_seq=u32,
    jitter=u32,
    lsr=u32,
    dlsr=u32,
)
events = st.one_of(
    st.tuples(st.just("rtp"), datagrams),
    st.tuples(st.just("rtx"), datagrams),
    st.tuples(st.just("media"), st.tuples(u16, st.binary(max_size=30))),
    st.tuples(st.just("nack"), st.lists(u16, max_size=20).map(tuple)),
    st.tuples(st.just("report"), report_blocks),
    st.tuples(st.just("sr"), st.just(None)),
    st.tuples(st.just("pli"), st.just(None)),
    st.tuples(st.just("pause"), st.booleans()),
)


@SETTINGS
@given(st.sampled_from(["video/VP8", "audio/opus"]), st.lists(events, max_size=40))
def test_subscription_takes_any_feedback(mime: str, steps: list[tuple[str, Any]]) -> None:
    """Packets from the publisher and RTCP from the subscriber in any order: nothing raises,
    and everything sent to the subscriber parses as RTP with its SSRC."""
    upstream: list[bytes] = []
    sent: list[bytes] = []

    def send_rtp(packet: bytes) -> bool:
        sent.append(packet)
        return True

    pub = _publication(mime, upstream)
    sub = Subscription(pub, send_rtp=send_rtp, counters=NodeCounters())
    sub.start(
        mid="1",
        ssrc=0x5555,
        rtx_ssrc=0x6666,
        payload_type=96,
        rtx_payload_type=97,
        ext=ExtensionIds(mid=1, abs_send_time=2, audio_level=3),
    )
    for i, (kind, value) in enumerate(steps):
        if kind == "rtp":
            pub.on_rtp(value, float(i))
        elif kind == "rtx":
            pub.on_rtx(value, float(i))
        elif kind == "media":
            seq, payload = value
            pub.on_rtp(rtp(seq, seq * 90, b"\x10" + payload), float(i))
        elif kind == "nack":
            sub.on_nack(value)
        elif kind == "report":
            sub.on_report(value)
        elif kind == "sr":
            sub.sender_report("cname")
        elif kind == "pli":
            sub.on_keyframe_request()
        else:
            sub.set_paused(value)
    for packet in sent:
        payload_offset(packet)
        assert int.from_bytes(packet[8:12], "big") in (0x5555, 0x6666)
