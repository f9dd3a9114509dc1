"""Forwarder: the per-packet rewrite state machine, tested without a network."""

from __future__ import annotations

import struct

from mediaserver.forwarder import ExtensionIds, Forwarder
from mediaserver.publication import extension_value, payload_offset
from mediaserver.rtp.keyframe import vp8_keyframe_start
from tests.fixtures.packets import packet

ABS = b"\x01\x02\x03"


def rtp(
    seq: int,
    ts: int,
    *,
    pt: int = 100,
    ssrc: int = 0x11111111,
    payload: bytes = b"xyz",
    marker: bool = False,
    padding: int = 0,
) -> bytes:
    b0 = 0x80 | (0x20 if padding else 0)
    body = payload + (b"\x00" * (padding - 1) + bytes((padding,)) if padding else b"")
    return struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq, ts, ssrc) + body


def header(out: bytes) -> tuple[int, int, int, int, bool]:
    b1 = out[1]
    seq, ts, ssrc = struct.unpack_from("!HII", out, 2)
    return b1 & 0x7F, seq, ts, ssrc, bool(b1 & 0x80)


def make(gate: bool = False, **kw: int) -> Forwarder:
    return Forwarder(
        ssrc=0xABCDEF01,
        payload_type=96,
        mid="3",
        ext=ExtensionIds(mid=4),
        gate_on_keyframe=gate,
        first_seq=kw.get("first_seq", 1000),
        first_ts=kw.get("first_ts", 5000),
        rtx_ssrc=kw.get("rtx_ssrc", 0),
        rtx_payload_type=kw.get("rtx_pt", 0),
    )


def send(fwd: Forwarder, data: bytes, keyframe: bool = True) -> bytes | None:
    seq, ts = struct.unpack_from("!HI", data, 2)
    return fwd.rewrite(data, payload_offset(data), seq, ts, keyframe, ABS, -1)


def test_rewrites_ssrc_payload_type_and_keeps_marker_and_payload() -> None:
    fwd = make()
    out = send(fwd, rtp(7, 90000, marker=True, payload=b"hello"))
    assert out is not None
    pt, seq, ts, ssrc, marker = header(out)
    assert (pt, seq, ts, ssrc, marker) == (96, 1000, 5000 + 0, 0xABCDEF01, True)
    assert out.endswith(b"hello")
    assert extension_value(out, 4) == b"3"  # the subscriber-side mid, under its id


def test_sequence_and_timestamp_wrap_around() -> None:
    fwd = make(first_seq=0xFFFE, first_ts=0xFFFFFF00)
    seqs, stamps = [], []
    for i in range(4):
        out = send(fwd, rtp((0xFFF0 + i) & 0xFFFF, (0xFFFFFFF0 + 3000 * i) & 0xFFFFFFFF))
        assert out is not None
        _, seq, ts, _, _ = header(out)
        seqs.append(seq)
        stamps.append(ts)
    assert seqs == [0xFFFE, 0xFFFF, 0, 1]
    assert stamps == [
        0xFFFFFF00,
        (0xFFFFFF00 + 3000) & 0xFFFFFFFF,
        (0xFFFFFF00 + 6000) & 0xFFFFFFFF,
        (0xFFFFFF00 + 9000) & 0xFFFFFFFF,
    ]
    # the input itself wraps: 0xFFFF -> 0 keeps the output contiguous
    fwd2 = make(first_seq=10)
    out_seqs = [header(send(fwd2, rtp(s, 0)) or b"")[1] for s in (0xFFFE, 0xFFFF, 0, 1)]
    assert out_seqs == [10, 11, 12, 13]


def test_video_starts_on_a_keyframe_and_drops_older_packets() -> None:
    fwd = make(gate=True)
    assert send(fwd, rtp(50, 0), keyframe=False) is None
    out = send(fwd, rtp(52, 3000), keyframe=True)
    assert out is not None and header(out)[1] == 1000
    assert send(fwd, rtp(51, 0), keyframe=False) is None  # predates the keyframe
    late = send(fwd, rtp(54, 6000), keyframe=False)
    assert late is not None and header(late)[1] == 1002  # a gap stays a gap (NACKable)
    reordered = send(fwd, rtp(53, 3000), keyframe=False)
    assert reordered is not None and header(reordered)[1] == 1001


