"""The BandwidthController state machine and source priorities (pure logic, no I/O)."""

from __future__ import annotations

import itertools

import pytest

from mediaserver.bandwidth import (
    BandwidthController,
    FallbackConfig,
    LinkSample,
    Mode,
    State,
    allowed_sources,
    step_down,
    step_up,
)

CFG = FallbackConfig()
GOOD = LinkSample(loss=0.0, audio_loss=0.0, packets=100, goodput_bps=600_000)
CONGESTED = LinkSample(loss=0.7, audio_loss=0.7, packets=100, goodput_bps=150_000)
LOSSY = LinkSample(loss=0.4, audio_loss=0.4, packets=100, goodput_bps=39_000)
STARVED = LinkSample(loss=0.9, audio_loss=0.9, packets=100, goodput_bps=15_000)
STALLED = LinkSample(stalled=True)


def run(
    ctl: BandwidthController,
    samples: list[LinkSample],
    *,
    t0: float = 0.0,
    dt: float = 1.0,
    n_video: int = 1,
    n_audio: int = 1,
) -> list[tuple[float, Mode, str]]:
    changes = []
    t = t0
    for sample in samples:
        t += dt
        change = ctl.update(t, sample, n_video, n_audio)
        if change is not None:
            changes.append((t, change.mode, change.reason))
    return changes


def started() -> BandwidthController:
    ctl = BandwidthController(CFG)
    ctl.start(0.0)
    run(ctl, [GOOD] * 3)  # past the initial settle time
    return ctl


def to_probe(ctl: BandwidthController, t: float = 4.0) -> float:
    """Congestion sheds video, then good samples until a probe starts; returns its time."""
    run(ctl, [CONGESTED], t0=t - 1)
    while ctl.probe is None:
        t += 1
        ctl.update(t, GOOD, 1, 1)
    return t


def test_congestion_sheds_video_quickly_and_not_on_one_blip() -> None:
    ctl = started()
    blip = LinkSample(loss=0.15, audio_loss=0.15, packets=100, goodput_bps=500_000)
    assert run(ctl, [blip, GOOD, GOOD], t0=3) == []
    assert ctl.mode is Mode.VIDEO
    changes = run(ctl, [CONGESTED], t0=6)  # severe loss: at once
    assert changes == [(7.0, Mode.AUDIO_ONLY, "loss")]


def test_starved_link_goes_to_audio_only_at_once_then_chat_only() -> None:
    ctl = started()
    # One step at a time: from video, a starved link could be the video's own doing.
    assert run(ctl, [STARVED], t0=3) == [(4.0, Mode.AUDIO_ONLY, "bandwidth")]
    changes = run(ctl, [STARVED] * 3, t0=4)
    assert [c[1:] for c in changes] == [(Mode.CHAT_ONLY, "bandwidth")]


def test_chat_only_waits_for_evidence_that_video_stopped() -> None:
    ctl = started()
    run(ctl, [CONGESTED], t0=3)
    assert ctl.mode is Mode.AUDIO_ONLY
    # The publisher has not obeyed the `pause` yet: its video still fills the link, and the
    # audio loss is that video's doing, not a reason to drop audio too.
    still_video = LinkSample(
        loss=0.6, audio_loss=0.6, packets=100, goodput_bps=60_000, video_bps=250_000
    )
    assert run(ctl, [still_video] * 8, t0=4) == []
    assert ctl.mode is Mode.AUDIO_ONLY
    # Video under the cap (stopped, or all its packets lost): not judged until it stayed so
    # for a settle time; then audio still losing means the link is too short for audio.
    stopped = LinkSample(loss=0.6, audio_loss=0.6, packets=100, goodput_bps=16_000, video_bps=0)
    assert run(ctl, [stopped], t0=12) == []
    assert [c[1] for c in run(ctl, [stopped] * 2, t0=13)] == [Mode.CHAT_ONLY]


