"""The seam into aiortc's receive jitter buffer (the project's aiortc client, not the server).

aiortc's video `JitterBuffer` (capacity 512) hands a frame to the decoder only when every
packet from its origin is there: a packet lost upstream (and not retransmitted in time) stalls
decoding until 512 more packets have arrived, many seconds of video on a short link. A browser
asks for a keyframe and skips to it. `SkippingJitterBuffer` does the same: when no frame came
out for `stuck_s` while packets keep arriving, it requests a keyframe (PLI, at most every
`pli_every_s`) and, as soon as a keyframe's first packet is buffered past the hole, drops what
lies before it and decodes from there.

`install(receiver)` puts one on an aiortc video receiver (a name-mangled private attribute).
`tests/test_seam_jitter.py` fails loudly if aiortc moves it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket

from ..rtp.keyframe import detector

ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"
CODECS = "_RTCRtpReceiver__codecs"
STUCK_S = 0.4  # no frame for this long while packets arrive: ask for a keyframe, skip to it
PLI_EVERY_S = 0.5


class SkippingJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, plus a browser's way out of a hole: keyframe and skip."""

    def __init__(
        self,
        capacity: int = 512,
        *,
        codecs: dict[int, Any] | None = None,
        stuck_s: float = STUCK_S,
        pli_every_s: float = PLI_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(capacity, is_video=True)
        self._codecs = codecs if codecs is not None else {}  # payload type -> codec parameters
        self._stuck_s = stuck_s
        self._pli_every_s = pli_every_s
        self._clock = clock
        self._last_frame = clock()
        self._last_pli = -1e9
        self.skips = 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        pli, frame = super().add(packet)
        now = self._clock()
        if frame is not None:
            self._last_frame = now
            return pli, frame
        if now - self._last_frame < self._stuck_s or not self._has_hole(packet):
            return pli, None  # recent frames, or only a frame in the making (a resumed stream)
        if now - self._last_pli >= self._pli_every_s:
            self._last_pli = now
            pli = True
        frame = self._skip_to_keyframe(packet)
        if frame is not None:
            self._last_frame = now
        return pli, frame

    def _has_hole(self, newest: RtpPacket) -> bool:
        origin = self._origin
        if origin is None:
            return False
        span = (newest.sequence_number - origin) & 0xFFFF
        packets, capacity = self._packets, self._capacity
        return any(packets[(origin + i) % capacity] is None for i in range(min(span, capacity)))

    def _skip_to_keyframe(self, newest: RtpPacket) -> JitterFrame | None:
        """Drop everything before the first buffered keyframe start past the origin."""
        origin = self._origin
        if origin is None:
            return None
        span = (newest.sequence_number - origin) & 0xFFFF
        for count in range(1, min(span, self._capacity - 1) + 1):
            packet = self._packets[(origin + count) % self._capacity]
            if packet is None or not self._is_keyframe(packet):
                continue
            self.remove(count)
            self.skips += 1
            return self._remove_frame(newest.sequence_number)
        return None

    def _is_keyframe(self, packet: RtpPacket) -> bool:
        codec = self._codecs.get(packet.payload_type)
        is_keyframe = detector(codec.mimeType if codec is not None else "video/VP8")
        return callable(is_keyframe) and bool(is_keyframe(packet.payload, 0))


def install(receiver: RTCRtpReceiver) -> SkippingJitterBuffer | None:
    """Give an aiortc video receiver the skipping jitter buffer (idempotent); None for audio."""
    current = getattr(receiver, ATTRIBUTE)
    if isinstance(current, SkippingJitterBuffer):
        return current
    if not getattr(current, "_is_video", False):
        return None
    buffer = SkippingJitterBuffer(current.capacity, codecs=getattr(receiver, CODECS))
    setattr(receiver, ATTRIBUTE, buffer)
    return buffer
