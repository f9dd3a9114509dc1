"""Value objects and enums shared by the media plane and its users (no patient data here)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .devices import CaptureSettings


class CloseReason(enum.Enum):
    """Why a node object was closed; sent to clients as its `value`."""

    LEFT = "left"
    KICKED = "kicked"
    DENIED = "denied"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    FAILED = "failed"
    ENDED = "ended"
    REPLACED = "replaced"


class Role(enum.Enum):
    DOCTOR = "doctor"
    PATIENT = "patient"
    DEVICE = "device"
    OBSERVER = "observer"


@dataclass(frozen=True, slots=True)
class TrackMeta:
    """What a publisher says about a track: its kind and its source label.

    `source` is a short machine label (`camera`, `microphone`, `stethoscope`, `exam-camera`,
    `screen`...), never free text typed by a person.
    """

    kind: str
    source: str
    channels: int = 1  # audio: 2 for a stereo device (a two-headed stethoscope)
    capture: CaptureSettings | None = None  # audio: what the publisher's capture does (devices)

    @classmethod
    def default(cls, kind: str) -> TrackMeta:
        return cls(kind=kind, source="microphone" if kind == "audio" else "camera")


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """A publication as the control plane sees it."""

    track_id: str
    participant_id: str
    kind: str
    source: str
    codec: str | None
    mid: str


@dataclass(slots=True)
class DirectionStats:
    """Link quality in one direction, from RTCP and the server's own counters."""

    loss: float = 0.0
    jitter_ms: float = 0.0
    rtt_ms: float | None = None
    bitrate_bps: int = 0
    estimated_bps: int | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "loss": round(self.loss, 4),
            "jitter_ms": round(self.jitter_ms, 2),
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 1),
            "bitrate_bps": self.bitrate_bps,
            "estimated_bps": self.estimated_bps,
        }


@dataclass(slots=True)
class LinkStats:
    """Per-participant link state: uplink is what it sends us, downlink what we send it."""

    uplink: DirectionStats = field(default_factory=DirectionStats)
    downlink: DirectionStats = field(default_factory=DirectionStats)

    def as_dict(self) -> dict[str, dict[str, float | int | None]]:
        return {"uplink": self.uplink.as_dict(), "downlink": self.downlink.as_dict()}


@dataclass(slots=True)
class NodeCounters:
    """Monotonic counters of a node, read by the metrics collector at scrape time.

    The media plane increments plain integers; nothing on the packet path touches
    prometheus-client.
    """

    packets_in: int = 0
    bytes_in: int = 0
    packets_forwarded: int = 0
    bytes_forwarded: int = 0
    nacks_received: int = 0
    retransmissions: int = 0
    nack_misses: int = 0
    plis_received: int = 0
    plis_sent: int = 0
    padding_dropped: int = 0
    # Bandwidth fallback: "direction:mode" -> transitions into it / seconds spent in it
    # (of participants that changed mode or left; mediaserver/fallback.py).
    mode_transitions: dict[str, int] = field(default_factory=dict)
    mode_seconds: dict[str, float] = field(default_factory=dict)