def test_a_burst_on_a_link_that_carries_audio_keeps_audio_only() -> None:
    ctl = started()
    run(ctl, [CONGESTED], t0=3)
    # 150 kbit/s: the sender's audio comes in a burst (it caught up after a stall): 39% lost,
    # but the link delivered 106 kbit/s, far more than audio needs.
    burst = LinkSample(loss=0.39, audio_loss=0.39, packets=139, goodput_bps=106_000)
    assert run(ctl, [burst, GOOD, burst, burst], t0=5) == []
    assert ctl.mode is Mode.AUDIO_ONLY
    # 40% random loss on audio alone: 39 kbit/s delivered, voice does not get through.
    lossy = LinkSample(loss=0.4, audio_loss=0.4, packets=100, goodput_bps=39_000)
    assert [c[1] for c in run(ctl, [lossy] * 2, t0=9)] == [Mode.CHAT_ONLY]


def test_the_aftermath_of_an_outage_is_not_congestion() -> None:
    ctl = started()
    # The link returns at t=9: the first samples carry the outage's gap, the burst of stale
    # and retransmitted packets and the reports that straddle the silence.
    assert run(ctl, [STALLED] * 5 + [LOSSY, LOSSY, GOOD, GOOD], t0=3) == []
    assert ctl.mode is Mode.VIDEO


def test_a_quiet_sender_with_some_loss_is_not_a_starved_link() -> None:
    ctl = started()
    # Little delivered because little was sent (the publisher's video just paused).
    quiet = LinkSample(loss=0.13, audio_loss=0.13, packets=40, goodput_bps=15_000)
    assert [c[1] for c in run(ctl, [quiet, quiet], t0=3)] == [Mode.AUDIO_ONLY]


def test_random_loss_goes_to_audio_only_then_chat_only() -> None:
    ctl = started()
    changes = run(ctl, [LOSSY] * 5, t0=3)
    assert [c[1] for c in changes] == [Mode.AUDIO_ONLY, Mode.CHAT_ONLY]
    assert changes[-1][0] - 3 <= 4  # within the 5 s the issue asks for, at 1 sample/s


def test_recovery_probes_then_climbs_within_15_s() -> None:
    ctl = started()
    run(ctl, [CONGESTED], t0=3)
    assert ctl.mode is Mode.AUDIO_ONLY
    t = 4.0
    probed = False
    climbed_at = None
    for _ in range(20):
        t += 1
        change = ctl.update(t, GOOD, 1, 1)
        probed = probed or ctl.probe is not None
        if change is not None:
            climbed_at = t
            assert change.mode is Mode.VIDEO and change.reason == "recovered"
            break
    assert probed and climbed_at is not None and climbed_at - 4 <= 15


def test_climbing_from_chat_only_takes_both_levels_without_a_second_dwell() -> None:
    ctl = started()
    run(ctl, [STARVED] * 4, t0=3)
    assert ctl.mode is Mode.CHAT_ONLY
    cleared = 7.0 + CFG.min_dwell_s  # the link is good again once the dwell is over
    changes = run(ctl, [GOOD] * 20, t0=cleared)
    assert [c[1] for c in changes] == [Mode.AUDIO_ONLY, Mode.VIDEO]
    # One dwell, then a probe per level: within the 15 s of a restoration.
    assert changes[-1][0] - cleared <= 2 * (CFG.probe_s + 1) + CFG.settle_s + 2


def test_a_probe_on_a_link_still_short_ends_at_its_first_lossy_sample() -> None:
    ctl = started()
    t = to_probe(ctl)
    # Each second of a probe on a short link costs audio: the first bad sample ends it.
    assert ctl.update(t + 1, LOSSY, 1, 1) is None
    assert ctl.probe is None and ctl.mode is Mode.AUDIO_ONLY


def test_a_probe_is_proven_only_in_its_second_half() -> None:
    ctl = started()
    t = to_probe(ctl)
    # A good first report (a token bucket's burst passes), then no report at all.
    assert ctl.update(t + 0.5, GOOD, 1, 1) is None
    quiet = LinkSample(packets=0)
    assert ctl.update(t + 1.6, quiet, 1, 1) is None
    assert ctl.update(t + CFG.probe_s + 0.1, quiet, 1, 1) is None
    assert ctl.update(t + 2 * CFG.probe_s + 0.1, quiet, 1, 1) is None
    assert ctl.probe is None and ctl.mode is Mode.AUDIO_ONLY


