"""Demux: a participant's inbound packet path, by SSRC (RTP) and by RTCP packet type.

The participant's `MediaTransport` calls `on_rtp` / `on_rtcp` (bound methods of this object)
straight from the socket callback: no allocation, await or further indirection per RTP packet
beyond one dict lookup and the publication's own handler.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .publication import extension_value
from .rtp import rtcp

if TYPE_CHECKING:
    from .fallback import LinkFallback
    from .publication import Publication
    from .subscription import Subscription


class Demux:
    """The SSRC tables of one participant: its publications' media and RTX SSRCs, its
    subscriptions' SSRCs (the ones subscribers' RTCP names).

    `publications` is the participant's own dict (read when an unknown SSRC is learned);
    `fallback` gets the arrival time of every RTCP compound (its silence watchdog).
    """

    __slots__ = (
        "_fallback",
        "_publications",
        "mid_ext_id",
        "pub_by_ssrc",
        "rtx_by_ssrc",
        "sub_by_ssrc",
    )

    def __init__(self, publications: dict[str, Publication], fallback: LinkFallback) -> None:
        self._publications = publications
        self._fallback = fallback
        self.pub_by_ssrc: dict[int, Publication] = {}
        self.rtx_by_ssrc: dict[int, Publication] = {}
        self.sub_by_ssrc: dict[int, Subscription] = {}
        self.mid_ext_id = 0  # the mid header extension's id in the publisher's SDP (0: none)

    # -- the tables ----------------------------------------------------------------------------

    def add_publication(self, pub: Publication) -> None:
        if pub.ssrc is not None:
            self.pub_by_ssrc[pub.ssrc] = pub
        if pub.rtx_ssrc is not None:
            self.rtx_by_ssrc[pub.rtx_ssrc] = pub

    def remove_publication(self, pub: Publication) -> None:
        for table in (self.pub_by_ssrc, self.rtx_by_ssrc):
            for ssrc in [s for s, p in table.items() if p is pub]:
                del table[ssrc]

    def add_subscription(self, sub: Subscription) -> None:
        """Once its sender is negotiated (`sub.ssrc` set): subscribers' RTCP names it."""
        self.sub_by_ssrc[sub.ssrc] = sub
        if sub.rtx_ssrc:
            self.sub_by_ssrc[sub.rtx_ssrc] = sub

    def remove_subscription(self, sub: Subscription) -> None:
        for ssrc in (sub.ssrc, sub.rtx_ssrc):
            if self.sub_by_ssrc.get(ssrc) is sub:
                del self.sub_by_ssrc[ssrc]

    def clear_publications(self) -> None:
        """A new peer connection: its publishers' SSRCs are announced anew."""
        self.pub_by_ssrc.clear()
        self.rtx_by_ssrc.clear()

    def clear_subscriptions(self) -> None:
        self.sub_by_ssrc.clear()

    # -- RTP -----------------------------------------------------------------------------------

    def on_rtp(self, data: bytes, arrival: float) -> None:
        ssrc = int.from_bytes(data[8:12], "big")
        pub = self.pub_by_ssrc.get(ssrc)
        if pub is not None:
            if pub.on_rtp(data, arrival):  # after a gap: an uplink probe may be failing
                self._fallback.uplink_gap(arrival, pub)
            return
        pub = self.rtx_by_ssrc.get(ssrc)
        if pub is not None:
            pub.on_rtx(data, arrival)
            return
        self._learn_ssrc(data, ssrc, arrival)

    def _learn_ssrc(self, data: bytes, ssrc: int, arrival: float) -> None:
        """An SSRC the SDP did not announce: route it by mid extension, else by payload type."""
        pt = data[1] & 0x7F
        mid = extension_value(data, self.mid_ext_id) if self.mid_ext_id else None
        pubs = list(self._publications.values())
        if mid is not None:
            pubs = [p for p in pubs if p.mid == mid.decode(errors="replace")]
        pubs = [p for p in pubs if pt in (p.codec.payload_type, p.codec.rtx_payload_type)]
        if len(pubs) != 1:
            return  # unknown or ambiguous: dropped
        pub = pubs[0]
        if pt == pub.codec.rtx_payload_type:
            pub.rtx_ssrc = ssrc
            self.rtx_by_ssrc[ssrc] = pub
            pub.on_rtx(data, arrival)
        elif pub.ssrc is None or pub.ssrc not in self.pub_by_ssrc or mid is not None:
            pub.ssrc = ssrc
            self.pub_by_ssrc[ssrc] = pub
            pub.on_rtp(data, arrival)

    # -- RTCP ----------------------------------------------------------------------------------

    def on_rtcp(self, data: bytes) -> None:
        arrival = time.monotonic()
        self._fallback.last_rtcp = arrival
        subs = self.sub_by_ssrc
        for item in rtcp.parse(data):
            if isinstance(item, rtcp.SenderReport):
                pub = self.pub_by_ssrc.get(item.ssrc)
                if pub is not None:
                    pub.on_sender_report(item, arrival)
                self._on_report_blocks(item.reports)
            elif isinstance(item, rtcp.ReceiverReport):
                self._on_report_blocks(item.reports)
            elif isinstance(item, rtcp.Nack):
                sub = subs.get(item.media_ssrc)
                if sub is not None:
                    sub.on_nack(item.lost)
                    if sub.kind == "video":
                        self._fallback.video_nacked(arrival, sub, item.lost)
            elif isinstance(item, rtcp.KeyframeRequest):
                sub = subs.get(item.media_ssrc)
                if sub is not None:
                    sub.on_keyframe_request()
            elif isinstance(item, rtcp.Remb):
                for ssrc in item.ssrcs:
                    sub = subs.get(ssrc)
                    if sub is not None:
                        sub.on_remb(item.bitrate)

    def _on_report_blocks(self, blocks: tuple[rtcp.ReportBlock, ...]) -> None:
        for block in blocks:
            sub = self.sub_by_ssrc.get(block.ssrc)
            if sub is not None and block.ssrc == sub.ssrc:  # not the RTX stream's report
                sub.on_report(block)
