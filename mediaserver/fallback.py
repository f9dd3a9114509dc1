"""Bandwidth fallback wired to one participant: samples its link, applies the controllers.

Once per RTCP interval (`Reporter.report`), and as soon as a controller's settle or probe
time ends (`due()`, so a second step down does not wait for the next report),
`LinkFallback.tick()` builds one `LinkSample` per direction, since the previous tick, from what
the server measured itself:
- uplink (what the participant sends us): sequence gaps and bytes of its publications over the
  interval, the video the publisher put on the link (its sequence numbers count the packets it
  sent, lost ones included: the evidence that a `pause` or the REMB cap took effect), and
  whether anything (RTP or RTCP) arrived at all;
- downlink (what we send it): the subscriber's own loss in the receiver reports that arrived in
  the interval for the streams that flowed (`Subscription.own_lost`: the publisher's uplink
  gaps are not charged here), bytes sent, the subscriber's REMB.

Then it applies the controllers' states: downlink sources not allowed stop being forwarded
at once (`Subscription.set_paused`: the server's own decision, nothing to cross the short
link); uplink sources not allowed are listed in a "pause" event that the control plane sends to
the publisher (it stops those senders), and their video is capped by REMB (`video_cap`, sent at
once and with every report) while the `pause` travels. A mode change is a "mode" event
(direction, mode, reason), a metric and `participant.info()["modes"]`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .bandwidth import (
    BandwidthController,
    FallbackConfig,
    LinkSample,
    Mode,
    State,
    allowed_sources,
)
from .events import NodeCounters

if TYPE_CHECKING:
    from .publication import Publication
    from .subscription import Subscription

DIRECTIONS = ("uplink", "downlink")
logger = logging.getLogger(__name__)


class LinkFallback:
    def __init__(
        self,
        config: FallbackConfig,
        counters: NodeCounters,
        *,
        emit_mode: Callable[[str, str, str], None],
        emit_pause: Callable[[list[str], str], None],
        report_interval_s: float = 1.0,
    ) -> None:
        self.config = config
        self.up = BandwidthController(config)
        self.down = BandwidthController(config)
        self._counters = counters
        self._emit_mode = emit_mode
        self._emit_pause = emit_pause
        self._pub_prior: dict[int, tuple[int, int, int]] = {}  # id -> expected, received, bytes
        self._pub_size: dict[int, float] = {}  # id -> mean payload bytes per packet (video)
        self._pub_silent: set[int] = set()  # publications that sent nothing last interval
        self._down_stalled = False
        self._sub_prior: dict[int, tuple[int, int, int, int]] = {}  # reports, octets, own loss
        # id -> (reports, when that count was first seen, packets sent then, the mean time
        # between its reports or 0 while unknown): report droughts
        self._sub_reported: dict[int, tuple[int, float, int, float]] = {}
        self._last_report = 0.0  # the subscriber's last receiver report, of any stream
        self._paused_sources: list[str] = []
        self._down_applied: State | None = None
        self._pause_reason = "bandwidth"
        self.last_rtcp = 0.0
        self._interval = report_interval_s
        self._last_tick: float | None = None
        self._reported: dict[str, float] = {}  # time in mode already added to the counters
        # A downlink video probe: per video subscription, (packets sent, last sequence number)
        # at its start, and the packets of the probe the subscriber NACKed.
        self._probe: State | None = None
        self._probe_subs: dict[Subscription, tuple[int, int]] = {}
        self._probe_nacked = 0
        self._subs: list[Subscription] = []  # the last tick's
        # An uplink video probe: per started publication, (expected, received) at its start.
        self._up_probe: State | None = None
        self._up_probe_pubs: dict[Publication, tuple[int, int]] = {}
        self._pubs: list[Publication] = []  # the last tick's (all, started or not)

    def modes(self) -> dict[str, str]:
        return {"uplink": self.up.mode.value, "downlink": self.down.mode.value}

    def paused_sources(self) -> list[str]:
        return list(self._paused_sources)

    @property
    def pause_reason(self) -> str:
        return self._pause_reason

    def due(self) -> float | None:
        """When a controller can take its next decision (a settle or probe ends), if sooner
        than the next report: `Participant` samples the link then (a faster step down)."""
        times = [t for t in (self.up.due(), self.down.due()) if t is not None]
        return min(times) if times else None

    def video_cap(self, source: str) -> int | None:
        """The REMB (bits/s) to send for this video source of the participant, when the uplink
        mode sheds it (the encoder is capped before and while the `pause` travels)."""
        if source in self._paused_sources:
            return self.config.video_cap_bps
        return None

    def _stalled(self, now: float) -> bool:
        """Nothing, not even RTCP, came from the peer for 2.5 report intervals."""
        return now - self.last_rtcp > 2.5 * self._interval

    # -- sampling ----------------------------------------------------------------------------

    def _uplink_sample(self, pubs: list[Publication], elapsed: float, now: float) -> LinkSample:
        expected = received = octets = 0
        video_octets = 0.0
        loss = 0.0
        audio_loss: float | None = None
        for pub in pubs:
            stats = pub.stats
            key = id(stats)
            e0, r0, b0 = self._pub_prior.get(key, (stats.expected, stats.received, stats.bytes))
            self._pub_prior[key] = (stats.expected, stats.received, stats.bytes)
            de, dr = stats.expected - e0, stats.received - r0
            octets += stats.bytes - b0
            received += max(dr, 0)
            if dr <= 0:
                if elapsed >= self._interval / 2:
                    self._pub_silent.add(key)
                if key in self._pub_silent:
                    continue  # still silent (a short tick: the skip below waits for packets)
            elif key in self._pub_silent:
                # Its first packets after a silence (a pause, an outage): the sequence gap
                # includes what was lost before the silence (the tail of a congested period),
                # not this interval's loss.
                self._pub_silent.discard(key)
                continue
            if pub.kind == "video" and de > 0:
                # What the publisher sent, lost packets included, at the mean size received.
                if dr > 0:
                    self._pub_size[key] = (stats.bytes - b0) / dr
                video_octets += de * self._pub_size.get(key, 1000.0)
            if de <= 0:
                continue
            expected += de
            fraction = min(1.0, max(0.0, (de - dr) / de))
            loss = max(loss, fraction)
            if pub.kind == "audio":
                audio_loss = fraction if audio_loss is None else max(audio_loss, fraction)
        live = {id(p.stats) for p in pubs}
        self._pub_prior = {k: v for k, v in self._pub_prior.items() if k in live}
        self._pub_size = {k: v for k, v in self._pub_size.items() if k in live}
        self._pub_silent &= live
        stalled = received == 0 and self._stalled(now)
        return LinkSample(
            loss=loss,
            audio_loss=audio_loss,
            packets=expected,
            goodput_bps=int(octets * 8 / elapsed) if elapsed > 0 else 0,
            video_bps=int(video_octets * 8 / elapsed) if elapsed > 0 else 0,
            stalled=stalled,
        )

    def _downlink_sample(self, subs: list[Subscription], elapsed: float, now: float) -> LinkSample:
        loss = 0.0
        audio_loss: float | None = None
        packets = octets = 0
        estimate: int | None = None
        video_octets = 0
        pace = 0.0  # the shortest learnt report interval among the streams that flow
        for sub in subs:
            seen = self._sub_reported.get(id(sub))
            if seen is not None and seen[0] != sub.reports:
                self._last_report = now  # a report of any of its streams, paused ones too
        for sub in subs:
            key = id(sub)
            now_counts = (sub.reports, sub.octets_sent, sub.own_lost, sub.own_expected)
            reports0, octets0, lost0, expected0 = self._sub_prior.get(key, now_counts)
            self._sub_prior[key] = now_counts
            seen = self._sub_reported.get(key)
            if seen is None or seen[0] != sub.reports or sub.paused or self._down_stalled:
                # A fresh report (its pace learnt), or nothing owed (paused; an outage ending).
                learnt = 0.0 if seen is None else seen[3]
                if seen is not None and sub.reports > seen[0] and not self._down_stalled:
                    gap = (now - seen[1]) / (sub.reports - seen[0])
                    learnt = gap if learnt == 0.0 else 0.8 * learnt + 0.2 * gap
                seen = self._sub_reported[key] = (sub.reports, now, sub.packets_sent, learnt)
            if sub.paused:
                continue
            if seen[3] > 0.0:
                pace = seen[3] if pace == 0.0 else min(pace, seen[3])
            if self._report_drought(seen, now, sub.packets_sent):
                # Media flows to it and its reports stopped while other RTCP still comes: the
                # link is starved (docs/fallback.md, "Report droughts"). All of it counts lost.
                packets += sub.packets_sent - seen[2]
                loss = 1.0
                if sub.kind == "audio":
                    audio_loss = 1.0
                self._sub_reported[key] = (sub.reports, now, sub.packets_sent, seen[3])
            octets += sub.octets_sent - octets0
            if sub.kind == "video":
                video_octets += sub.octets_sent - octets0
            if sub.kind == "video" and sub.remb_bps is not None:
                estimate = sub.remb_bps if estimate is None else min(estimate, sub.remb_bps)
            if sub.reports == reports0:
                continue  # no fresh receiver report for this stream
            # The downlink's own loss (`Subscription.own_lost`): what the publisher's uplink
            # lost shows in this subscriber's reports too, and is not charged here.
            expected = sub.own_expected - expected0
            if expected <= 0:
                continue
            packets += expected
            own = min(1.0, (sub.own_lost - lost0) / expected)
            loss = max(loss, own)
            if sub.kind == "audio":
                audio_loss = own if audio_loss is None else max(audio_loss, own)
        sent_bps = int(octets * 8 / elapsed) if elapsed > 0 else 0
        return LinkSample(
            loss=loss,
            audio_loss=audio_loss,
            packets=packets,
            goodput_bps=int(sent_bps * (1 - loss)),
            estimate_bps=estimate,
            sent_bps=sent_bps,
            stalled=self._stalled(now),
            video_bps=int(video_octets * 8 / elapsed) if elapsed > 0 else 0,
            report_pace_s=pace,
        )

    def _report_drought(self, seen: tuple[int, float, int, float], now: float, sent: int) -> bool:
        """No report from a subscriber for `report_gap_s` and three of its usual intervals (a
        browser reports audio about every 5 s, aiortc every 0.5-1.5 s), though media was
        forwarded to it meanwhile, and no report of any of its other streams either for
        `report_gap_s`: a subscriber whose reports of one stream still arrive has an uplink
        that carries them, and a stream's pace is not what it learnt (Chromium reports audio
        with its video's reports while video flows, about every second; alone, every 5 s).
        Unknown until its pace is learnt."""
        _, since, sent0, pace = seen
        if pace <= 0.0 or sent - sent0 < self.config.min_packets:
            return False
        if now - self._last_report <= self.config.report_gap_s:
            return False
        return now - since > max(self.config.report_gap_s, 3 * pace)

    # -- the interval's decision -------------------------------------------------------------

    def tick(
        self, now: float, publications: list[Publication], subscriptions: list[Subscription]
    ) -> None:
        """Sample both directions since the previous tick and apply the controllers."""
        elapsed = self._interval if self._last_tick is None else now - self._last_tick
        self._last_tick = now
        if elapsed <= 0:
            return
        subs = [s for s in subscriptions if s.forwarder is not None and not s.closed]
        pubs = [p for p in publications if p.stats.started]
        down = self._downlink_sample(subs, elapsed, now)
        if self._down_stalled and not down.stalled:
            # The link is back: reports that straddle the silence count only the losses that
            # cannot all be from before it (the controller settles from here too).
            for sub in subs:
                sub.count_loss_from_now()
        self._down_stalled = down.stalled
        # One video probe at a time: probing both directions of a short link at once doubles
        # the cost, and the uplink's way back (a `pause`) would cross a downlink its probe
        # fills. Audio probes (back from chat-only) are cheap: both directions may run them.
        self.down.may_probe = not _probes_video(self.up)
        self._step("downlink", self.down, now, down, [(s.kind, s.publication.source) for s in subs])
        self._apply_downlink(subs)
        self._subs = subs
        probe = self.down.probe if _probes_video(self.down) else None
        if probe is not self._probe:  # a video probe starts (or ends): count its NACKs
            self._probe = probe
            self._probe_nacked = 0
            self._probe_subs = {
                s: (s.packets_sent, s.forwarder.last_seq)
                for s in subs
                if s.kind == "video" and not s.paused and s.forwarder is not None
            }
        self.up.may_probe = not _probes_video(self.down)
        self._step(
            "uplink",
            self.up,
            now,
            self._uplink_sample(pubs, elapsed, now),
            [(p.kind, p.source) for p in publications],
        )
        up_probe = self.up.probe if _probes_video(self.up) else None
        if up_probe is not self._up_probe:  # an uplink video probe starts (or ends)
            self._up_probe = up_probe
            self._up_probe_pubs = {p: (p.stats.expected, p.stats.received) for p in pubs}
        self._pubs = list(publications)
        self._apply_uplink(self._pubs)
        live = {id(s) for s in subs}
        self._sub_prior = {k: v for k, v in self._sub_prior.items() if k in live}
        self._sub_reported = {k: v for k, v in self._sub_reported.items() if k in live}

    def _step(
        self,
        direction: str,
        controller: BandwidthController,
        now: float,
        sample: LinkSample,
        sources: list[tuple[str, str]],
    ) -> None:
        n_video = sum(1 for kind, _ in sources if kind == "video")
        n_audio = sum(1 for kind, _ in sources if kind == "audio")
        change = controller.update(now, sample, n_video, n_audio)
        logger.debug(  # "link" tells participants apart in a debug log (not an identifier)
            "%.2f link %04x %s %s %s -> %s",
            now,
            id(self) & 0xFFFF,
            direction,
            sample,
            controller.effective,
            change,
        )
        if change is None:
            return
        counters = self._counters
        key = f"{direction}:{change.mode.value}"
        counters.mode_transitions[key] = counters.mode_transitions.get(key, 0) + 1
        spent = f"{direction}:{change.previous.value}"
        counters.mode_seconds[spent] = counters.mode_seconds.get(spent, 0.0) + (
            controller.time_in_mode.get(change.previous, 0.0) - self._reported.get(spent, 0.0)
        )
        self._reported[spent] = controller.time_in_mode.get(change.previous, 0.0)
        if direction == "uplink":
            self._pause_reason = change.reason
        if change.reason == "recovered":
            (self.down if controller is self.up else self.up).hasten_probe(now)
        self._emit_mode(direction, change.mode.value, change.reason)

    def video_nacked(self, now: float, sub: Subscription, lost: tuple[int, ...]) -> None:
        """A subscriber NACKed video (`Demux`, per NACK message, never per packet). While a
        downlink video probe runs, lost video of the probe is the probe failing: it ends now
        rather than at the next receiver report, so a link too short for video loses audio for
        a fraction of a second instead of for the whole probe. Only packets forwarded since
        the probe began count: a receiver keeps asking for what it lost before (aiortc asked
        again for 128 packets of the shaped period on a clean link)."""
        if self._probe is None or self.down.probe is not self._probe:
            return
        start = self._probe_subs.get(sub)
        if start is None:
            return
        self._probe_nacked += sum(1 for seq in lost if 0 < (seq - start[1]) & 0xFFFF < 0x8000)
        nacked = self._probe_nacked
        sent = sum(s.packets_sent - sent0 for s, (sent0, _) in self._probe_subs.items())
        cfg = self.config
        if nacked < cfg.probe_nack_packets or nacked < cfg.probe_nack_share * sent:
            return
        logger.debug(
            "link %04x downlink probe ends: %d of %d NACKed", id(self) & 0xFFFF, nacked, sent
        )
        self.down.abort_probe(now)
        self._probe, self._probe_subs = None, {}
        self._apply_downlink([s for s in self._subs if not s.closed])

    def uplink_gap(self, now: float, pub: Publication) -> None:
        """A packet of the participant's arrived after a sequence gap (`Demux`, on a gap only,
        never per packet). While an uplink video probe runs, what the probe's publications lose
        is the probe failing: it ends now (the camera's REMB cap and `pause` go at once) rather
        than at the next tick, as a downlink probe ends at its NACKs. The video's first packet
        after its pause may carry the gap of what was lost before the pause: not counted."""
        if self._up_probe is None or self.up.probe is not self._up_probe:
            return
        start = self._up_probe_pubs.get(pub)
        if start is None:
            return
        stats = pub.stats
        if stats.received - start[1] <= 1:
            self._up_probe_pubs[pub] = (stats.expected - 1, stats.received - 1)
            return
        lost = expected = 0
        for p, (e0, r0) in self._up_probe_pubs.items():
            de = p.stats.expected - e0
            expected += de
            lost += de - (p.stats.received - r0)
        cfg = self.config
        if lost < cfg.probe_nack_packets or lost < cfg.probe_nack_share * expected:
            return
        logger.debug(
            "link %04x uplink probe ends: %d of %d lost", id(self) & 0xFFFF, lost, expected
        )
        self.up.abort_probe(now)
        self._up_probe, self._up_probe_pubs = None, {}
        self._apply_uplink(self._pubs)

    def _apply_downlink(self, subs: list[Subscription]) -> None:
        state = self.down.effective
        if state != self._down_applied:
            # Reports covering the time before this change must not judge what follows it.
            self._down_applied = state
            for sub in subs:
                sub.count_loss_from_now()
        allowed = allowed_sources(
            state, [(s.kind, s.publication.source) for s in subs], self.config
        )
        for sub, ok in zip(subs, allowed, strict=True):
            sub.set_paused(not ok)

    def _apply_uplink(self, pubs: list[Publication]) -> None:
        state = self.up.effective
        allowed = allowed_sources(state, [(p.kind, p.source) for p in pubs], self.config)
        paused = sorted({p.source for p, ok in zip(pubs, allowed, strict=True) if not ok})
        if paused != self._paused_sources:
            resumed = [s for s in self._paused_sources if s not in paused]
            self._paused_sources = paused
            for pub in pubs:
                if pub.source in resumed and pub.kind == "video":
                    pub.request_keyframe(force=True)
            reason = "probe" if self.up.probe is not None else self._pause_reason
            self._emit_pause(paused, reason)

    def close(self, now: float) -> None:
        """Account the time spent in the current modes (the participant leaves)."""
        for direction, controller in (("uplink", self.up), ("downlink", self.down)):
            for mode, seconds in controller.elapsed(now).items():
                key = f"{direction}:{mode.value}"
                self._counters.mode_seconds[key] = self._counters.mode_seconds.get(key, 0.0) + (
                    seconds - self._reported.get(key, 0.0)
                )


def _probes_video(controller: BandwidthController) -> bool:
    probe = controller.probe
    return probe is not None and probe.mode is Mode.VIDEO


def initial_modes() -> dict[str, str]:
    return {d: Mode.VIDEO.value for d in DIRECTIONS}