def test_a_probe_climbs_only_on_a_measured_sample_at_its_end() -> None:
    ctl = started()
    t = to_probe(ctl)
    # The report of the burst a token bucket passed arrives late, in the second half; at the
    # probe's end no fresh report has come yet: no climb on that.
    assert ctl.update(t + 1.6, GOOD, 1, 1) is None
    quiet = LinkSample(packets=0)
    assert ctl.update(t + CFG.probe_s + 0.1, quiet, 1, 1) is None
    assert ctl.probe is not None and ctl.mode is Mode.AUDIO_ONLY  # still waiting for one
    assert ctl.update(t + CFG.probe_s + 0.6, LOSSY, 1, 1) is None  # it shows the link short
    assert ctl.probe is None and ctl.mode is Mode.AUDIO_ONLY
    # No measured sample at all after the probe's time: it fails after another probe_s.
    while ctl.probe is None:
        t += 1
        ctl.update(t, GOOD, 1, 1)
    assert ctl.update(t + 1.6, GOOD, 1, 1) is None
    assert ctl.update(t + CFG.probe_s + 0.1, quiet, 1, 1) is None
    assert ctl.update(t + 2 * CFG.probe_s + 0.1, quiet, 1, 1) is None
    assert ctl.probe is None and ctl.mode is Mode.AUDIO_ONLY


def test_no_probe_on_silence_where_media_flows() -> None:
    ctl = started()
    run(ctl, [CONGESTED], t0=3)
    # Audio-only on a short uplink: the receiver's reports are lost, nothing is measured.
    assert run(ctl, [LinkSample(packets=0)] * 20, t0=4) == []
    assert ctl.probe is None
    # In chat-only nothing flows: there the probe is the only measurement.
    ctl = started()
    run(ctl, [STARVED] * 4, t0=3)
    assert ctl.mode is Mode.CHAT_ONLY
    t = 7.0
    while ctl.probe is None and t < 30:
        t += 1
        ctl.update(t, LinkSample(packets=0), 1, 1)
    assert ctl.probe is not None


def test_no_probe_while_the_other_direction_probes() -> None:
    ctl = started()
    run(ctl, [CONGESTED], t0=3)
    ctl.may_probe = False
    run(ctl, [GOOD] * 20, t0=4)
    assert ctl.probe is None
    ctl.may_probe = True
    run(ctl, [GOOD], t0=24)
    assert ctl.probe is not None


def test_failed_probe_backs_off_and_keeps_the_mode() -> None:
    ctl = started()
    run(ctl, [CONGESTED], t0=3)
    t = 4.0
    while ctl.probe is None:
        t += 1
        assert ctl.update(t, GOOD, 1, 1) is None
    probe_started = t
    t += 2
    assert ctl.update(t, CONGESTED, 1, 1) is None  # the probe fails: no mode change
    assert ctl.probe is None and ctl.mode is Mode.AUDIO_ONLY
    while ctl.probe is None:
        t += 1
        ctl.update(t, GOOD, 1, 1)
    assert t - probe_started >= 2 * CFG.min_dwell_s  # the next probe waited longer


def test_oscillating_link_does_not_flap() -> None:
    ctl = started()
    samples = ([CONGESTED] * 2 + [GOOD] * 2) * 15  # a 4 s period around the threshold, 60 s
    changes = run(ctl, samples, t0=3)
    assert len(changes) <= 3, changes


def test_stalled_link_changes_nothing_and_the_return_is_ignored() -> None:
    ctl = started()
    after_outage = LinkSample(loss=0.95, audio_loss=0.95, packets=300, goodput_bps=60_000)
    assert run(ctl, [STALLED] * 5 + [after_outage, GOOD, GOOD], t0=3) == []
    assert ctl.mode is Mode.VIDEO


def remb(estimate: int, video: int, loss: float) -> LinkSample:
    sent = video + 40_000
    return LinkSample(
        loss=loss,
        audio_loss=loss,
        packets=100,
        goodput_bps=int(sent * (1 - loss)),
        estimate_bps=estimate,
        sent_bps=sent,
        video_bps=video,
    )


