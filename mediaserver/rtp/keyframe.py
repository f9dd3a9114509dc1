"""Keyframe detection in RTP payloads (VP8: RFC 7741, H264: RFC 6184), without decoding."""

from __future__ import annotations


def vp8_keyframe_start(data: bytes, off: int) -> bool:
    """True for the first packet of a VP8 keyframe (S=1, PID=0 and the P bit clear)."""
    n = len(data)
    if off >= n:
        return False
    b = data[off]
    if not b & 0x10 or b & 0x07:
        return False
    i = off + 1
    if b & 0x80:  # X: extension byte
        if i >= n:
            return False
        x = data[i]
        i += 1
        if x & 0x80:  # I: picture id
            if i >= n:
                return False
            i += 2 if data[i] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            i += 1
        if x & 0x30:  # T or K
            i += 1
    return i < n and not data[i] & 0x01


def h264_keyframe_start(data: bytes, off: int) -> bool:
    """True for a packet that starts an IDR or carries an SPS (single NAL, STAP-A, FU-A)."""
    n = len(data)
    if off >= n:
        return False
    nal = data[off] & 0x1F
    if nal in (5, 7):
        return True
    if nal == 24:  # STAP-A: 2-byte sizes then NAL units
        i = off + 1
        while i + 2 < n:
            size = (data[i] << 8) | data[i + 1]
            if size == 0:
                return False
            if data[i + 2] & 0x1F in (5, 7):
                return True
            i += 2 + size
        return False
    if nal == 28 and off + 1 < n:  # FU-A
        fu = data[off + 1]
        return bool(fu & 0x80) and (fu & 0x1F) in (5, 7)
    return False


def detector(mime_type: str) -> object:
    """The keyframe function for a codec, or None when every packet is a fine start (audio)."""
    mime = mime_type.lower()
    if mime == "video/vp8":
        return vp8_keyframe_start
    if mime == "video/h264":
        return h264_keyframe_start
    return None
