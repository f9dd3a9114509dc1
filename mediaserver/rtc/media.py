"""aiortc's media internals, used as a library: codecs, RTP packet, jitter buffer.

None of `aiortc.codecs`, `aiortc.jitterbuffer` or `aiortc.rtp` is part of aiortc's public
API. The node transcodes device media with them (`ingest.py`), the client's skipping jitter
buffer extends aiortc's (`jitter.py`), and a benchmark sets aiortc's Opus bitrate
(`set_opus_bitrate`).
"""

from __future__ import annotations

from aiortc.codecs import depayload, get_decoder, get_encoder, is_rtx
from aiortc.codecs.opus import OpusEncoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

ORIGINAL_INIT = "_consult_original_init"  # aiortc's OpusEncoder.__init__, kept by set_opus_bitrate

__all__ = [
    "JitterBuffer",
    "JitterFrame",
    "OpusEncoder",
    "RtpPacket",
    "depayloaded",
    "get_decoder",
    "get_encoder",
    "is_rtx",
    "set_opus_bitrate",
]


def depayloaded(data: bytes, codec: RTCRtpCodecParameters) -> RtpPacket:
    """An RTP packet parsed, its payload depayloaded for aiortc's jitter buffer and decoder
    (the private `_data` they read). Raises ValueError on a malformed packet."""
    packet = RtpPacket.parse(data)
    packet._data = depayload(codec, packet.payload) if packet.payload else b""  # type: ignore[attr-defined]
    return packet


def set_opus_bitrate(bps: int | None) -> None:
    """Every aiortc Opus encoder created from now on in this process encodes at `bps` (aiortc
    has no setting for it: its encoder's `__init__` is wrapped); None: aiortc's own again."""
    original = getattr(OpusEncoder, ORIGINAL_INIT, OpusEncoder.__init__)
    setattr(OpusEncoder, ORIGINAL_INIT, original)
    if bps is None:
        OpusEncoder.__init__ = original  # type: ignore[method-assign]
        return

    def init(self: OpusEncoder) -> None:
        original(self)
        self.codec.bit_rate = bps

    OpusEncoder.__init__ = init  # type: ignore[method-assign]