def test_source_switch_keeps_sequence_continuous() -> None:
    fwd = make(gate=True)
    for i in range(5):
        send(fwd, rtp(100 + i, 1000 * i), keyframe=True)
    last_seq, last_ts = fwd.last_seq, fwd.last_ts
    fwd.switch_source(ts_gap=3000)
    assert send(fwd, rtp(40000, 777), keyframe=False) is None  # waits for a keyframe
    out = send(fwd, rtp(40001, 999), keyframe=True)
    assert out is not None
    _, seq, ts, _, _ = header(out)
    assert seq == (last_seq + 1) & 0xFFFF
    assert ts == (last_ts + 3000) & 0xFFFFFFFF


def test_nack_maps_back_to_the_source_sequence() -> None:
    fwd = make(first_seq=65530)
    for s in range(200, 210):
        send(fwd, rtp(s, 0))
    assert fwd.source_seq(65530) == 200
    assert fwd.source_seq(3) == 209  # across the output wrap


def test_retransmission_is_rtx_wrapped_when_negotiated() -> None:
    fwd = make(rtx_ssrc=0x22222222, rtx_pt=97)
    original = rtp(300, 9000, payload=b"frame")
    sent = send(fwd, original)
    assert sent is not None
    rtx = fwd.retransmission(original, payload_offset(original), ABS)
    pt, _, ts, ssrc, _ = header(rtx)
    assert (pt, ts, ssrc) == (97, header(sent)[2], 0x22222222)
    off = payload_offset(rtx)
    assert struct.unpack_from("!H", rtx, off)[0] == header(sent)[1]  # original seq first
    assert rtx[off + 2 :] == b"frame"
    plain = make().retransmission(original, payload_offset(original), ABS)
    assert header(plain)[0] == 96


def test_extensions_are_rewritten_for_the_subscriber() -> None:
    # A real aiortc VP8 packet: publisher mid id 1, abs-send-time id 3.
    data = packet("rtp_video_keyframe_start")
    assert vp8_keyframe_start(data, payload_offset(data))
    fwd = Forwarder(
        ssrc=1,
        payload_type=120,
        mid="7",
        gate_on_keyframe=True,
        ext=ExtensionIds(mid=9, abs_send_time=2, audio_level=0),
    )
    seq, ts = struct.unpack_from("!HI", data, 2)
    out = fwd.rewrite(data, payload_offset(data), seq, ts, True, ABS, -1)
    assert out is not None
    assert extension_value(out, 9) == b"7"
    assert extension_value(out, 2) == ABS
    assert extension_value(out, 1) is None  # the publisher's ids do not leak through
    assert out[payload_offset(out) :] == data[payload_offset(data) :]


def test_audio_level_is_carried_over() -> None:
    data = packet("rtp_audio")
    fwd = Forwarder(
        ssrc=1,
        payload_type=111,
        mid="0",
        gate_on_keyframe=False,
        ext=ExtensionIds(mid=3, audio_level=5),
    )
    seq, ts = struct.unpack_from("!HI", data, 2)
    out = fwd.rewrite(data, payload_offset(data), seq, ts, True, ABS, 0x9F)
    assert out is not None and extension_value(out, 5) == b"\x9f"


def test_padding_bit_travels_with_the_payload() -> None:
    fwd = make()
    out = send(fwd, rtp(1, 0, payload=b"ab", padding=4))
    assert out is not None and out[0] & 0x20 and out[-1] == 4


def test_packets_far_behind_are_dropped_never_sent() -> None:
    fwd = make()
    for s in range(1000, 1600):
        assert send(fwd, rtp(s, 0)) is not None
    assert send(fwd, rtp(1599 - 600, 0)) is None  # 600 behind: libsrtp would refuse it
    late = send(fwd, rtp(1599 - 100, 0))
    assert late is not None  # modest reordering still goes through (NACK answers, RTX)


def test_a_restarted_source_sequence_is_renumbered_after_the_last_packet() -> None:
    fwd = make(gate=True)
    for s in range(100, 110):
        send(fwd, rtp(s, 9000 + s), keyframe=True)
    last = fwd.last_seq
    # A jump far ahead: not loss, a new sequence; video waits for a keyframe.
    assert send(fwd, rtp(20000, 9200), keyframe=False) is None
    out = send(fwd, rtp(20001, 9300), keyframe=True)
    assert out is not None and header(out)[1] == (last + 1) & 0xFFFF
    # The source's timestamps still hold: no rebase of the clock.
    assert header(out)[2] == (5000 + 9300 - 9100) & 0xFFFFFFFF
    # A restart lower down: after a run of "too old" packets it is renumbered too.
    last = fwd.last_seq
    outs = [send(fwd, rtp(s, 9400), keyframe=True) for s in range(10, 90)]
    sent = [o for o in outs if o is not None]
    assert sent and header(sent[0])[1] == (last + 1) & 0xFFFF
