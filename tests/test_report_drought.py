"""A downlink whose subscriber's receiver reports stop while media still flows to it (and other
RTCP from it still arrives: not an outage) is starved: at 20 kbit/s the patient's reports were
lost on an uplink its own media filled, because the `pause` that would have stopped that media
sat behind the downlink's audio (issue 20). LinkFallback on real Publication and Subscription
objects (tests/test_fallback_probe.py's Downlink), time given by the test."""

from __future__ import annotations

from mediaserver.bandwidth import Mode

from .test_fallback_probe import CONFIG, Downlink


def audio_only() -> Downlink:
    link = Downlink()
    for _ in range(3):
        link.second(loss=0.0)  # reports every second: the subscriber's pace is learnt
    for _ in range(4):
        link.second(loss=0.3)
        if link.fallback.down.mode is not Mode.VIDEO:
            break
    assert link.fallback.down.mode is Mode.AUDIO_ONLY, link.modes
    return link


def test_reports_that_stop_while_audio_flows_step_down_to_chat_only() -> None:
    link = audio_only()
    for _ in range(8):
        link.second(loss=0.0, report=())  # audio flows, no report comes back
        if link.fallback.down.mode is Mode.CHAT_ONLY:
            break
    assert link.fallback.down.mode is Mode.CHAT_ONLY, link.modes
    assert link.subs["audio"].paused  # the downlink's audio stops: the link is free again
    assert CONFIG.report_gap_s == 4.0


def test_a_subscriber_that_reports_audio_every_5_s_is_not_starved() -> None:
    """A browser reports received audio about every 5 s (randomized, 2.5-7.5 s), video about
    every second: each stream's own pace, not the default gap, sets what a drought is."""
    link = Downlink()
    for i in range(15):  # a good link: the paces are learnt
        link.second(loss=0.0, report=("audio", "video") if i % 5 == 4 else ("video",))
    for _ in range(4):  # the video's reports show loss: its video is shed
        link.second(loss=0.3, report=("video",))
        if link.fallback.down.mode is not Mode.VIDEO:
            break
    assert link.fallback.down.mode is Mode.AUDIO_ONLY, link.modes
    for i in range(21):  # 21 s of a good link in audio-only, an audio report every 7 s
        link.second(loss=0.0, report=("audio",) if i % 7 == 6 else ())
    assert link.fallback.down.mode is Mode.AUDIO_ONLY, link.modes


def test_an_outage_is_not_a_drought() -> None:
    """No RTCP at all: the link is stalled and holds its mode; its return starts afresh."""
    link = audio_only()
    link.now += 6.0  # 6 s with nothing from the subscriber at all
    link.fallback.tick(link.now, [], list(link.subs.values()))
    assert link.fallback.down.mode is Mode.AUDIO_ONLY
    link.second(loss=0.0)  # back, with its reports
    link.second(loss=0.0)
    assert link.fallback.down.mode is Mode.AUDIO_ONLY, link.modes


def test_a_subscriber_that_reports_audio_every_5_s_climbs_back_from_chat_only() -> None:
    """Chromium reports received audio about every 5 s: a probe of audio alone (chat-only ->
    audio-only) waits for its evidence one and a half of the stream's own intervals, not
    `probe_s`, or an audio probe whose report falls after it ends unmeasured, every time
    (issue 20's scorecard: Chromium's downlink did not climb back in 20 s). Each phase of the
    reports against the probes climbs back to video."""
    for phase in range(5):
        link = Downlink()
        for i in range(15):  # a good link: audio reported every 5 s, video every second
            link.second(loss=0.0, report=("audio", "video") if i % 5 == 4 else ("video",))
        for i in range(20):  # the link fails: video shed, then audio lost
            link.second(loss=0.9, report=("audio", "video") if i % 5 == 4 else ("video",))
            if link.fallback.down.mode is Mode.CHAT_ONLY:
                break
        assert link.fallback.down.mode is Mode.CHAT_ONLY, link.modes
        assert link.subs["audio"].paused
        for i in range(30):  # the link is good again; audio still reported every 5 s
            report = ("audio", "video") if (i + phase) % 5 == 4 else ("video",)
            link.second(loss=0.0, report=report)
        assert [m for _, m, _ in link.modes[-2:]] == ["audio-only", "video"], (phase, link.modes)
        assert link.fallback.down.mode is Mode.VIDEO


def test_reports_of_another_stream_still_arriving_are_no_drought() -> None:
    """Chromium reports received audio with its video's reports while video flows (about every
    second), alone every 2.5-7.5 s; it goes on reporting the paused video for about 8 s. At 150
    kbit/s that audio's first 5 s without a report counted as a drought (3 learnt intervals)
    and took the downlink to chat-only (benchmarks.fallback, 2026-12-06): reports of another
    stream prove an uplink that carries them."""
    link = Downlink()
    for _ in range(5):
        link.second(loss=0.0)  # both streams reported every second: a 1 s pace is learnt
    for _ in range(4):
        link.second(loss=0.3)
        if link.fallback.down.mode is not Mode.VIDEO:
            break
    assert link.fallback.down.mode is Mode.AUDIO_ONLY, link.modes
    for i in range(8):  # the paused video still reported every second, the audio every 6 s
        link.second(loss=0.0, report=("audio", "video") if i % 6 == 5 else ("video",))
    assert "chat-only" not in [m for _, m, _ in link.modes], link.modes
