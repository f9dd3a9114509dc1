"""Quality: one word per direction of a participant's link, for people (pure, no I/O).

`excellent`, `good`, `poor`, `lost`, graded once per RTCP interval from what the node
measures (loss, round-trip time, jitter: `LinkStats`) and the rung the fallback holds the
link on (mode, and for the downlink the simulcast layers below the best). A change is
reported once it held two intervals in a row (one noisy report does not flip it); `lost`
is reported at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Quality(enum.Enum):
    EXCELLENT = "excellent"
    GOOD = "good"
    POOR = "poor"
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class QualityThresholds:
    """At or above `good_*`: no better than good; at or above `poor_*`: poor."""

    good_loss: float = 0.02
    poor_loss: float = 0.10
    good_rtt_ms: float = 200.0
    poor_rtt_ms: float = 400.0
    good_jitter_ms: float = 30.0
    poor_jitter_ms: float = 100.0


def grade(
    *,
    loss: float,
    rtt_ms: float | None,
    jitter_ms: float,
    mode: str,
    layer_drop: int = 0,
    stalled: bool = False,
    limits: QualityThresholds = QualityThresholds(),
) -> Quality:
    """One interval's quality of one direction."""
    if stalled or mode == "chat-only":
        return Quality.LOST
    rtt = rtt_ms or 0.0
    if (
        mode == "audio-only"
        or loss >= limits.poor_loss
        or rtt >= limits.poor_rtt_ms
        or jitter_ms >= limits.poor_jitter_ms
    ):
        return Quality.POOR
    if (
        layer_drop > 0
        or loss >= limits.good_loss
        or rtt >= limits.good_rtt_ms
        or jitter_ms >= limits.good_jitter_ms
    ):
        return Quality.GOOD
    return Quality.EXCELLENT


class QualitySignal:
    """The reported quality per direction; `update` returns a change to report, or None."""

    def __init__(self) -> None:
        self.reported: dict[str, Quality] = {}
        self._candidate: dict[str, Quality] = {}

    def update(self, direction: str, quality: Quality) -> Quality | None:
        current = self.reported.get(direction)
        if quality is current:
            self._candidate.pop(direction, None)
            return None
        if (
            current is not None
            and quality is not Quality.LOST
            and self._candidate.get(direction) is not quality
        ):
            self._candidate[direction] = quality  # the next interval confirms it
            return None
        self._candidate.pop(direction, None)
        self.reported[direction] = quality
        return quality
