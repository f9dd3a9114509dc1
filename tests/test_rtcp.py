"""RTCP writers and parser, with packets captured from a real aiortc peer."""

from __future__ import annotations

from mediaserver.rtp import rtcp
from mediaserver.rtp.stats import ReceiveStats
from tests.fixtures.packets import aiortc_capture


def test_parses_captured_reports_and_remb() -> None:
    captured = aiortc_capture()["rtcp_from_subscriber"]
    assert isinstance(captured, list)
    items = [item for data in captured for item in rtcp.parse(data)]
    kinds = {type(i).__name__ for i in items}
    assert {"SenderReport", "ReceiverReport", "Remb"} <= kinds
    rr = next(i for i in items if isinstance(i, rtcp.ReceiverReport))
    assert rr.reports and rr.reports[0].highest_seq > 0
    remb = next(i for i in items if isinstance(i, rtcp.Remb))
    assert remb.bitrate > 0 and remb.ssrcs


def test_nack_round_trip_packs_bitmasks() -> None:
    lost = [100, 101, 105, 116, 117, 300]
    (item,) = list(rtcp.parse(rtcp.nack(1, 2, lost)))
    assert isinstance(item, rtcp.Nack)
    assert (item.sender_ssrc, item.media_ssrc) == (1, 2)
    assert sorted(item.lost) == sorted(lost)


def test_nack_across_sequence_wrap() -> None:
    (item,) = list(rtcp.parse(rtcp.nack(1, 2, [65534, 65535, 0, 1])))
    assert isinstance(item, rtcp.Nack) and sorted(item.lost) == [0, 1, 65534, 65535]


def test_pli_remb_sr_rr_round_trip() -> None:
    block = rtcp.ReportBlock(
        ssrc=9, fraction_lost=25, packets_lost=-3, highest_seq=70000, jitter=44, lsr=123, dlsr=456
    )
    data = (
        rtcp.sender_report(rtcp.SenderReport(5, 1 << 40, 777, 10, 2000, (block,)))
        + rtcp.sdes_cname(5, "abc")
        + rtcp.receiver_report(6, [block])
        + rtcp.pli(6, 9)
        + rtcp.remb(6, 1_234_567, [9, 10])
    )
    items = list(rtcp.parse(data))
    sr, rr, pli, remb = items
    assert isinstance(sr, rtcp.SenderReport) and sr.reports == (block,) and sr.ntp == 1 << 40
    assert isinstance(rr, rtcp.ReceiverReport) and rr.reports == (block,)
    assert pli == rtcp.KeyframeRequest(6, 9)
    assert isinstance(remb, rtcp.Remb) and remb.ssrcs == (9, 10)
    assert abs(remb.bitrate - 1_234_567) / 1_234_567 < 0.001


def test_truncated_or_garbage_input_yields_nothing_and_never_raises() -> None:
    good = rtcp.pli(1, 2)
    for data in (b"", b"\x00" * 3, good[:6], b"\xff" * 40, good + b"\x80"):
        list(rtcp.parse(data))
    assert list(rtcp.parse(b"\x00\x00\x00\x00")) == []


def test_receive_stats_count_loss_jitter_and_wrap() -> None:
    stats = ReceiveStats(90000)
    t = 0.0
    seqs = [65530 + i for i in range(6)] + [0, 1, 3, 4]  # 2 missing after the wrap
    for s in seqs:
        stats.update(s & 0xFFFF, int(t * 90000), t, 100)
        t += 0.033
    assert stats.cycles == 0x10000
    assert stats.expected == 11 and stats.received == 10 and stats.lost == 1
    fraction, expected = stats.interval()
    assert expected == 11 and abs(fraction - 1 / 11) < 1e-9
    assert stats.interval() == (0.0, 0)
    block = stats.report_block(7, 0.5, 0, 0)
    assert block.fraction_lost == 128 and block.highest_seq == 0x10000 + 4
    assert stats.jitter < 1  # a perfectly paced sender
