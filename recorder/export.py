"""Export: one MP4 of a recording, for viewing (transcodes; the recording itself never is).

Every video track side by side (each scaled to `height`, held on its last frame between
frames, black before its first), at `fps`; every audio track mixed into one stereo track
(AAC); all placed on the wall clock through the manifest (`first_wall_time` + the frame's
time). Streams through the recording one second of output at a time: memory holds the
decrypted files and a second of audio, not the decoded recording.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import av
import numpy as np

from .keys import KeyStore
from .manifest import read_manifest
from .sealed import key_id_of, unseal

RATE = 48000


def _open(directory: str, entry: dict[str, Any], keys: KeyStore) -> av.container.InputContainer:
    path = f"{directory}/{entry['file']}"
    data = unseal(path, keys.get(key_id_of(path))).data
    return av.open(io.BytesIO(data), "r")


class _Video:
    """A video track's frames on the wall clock, each scaled to the export's height."""

    def __init__(self, container: av.container.InputContainer, start: float, height: int) -> None:
        stream = container.streams.video[0]
        width = stream.codec_context.width or 16
        self.height = height
        self.width = max(
            2, round(width * height / (stream.codec_context.height or height)) // 2 * 2
        )
        self._frames = container.decode(stream)
        self._start = start
        self.current: np.ndarray = np.zeros((height, self.width, 3), np.uint8)
        self._next: av.VideoFrame | None = None
        self._done = False

    def at(self, t: float) -> np.ndarray:
        """The picture at wall time t (seconds from the export's start)."""
        while not self._done:
            if self._next is None:
                self._next = next(self._frames, None)
                if self._next is None:
                    self._done = True
                    break
            if self._start + float(self._next.time or 0) > t:
                break
            frame = self._next.reformat(width=self.width, height=self.height, format="rgb24")
            self.current = frame.to_ndarray()
            self._next = None
        return self.current


class _Audio:
    """An audio track as 48 kHz stereo float32 samples placed on the wall clock."""

    def __init__(self, container: av.container.InputContainer, start: float) -> None:
        self._frames = container.decode(container.streams.audio[0])
        self._resampler = av.AudioResampler(format="flt", layout="stereo", rate=RATE)
        self._start = start

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first sample's index on the export's clock, samples x 2)."""
        for frame in self._frames:
            at = round((self._start + float(frame.time or 0)) * RATE)
            for out in self._resampler.resample(frame):
                samples = out.to_ndarray().reshape(-1, 2)
                yield at, samples
                at += len(samples)


def export(directory: str, out: str, keys: KeyStore, *, height: int = 360, fps: int = 30) -> float:
    """Write the MP4; returns its length in seconds."""
    manifest = read_manifest(directory)
    tracks = [t for t in manifest["tracks"] if t.get("first_wall_time") is not None]
    if not tracks:
        raise ValueError("the recording holds no media")
    t0 = min(float(t["first_wall_time"]) for t in tracks)
    containers, videos, audios = [], [], []
    end = 0.0
    for entry in tracks:
        container = _open(directory, entry, keys)
        containers.append(container)
        start = float(entry["first_wall_time"]) - t0
        end = max(end, start + _length(directory, entry, keys))
        if entry["kind"] == "video":
            videos.append(_Video(container, start, height))
        else:
            audios.append(_Audio(container, start))
    try:
        _write(out, videos, audios, end, height, fps)
    finally:
        for container in containers:
            container.close()
    return end


def _length(directory: str, entry: dict[str, Any], keys: KeyStore) -> float:
    with _open(directory, entry, keys) as container:
        last = 0.0
        for packet in container.demux():
            if packet.pts is not None and packet.time_base is not None:
                duration = float((packet.duration or 0) * packet.time_base)
                last = max(last, float(packet.pts * packet.time_base) + duration)
    return last


def _write(
    out: str, videos: list[_Video], audios: list[_Audio], end: float, height: int, fps: int
) -> None:
    width = sum(v.width for v in videos) if videos else 2
    with av.open(out, "w", format="mp4") as output:
        vstream = output.add_stream("libx264", rate=fps)
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        astream = output.add_stream("aac", rate=RATE) if audios else None
        mixes = [a.chunks() for a in audios]
        pending: list[tuple[int, np.ndarray] | None] = [None] * len(mixes)
        seconds = int(np.ceil(end))
        for second in range(seconds):
            for n in range(second * fps, min((second + 1) * fps, round(end * fps))):
                t = n / fps
                canvas = (
                    np.hstack([v.at(t) for v in videos])
                    if videos
                    else np.zeros((height, width, 3), np.uint8)
                )
                frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
                frame.pts, frame.time_base = n, Fraction(1, fps)
                output.mux(vstream.encode(frame))
            if astream is not None:
                block = _mix(mixes, pending, second * RATE, RATE)
                if second == seconds - 1:
                    block = block[: max(1, round(end * RATE) - second * RATE)]
                sound = av.AudioFrame.from_ndarray(
                    np.clip(block, -1, 1).astype(np.float32).reshape(1, -1),
                    format="flt",
                    layout="stereo",
                )
                sound.sample_rate, sound.pts = RATE, second * RATE
                sound.time_base = Fraction(1, RATE)
                output.mux(astream.encode(sound))
        output.mux(vstream.encode(None))
        if astream is not None:
            output.mux(astream.encode(None))


def _mix(
    mixes: list[Iterator[tuple[int, np.ndarray]]],
    pending: list[tuple[int, np.ndarray] | None],
    begin: int,
    size: int,
) -> np.ndarray:
    """The sum of every audio track over samples [begin, begin + size)."""
    block = np.zeros((size, 2), np.float32)
    stop = begin + size
    for i, chunks in enumerate(mixes):
        while True:
            item = pending[i] if pending[i] is not None else next(chunks, None)
            pending[i] = None
            if item is None:
                break
            at, samples = item
            if at >= stop:
                pending[i] = item  # the next block's
                break
            lo, hi = max(at, begin), min(at + len(samples), stop)
            if hi > lo:
                block[lo - begin : hi - begin] += samples[lo - at : hi - at]
            if at + len(samples) > stop:
                pending[i] = (stop, samples[stop - at :])
                break
    return block


__all__ = ["export"]
