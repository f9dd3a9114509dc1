"""Recording: one recording of one room, written by its own thread.

The media plane's packet path only queues bytes (`_Sink.on_rtp`: one `put_nowait`, a drop
counted when the queue is full); this thread puts each track's packets back in order
(ReorderBuffer), depacketizes them into frames and muxes them, sealed, into one WebM per
track (TrackMuxer). A video track starts on a keyframe and, after a gap, waits for the next
one (asked for through the publication's throttled PLI). Chat, mode changes and consent steps
go into a sealed JSON-lines event log. The manifest maps every track's RTP time to wall time.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from mediaserver.recording import RecordedTrack, RecordingError, RecordingRequest, TrackSink

from .depacketizer import (
    Depacketizer,
    depacketizer_for,
    h264_keyframe_size,
    vp8_keyframe_size,
)
from .keys import FileKeyStore, KeyError_, KeyStore
from .manifest import EVENTS, Manifest, TrackEntry
from .muxer import TrackMuxer, extension
from .reorder import ReorderBuffer
from .sealed import SUFFIX, Key, SealedWriter

logger = logging.getLogger(__name__)

RECORDING_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
FLUSH_INTERVAL_S = 1.0  # a crash loses at most this much of what was muxed
KEYFRAME_INTERVAL_S = 0.5  # keyframe requests of one track at most this often
_STOP = object()


class _Sink:
    """What a publication calls per packet: a bounded put, nothing else."""

    __slots__ = ("_index", "_recording")

    def __init__(self, recording: Recording, index: int) -> None:
        self._recording = recording
        self._index = index

    def on_rtp(self, data: bytes, arrival: float) -> None:
        rec = self._recording
        if rec.queue.qsize() >= rec.limit:
            rec.dropped += 1  # (only this thread writes it)
            return
        rec.queue.put_nowait((self._index, data, arrival))


class _Track:
    """A track's state in the writer thread."""

    def __init__(self, entry: TrackEntry, channels: int, keyframe: Callable[[], object]) -> None:
        self.entry = entry
        self.channels = channels
        self.request_keyframe = keyframe
        self.video = entry.kind == "video"
        depacketizer = depacketizer_for(entry.codec)
        if depacketizer is None:
            raise ValueError(f"cannot record {entry.codec}")
        self.depacketizer: Depacketizer = depacketizer
        self.reorder = ReorderBuffer(64 if self.video else 16)
        self.muxer: TrackMuxer | None = None
        self.waiting_key = self.video
        self.ssrc = b""
        self.bridge: float | None = None  # arrival of the first packet after a source switch
        self.last_arrival = 0.0  # of the last frame muxed
        self.last_request = -1e9
        self.base_ts = 0
        self.last_ts = 0
        self.unwrapped = 0


