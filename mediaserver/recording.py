"""Recording in the media plane: the interface a recorder implements, and the room's tap.

A recorder (the `recorder` package implements one) is another subscriber of a room's
publications, with no socket and no SRTP: each publication hands a `TrackSink` the same
decrypted RTP bytes it fans out to its subscriptions (`Publication.sinks`). The sink must
only copy or queue them (no I/O, no await): the recorder writes in its own thread.

The media plane does not import the recorder: `RecordingConfig.backend` names its factory
("module:function"), loaded when a room first records (in a worker process: in that worker).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .api import RecordingError
from .config import RecordingConfig
from .events import TrackInfo

if TYPE_CHECKING:
    from .publication import Publication
    from .room import Room

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingRequest:
    room_id: str
    recording_id: str
    config: RecordingConfig
    audit: tuple[dict[str, Any], ...] = ()  # consent steps before the start


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedTrack:
    track_id: str
    participant_id: str
    kind: str
    source: str
    codec: str
    clock_rate: int
    channels: int


class TrackSink(Protocol):
    def on_rtp(self, data: bytes, arrival: float) -> None:
        """A decrypted RTP packet of the track (arrival: time.monotonic()); never blocks."""


class Recorder(Protocol):
    """One recording of one room (the recorder package's `Recording`)."""

    @property
    def key_id(self) -> str:
        """The id of the key its files are sealed with."""

    def add_track(self, track: RecordedTrack, request_keyframe: Callable[[], object]) -> TrackSink:
        """A track to record; ValueError for one it cannot record (its codec).
        `request_keyframe` asks the publisher for one (throttled); any thread may call it."""

    def note(self, kind: str, data: dict[str, Any]) -> None:
        """A timestamped line of the recording's event log (chat, mode, consent)."""

    def stop(self, reason: str) -> None:
        """Write what is queued, close every file (blocking: run in a thread)."""

    def counters(self) -> dict[str, int]:
        """bytes, tracks, dropped packets, errors (for metrics)."""


# The factory: (request, on_error) -> Recorder. on_error is called from any thread, once, with
# a message naming what failed (no patient data); the recording is then stopped.
RecorderFactory = Callable[[RecordingRequest, Callable[[str], None]], Recorder]


def load_factory(backend: str) -> RecorderFactory:
    module, _, name = backend.partition(":")
    try:
        factory: RecorderFactory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise RecordingError(f"no recorder backend {backend}") from exc
    return factory


class RoomRecording:
    """The tap of one recording on one room: a sink on every publication (present and to
    come) whose source is recorded, removed on stop."""

    def __init__(
        self,
        room: Room,
        recording_id: str,
        recorder: Recorder,
        *,
        sources: frozenset[str] | None,
        on_error: Callable[[str], None],
    ) -> None:
        self.room = room
        self.recording_id = recording_id
        self.recorder = recorder
        self.sources = sources
        self._on_error = on_error
        self._sinks: dict[str, tuple[Publication, TrackSink]] = {}
        self.stopped = False

    def start(self) -> None:
        """Tap every publication now in the room (ValueError: one cannot be recorded)."""
        self.room.on("track-published", self._on_track)
        for participant in list(self.room.participants.values()):
            for pub in list(participant.publications.values()):
                self._tap(pub)

    def _on_track(self, info: TrackInfo) -> None:
        owner = self.room.participants.get(info.participant_id)
        pub = owner.publications.get(info.track_id) if owner is not None else None
        if pub is not None and not self.stopped:
            try:
                self._tap(pub)
            except ValueError as exc:
                self._on_error(str(exc))

    def _tap(self, pub: Publication) -> None:
        if pub.track_id in self._sinks or pub.closed:
            return
        if self.sources is not None and pub.source not in self.sources:
            return
        track = RecordedTrack(
            track_id=pub.track_id,
            participant_id=pub.participant_id,
            kind=pub.kind,
            source=pub.source,
            codec=pub.codec.name,
            clock_rate=pub.codec.clock_rate,
            channels=pub.codec.channels or 1,
        )
        loop = asyncio.get_running_loop()

        def request_keyframe() -> None:  # from the recorder's thread: RTCP goes out on the loop
            loop.call_soon_threadsafe(pub.request_keyframe)

        sink = self.recorder.add_track(track, request_keyframe)
        pub.add_sink(sink)
        self._sinks[pub.track_id] = (pub, sink)
        pub.request_keyframe(force=True)

    def detach(self) -> None:
        """No packet reaches the recorder from now on (synchronous: a stop takes effect now)."""
        if self.stopped:
            return
        self.stopped = True
        self.room.remove_listener("track-published", self._on_track)
        for pub, sink in self._sinks.values():
            pub.remove_sink(sink)
        self._sinks.clear()

    async def stop(self, reason: str) -> None:
        self.detach()
        await asyncio.to_thread(self.recorder.stop, reason)
