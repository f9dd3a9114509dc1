"""TrackMuxer: encoded frames of one track into a WebM file, sealed as it is written.

PyAV muxes `av.Packet`s (no decoder, no encoder runs) into WebM (VP8, Opus; H264 into
Matroska, which WebM does not allow: `FORMATS`) written as a live stream
(`live=1`: no seeking back, clusters of unknown size), through a `SealedWriter`: the file on
disk is ciphertext only, and any prefix of whole chunks decrypts into a WebM that decodes.
Timestamps are the RTP timestamps (unwrapped, from the first frame), time base 1/clock rate,
so durations stay true across loss and pauses.
"""

from __future__ import annotations

import struct
from fractions import Fraction

import av

from .sealed import Key, SealedWriter

# live: written as a stream (no seeking back); a cluster (the muxer's unit of output) closes
# after 1 s of media, so what was muxed reaches the SealedWriter within about a second.
MUX_OPTIONS = {"live": "1", "cluster_time_limit": "1000"}
CODECS = {"vp8": "vp8", "opus": "opus", "h264": "h264"}
FORMATS = {"vp8": "webm", "opus": "webm", "h264": "matroska"}
EXTENSIONS = {"webm": "webm", "matroska": "mkv"}


def extension(codec: str) -> str:
    """The file extension of a codec's recordings (webm, mkv); KeyError for one it cannot mux."""
    return EXTENSIONS[FORMATS[codec.lower()]]


def opus_head(channels: int) -> bytes:
    """The OpusHead (RFC 7845) Matroska wants as the codec's private data."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, 312, 48000, 0, 0)


class TrackMuxer:
    def __init__(
        self,
        path: str,
        key: Key,
        *,
        codec: str,
        clock_rate: int,
        channels: int = 2,
        size: tuple[int, int] = (0, 0),
    ) -> None:
        name = CODECS.get(codec.lower())
        if name is None:
            raise ValueError(f"cannot record {codec}")
        self.sealed = SealedWriter(path, key)
        self._time_base = Fraction(1, clock_rate)
        self.frames = 0
        try:
            container = FORMATS[name]
            self._out = av.open(self.sealed, mode="w", format=container, options=MUX_OPTIONS)
            if name == "opus":
                stream: av.stream.Stream = self._out.add_stream(name, rate=clock_rate)
                stream.codec_context.extradata = opus_head(channels)
            elif name == "h264":  # no encoder opened; SPS and PPS stay in band (Annex B)
                width, height = size
                stream = self._out.add_mux_stream(name, width=width, height=height)
            else:
                video = self._out.add_stream(name)
                context = video.codec_context
                assert isinstance(context, av.VideoCodecContext)
                context.width, context.height = size
                stream = video
            stream.time_base = self._time_base
            self._stream = stream
        except Exception:
            self.sealed.abandon()
            raise
        self._last_pts = -1

    def mux(self, data: bytes, pts: int, keyframe: bool) -> None:
        if pts <= self._last_pts:
            pts = self._last_pts + 1  # the muxer wants increasing timestamps
        self._last_pts = pts
        packet = av.Packet(data)
        packet.stream = self._stream
        packet.pts = packet.dts = pts
        packet.time_base = self._time_base
        packet.is_keyframe = keyframe
        self._out.mux(packet)
        self.frames += 1

    def flush(self) -> None:
        self.sealed.flush()

    def close(self) -> None:
        try:
            self._out.close()
        finally:
            self.sealed.close()

    def abandon(self) -> None:
        self.sealed.abandon()
