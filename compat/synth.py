"""Synthetic media for aiortc peers: scrolling colour bars (video) and a tone (audio).

Used by `compat run`'s aiortc participant and by the browser tests' peer.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time

import numpy as np
from aiortc import MediaStreamTrack
from av import AudioFrame, VideoFrame

VIDEO_RATE = 90000
AUDIO_RATE = 48000


class BarsTrack(MediaStreamTrack):
    """320x240 colour bars that scroll, 30 fps: something a VP8 encoder cannot skip."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._n = 0
        self._start: float | None = None
        x = np.arange(320, dtype=np.uint16)
        self._base = np.stack([(x * 3) % 256, (x * 5) % 256, (x * 7) % 256], axis=-1)

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self._n / 30
        await asyncio.sleep(max(0.0, target - time.monotonic()))
        row = np.roll(self._base, self._n * 4, axis=0).astype(np.uint8)
        img = np.ascontiguousarray(np.broadcast_to(row, (240, 320, 3)))
        frame = VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = self._n * VIDEO_RATE // 30
        frame.time_base = fractions.Fraction(1, VIDEO_RATE)
        self._n += 1
        return frame


class ToneTrack(MediaStreamTrack):
    """A 440 Hz tone in 20 ms mono frames."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._n = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        samples = AUDIO_RATE // 50
        target = self._start + self._n * 0.02
        await asyncio.sleep(max(0.0, target - time.monotonic()))
        t = (np.arange(samples) + self._n * samples) / AUDIO_RATE
        pcm = (np.sin(2 * math.pi * 440 * t) * 8000).astype(np.int16).reshape(1, -1)
        frame = AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._n * samples
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._n += 1
        return frame
