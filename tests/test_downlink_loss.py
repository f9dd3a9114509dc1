"""A subscriber's own downlink loss: its receiver reports minus what the publisher's uplink
never delivered (real Publication and Subscription objects, packets in memory)."""

from __future__ import annotations

import struct

from mediaserver.codecs import CodecInfo
from mediaserver.events import NodeCounters
from mediaserver.forwarder import ExtensionIds
from mediaserver.publication import Publication
from mediaserver.rtp.rtcp import ReportBlock
from mediaserver.subscription import Subscription

OPUS = CodecInfo(
    mime_type="audio/opus",
    clock_rate=48000,
    channels=2,
    parameters={},
    payload_type=111,
    rtx_payload_type=0,
    nack=False,
)


def rtp(seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 111, seq & 0xFFFF, seq * 960, 0x1234) + b"opus"


def setup() -> tuple[Publication, Subscription, list[bytes]]:
    counters = NodeCounters()
    pub = Publication(
        participant_id="p",
        kind="audio",
        source="microphone",
        mid="0",
        codec=OPUS,
        ssrc=0x1234,
        rtx_ssrc=None,
        audio_level_id=0,
        cache_size=64,
        counters=counters,
        send_rtcp=lambda data: True,
        rtcp_ssrc=1,
        pli_throttle_s=1.0,
    )
    sent: list[bytes] = []

    def send(data: bytes) -> bool:
        sent.append(data)
        return True

    sub = Subscription(pub, send_rtp=send, counters=counters)
    sub.start(
        mid="0", ssrc=0x5678, rtx_ssrc=0, payload_type=111, rtx_payload_type=0, ext=ExtensionIds()
    )
    return pub, sub, sent


def report(sent: list[bytes], lost: int) -> ReportBlock:
    """What the subscriber reports after receiving all but `lost` of what it was sent."""
    highest = struct.unpack_from("!H", sent[-1], 2)[0]
    return ReportBlock(
        ssrc=0x5678,
        fraction_lost=0,
        packets_lost=lost,
        highest_seq=highest,
        jitter=0,
        lsr=0,
        dlsr=0,
    )


def feed(pub: Publication, first: int, end: int, *, drop_every: int = 0) -> None:
    """The publisher's packets first..end-1 reach the node (but every `drop_every`-th)."""
    for seq in range(first, end):
        if not drop_every or seq % drop_every:
            pub.on_rtp(rtp(seq), 0.0)


def test_upstream_gaps_are_not_the_downlinks_loss() -> None:
    pub, sub, sent = setup()
    feed(pub, 100, 150)
    sub.on_report(report(sent, 0))
    # The publisher's uplink loses 1 packet in 4; the downlink itself loses nothing. The
    # subscriber counts the forwarded gaps as lost (the numbering keeps them).
    feed(pub, 150, 250, drop_every=4)
    sub.on_report(report(sent, 25))
    assert sub.own_expected == 75 and sub.own_lost == 0
    # Now the downlink loses 15 of the next 75 forwarded packets as well.
    feed(pub, 250, 350, drop_every=4)
    sub.on_report(report(sent, 25 + 25 + 15))
    assert sub.own_expected == 150 and sub.own_lost == 15


def test_a_lossless_uplink_charges_every_lost_packet_to_the_downlink() -> None:
    pub, sub, sent = setup()
    feed(pub, 0, 40)
    sub.on_report(report(sent, 0))
    feed(pub, 40, 140)
    sub.on_report(report(sent, 30))
    assert sub.own_expected == 100 and sub.own_lost == 30


def changed_at_100() -> tuple[Publication, Subscription, list[bytes]]:
    """Reported up to 49; what flows changes after packet 99 is forwarded; sent up to 149."""
    pub, sub, sent = setup()
    feed(pub, 0, 50)
    sub.on_report(report(sent, 0))
    feed(pub, 50, 100)
    sub.count_loss_from_now()  # video shed, say
    feed(pub, 100, 150)
    return pub, sub, sent


def test_after_a_change_a_report_straddling_it_is_not_counted() -> None:
    pub, sub, sent = changed_at_100()
    # The report covering 50-149 arrives after the change, with the loss of the congestion
    # before it: 20 lost, all of which may be 50-99's. It must not judge the new state.
    sub.on_report(report(sent, 20))
    assert sub.own_expected == 50 and sub.own_lost == 0
    feed(pub, 150, 200)
    sub.on_report(report(sent, 21))  # the next window lies wholly after the change
    assert sub.own_expected == 100 and sub.own_lost == 1


