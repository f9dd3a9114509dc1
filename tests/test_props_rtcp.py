"""Properties of the RTCP wire formats (mediaserver/rtp/rtcp.py), checked with hypothesis.

- any bytes: `parse()` yields only the documented tuples and never raises (it ends the walk
  silently on anything it does not understand);
- every writer round-trips through `parse()`.
"""

from __future__ import annotations

import struct

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mediaserver.rtp import rtcp

SETTINGS = settings(max_examples=200, deadline=None)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)

blocks = st.builds(
    rtcp.ReportBlock,
    ssrc=u32,
    fraction_lost=u8,
    packets_lost=st.integers(-0x800000, 0x7FFFFF),
    highest_seq=u32,
    jitter=u32,
    lsr=u32,
    dlsr=u32,
)


def _header(b0: int, pt: int, words: int) -> bytes:
    return struct.pack("!BBH", b0, pt, words)


# Bytes that look like RTCP often enough to get past the first check: a valid first header
# (version 2, a known packet type, any length) followed by anything.
rtcp_like = st.builds(
    lambda b0, pt, words, rest: _header(0x80 | b0, pt, words) + rest,
    st.integers(0, 0x3F),
    st.sampled_from([rtcp.SR, rtcp.RR, rtcp.SDES, rtcp.BYE, rtcp.RTPFB, rtcp.PSFB, 204]),
    st.integers(0, 40),
    st.binary(max_size=200),
)


@SETTINGS
@given(st.one_of(st.binary(max_size=300), rtcp_like))
def test_parse_any_bytes(data: bytes) -> None:
    for item in rtcp.parse(data):
        assert isinstance(
            item,
            rtcp.SenderReport | rtcp.ReceiverReport | rtcp.Nack | rtcp.KeyframeRequest | rtcp.Remb,
        )


@SETTINGS
@given(
    st.lists(
        st.one_of(
            st.builds(rtcp.pli, u32, u32),
            st.builds(rtcp.nack, u32, u32, st.lists(u16, min_size=1, max_size=40)),
            st.builds(rtcp.remb, u32, st.integers(0, 10**10), st.lists(u32, max_size=8)),
            st.builds(rtcp.receiver_report, u32, st.lists(blocks, max_size=4)),
            st.builds(rtcp.sdes_cname, u32, st.text(max_size=40)),
        ),
        max_size=5,
    ),
    st.binary(max_size=40),
)
def test_parse_compound_with_garbage_tail(parts: list[bytes], tail: bytes) -> None:
    """A compound packet with trailing garbage: every complete part before it is read."""
    parsed = list(rtcp.parse(b"".join(parts) + tail))
    assert len(parsed) >= sum(1 for p in parts if p[1] != rtcp.SDES)


@SETTINGS
@given(blocks)
def test_report_block_round_trip(block: rtcp.ReportBlock) -> None:
    assert rtcp.ReportBlock.parse(bytes(block), 0) == block


BLOCK = rtcp.ReportBlock(1, 2, -3, 4, 5, 6, 7)


@SETTINGS
@given(u32, u64, u32, u32, u32, st.lists(blocks, max_size=40))
@example(1, 2, 3, 4, 5, [BLOCK] * 32)
def test_sender_report_round_trip(
    ssrc: int, ntp: int, ts: int, packets: int, octets: int, reports: list[rtcp.ReportBlock]
) -> None:
    """As for receiver reports, at most 31 blocks (more set the padding bit: a corrupt SR)."""
    sr = rtcp.SenderReport(ssrc, ntp, ts, packets, octets, tuple(reports))
    assert list(rtcp.parse(rtcp.sender_report(sr))) == [
        rtcp.SenderReport(ssrc, ntp, ts, packets, octets, tuple(reports[:31]))
    ]


@SETTINGS
@given(u32, st.lists(blocks, max_size=40))
@example(1, [BLOCK] * 32)
def test_receiver_report_round_trip(ssrc: int, reports: list[rtcp.ReportBlock]) -> None:
    """At most 31 blocks fit the 5-bit count: the rest are left out, never mangled."""
    assert list(rtcp.parse(rtcp.receiver_report(ssrc, reports))) == [
        rtcp.ReceiverReport(ssrc, tuple(reports[:31]))
    ]


@SETTINGS
@given(u32, u32)
def test_pli_round_trip(sender: int, media: int) -> None:
    assert list(rtcp.parse(rtcp.pli(sender, media))) == [rtcp.KeyframeRequest(sender, media)]


@SETTINGS
@given(u32, u32, st.lists(st.integers(0, 0x3FFFF), min_size=1, max_size=100))
def test_nack_round_trip(sender: int, media: int, lost: list[int]) -> None:
    """Every lost sequence number (mod 2^16) is named exactly once."""
    (item,) = rtcp.parse(rtcp.nack(sender, media, lost))
    assert isinstance(item, rtcp.Nack)
    assert (item.sender_ssrc, item.media_ssrc) == (sender, media)
    assert sorted(item.lost) == sorted({s & 0xFFFF for s in lost})


@SETTINGS
@given(u32, st.integers(0, 10**12), st.lists(u32, max_size=20))
def test_remb_round_trip(sender: int, bitrate: int, ssrcs: list[int]) -> None:
    """The bitrate survives up to the 18-bit mantissa's precision, never above it."""
    (item,) = rtcp.parse(rtcp.remb(sender, bitrate, ssrcs))
    assert isinstance(item, rtcp.Remb)
    assert (item.sender_ssrc, item.ssrcs) == (sender, tuple(ssrcs))
    assert item.bitrate <= bitrate
    assert bitrate - item.bitrate < max(1, bitrate >> 17)