def test_low_remb_estimate_sheds_video_when_the_link_confirms_it() -> None:
    ctl = started()
    # Sending little video (the publisher's uplink is the limit): the estimate says nothing.
    assert run(ctl, [remb(60_000, 50_000, 0.05)] * 3, t0=3) == []
    # Sending more video than the estimate, on a clean link: what a CPU-starved browser or a
    # cheap stream reports (GCC hardly estimates above what it receives). Not congestion.
    assert run(ctl, [remb(60_000, 300_000, 0.0)] * 4, t0=6) == []
    assert ctl.mode is Mode.VIDEO
    # The same with some loss (under `video_loss`, which would shed video by itself): shed.
    low = remb(60_000, 300_000, 0.05)
    assert run(ctl, [low, low], t0=10) == [(12.0, Mode.AUDIO_ONLY, "bandwidth")]


def test_a_sample_without_enough_packets_neither_confirms_nor_clears() -> None:
    ctl = started()
    moderate = LinkSample(loss=0.15, audio_loss=0.15, packets=100, goodput_bps=500_000)
    empty = LinkSample(packets=2, goodput_bps=500_000)
    assert run(ctl, [moderate, empty], t0=3) == []
    assert run(ctl, [moderate], t0=5) == [(6.0, Mode.AUDIO_ONLY, "loss")]


def test_a_probe_that_measured_nothing_does_not_climb() -> None:
    ctl = started()
    run(ctl, [CONGESTED], t0=3)
    assert ctl.mode is Mode.AUDIO_ONLY
    # The peer sends nothing (it paused its own senders): no evidence either way.
    silent = LinkSample(packets=0)
    t = 4.0
    probed = 0
    for _ in range(30):
        t += 0.5
        assert ctl.update(t, silent, 1, 1) is None
        probed += ctl.probe is not None
    assert probed == 0 and ctl.mode is Mode.AUDIO_ONLY  # silence starts no probe either
    # Once packets flow and they are good, a probe climbs.
    for _ in range(40):
        t += 0.5
        if ctl.update(t, GOOD, 1, 1) is not None:
            break
    assert ctl.mode is Mode.VIDEO


def test_due_asks_for_a_sample_when_the_settle_time_ends() -> None:
    ctl = started()
    assert ctl.due() is None
    run(ctl, [LOSSY], t0=3)  # severe: audio-only at 4.0
    assert ctl.mode is Mode.AUDIO_ONLY and ctl.due() == 4.0 + CFG.settle_s
    # Sampled right then (not a report interval later): chat-only at once.
    change = ctl.update(4.0 + CFG.settle_s, LOSSY, 1, 1)
    assert change is not None and change.mode is Mode.CHAT_ONLY


def test_disabled_controller_never_changes() -> None:
    ctl = BandwidthController(FallbackConfig(enabled=False))
    assert run(ctl, [STARVED] * 5) == []


def test_webcam_video_stops_before_the_exam_camera() -> None:
    sources = [("video", "camera"), ("audio", "microphone"), ("video", "exam-camera")]
    state = step_down(State(), n_video=2, n_audio=1)
    assert state.mode is Mode.VIDEO and state.video_shed == 1
    assert allowed_sources(state, sources, CFG) == [False, True, True]
    state = step_down(state, n_video=2, n_audio=1)
    assert state.mode is Mode.AUDIO_ONLY
    assert allowed_sources(state, sources, CFG) == [False, True, False]


def test_stethoscope_has_priority_in_audio_only() -> None:
    sources = [("audio", "microphone"), ("audio", "stethoscope"), ("video", "camera")]
    state = State(Mode.AUDIO_ONLY)
    assert allowed_sources(state, sources, CFG) == [True, True, False]
    state = step_down(state, n_video=1, n_audio=2)
    assert state == State(Mode.AUDIO_ONLY, audio_shed=1)
    assert allowed_sources(state, sources, CFG) == [False, True, False]
    assert step_down(state, 1, 2) == State(Mode.CHAT_ONLY)
    assert allowed_sources(State(Mode.CHAT_ONLY), sources, CFG) == [False, False, False]
    # climbing back restores the stethoscope first, then the microphone, then video
    up = step_up(State(Mode.CHAT_ONLY), 1, 2)
    assert allowed_sources(up, sources, CFG) == [False, True, False]
    assert step_up(up, 1, 2) == State(Mode.AUDIO_ONLY)
    assert step_up(State(Mode.AUDIO_ONLY), 1, 2) == State(Mode.VIDEO)


