"""Bandwidth fallback: link samples and the per-direction mode state machine (pure, no I/O).

Modes, best first: `video` -> `audio-only` -> `chat-only`. One `BandwidthController` runs per
participant and direction (uplink: what it sends us; downlink: what we send it). Once per
RTCP interval the participant feeds it a `LinkSample` built from what the server measures
(sequence gaps of the publications, receiver reports and REMB of the subscriber, bytes per
interval) and applies the controller's `state` (which sources may flow).

Going down is quick (a few samples), going up is slow and proven: after a minimum dwell in the
lower mode, the controller *probes* (lets the next level's media flow for `probe_s` while the
mode stays) and climbs only if the probe's loss stays low. A probe that fails doubles the wait
before the next one; a climb that falls back soon after doubles the dwell (no flapping).
The second step down (audio-only -> chat-only) is judged only on samples showing that the
first one took effect (the sender's video stopped or fell under the cap), and the samples just
after an outage (stale packets, reports straddling the silence) are not a short link.

Within a mode, sources are shed by priority before the mode changes: with two video sources,
the lowest-priority one (webcam `camera` before `exam-camera`) stops first; in audio-only with
two audio sources, the webcam `microphone` stops before device audio (`stethoscope`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field, replace


class Mode(enum.Enum):
    VIDEO = "video"
    AUDIO_ONLY = "audio-only"
    CHAT_ONLY = "chat-only"


RANK = {Mode.VIDEO: 0, Mode.AUDIO_ONLY: 1, Mode.CHAT_ONLY: 2}


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackConfig:
    """Thresholds of the bandwidth fallback (docs/fallback.md explains how to tune them).

    video_loss: loss (0..1) of the flowing streams at or above which video is shed.
    audio_loss: loss of the audio streams (video already off) at or above which -> chat-only.
    good_loss: loss at or below which a sample counts as good (a probe passes).
    min_video_bps: goodput (payload bits/s delivered) below which video cannot fit; a REMB
        estimate below it also sheds video when the link confirms it (some loss, at least
        `good_loss`) and we send more video than the estimate allows.
    min_audio_bps: goodput below which even audio cannot pass: with a loss of `severe_loss` or
        more, straight to audio-only from video (one step, whatever the video sources), then
        chat-only once video stopped.
    video_cap_bps: the REMB sent to a publisher whose uplink mode sheds its video (it caps the
        encoder while the `pause` travels); video under 1.5x this counts as stopped (the
        evidence the second step waits for).
    min_packets: packets a sample must cover for its loss to count.
    down_samples: consecutive congested samples before stepping down (1 = at once);
        a loss at or above `severe_loss` steps down at once.
    settle_s: after any change (or a stalled link) samples are ignored this long (queues drain,
        reports catch up).
    min_dwell_s: time in a lower mode before the first probe up.
    probe_s: how long a probe lets the next level's media flow before climbing.
    max_backoff_s: ceiling of the probe wait and of the dwell after repeated failures.
    audio_backoff_s: ceiling of the wait between audio probes (chat-only -> audio-only): they
        cost one audio stream for a probe's time, and a link that comes back must be found
        soon enough for video within 15 s of its return (two probes, one per level).
    probe_nack_packets / probe_nack_share: a downlink video probe ends at once, before the
        next receiver report, when the subscriber has NACKed at least this many of the video
        packets forwarded since it began and at least this share of them (its video does not
        fit: every further packet of it costs the link's audio). An uplink video probe ends
        likewise when the participant's publications have lost that many and that share of
        their packets since it began (the node sees the gaps as they arrive).
    report_gap_s: a downlink whose subscriber sends no receiver report for this long while
        media is forwarded to it (other RTCP from it still arriving, so not an outage) counts
        as starved: its reports are lost on an uplink its own unobeyed media fills, because
        the `pause` is stuck behind the downlink's audio (20 kbit/s).
    video_priority / audio_priority: source labels, most important first; a source not listed
        ranks after the listed ones.
    """

    enabled: bool = True
    video_loss: float = 0.10
    audio_loss: float = 0.20
    severe_loss: float = 0.30
    good_loss: float = 0.03
    min_video_bps: int = 120_000
    min_audio_bps: int = 24_000
    video_cap_bps: int = 30_000
    min_packets: int = 8
    down_samples: int = 2
    settle_s: float = 1.5
    min_dwell_s: float = 5.0
    probe_s: float = 2.5
    max_backoff_s: float = 10.0
    audio_backoff_s: float = 5.0
    probe_nack_packets: int = 4
    probe_nack_share: float = 0.10
    report_gap_s: float = 4.0
    video_priority: tuple[str, ...] = ("exam-camera", "screen", "camera")
    audio_priority: tuple[str, ...] = ("stethoscope", "microphone")

    def __post_init__(self) -> None:
        if not 0 < self.good_loss < self.video_loss <= 1:
            raise ValueError("fallback thresholds need 0 < good_loss < video_loss <= 1")
        if not 0 < self.audio_loss <= 1 or not 0 < self.severe_loss <= 1:
            raise ValueError("audio_loss and severe_loss are within (0, 1]")
        if self.down_samples < 1 or self.min_packets < 1:
            raise ValueError("down_samples and min_packets are at least 1")
        if min(self.settle_s, self.min_dwell_s, self.probe_s) < 0:
            raise ValueError("fallback times are not negative")
        if self.probe_nack_packets < 1 or not 0 < self.probe_nack_share <= 1:
            raise ValueError("probe_nack_packets is at least 1, probe_nack_share within (0, 1]")
        if self.report_gap_s <= 0:
            raise ValueError("report_gap_s must be positive")
        if not 0 <= self.audio_backoff_s <= self.max_backoff_s:
            raise ValueError("audio_backoff_s is within [0, max_backoff_s]")


@dataclass(frozen=True, slots=True)
class LinkSample:
    """One interval of one direction of a participant's link.

    loss: worst loss among the streams that flowed (0..1); audio_loss: worst among audio
    streams (None when no audio flowed); packets: packets the loss figures cover; goodput_bps:
    payload bits/s delivered; estimate_bps: the receiver's REMB (downlink) or None; sent_bps:
    payload bits/s sent (downlink); video_bps: the video the sender put on the link (downlink:
    what we sent, and a REMB below it means we overshoot the receiver; uplink: what the
    publisher sent, from its sequence numbers: lost packets included); stalled: nothing at all
    arrived from the peer (an outage: reconnection's business, not ours).
    """

    loss: float = 0.0
    audio_loss: float | None = None
    packets: int = 0
    goodput_bps: int = 0
    estimate_bps: int | None = None
    sent_bps: int = 0
    video_bps: int = 0
    stalled: bool = False
    report_pace_s: float = 0.0


@dataclass(frozen=True, slots=True)
class State:
    """What may flow: the mode, and how many low-priority sources are shed within it."""

    mode: Mode = Mode.VIDEO
    video_shed: int = 0
    audio_shed: int = 0


@dataclass(frozen=True, slots=True)
class Change:
    """A mode change (what becomes an event, a metric and the room API's view)."""

    mode: Mode
    previous: Mode
    reason: str


def step_down(state: State, n_video: int, n_audio: int, *, to: Mode | None = None) -> State:
    """One level lower (or straight to the first level of `to`)."""
    if to is Mode.CHAT_ONLY:
        return State(Mode.CHAT_ONLY)
    if to is Mode.AUDIO_ONLY and state.mode is Mode.VIDEO:
        return State(Mode.AUDIO_ONLY)
    if state.mode is Mode.VIDEO:
        if state.video_shed < n_video - 1:
            return replace(state, video_shed=state.video_shed + 1)
        return State(Mode.AUDIO_ONLY)
    if state.mode is Mode.AUDIO_ONLY:
        if state.audio_shed < n_audio - 1:
            return replace(state, audio_shed=state.audio_shed + 1)
        return State(Mode.CHAT_ONLY)
    return state


def step_up(state: State, n_video: int, n_audio: int) -> State:
    """One level higher."""
    if state.mode is Mode.CHAT_ONLY:
        return State(Mode.AUDIO_ONLY, audio_shed=max(0, n_audio - 1))
    if state.mode is Mode.AUDIO_ONLY:
        if state.audio_shed > 0:
            return replace(state, audio_shed=state.audio_shed - 1)
        return State(Mode.VIDEO, video_shed=max(0, n_video - 1))
    if state.video_shed > 0:
        return replace(state, video_shed=state.video_shed - 1)
    return state


def _rank(source: str, priority: tuple[str, ...]) -> int:
    return priority.index(source) if source in priority else len(priority)


def allowed_sources(
    state: State, sources: Sequence[tuple[str, str]], config: FallbackConfig
) -> list[bool]:
    """For each (kind, source), whether it may flow in this state (priority order applies)."""
    keep = [False] * len(sources)
    if state.mode is Mode.CHAT_ONLY:
        return keep
    for kind, priority, shed in (
        ("video", config.video_priority, state.video_shed),
        ("audio", config.audio_priority, state.audio_shed),
    ):
        if kind == "video" and state.mode is not Mode.VIDEO:
            continue
        idx = [i for i, (k, _) in enumerate(sources) if k == kind]
        idx.sort(key=lambda i: _rank(sources[i][1], priority))  # stable: earlier first on ties
        for i in idx[: max(0, len(idx) - shed)] if idx else []:
            keep[i] = True
    return keep


@dataclass(slots=True)
class BandwidthController:
    """The mode state machine of one direction of one participant's link."""

    config: FallbackConfig = field(default_factory=FallbackConfig)
    state: State = field(default_factory=State)
    probe: State | None = None  # the higher state being tried, while a probe runs
    may_probe: bool = True  # the owner clears it while the other direction probes
    since: float = 0.0  # when the current mode began
    _settle_until: float = 0.0
    _bad: int = 0
    _probe_until: float = 0.0
    _next_probe: float = 0.0
    _probe_failures: int = 0
    _dwell: float = -1.0
    _last_climb: float = -1e9
    _probe_proven: bool = False  # a probe saw a measured, good sample
    _last_sample: float = 0.0
    _stalled: bool = False  # the previous sample was an outage's
    _video_quiet_since: float | None = None  # since when the sender's video is under the cap
    _climbing: bool = False  # the last change was a proven climb: the next level may follow soon
    time_in_mode: dict[Mode, float] = field(default_factory=dict)

    @property
    def mode(self) -> Mode:
        return self.state.mode

    @property
    def effective(self) -> State:
        """What flows now: the probe's state while a probe runs, else the state."""
        return self.probe if self.probe is not None else self.state

    def due(self) -> float | None:
        """When the next decision may be taken (a settle or a probe ends), if one is pending:
        the participant samples then rather than waiting for its next report."""
        pending = [self._settle_until]
        if self.probe is not None:
            pending.append(self._probe_until)
        later = [t for t in pending if t > self._last_sample]
        return min(later) if later else None

    def start(self, now: float) -> None:
        self.since = now
        self._settle_until = now + self.config.settle_s
        self._dwell = self.config.min_dwell_s

    def update(self, now: float, sample: LinkSample, n_video: int, n_audio: int) -> Change | None:
        """Feed one sample; returns the mode change it caused, if any."""
        cfg = self.config
        if self._dwell < 0:
            self.start(now)
        self._last_sample = now
        if not cfg.enabled:
            return None
        if sample.video_bps > 1.5 * cfg.video_cap_bps:
            self._video_quiet_since = None
        elif self._video_quiet_since is None:
            self._video_quiet_since = now
        if sample.stalled:
            self._bad = 0
            self._stalled = True
            self._settle_until = now + cfg.settle_s
            return None
        if self._stalled:
            # The outage's aftermath: the first sample after it carries the gap, the stale and
            # retransmitted packets and the reports that straddle the silence. Settle from
            # here, not from the last silent sample (a stalled link holds its mode).
            self._stalled = False
            self._bad = 0
            self._settle_until = now + cfg.settle_s
            return None
        if now < self._settle_until:
            return None
        if self.probe is not None:
            return self._judge_probe(now, sample, n_video, n_audio)
        return self._judge(now, sample, n_video, n_audio)

    def _judge(self, now: float, sample: LinkSample, n_video: int, n_audio: int) -> Change | None:
        cfg = self.config
        state = self.state
        measured = sample.packets >= cfg.min_packets
        audio_loss = sample.audio_loss if sample.audio_loss is not None else sample.loss
        # Severe loss *and* little delivered: even audio cannot pass. Little delivered alone is
        # a quiet sender (its video just paused), not a short link.
        starving = measured and sample.loss >= cfg.severe_loss
        starving = starving and sample.goodput_bps < cfg.min_audio_bps
        if state.mode is Mode.VIDEO:
            # A low REMB alone proves nothing: a receiver's estimate hardly exceeds what it
            # receives (GCC caps it near 1.5x the incoming rate), so a cheap video or a CPU-
            # starved receiver (two browsers on one machine) reports one below min_video_bps on
            # a perfect link. It counts when we send more video than it allows and the link
            # shows some loss; heavy loss sheds video by itself.
            low_estimate = (
                sample.estimate_bps is not None
                and n_video > 0
                and sample.estimate_bps < cfg.min_video_bps
                and sample.video_bps > 1.5 * sample.estimate_bps
                and measured
                and sample.loss >= cfg.good_loss
            )
            congested = (measured and sample.loss >= cfg.video_loss) or low_estimate
            if starving:
                # One step: chat-only is judged once video stopped (its loss may be video's).
                return self._down(now, State(Mode.AUDIO_ONLY), "bandwidth")
            if congested:
                self._bad += 1
                if self._bad >= cfg.down_samples or sample.loss >= cfg.severe_loss:
                    reason = "loss" if measured and sample.loss >= cfg.video_loss else "bandwidth"
                    return self._down(now, step_down(state, n_video, n_audio), reason)
                return None
        elif state.mode is Mode.AUDIO_ONLY:
            quiet = self._video_quiet_since
            if quiet is None or now - quiet < cfg.settle_s:
                # The first step has not taken effect yet (the publisher has not obeyed the
                # `pause` or the cap), or only just: this loss is its video's, not evidence
                # against audio. One quiet sample is not enough either: on a short uplink an
                # interval whose video packets were all lost looks like a stopped video.
                self._bad = 0
                return None
            # A link that still delivers twice what audio needs carries audio: its loss is a
            # burst (a sender catching up after a stall), not a link too short for voice.
            fits = sample.goodput_bps >= 2 * cfg.min_audio_bps
            congested = measured and audio_loss >= cfg.audio_loss and not fits
            if starving:
                return self._down(now, State(Mode.CHAT_ONLY), "bandwidth")
            if congested:
                self._bad += 1
                if self._bad >= cfg.down_samples or audio_loss >= cfg.severe_loss:
                    return self._down(now, step_down(state, n_video, n_audio), "loss")
                return None
        if measured:
            self._bad = 0  # a sample without enough packets neither confirms nor clears
        # A probe starts on a measured good sample: where media flows, silence (reports lost
        # on a short uplink) is no evidence of a good link. In chat-only nothing flows and
        # nothing can be measured: there the probe itself is the measurement.
        # Right after a proven climb the climb's own sample was that evidence: a receiver
        # that reports audio every 5 s (a browser) would otherwise hold the next level back
        # until its next report.
        evidence = measured or state.mode is Mode.CHAT_ONLY or self._climbing
        good = sample.loss <= cfg.good_loss and evidence and self.may_probe
        upper = step_up(state, n_video, n_audio)
        # After a proven climb (chat-only -> audio-only) the next level is probed once the
        # settle time ends: the link just proved itself, and the dwell exists against flapping
        # after a fall (a fall soon after a climb still doubles it, `_down`).
        dwell = min(self._dwell, cfg.settle_s) if self._climbing else self._dwell
        if good and upper != state and now - self.since >= dwell and now >= self._next_probe:
            self.probe = upper
            self._probe_proven = False
            self._probe_until = now + cfg.probe_s
            # No settle: a probe on a link still short costs audio until it is judged, so the
            # first lossy sample ends it (reports straddling its start count only the losses
            # that must follow it, `Subscription.count_loss_from_now`).
        return None

    def _judge_probe(
        self, now: float, sample: LinkSample, n_video: int, n_audio: int
    ) -> Change | None:
        cfg = self.config
        measured = sample.packets >= cfg.min_packets
        failed = measured and sample.loss > max(cfg.good_loss * 2, cfg.video_loss / 2)
        if measured and not failed and now >= self._probe_until - cfg.probe_s / 2:
            # Proof only from the probe's second half: its first reports are optimistic (a
            # token bucket passes its burst, reports lag): a failure counts at once.
            self._probe_proven = True
        if not failed and now < self._probe_until:
            return None
        # A receiver that reports seldom (a browser's audio: every 5 s) gets 1.5 of its
        # intervals for the evidence, never more than the backoff ceiling.
        wait = max(cfg.probe_s, min(cfg.max_backoff_s, 1.5 * sample.report_pace_s))
        if not failed and not measured and now < self._probe_until + wait:
            # The probe's end is judged on a measured sample: a report of the burst a token
            # bucket passed can arrive late, in the second half, and nothing after it yet
            # (20 kbit/s: an audio probe climbed on it and filled the link; issue 20).
            return None
        if failed or not self._probe_proven or not measured:
            # Climbing needs evidence: a probe that measured nothing (the peer sent or
            # reported nothing, e.g. it paused its own senders) fails like a lossy one.
            self.abort_probe(now)
            return None
        target, self.probe = self.probe, None
        assert target is not None
        self._probe_failures = 0
        self._last_climb = now
        self._climbing = True
        return self._set(now, target, "recovered")

    def hasten_probe(self, now: float) -> None:
        """The other direction of the link just climbed (a probe proved it): the next probe
        here need not wait out its backoff, which counted on a link still short. The dwell
        and the settle time still apply, and a failure backs off as before. Links mostly
        recover both ways at once; the backoff alone made the two directions' video probes
        (one at a time) take up to 2 x `max_backoff_s` after a clearing."""
        self._next_probe = min(self._next_probe, now)

    def abort_probe(self, now: float) -> None:
        """The running probe failed (judged on a sample, or by its owner before one: the
        receiver NACKs its video): the mode stays, the next probe waits twice as long (an
        audio probe, from chat-only, at most `audio_backoff_s`)."""
        if self.probe is None:
            return
        cfg = self.config
        ceiling = cfg.audio_backoff_s if self.state.mode is Mode.CHAT_ONLY else cfg.max_backoff_s
        self.probe = None
        self._climbing = False  # the link failed a probe: the next one needs fresh evidence
        self._probe_failures += 1
        wait = cfg.min_dwell_s * (2 ** min(self._probe_failures, 6))
        self._next_probe = now + min(ceiling, wait)
        self._settle_until = now + cfg.settle_s

    def _down(self, now: float, target: State, reason: str) -> Change | None:
        self._bad = 0
        self._climbing = False
        if now - self._last_climb < 2 * self._dwell + self.config.probe_s:
            # We climbed and fell back soon after: wait longer before the next climb.
            self._dwell = min(self.config.max_backoff_s, self._dwell * 2)
        elif now - self._last_climb > 4 * self.config.max_backoff_s:
            self._dwell = self.config.min_dwell_s
        self._next_probe = 0.0
        self._probe_failures = 0
        return self._set(now, target, reason)

    def _set(self, now: float, target: State, reason: str) -> Change | None:
        previous = self.state
        self.state = target
        self._settle_until = now + self.config.settle_s
        if target.mode is previous.mode:
            return None  # a source shed or restored within the mode: no mode change
        self.time_in_mode[previous.mode] = (
            self.time_in_mode.get(previous.mode, 0.0) + now - self.since
        )
        self.since = now
        return Change(mode=target.mode, previous=previous.mode, reason=reason)

    def elapsed(self, now: float) -> dict[Mode, float]:
        """Seconds spent in each mode so far (the current one included)."""
        out = dict(self.time_in_mode)
        out[self.state.mode] = out.get(self.state.mode, 0.0) + max(0.0, now - self.since)
        return out
