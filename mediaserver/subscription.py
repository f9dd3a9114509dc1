"""Subscription: one publication sent to one participant through its own Forwarder."""

from __future__ import annotations

import time
from collections.abc import Callable

from .emitter import Emitter
from .events import CloseReason, NodeCounters
from .forwarder import Continuation, ExtensionIds, Forwarder
from .publication import Publication, payload_offset
from .rtp import rtcp

RTT_ALPHA = 0.85


class Subscription(Emitter):
    """Created by the subscribing Participant; closed with its Publication, whether it has
    started forwarding or not (its publication knows it from its creation).

    Events: "close" (reason).
    """

    def __init__(
        self,
        publication: Publication,
        *,
        send_rtp: Callable[[bytes], bool],
        counters: NodeCounters,
    ) -> None:
        super().__init__()
        self.publication = publication
        self.mid: str | None = None
        self.kind = publication.kind
        self.forwarder: Forwarder | None = None
        self.ssrc = 0
        self.rtx_ssrc = 0
        self.packets_sent = 0
        self.octets_sent = 0
        # From the subscriber's receiver reports and REMB.
        self.fraction_lost = 0.0
        self.jitter = 0
        self.rtt: float | None = None
        self.remb_bps: int | None = None
        # Bandwidth fallback (mediaserver/fallback.py): receiver reports seen, the last one's
        # highest sequence and cumulative loss, and whether forwarding is paused.
        self.reports = 0
        self.highest_reported: int | None = None
        self.packets_lost = 0
        # This downlink's own loss, cumulative over the reports: what the receiver lost minus
        # what the publisher never delivered to us, counted between the same two reports
        # (forwarding keeps the source's sequence gaps, and the receiver counts them as lost).
        self.own_lost = 0
        self.own_expected = 0
        self._upstream_at_report: tuple[int, int] | None = None
        self._count_from: int | None = None  # own loss counts from this output sequence on
        # A downlink that delivers nothing while its reports still come back shows no loss:
        # its reports' highest sequence stands still. What the subscriber has still not got
        # one report after it was sent is counted as lost then (`_overdue`), once.
        self._sent_at_report: int | None = None  # output sequence sent when the last report came
        self._overdue_upto: int | None = None  # counted as lost (overdue) up to this sequence
        self._overdue_from = 0  # ... from past this one (valid while _overdue_upto is set)
        self.paused = False
        self._send_rtp = send_rtp
        self._counters = counters
        self._sr_sent: dict[int, float] = {}
        self._closed = False
        publication.add(self)  # closed with it from now on, started or not

    def start(
        self,
        *,
        mid: str,
        ssrc: int,
        rtx_ssrc: int,
        payload_type: int,
        rtx_payload_type: int,
        ext: ExtensionIds,
        resume: Continuation | None = None,
    ) -> None:
        """The subscriber's sender is negotiated: start forwarding (from a keyframe).

        `resume`: the sender carried another subscription before (a recycled m-line): its
        numbering continues from there (`Continuation`)."""
        self.mid = mid
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc if rtx_payload_type else 0
        first_seq = first_ts = first_rtx_seq = None
        if resume is not None:
            first_seq, first_ts = resume.first(self.publication.codec.clock_rate, time.monotonic())
            first_rtx_seq = resume.rtx_seq
        self.forwarder = Forwarder(
            ssrc=ssrc,
            payload_type=payload_type,
            mid=mid,
            ext=ext,
            gate_on_keyframe=self.kind == "video",
            rtx_ssrc=rtx_ssrc,
            rtx_payload_type=rtx_payload_type,
            first_seq=first_seq,
            first_ts=first_ts,
            first_rtx_seq=first_rtx_seq,
        )
        self.highest_reported = None
        self._upstream_at_report = None
        self._sent_at_report = self._overdue_upto = None
        self.publication.attach(self)
        if self.kind == "video":
            self.publication.request_keyframe(force=True)

    def transport_lost(self) -> None:
        """The subscriber's transport is being replaced (reconnection): stop until `start`."""
        self.publication.detach(self)
        self.forwarder = None
        self.rtt = None
        self.remb_bps = None

    # -- the packet path -------------------------------------------------------------------

    def send(
        self, data: bytes, off: int, seq: int, ts: int, keyframe: bool, abs3: bytes, level: int
    ) -> None:
        if self.paused:
            return
        fwd = self.forwarder
        packet = fwd.rewrite(data, off, seq, ts, keyframe, abs3, level)  # type: ignore[union-attr]
        if packet is None:
            if not fwd.started and self.kind == "video":  # type: ignore[union-attr]
                self.publication.request_keyframe()  # throttled
            return
        if self._send_rtp(packet):
            self.packets_sent += 1
            self.octets_sent += len(data) - off
            counters = self._counters
            counters.packets_forwarded += 1
            counters.bytes_forwarded += len(packet)

    # -- RTCP from the subscriber -----------------------------------------------------------

    def on_nack(self, lost: tuple[int, ...]) -> None:
        fwd = self.forwarder
        if fwd is None:
            return
        counters = self._counters
        counters.nacks_received += 1
        if self.paused:
            # The bandwidth fallback stopped this stream: a retransmission is the stream again
            # (a browser keeps asking for the video it lost before the pause; at 150 kbit/s
            # those retransmissions cost the audio left on the link 5-14% loss, issue 20).
            return
        cache = self.publication.cache
        missing: list[int] = []
        abs3 = (int(time.monotonic() * 262144) & 0xFFFFFF).to_bytes(3, "big")
        for out_seq in lost:
            src = fwd.source_seq(out_seq)
            data = cache.get(src)
            if data is None:
                counters.nack_misses += 1
                missing.append(src)
                continue
            if self._send_rtp(fwd.retransmission(data, payload_offset(data), abs3)):
                counters.retransmissions += 1
        if missing:
            self.publication.resend_upstream(missing)

    def on_keyframe_request(self) -> None:
        self._counters.plis_received += 1
        self.publication.request_keyframe()

    def set_paused(self, paused: bool) -> None:
        """Stop or resume forwarding (bandwidth fallback).

        Output stays continuous: on resume the sequence goes on after the last packet sent, the
        timestamps keep the source's clock, and video waits for a (requested) keyframe.
        """
        if paused == self.paused:
            return
        self.paused = paused
        fwd = self.forwarder
        if fwd is not None:
            fwd.pause()
        if not paused and self.kind == "video":
            self.publication.request_keyframe(force=True)

    def on_report(self, block: rtcp.ReportBlock) -> None:
        stats = self.publication.stats
        upstream = (stats.expected, stats.received)
        if self.highest_reported is not None:  # low 16 bits: aiortc reports no cycles
            expected = (block.highest_seq - self.highest_reported) & 0xFFFF
            if expected < 0x8000 and self._upstream_at_report is not None:
                e0, r0 = self._upstream_at_report
                gaps = max(0, (upstream[0] - e0) - (upstream[1] - r0))
                forwarded = max(0, expected - gaps)
                lost = max(0, block.packets_lost - self.packets_lost - gaps)
                mark = self._count_from
                if mark is not None:
                    # The window starts `before` packets ahead of the mark: any of its losses
                    # may be theirs, so only losses beyond that many count (a lower bound).
                    before = (mark - self.highest_reported) & 0xFFFF
                    before = 0 if before >= 0x8000 else before
                    lost = max(0, lost - before)
                    forwarded = max(0, forwarded - before)
                    if (block.highest_seq - mark) & 0xFFFF < 0x8000:
                        self._count_from = None  # the next window starts past the mark
                overdue = self._overdue_covered(block.highest_seq, expected)
                forwarded = max(0, forwarded - overdue)  # counted when they were overdue
                lost = max(0, lost - overdue)
                self.own_lost += min(lost, forwarded)
                self.own_expected += forwarded
                self._overdue(block.highest_seq)
        fwd = self.forwarder
        self._sent_at_report = None if fwd is None else fwd.last_seq
        self._upstream_at_report = upstream
        self.highest_reported = block.highest_seq
        self.packets_lost = block.packets_lost
        self.reports += 1
        self.fraction_lost = block.fraction_lost / 256
        self.jitter = block.jitter
        sent = self._sr_sent.get(block.lsr)
        if sent is not None and block.lsr:
            rtt = time.monotonic() - sent - block.dlsr / 65536
            if rtt >= 0:
                self.rtt = rtt if self.rtt is None else RTT_ALPHA * self.rtt + (1 - RTT_ALPHA) * rtt

    def _overdue(self, highest: int) -> None:
        """What was sent before the previous report and is still past this one's highest
        sequence has been in flight a whole report interval (0.5-1.5 s from aiortc, about 1 s
        from browsers): lost, or queued behind a link that delivers nothing. Counted as lost
        now (each packet once), so a downlink starved that way is seen. After a change of what
        flows (`count_loss_from_now`) only packets past its mark count: a receiver that gets
        nothing never reports past the mark, and the change must not hide that."""
        sent = self._sent_at_report
        if sent is None:
            return  # nothing sent yet
        start = highest
        mark = self._count_from
        if mark is not None and _ahead(mark, start) > 0:
            start = mark
        upto = self._overdue_upto
        if upto is not None and _ahead(upto, start) > 0:
            start = upto  # counted up to there already
        overdue = _ahead(sent, start)
        if overdue > 0:
            self.own_lost += overdue
            self.own_expected += overdue
            if upto is None:
                self._overdue_from = start
            self._overdue_upto = sent

    def _overdue_covered(self, highest: int, expected: int) -> int:
        """How many of the packets this report covers (`expected` past the previous highest)
        were counted as overdue already."""
        upto, first = self._overdue_upto, self._overdue_from
        previous = self.highest_reported
        if upto is None or previous is None:
            return 0
        covered = min(expected, _ahead(upto, previous)) - max(0, _ahead(first, previous))
        if _ahead(highest, upto) >= 0:
            self._overdue_upto = None  # the receiver is past all of them
        elif _ahead(highest, first) > 0:
            self._overdue_from = highest
        return max(0, covered)

    def count_loss_from_now(self) -> None:
        """What flows to this subscriber changed (bandwidth fallback): own loss counts only
        after the packets forwarded so far. A report arriving later may still cover the time
        before (reports are lost on a short uplink, and the next one covers everything since
        the last that arrived); of such a report only the losses that cannot all be from
        before the change count."""
        fwd = self.forwarder
        self._count_from = None if fwd is None else fwd.last_seq

    def on_remb(self, bitrate: int) -> None:
        self.remb_bps = bitrate

    def sender_report(self, cname: str) -> bytes | None:
        """SR + SDES for this stream, mapped onto the publisher's clock when it sent an SR."""
        fwd = self.forwarder
        if fwd is None or not fwd.started:
            return None
        now = time.monotonic()
        wall = time.time()
        pub = self.publication
        rate = pub.codec.clock_rate
        if pub.last_sr is not None:
            ntp_src, rtp_src, arrival = pub.last_sr
            elapsed = now - arrival
            ntp = ntp_src + int(elapsed * (1 << 32))
            out_ts = rtp_src + int(elapsed * rate) + fwd.ts_offset
        else:
            ntp = rtcp.ntp_time(wall)
            out_ts = fwd.last_ts
        lsr = (ntp >> 16) & 0xFFFFFFFF
        self._sr_sent[lsr] = now
        if len(self._sr_sent) > 8:
            self._sr_sent.pop(next(iter(self._sr_sent)))
        sr = rtcp.SenderReport(
            self.ssrc, ntp, out_ts & 0xFFFFFFFF, self.packets_sent, self.octets_sent
        )
        return rtcp.sender_report(sr) + rtcp.sdes_cname(self.ssrc, cname)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self, reason: CloseReason = CloseReason.LEFT) -> None:
        if self._closed:
            return
        self._closed = True
        self.publication.remove(self)
        self.emit("close", reason)
        self.remove_all_listeners()

    async def _parent_closed(self, reason: CloseReason) -> None:
        await self.close(reason)


def _ahead(a: int, b: int) -> int:
    """How far sequence number `a` is past `b` (negative: behind), 16-bit wrap."""
    d = (a - b) & 0xFFFF
    return d - 0x10000 if d >= 0x8000 else d