def test_time_in_mode_is_accounted() -> None:
    ctl = started()
    run(ctl, [CONGESTED], t0=3)
    spent = ctl.elapsed(10.0)
    assert spent[Mode.VIDEO] == pytest.approx(4.0)
    assert spent[Mode.AUDIO_ONLY] == pytest.approx(6.0)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        FallbackConfig(good_loss=0.2, video_loss=0.1)
    with pytest.raises(ValueError):
        FallbackConfig(down_samples=0)


def test_audio_probes_from_chat_only_back_off_less_than_video_probes() -> None:
    """A probe from chat-only costs one audio stream: however often it failed, the next one
    comes within `audio_backoff_s`, so a link that returns is found in time for video within
    15 s (two probes); video probes back off to `max_backoff_s`."""
    ctl = started()
    run(ctl, [STARVED] * 4, t0=3)
    assert ctl.mode is Mode.CHAT_ONLY
    t, starts = 7.0, list[float]()
    while len(starts) < 5:
        t += 0.5
        ctl.update(t, LinkSample(packets=0), 1, 1)
        if ctl.probe is not None:
            starts.append(t)
            t += 1.0
            ctl.update(t, STARVED, 1, 1)  # the link is still short: the probe fails
            assert ctl.probe is None and ctl.mode is Mode.CHAT_ONLY
    waits = [b - a for a, b in itertools.pairwise(starts)]
    assert max(waits) <= 1.0 + CFG.audio_backoff_s + 0.5, waits
    assert CFG.audio_backoff_s < CFG.max_backoff_s


def test_after_a_climb_the_next_level_is_probed_without_waiting_for_a_report() -> None:
    """A browser reports received audio every 5 s: after the climb to audio-only (proven by a
    report), the video probe starts once the settle time ends, not at the next report. After
    a failed probe, silence is no evidence again."""
    ctl = started()
    run(ctl, [STARVED] * 4, t0=3)
    assert ctl.mode is Mode.CHAT_ONLY
    t = 7.0
    while ctl.probe is None:
        t += 0.5
        ctl.update(t, LinkSample(packets=0), 1, 1)
    t += CFG.probe_s
    change = ctl.update(t, GOOD, 1, 1)  # the audio's report, at the probe's end
    assert change is not None and change.mode is Mode.AUDIO_ONLY
    quiet = LinkSample(packets=0)  # no report in the next seconds
    run(ctl, [quiet] * 4, t0=t, dt=0.5)
    assert ctl.probe is not None and ctl.probe.mode is Mode.VIDEO
    ctl.abort_probe(t + 2.5)  # the video probe failed: silence proves nothing now
    run(ctl, [quiet] * 40, t0=t + 2.5, dt=0.5)
    assert ctl.probe is None and ctl.mode is Mode.AUDIO_ONLY


def test_a_climb_in_the_other_direction_hastens_the_next_probe() -> None:
    """After failed probes the next one waits up to `max_backoff_s`; once the other direction
    of the link climbed (`LinkFallback` calls `hasten_probe`), it may start at the next good
    sample: the two directions' video probes, one at a time, took up to twice the backoff
    after a clearing (issue 20: video within 15 s)."""
    ctl = started()
    run(ctl, [CONGESTED], t0=3)
    t = 4.0
    while ctl.probe is None:
        t += 1
        ctl.update(t, GOOD, 1, 1)
    t += 1
    ctl.update(t, CONGESTED, 1, 1)  # the probe fails: the next waits 10 s
    assert ctl.probe is None
    t += CFG.settle_s + 0.5
    ctl.update(t, GOOD, 1, 1)
    assert ctl.probe is None  # still backing off
    ctl.hasten_probe(t)
    t += 0.5
    ctl.update(t, GOOD, 1, 1)
    assert ctl.probe is not None and ctl.probe.mode is Mode.VIDEO
