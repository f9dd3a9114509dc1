"""Manifest: what a recording holds, in plain JSON (no patient content: ids, times, files).

Per track: its file, codec, clock rate and the mapping from its RTP time to wall-clock time
(`first_rtp_timestamp` arrived at `first_wall_time`: wall = first_wall_time + (rtp -
first_rtp_timestamp, unwrapped) / clock_rate; the file's timestamps start at that frame).
Written atomically (a new file renamed over the old) at start, as tracks start, and at stop.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

MANIFEST = "manifest.json"
EVENTS = "events.jsonl.sealed"


@dataclass(slots=True, kw_only=True)
class TrackEntry:
    track_id: str
    participant_id: str
    kind: str
    source: str
    codec: str
    clock_rate: int
    file: str
    first_rtp_timestamp: int | None = None
    first_wall_time: float | None = None
    frames: int = 0
    frames_lost: int = 0
    keyframe_requests: int = 0
    bytes: int = 0


@dataclass(slots=True, kw_only=True)
class Manifest:
    recording_id: str
    room_id: str
    key_id: str
    started_at: float
    state: str = "recording"  # recording | stopped (a crash leaves "recording")
    stopped_at: float | None = None
    stop_reason: str | None = None
    error: str | None = None
    events_file: str = EVENTS
    dropped_packets: int = 0
    tracks: list[TrackEntry] = field(default_factory=list)
    version: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, directory: str) -> None:
        path = os.path.join(directory, MANIFEST)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.as_dict(), f, indent=1)
        os.replace(tmp, path)


def read_manifest(directory: str) -> dict[str, Any]:
    with open(os.path.join(directory, MANIFEST), encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError("manifest is not an object")
    return data
