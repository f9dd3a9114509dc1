"""Depacketizers: RTP payloads (in sequence order) back into encoded frames, no decoding.

VP8 (RFC 7741): strip the payload descriptor; a frame is every packet of one timestamp, the
last one marked; its first packet has S=1 and partition index 0. H264 (RFC 6184, packetization
mode 1): single NAL units, STAP-A and FU-A, into an Annex B access unit (start codes); a
keyframe holds an IDR slice. Opus (RFC 7587): one packet is one frame. A frame with a packet
missing is dropped (`lost` counts it); the caller then waits for a keyframe.
"""

from __future__ import annotations

from dataclasses import dataclass

from .sps import sps_size


@dataclass(frozen=True, slots=True)
class Frame:
    data: bytes
    timestamp: int  # RTP timestamp (32-bit, not unwrapped)
    keyframe: bool


def rtp_payload(packet: bytes) -> tuple[int, int, bool, bytes]:
    """(sequence number, timestamp, marker, payload) of an RTP packet (ValueError if cut)."""
    if len(packet) < 12:
        raise ValueError("short RTP packet")
    b0 = packet[0]
    off = 12 + ((b0 & 0x0F) << 2)
    if b0 & 0x10:
        if len(packet) < off + 4:
            raise ValueError("short RTP extension")
        off += 4 + (((packet[off + 2] << 8) | packet[off + 3]) << 2)
    end = len(packet) - (packet[-1] if b0 & 0x20 else 0)
    if off > end:
        raise ValueError("short RTP packet")
    seq = (packet[2] << 8) | packet[3]
    ts = int.from_bytes(packet[4:8], "big")
    return seq, ts, bool(packet[1] & 0x80), packet[off:end]


def vp8_descriptor_size(payload: bytes) -> int:
    """Length of the VP8 payload descriptor (RFC 7741 section 4.2)."""
    size = 1
    if payload[0] & 0x80:  # X
        x = payload[1]
        size = 2
        if x & 0x80:  # I
            size += 2 if payload[size] & 0x80 else 1
        if x & 0x40:  # L
            size += 1
        if x & 0x30:  # T or K
            size += 1
    return size


def vp8_keyframe_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) of a VP8 keyframe, None for an inter frame."""
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    return (frame[6] | (frame[7] << 8)) & 0x3FFF, (frame[8] | (frame[9] << 8)) & 0x3FFF


class Vp8Depacketizer:
    """Packets in sequence order (with `gap()` between packets that were lost) -> frames."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ts: int | None = None
        self._broken = False
        self.lost = 0  # frames dropped for a missing packet

    def gap(self) -> None:
        """Packets are missing before the next one: the frame being built is lost."""
        if self._ts is not None:
            self._broken = True

    def push(self, packet: bytes) -> Frame | None:
        try:
            _seq, ts, marker, payload = rtp_payload(packet)
            if not payload:
                return None  # padding only (a browser's bandwidth probe)
            size = vp8_descriptor_size(payload)
        except (ValueError, IndexError):
            self.gap()
            return None
        if len(payload) <= size:
            return None
        start = bool(payload[0] & 0x10) and (payload[0] & 0x0F) == 0
        if start or ts != self._ts:
            if self._ts is not None:
                self.lost += 1  # the previous frame never got its marked packet
            self._parts, self._ts, self._broken = [], ts, not start
        self._parts.append(payload[size:])
        if not marker:
            return None
        parts, broken = self._parts, self._broken
        self._parts, self._ts, self._broken = [], None, False
        if broken:
            self.lost += 1
            return None
        data = b"".join(parts)
        return Frame(data, ts, not data[0] & 0x01)


START_CODE = b"\x00\x00\x00\x01"


class H264Depacketizer:
    """Packets in sequence order (with `gap()` where some were lost) -> Annex B frames."""

    def __init__(self) -> None:
        self._nals: list[bytes] = []
        self._fu: bytearray | None = None
        self._ts: int | None = None
        self._broken = False
        self.lost = 0

    def gap(self) -> None:
        if self._ts is not None:
            self._broken = True
        self._fu = None

    def push(self, packet: bytes) -> Frame | None:
        try:
            _seq, ts, marker, payload = rtp_payload(packet)
        except ValueError:
            self.gap()
            return None
        if not payload:
            return None
        if ts != self._ts:
            if self._nals or self._broken:
                self.lost += 1  # the previous access unit never got its marked packet
            self._nals, self._fu, self._ts, self._broken = [], None, ts, False
        try:
            self._unpack(payload)
        except IndexError:
            self._broken = True
        if not marker:
            return None
        nals, broken = self._nals, self._broken or self._fu is not None
        self._nals, self._fu, self._ts, self._broken = [], None, None, False
        if broken or not nals:
            self.lost += 1
            return None
        keyframe = any(n[0] & 0x1F == 5 for n in nals)
        return Frame(b"".join(START_CODE + n for n in nals), ts, keyframe)

    def _unpack(self, payload: bytes) -> None:
        kind = payload[0] & 0x1F
        if 1 <= kind <= 23:
            self._nals.append(payload)
        elif kind == 24:  # STAP-A: 16-bit sizes, then the units
            off = 1
            while off + 2 <= len(payload):
                size = (payload[off] << 8) | payload[off + 1]
                unit = payload[off + 2 : off + 2 + size]
                if len(unit) < size or not size:
                    raise IndexError("STAP-A unit cut")
                self._nals.append(unit)
                off += 2 + size
        elif kind == 28:  # FU-A: one unit in fragments
            header = payload[1]
            if header & 0x80:
                self._fu = bytearray([(payload[0] & 0xE0) | (header & 0x1F)]) + payload[2:]
            elif self._fu is None:
                self._broken = True  # its start was lost
                return
            else:
                self._fu += payload[2:]
            if header & 0x40:
                self._nals.append(bytes(self._fu))
                self._fu = None


def h264_keyframe_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) its SPS declares, for an Annex B access unit that carries one."""
    for unit in frame.split(START_CODE):
        if unit and unit[0] & 0x1F == 7:
            return sps_size(unit)
    return None


class OpusDepacketizer:
    """One Opus packet per RTP payload; every frame is a "keyframe" (decodes on its own)."""

    lost = 0

    def gap(self) -> None:
        pass

    def push(self, packet: bytes) -> Frame | None:
        try:
            _seq, ts, _marker, payload = rtp_payload(packet)
        except ValueError:
            return None
        return Frame(payload, ts, True) if payload else None


Depacketizer = Vp8Depacketizer | H264Depacketizer | OpusDepacketizer


def depacketizer_for(codec: str) -> Depacketizer | None:
    """The depacketizer of a codec name (VP8, H264, opus), None for one it cannot record."""
    name = codec.lower()
    if name == "vp8":
        return Vp8Depacketizer()
    if name == "h264":
        return H264Depacketizer()
    if name == "opus":
        return OpusDepacketizer()
    return None


__all__ = [
    "Depacketizer",
    "Frame",
    "H264Depacketizer",
    "OpusDepacketizer",
    "Vp8Depacketizer",
    "depacketizer_for",
    "h264_keyframe_size",
    "rtp_payload",
    "vp8_keyframe_size",
]
