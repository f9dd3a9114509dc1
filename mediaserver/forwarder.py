"""Forwarder: the per-subscription, per-packet header rewrite (a state machine, no I/O).

It rewrites SSRC, payload type, sequence number and timestamp, writes the subscriber's own
header extensions (mid, abs-send-time, audio level: ids differ per browser and per offer),
gates the start of a video subscription on a keyframe, keeps outbound sequence numbers
continuous across a source switch (libsrtp rejects a sequence more than 1024 behind), and
maps NACKed sequence numbers back to the source's. A recycled sender (a new subscription on
an m-line a closed one left) continues that sender's numbering (`Continuation`).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

_pack_into = struct.pack_into

MAX_BEHIND = 512  # later than this behind the newest packet: dropped
MAX_JUMP = 3000  # a forward jump larger than this is a restarted sequence, not loss
MAX_STALE = 64  # this many "too old" packets in a row: the sequence restarted lower
MIN_TS_GAP_S = 0.02  # a recycled sender's timestamps jump at least this far (one frame)


@dataclass(frozen=True, slots=True)
class ExtensionIds:
    """Header-extension ids negotiated with one peer (0 = not negotiated)."""

    mid: int = 0
    abs_send_time: int = 0
    audio_level: int = 0

    @classmethod
    def from_uris(cls, ids: dict[str, int]) -> ExtensionIds:
        return cls(
            mid=ids.get("urn:ietf:params:rtp-hdrext:sdes:mid", 0),
            abs_send_time=ids.get("http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time", 0),
            audio_level=ids.get("urn:ietf:params:rtp-hdrext:ssrc-audio-level", 0),
        )


@dataclass(frozen=True, slots=True)
class Continuation:
    """Where one sender's outbound numbering stopped (its SSRC outlives a subscription).

    A sender of the subscriber's peer connection keeps its SSRC when a new subscription
    reuses its m-line: the new Forwarder numbers on after the last packet (libsrtp refuses a
    sequence that goes back more than its window; the receiver would see a restarted
    source), its timestamps jump by the time that passed (at least a frame) so the receiver's
    jitter buffer neither waits for nor drops what follows, and its RTX sequence continues.
    """

    seq: int  # the last sequence number sent
    ts: int  # the last timestamp sent
    rtx_seq: int  # the next RTX sequence number
    at: float  # monotonic time it stopped

    def first(self, clock_rate: int, now: float) -> tuple[int, int]:
        """The next subscription's first sequence number and timestamp."""
        gap = max(now - self.at, MIN_TS_GAP_S)
        return (self.seq + 1) & 0xFFFF, (self.ts + int(gap * clock_rate)) & 0xFFFFFFFF


