"""The quality signal: grading (pure) and the `quality` messages of a real call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiortc.mediastreams import AudioStreamTrack

from mediaserver.quality import Quality, QualitySignal, grade
from signaling.client import ConsultClient

from .conftest import Server
from .test_e2e_media import SyntheticVideo, admitted


def graded(**change: Any) -> Quality:
    """The grade of a clean link (20 ms RTT, 2 ms jitter, video) with `change` applied."""
    link: dict[str, Any] = {"loss": 0.0, "rtt_ms": 20.0, "jitter_ms": 2.0, "mode": "video"}
    return grade(**{**link, **change})


def test_grades_from_loss_rtt_jitter_and_the_rung() -> None:
    assert graded() is Quality.EXCELLENT
    assert graded(loss=0.03) is Quality.GOOD
    assert graded(rtt_ms=250.0) is Quality.GOOD
    assert graded(layer_drop=1) is Quality.GOOD  # a lower simulcast layer
    assert graded(jitter_ms=150.0) is Quality.POOR
    assert graded(loss=0.2) is Quality.POOR
    assert graded(mode="audio-only") is Quality.POOR
    assert graded(mode="chat-only") is Quality.LOST
    assert graded(stalled=True) is Quality.LOST
    assert graded(rtt_ms=None) is Quality.EXCELLENT  # no RTT measured yet


def test_reported_on_change_once_it_held_two_intervals() -> None:
    signal = QualitySignal()
    assert signal.update("downlink", Quality.EXCELLENT) is Quality.EXCELLENT  # the first
    assert signal.update("downlink", Quality.EXCELLENT) is None  # no change: nothing
    assert signal.update("downlink", Quality.POOR) is None  # one interval: not yet
    assert signal.update("downlink", Quality.EXCELLENT) is None  # it did not hold
    assert signal.update("downlink", Quality.POOR) is None
    assert signal.update("downlink", Quality.POOR) is Quality.POOR  # held: reported once
    assert signal.update("downlink", Quality.POOR) is None
    assert signal.update("downlink", Quality.LOST) is Quality.LOST  # lost: at once
    assert signal.update("uplink", Quality.GOOD) is Quality.GOOD  # per direction


async def test_a_call_reports_quality_per_direction(
    server: Server, clients: Callable[[Server], ConsultClient]
) -> None:
    doctor, patient = await admitted(server, clients)
    await doctor.publish(SyntheticVideo(40), AudioStreamTrack())
    await patient.publish(SyntheticVideo(200), AudioStreamTrack())
    want = {
        (pid, direction)
        for pid in (doctor.participant_id, patient.participant_id)
        for direction in ("uplink", "downlink")
    }
    for _ in range(100):  # each direction of each participant, to everyone in the room
        if want <= set(doctor.quality) and want <= set(patient.quality):
            break
        await asyncio.sleep(0.1)
    assert want <= set(doctor.quality), doctor.quality
    assert doctor.quality == patient.quality
    # a clean loopback call: nothing poor or lost
    assert set(doctor.quality.values()) <= {"excellent", "good"}, doctor.quality