def test_a_report_straddling_a_change_counts_the_losses_that_must_follow_it() -> None:
    _, sub, sent = changed_at_100()
    # 70 lost in 50-149: at most 50 of them before the change, so at least 20 after it (a
    # link that stays short after the change keeps showing, even when reports are scarce).
    sub.on_report(report(sent, 70))
    assert sub.own_expected == 50 and sub.own_lost == 20


def reported_up_to(highest: int, lost: int) -> ReportBlock:
    """A report whose highest sequence is `highest` (output numbering) with `lost` lost."""
    return ReportBlock(
        ssrc=0x5678,
        fraction_lost=0,
        packets_lost=lost,
        highest_seq=highest & 0xFFFF,
        jitter=0,
        lsr=0,
        dlsr=0,
    )


def starved() -> tuple[Publication, Subscription, list[bytes], int]:
    """Reported up to the 50th packet; 100 more forwarded; the subscriber's reports still come
    but say it got nothing more (a link that delivers nothing, its reports getting through)."""
    pub, sub, sent = setup()
    feed(pub, 0, 50)
    first = struct.unpack_from("!H", sent[0], 2)[0]
    last = first + 49
    sub.on_report(reported_up_to(last, 0))
    feed(pub, 50, 100)  # sent before the next report: overdue at the one after it
    sub.on_report(reported_up_to(last, 0))
    assert sub.own_expected == 0 and sub.own_lost == 0  # in flight: nothing is known yet
    feed(pub, 100, 150)
    sub.on_report(reported_up_to(last, 0))
    return pub, sub, sent, first


def test_what_is_still_not_received_a_report_later_counts_as_lost_once() -> None:
    _, sub, _, first = starved()
    assert sub.own_expected == 50 and sub.own_lost == 50  # packets 50-99
    sub.on_report(reported_up_to(first + 49, 0))
    assert sub.own_expected == 100 and sub.own_lost == 100  # 100-149, not 50-99 again


def test_overdue_packets_that_arrive_late_are_not_counted_again() -> None:
    _, sub, _, first = starved()
    sub.on_report(reported_up_to(first + 149, 0))  # all of it came, late
    assert sub.own_expected == 100 and sub.own_lost == 50  # 50-99 once (as lost), 100-149 got


def test_overdue_packets_reported_lost_later_are_not_counted_again() -> None:
    _, sub, _, first = starved()
    sub.on_report(reported_up_to(first + 149, 50))  # 50-99 lost, 100-149 got
    assert sub.own_expected == 100 and sub.own_lost == 50


def test_a_link_that_delivers_counts_nothing_overdue() -> None:
    pub, sub, sent = setup()
    for start in range(0, 500, 50):
        feed(pub, start, start + 50)
        sub.on_report(report(sent, 0))
    assert sub.own_lost == 0 and sub.own_expected == 450


def test_after_a_change_a_receiver_that_gets_nothing_is_seen() -> None:
    """What flows changed (video shed, say) and the receiver gets nothing any more: its reports
    never pass the change's mark, and the packets after the mark still count as overdue."""
    pub, sub, sent = setup()
    feed(pub, 0, 50)
    first = struct.unpack_from("!H", sent[0], 2)[0]
    sub.on_report(reported_up_to(first + 49, 0))
    feed(pub, 50, 100)
    sub.count_loss_from_now()  # the mark: packet 99
    sub.on_report(reported_up_to(first + 49, 0))
    feed(pub, 100, 150)
    sub.on_report(reported_up_to(first + 49, 0))
    assert sub.own_expected == 0  # 50-99 were before the change; 100-149 are in flight
    feed(pub, 150, 200)
    sub.on_report(reported_up_to(first + 49, 0))
    assert sub.own_expected == 50 and sub.own_lost == 50  # 100-149, after the change
    sub.on_report(reported_up_to(first + 199, 100))  # 50-149 lost, 150-199 got, at last
    assert sub.own_expected == 100 and sub.own_lost == 50  # 100-149 not counted again