class Recording:
    def __init__(
        self,
        request: RecordingRequest,
        on_error: Callable[[str], None],
        *,
        keys: KeyStore | None = None,
    ) -> None:
        config = request.config
        if not config.directory:
            raise RecordingError("recording is not configured (--recording-dir)")
        if not RECORDING_ID.match(request.recording_id):
            raise RecordingError("a recording id is 1-64 letters, digits, - or _")
        try:
            self.key: Key = (keys or FileKeyStore(config.key_file)).current()
        except KeyError_ as exc:
            raise RecordingError(str(exc)) from None
        self.directory = os.path.join(config.directory, request.recording_id)
        try:
            os.makedirs(self.directory, mode=0o700)
        except OSError as exc:
            raise RecordingError(f"cannot create the recording directory: {exc.strerror}") from None
        self.limit = config.queue_packets
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.dropped = 0
        self.errors = 0
        self.manifest = Manifest(
            recording_id=request.recording_id,
            room_id=request.room_id,
            key_id=self.key.key_id,
            started_at=time.time(),
        )
        self._tracks: list[_Track] = []
        self._on_error = on_error
        self._failed: str | None = None
        self._loop_tracks: dict[str, int] = {}
        try:
            self.manifest.write(self.directory)
            self._events = SealedWriter(os.path.join(self.directory, EVENTS), self.key)
        except OSError as exc:
            raise RecordingError(f"cannot write the recording: {exc.strerror}") from None
        for entry in request.audit:
            self.note("consent", entry)
        self._thread = threading.Thread(
            target=self._run, name=f"recording-{request.recording_id}", daemon=True
        )
        self._thread.start()

    @property
    def key_id(self) -> str:
        return self.key.key_id

    # -- the event loop's side -------------------------------------------------------------

    def add_track(self, track: RecordedTrack, request_keyframe: Callable[[], object]) -> TrackSink:
        if track.track_id in self._loop_tracks:
            return _Sink(self, self._loop_tracks[track.track_id])
        index = len(self._tracks)
        if depacketizer_for(track.codec) is None:
            raise ValueError(f"cannot record {track.codec}")
        entry = TrackEntry(
            track_id=track.track_id,
            participant_id=track.participant_id,
            kind=track.kind,
            source=track.source,
            codec=track.codec,
            clock_rate=track.clock_rate,
            file=f"{index:02d}-{track.kind}-{track.source}.{extension(track.codec)}{SUFFIX}",
        )
        self._tracks.append(_Track(entry, track.channels, request_keyframe))  # ValueError
        self._loop_tracks[track.track_id] = index
        self.manifest.tracks.append(entry)
        return _Sink(self, index)

    def note(self, kind: str, data: dict[str, Any]) -> None:
        self.queue.put_nowait(("note", {"time": time.time(), "kind": kind, **data}))

    def stop(self, reason: str) -> None:
        self.manifest.stop_reason = self.manifest.stop_reason or reason
        self.queue.put_nowait(_STOP)
        self._thread.join()

    def counters(self) -> dict[str, int]:
        sealed = sum(t.muxer.sealed.sealed_bytes for t in self._tracks if t.muxer is not None)
        return {
            "bytes": sealed + self._events.sealed_bytes,
            "tracks": sum(1 for t in self._tracks if t.muxer is not None),
            "dropped": self.dropped,
            "errors": self.errors,
        }

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        next_flush = time.monotonic() + FLUSH_INTERVAL_S
        while True:
            try:
                item = self.queue.get(timeout=FLUSH_INTERVAL_S / 4)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if self._failed is None and item is not None:
                self._guarded(self._handle, item)
            now = time.monotonic()
            if now >= next_flush and self._failed is None:
                next_flush = now + FLUSH_INTERVAL_S
                self._guarded(self._flush)
        self._finish()

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except OSError as exc:
            self._fail(f"write failed: {exc.strerror or exc}")
        except Exception as exc:
            self._fail(f"{type(exc).__name__}: {exc}")

    def _handle(self, item: tuple[Any, ...]) -> None:
        if item[0] == "note":
            self._events.write(json.dumps(item[1], separators=(",", ":")).encode() + b"\n")
            return
        index, data, arrival = item
        track = self._tracks[index]
        if len(data) < 12:
            return
        if data[8:12] != track.ssrc:
            self._switch(track, data[8:12], arrival)
        for packet in track.reorder.push((data[2] << 8) | data[3], data):
            self._packet(track, packet, arrival)

    def _packet(self, track: _Track, packet: bytes | None, arrival: float) -> None:
        depacketizer = track.depacketizer
        if packet is None:
            depacketizer.gap()
            if track.video:
                self._wait_key(track)
            return
        lost = depacketizer.lost
        frame = depacketizer.push(packet)
        if depacketizer.lost != lost and track.video:
            self._wait_key(track)
        if frame is None:
            return
        if track.waiting_key:
            if not frame.keyframe:
                self._ask_keyframe(track)
                return
            track.waiting_key = False
        if track.muxer is None:
            self._open(track, frame.data, frame.timestamp, arrival)
        assert track.muxer is not None
        if track.bridge is not None:  # the first frame after a source switch
            gap = max(track.bridge - track.last_arrival, 0.0)
            track.last_ts = (frame.timestamp - round(gap * track.entry.clock_rate)) & 0xFFFFFFFF
            track.bridge = None
        delta = (frame.timestamp - track.last_ts) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 0x100000000  # a frame older than the last: reordered across frames
        track.last_ts = frame.timestamp
        track.last_arrival = arrival
        track.unwrapped += delta
        track.muxer.mux(frame.data, track.unwrapped, frame.keyframe)
        track.entry.frames += 1

    def _open(self, track: _Track, data: bytes, ts: int, arrival: float) -> None:
        entry = track.entry
        h264 = entry.codec.lower() == "h264"
        size = (h264_keyframe_size if h264 else vp8_keyframe_size)(data) if track.video else None
        track.muxer = TrackMuxer(
            os.path.join(self.directory, entry.file),
            self.key,
            codec=entry.codec,
            clock_rate=entry.clock_rate,
            channels=track.channels if track.channels in (1, 2) else 2,
            size=size or (0, 0),
        )
        track.base_ts = track.last_ts = ts
        track.unwrapped = 0
        entry.first_rtp_timestamp = ts
        entry.first_wall_time = time.time() - (time.monotonic() - arrival)
        self.manifest.write(self.directory)

    def _switch(self, track: _Track, ssrc: bytes, arrival: float) -> None:
        """A new SSRC (the publisher reconnected, Publication.rebind): sequence numbers and
        timestamps start afresh. The file goes on; its time is bridged by the arrival gap."""
        first = not track.ssrc
        track.ssrc = ssrc
        if first:
            return
        track.reorder = ReorderBuffer(track.reorder.depth)
        depacketizer = depacketizer_for(track.entry.codec)
        assert depacketizer is not None
        depacketizer.lost = track.depacketizer.lost
        track.depacketizer = depacketizer
        track.waiting_key = track.video
        track.bridge = arrival if track.muxer is not None else None

    def _wait_key(self, track: _Track) -> None:
        track.waiting_key = True
        self._ask_keyframe(track)

    def _ask_keyframe(self, track: _Track) -> None:
        now = time.monotonic()
        if now - track.last_request >= KEYFRAME_INTERVAL_S:
            track.last_request = now
            track.entry.keyframe_requests += 1
            track.request_keyframe()

    def _flush(self) -> None:
        for track in self._tracks:
            if track.muxer is not None:
                track.muxer.flush()
        self._events.flush()

    def _fail(self, message: str) -> None:
        if self._failed is not None:
            return
        self._failed = message
        self.errors += 1
        self.manifest.error = message
        logger.error("recording %s failed: %s", self.manifest.recording_id, message)
        for track in self._tracks:
            if track.muxer is not None:
                track.muxer.abandon()
        self._events.abandon()
        try:
            self._on_error(message)
        except Exception:
            logger.exception("recording error callback failed")

    def _finish(self) -> None:
        if self._failed is None:
            for track in self._tracks:
                for packet in track.reorder.drain():
                    self._guarded(self._packet, track, packet, 0.0)
            self._guarded(self._close_files)
        for track in self._tracks:
            track.entry.frames_lost = track.depacketizer.lost
            if track.muxer is not None:
                track.entry.bytes = track.muxer.sealed.sealed_bytes
        self.manifest.state = "stopped"
        self.manifest.stopped_at = time.time()
        self.manifest.dropped_packets = self.dropped
        try:
            self.manifest.write(self.directory)
        except OSError as exc:
            logger.error(
                "recording %s: manifest not written: %s", self.manifest.recording_id, exc.strerror
            )

    def _close_files(self) -> None:
        for track in self._tracks:
            if track.muxer is not None:
                track.muxer.close()
        self._events.close()


def open_recording(request: RecordingRequest, on_error: Callable[[str], None]) -> Recording:
    """The media plane's recorder factory (RecordingConfig.backend)."""
    return Recording(request, on_error)


__all__ = ["Recording", "open_recording"]