def _template(
    ssrc: int, payload_type: int, mid: str | None, ext: ExtensionIds
) -> tuple[bytes, int, int]:
    """The fixed part of every outgoing header, and where the variable extensions go."""
    elements = bytearray()
    ast_at = lvl_at = 0
    if ext.mid and mid:
        raw = mid.encode()[:16]
        elements += bytes(((ext.mid << 4) | (len(raw) - 1),)) + raw
    if ext.abs_send_time:
        elements += bytes(((ext.abs_send_time << 4) | 2,))
        ast_at = 16 + len(elements)
        elements += b"\x00\x00\x00"
    if ext.audio_level:
        elements += bytes(((ext.audio_level << 4),))
        lvl_at = 16 + len(elements)
        elements += b"\x7f"
    elements += b"\x00" * (-len(elements) % 4)
    header = struct.pack("!BBHII", 0x90 if elements else 0x80, payload_type, 0, 0, ssrc)
    if elements:
        header += struct.pack("!HH", 0xBEDE, len(elements) // 4) + elements
    return header, ast_at, lvl_at


class Forwarder:
    __slots__ = (
        "_ast_at",
        "_base_in",
        "_gate",
        "_high_in",
        "_lvl_at",
        "_pending_ts_gap",
        "_pt",
        "_rtx_pt",
        "_rtx_seq",
        "_rtx_template",
        "_seq_offset",
        "_stale",
        "_started",
        "_template",
        "_ts_offset",
        "_young",
        "last_seq",
        "last_ts",
    )

    def __init__(
        self,
        *,
        ssrc: int,
        payload_type: int,
        mid: str | None,
        ext: ExtensionIds,
        gate_on_keyframe: bool,
        rtx_ssrc: int = 0,
        rtx_payload_type: int = 0,
        first_seq: int | None = None,
        first_ts: int | None = None,
        first_rtx_seq: int | None = None,
    ) -> None:
        self._template, self._ast_at, self._lvl_at = _template(ssrc, payload_type, mid, ext)
        self._pt = payload_type
        self._rtx_pt = rtx_payload_type
        self._rtx_template = (
            _template(rtx_ssrc, rtx_payload_type, mid, ext)[0] if rtx_payload_type else b""
        )
        self._rtx_seq = random.randrange(0x10000) if first_rtx_seq is None else first_rtx_seq
        self._gate = gate_on_keyframe
        self._started = False
        self._young = True
        self._base_in = self._high_in = 0
        self._seq_offset = self._ts_offset = 0
        self.last_seq = (random.randrange(0x10000) if first_seq is None else first_seq) - 1
        self.last_seq &= 0xFFFF
        self.last_ts = random.randrange(1 << 32) if first_ts is None else first_ts
        self._pending_ts_gap: int | None = 0
        self._stale = 0

    @property
    def started(self) -> bool:
        return self._started

    @property
    def ts_offset(self) -> int:
        return self._ts_offset

    def continuation(self, now: float) -> Continuation:
        """Where this sender's numbering stops (the subscription closes; the sender stays)."""
        return Continuation(self.last_seq, self.last_ts, self._rtx_seq, now)

    def switch_source(self, ts_gap: int) -> None:
        """The next forwarded packet (a keyframe for video) continues after the last one."""
        self._started = False
        self._pending_ts_gap = ts_gap

    def pause(self) -> None:
        """Forwarding stops (bandwidth fallback); the next forwarded packet (a keyframe for
        video) numbers on after the last one sent, timestamps keep the source's clock."""
        self._started = False
        self._pending_ts_gap = None

    def _start(self, seq: int, ts: int) -> None:
        self._seq_offset = (self.last_seq + 1 - seq) & 0xFFFF
        if self._pending_ts_gap is not None:  # None: the source's timestamps still hold
            self._ts_offset = (self.last_ts + self._pending_ts_gap - ts) & 0xFFFFFFFF
        self._base_in = self._high_in = seq
        self._young = True
        self._stale = 0
        self._started = True

    def _sequence_reset(self) -> None:
        """The source's sequence numbers jumped (a restart): number on after our last packet."""
        self._started = False
        self._pending_ts_gap = None

    def rewrite(
        self, data: bytes, off: int, seq: int, ts: int, keyframe: bool, abs3: bytes, level: int
    ) -> bytes | None:
        """The packet as this subscriber must receive it, or None to drop it."""
        if self._started:
            d = (seq - self._high_in) & 0xFFFF
            if d < 0x8000:
                if d > MAX_JUMP:
                    self._sequence_reset()
                else:
                    self._high_in = seq
                    self._stale = 0
                    if self._young and ((seq - self._base_in) & 0xFFFF) > 0x4000:
                        self._young = False
            else:
                back = 0x10000 - d
                if back > MAX_BEHIND or (
                    self._young and back > ((self._high_in - self._base_in) & 0xFFFF)
                ):
                    # Too old to send (libsrtp refuses more than 1024 behind) or older than
                    # our start; a source that keeps sending "old" packets went backwards.
                    self._stale += 1
                    if self._stale > MAX_STALE:
                        self._sequence_reset()
                    else:
                        return None
        if not self._started:
            if self._gate and not keyframe:
                return None
            self._start(seq, ts)
        out_seq = (seq + self._seq_offset) & 0xFFFF
        out_ts = (ts + self._ts_offset) & 0xFFFFFFFF
        if ((out_seq - self.last_seq) & 0xFFFF) < 0x8000:
            self.last_seq = out_seq
            self.last_ts = out_ts
        out = bytearray(self._template)
        out[0] |= data[0] & 0x20  # padding travels with the payload
        out[1] = self._pt | (data[1] & 0x80)
        _pack_into("!HI", out, 2, out_seq, out_ts)
        if self._ast_at:
            out[self._ast_at : self._ast_at + 3] = abs3
        if self._lvl_at and level >= 0:
            out[self._lvl_at] = level
        return b"".join((out, memoryview(data)[off:]))  # one copy of the payload

    def source_seq(self, out_seq: int) -> int:
        """The source sequence number of a packet this subscriber was sent."""
        return (out_seq - self._seq_offset) & 0xFFFF

    def retransmission(self, data: bytes, off: int, abs3: bytes) -> bytes:
        """A cached source packet resent to this subscriber: RTX-wrapped when negotiated."""
        seq = (data[2] << 8) | data[3]
        ts = int.from_bytes(data[4:8], "big")
        out_seq = (seq + self._seq_offset) & 0xFFFF
        out_ts = (ts + self._ts_offset) & 0xFFFFFFFF
        if not self._rtx_pt:
            out = bytearray(self._template)
            out[1] = self._pt | (data[1] & 0x80)
            _pack_into("!HI", out, 2, out_seq, out_ts)
        else:
            out = bytearray(self._rtx_template)
            out[1] = self._rtx_pt | (data[1] & 0x80)
            _pack_into("!HI", out, 2, self._rtx_seq, out_ts)
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            out += struct.pack("!H", out_seq)
        if self._ast_at:
            out[self._ast_at : self._ast_at + 3] = abs3
        out[0] |= data[0] & 0x20
        return b"".join((out, memoryview(data)[off:]))
