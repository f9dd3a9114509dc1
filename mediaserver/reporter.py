"""Reporter: a participant's RTCP reports and link state, once per (randomized) interval.

To the publisher: a receiver report per publication and a REMB per video publication (the
loss-based estimate, `estimate`). To each subscriber: its subscriptions' sender reports. From
both it computes the participant's `LinkStats` and feeds the bandwidth fallback (`tick`);
between reports it gives the fallback a sample as soon as one of its controllers can decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .events import LinkStats
from .rtp import rtcp

if TYPE_CHECKING:
    from .config import MediaConfig
    from .fallback import LinkFallback
    from .publication import Publication
    from .subscription import Subscription

logger = logging.getLogger(__name__)


class Reporter:
    """The RTCP writer of one participant.

    `publications` and `subscriptions` are the participant's own dicts; `send` puts a compound
    packet on its transport; `connected()` tells whether its peer connection is connected.
    """

    def __init__(
        self,
        *,
        config: MediaConfig,
        fallback: LinkFallback,
        publications: dict[str, Publication],
        subscriptions: dict[str, Subscription],
        send: Callable[[bytes], bool],
        connected: Callable[[], bool],
        rtcp_ssrc: int,
        cname: str,
    ) -> None:
        self._config = config
        self._fallback = fallback
        self._publications = publications
        self._subscriptions = subscriptions
        self._send = send
        self._connected = connected
        self._rtcp_ssrc = rtcp_ssrc
        self._cname = cname
        self.link = LinkStats()
        # Byte counts at the last report, per publication and per subscription (by id()).
        self._received: dict[int, int] = {}
        self._sent: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def _loop(self) -> None:
        """Reports once per (randomized) interval; in between, a fallback sample when one of
        its controllers can decide sooner (its settle or probe time ends)."""
        interval = self._config.rtcp_interval_s
        last = time.monotonic()
        next_report = last + interval * (0.75 + random.random() / 2)
        while True:
            wake = next_report
            due = self._fallback.due()
            if due is not None and time.monotonic() < due < wake:  # a past one: never a spin
                wake = due + 0.005  # just past it: that sample may decide
            await asyncio.sleep(max(0.0, wake - time.monotonic()))
            now = time.monotonic()
            try:
                if now >= next_report:
                    elapsed, last = now - last, now
                    next_report = now + interval * (0.75 + random.random() / 2)
                    self.report(elapsed)
                elif self._connected():
                    self.tick(now)
            except Exception:
                logger.exception("RTCP report failed")

    def tick(self, now: float) -> None:
        """A sample for the bandwidth fallback."""
        self._fallback.tick(
            now, list(self._publications.values()), list(self._subscriptions.values())
        )

    def report(self, elapsed: float) -> None:
        """One interval's reports (`elapsed` seconds since the last), the link state, and a
        fallback sample. Nothing while the peer connection is not connected."""
        if not self._connected():
            return
        now = time.monotonic()
        up = self.link.uplink
        down = self.link.downlink
        received, sent = self._received, self._sent
        blocks: list[rtcp.ReportBlock] = []
        rembs: list[bytes] = []
        up_loss = up_jitter = 0.0
        up_bytes = 0
        estimate = 0
        for pub in self._publications.values():
            if pub.ssrc is None or not pub.stats.started:
                continue
            fraction, _ = pub.stats.interval()
            up_loss = max(up_loss, fraction)
            up_jitter = max(up_jitter, pub.stats.jitter / pub.codec.clock_rate * 1000)
            key = id(pub)
            up_bytes += pub.stats.bytes - received.get(key, 0)
            received[key] = pub.stats.bytes
            lsr = dlsr = 0
            if pub.last_sr is not None:
                lsr = (pub.last_sr[0] >> 16) & 0xFFFFFFFF
                dlsr = int((now - pub.last_sr[2]) * 65536)
            blocks.append(pub.stats.report_block(pub.ssrc, fraction, lsr, dlsr))
            if pub.kind == "video":
                pub.estimate_bps = self.estimate(pub, fraction)
                estimate += pub.estimate_bps
                rembs.append(rtcp.remb(self._rtcp_ssrc, pub.estimate_bps, [pub.ssrc]))
        # Always one report: an empty RR keeps a client's media watchdog fed (reconnection).
        self._send(rtcp.receiver_report(self._rtcp_ssrc, blocks) + b"".join(rembs))
        down_loss = down_jitter = 0.0
        down_bytes = 0
        rtts: list[float] = []
        remb: int | None = None
        for sub in self._subscriptions.values():
            report = sub.sender_report(self._cname)
            if report is None:
                continue
            self._send(report)
            down_loss = max(down_loss, sub.fraction_lost)
            down_jitter = max(down_jitter, sub.jitter / sub.publication.codec.clock_rate * 1000)
            key = id(sub)
            down_bytes += sub.octets_sent - sent.get(key, 0)
            sent[key] = sub.octets_sent
            if sub.rtt is not None:
                rtts.append(sub.rtt)
            if sub.remb_bps is not None:
                remb = sub.remb_bps if remb is None else min(remb, sub.remb_bps)
        _keep_only(received, map(id, self._publications.values()))  # departed tracks' go
        _keep_only(sent, map(id, self._subscriptions.values()))
        rtt_ms = sum(rtts) / len(rtts) * 1000 if rtts else None
        up.loss, up.jitter_ms, up.rtt_ms = up_loss, up_jitter, rtt_ms
        up.bitrate_bps = int(up_bytes * 8 / elapsed) if elapsed > 0 else 0
        up.estimated_bps = estimate or None
        down.loss, down.jitter_ms, down.rtt_ms = down_loss, down_jitter, rtt_ms
        down.bitrate_bps = int(down_bytes * 8 / elapsed) if elapsed > 0 else 0
        down.estimated_bps = remb
        self.tick(now)

    def estimate(self, pub: Publication, loss: float) -> int:
        """Loss-based rate control (Galene), capped by what its subscribers can take, and by
        the uplink fallback while it sheds this video (docs/fallback.md)."""
        cfg = self._config
        cap = self._fallback.video_cap(pub.source)
        if cap is not None:
            return cap
        est = pub.estimate_bps or cfg.max_video_bitrate_bps
        if loss > 0.10:
            est = int(est * (1 - 0.5 * loss))
        elif loss < 0.02:
            est = int(est * 1.08)
        caps = [s.remb_bps for s in pub.subscriptions if s.remb_bps and not s.paused]
        if caps:
            est = min(est, int(min(caps) * 1.5))
        elif pub.subscriptions and all(s.paused for s in pub.subscriptions):
            est = cfg.min_video_bitrate_bps  # nobody receives it (fallback): keep it small
        return max(cfg.min_video_bitrate_bps, min(cfg.max_video_bitrate_bps, est))

    def cap_video_now(self) -> None:
        """A REMB per video publication at once (the uplink fallback sheds video: its cap goes
        on the media path before the `pause` crosses the link; each report repeats it)."""
        if not self._connected():
            return
        for pub in self._publications.values():
            if pub.kind == "video" and pub.ssrc is not None:
                pub.estimate_bps = self.estimate(pub, 0.0)
                self._send(rtcp.remb(self._rtcp_ssrc, pub.estimate_bps, [pub.ssrc]))


def _keep_only(counters: dict[int, int], keys: Iterable[int]) -> None:
    """Drop the counters of objects no longer there (their id() may be given to new ones)."""
    live = set(keys)
    for key in [k for k in counters if k not in live]:
        del counters[key]
