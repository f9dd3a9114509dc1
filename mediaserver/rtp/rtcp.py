"""RTCP wire formats the SFU writes and reads (RFC 3550, 4585, draft-alvestrand-rmcat-remb).

Writers return bytes; `parse()` walks a compound packet into small tuples. RTCP is a few
packets a second per stream, so clarity wins over speed here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

SR, RR, SDES, BYE = 200, 201, 202, 203
RTPFB, PSFB = 205, 206
FMT_NACK = 1
FMT_PLI, FMT_FIR, FMT_REMB = 1, 4, 15


@dataclass(frozen=True, slots=True)
class ReportBlock:
    ssrc: int
    fraction_lost: int  # out of 256
    packets_lost: int
    highest_seq: int
    jitter: int
    lsr: int
    dlsr: int

    def __bytes__(self) -> bytes:
        lost = max(-0x800000, min(0x7FFFFF, self.packets_lost)) & 0xFFFFFF
        return struct.pack(
            "!IIIIII",
            self.ssrc,
            (self.fraction_lost << 24) | lost,
            self.highest_seq,
            self.jitter,
            self.lsr,
            self.dlsr,
        )

    @classmethod
    def parse(cls, data: bytes, offset: int) -> ReportBlock:
        ssrc, word, highest, jitter, lsr, dlsr = struct.unpack_from("!IIIIII", data, offset)
        lost = word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(ssrc, word >> 24, lost, highest, jitter, lsr, dlsr)


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp: int
    rtp_timestamp: int
    packets: int
    octets: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    ssrc: int
    reports: tuple[ReportBlock, ...]


@dataclass(frozen=True, slots=True)
class Nack:
    sender_ssrc: int
    media_ssrc: int
    lost: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class KeyframeRequest:
    """PLI or FIR."""

    sender_ssrc: int
    media_ssrc: int


@dataclass(frozen=True, slots=True)
class Remb:
    sender_ssrc: int
    bitrate: int
    ssrcs: tuple[int, ...]


Feedback = SenderReport | ReceiverReport | Nack | KeyframeRequest | Remb


def _pack(count: int, pt: int, body: bytes) -> bytes:
    return struct.pack("!BBH", 0x80 | count, pt, len(body) // 4) + body


def sender_report(sr: SenderReport) -> bytes:
    reports = sr.reports[:31]  # the 5-bit count
    body = struct.pack(
        "!IQIII",
        sr.ssrc,
        sr.ntp,
        sr.rtp_timestamp,
        sr.packets & 0xFFFFFFFF,
        sr.octets & 0xFFFFFFFF,
    ) + b"".join(bytes(b) for b in reports)
    return _pack(len(reports), SR, body)


def receiver_report(ssrc: int, blocks: list[ReportBlock]) -> bytes:
    body = struct.pack("!I", ssrc) + b"".join(bytes(b) for b in blocks[:31])
    return _pack(len(blocks[:31]), RR, body)


def sdes_cname(ssrc: int, cname: str) -> bytes:
    text = cname.encode()[:255]
    chunk = struct.pack("!IBB", ssrc, 1, len(text)) + text + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    return _pack(1, SDES, chunk)


def pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    return _pack(FMT_PLI, PSFB, struct.pack("!II", sender_ssrc, media_ssrc))


def nack(sender_ssrc: int, media_ssrc: int, lost: list[int]) -> bytes:
    """Generic NACK, packing sequence numbers into (PID, BLP) pairs."""
    fci = b""
    seqs = sorted(set(s & 0xFFFF for s in lost), key=lambda s: (s - lost[0]) & 0xFFFF)
    i = 0
    while i < len(seqs):
        pid, blp = seqs[i], 0
        i += 1
        while i < len(seqs) and 0 < ((seqs[i] - pid) & 0xFFFF) <= 16:
            blp |= 1 << (((seqs[i] - pid) & 0xFFFF) - 1)
            i += 1
        fci += struct.pack("!HH", pid, blp)
    return _pack(FMT_NACK, RTPFB, struct.pack("!II", sender_ssrc, media_ssrc) + fci)


def remb(sender_ssrc: int, bitrate: int, ssrcs: list[int]) -> bytes:
    exp = 0
    mantissa = max(0, int(bitrate))
    while mantissa > 0x3FFFF:
        mantissa >>= 1
        exp += 1
    body = struct.pack("!II4sB", sender_ssrc, 0, b"REMB", len(ssrcs))
    body += struct.pack("!BH", (exp << 2) | (mantissa >> 16), mantissa & 0xFFFF)
    body += b"".join(struct.pack("!I", s) for s in ssrcs)
    return _pack(FMT_REMB, PSFB, body)


def _nack_lost(fci: bytes) -> tuple[int, ...]:
    lost: list[int] = []
    for off in range(0, len(fci) - 3, 4):
        pid, blp = struct.unpack_from("!HH", fci, off)
        lost.append(pid)
        for bit in range(16):
            if blp & (1 << bit):
                lost.append((pid + bit + 1) & 0xFFFF)
    return tuple(lost)


def _remb(sender: int, fci: bytes) -> Remb | None:
    if len(fci) < 8 or fci[:4] != b"REMB":
        return None
    n = fci[4]
    exp = fci[5] >> 2
    mantissa = ((fci[5] & 3) << 16) | (fci[6] << 8) | fci[7]
    ssrcs = struct.unpack_from(f"!{n}I", fci, 8) if len(fci) >= 8 + 4 * n else ()
    return Remb(sender, mantissa << exp, tuple(ssrcs))


def parse(data: bytes) -> Iterator[Feedback]:
    """Walk a compound RTCP packet; unknown or truncated parts end the walk silently."""
    off = 0
    n = len(data)
    while off + 4 <= n:
        b0, pt, words = struct.unpack_from("!BBH", data, off)
        end = off + 4 + 4 * words
        if b0 >> 6 != 2 or end > n:
            return
        count = b0 & 0x1F
        body = off + 4
        if pt == SR and end - body >= 24:
            ssrc, ntp, ts, packets, octets = struct.unpack_from("!IQIII", data, body)
            blocks = _blocks(data, body + 24, count, end)
            yield SenderReport(ssrc, ntp, ts, packets, octets, blocks)
        elif pt == RR and end - body >= 4:
            yield ReceiverReport(
                struct.unpack_from("!I", data, body)[0], _blocks(data, body + 4, count, end)
            )
        elif pt in (RTPFB, PSFB) and end - body >= 8:
            sender, media = struct.unpack_from("!II", data, body)
            fci = data[body + 8 : end]
            if pt == RTPFB and count == FMT_NACK:
                yield Nack(sender, media, _nack_lost(fci))
            elif pt == PSFB and count in (FMT_PLI, FMT_FIR):
                target = (
                    media if count == FMT_PLI or len(fci) < 4 else struct.unpack_from("!I", fci)[0]
                )
                yield KeyframeRequest(sender, target)
            elif pt == PSFB and count == FMT_REMB:
                item = _remb(sender, fci)
                if item is not None:
                    yield item
        off = end


def _blocks(data: bytes, off: int, count: int, end: int) -> tuple[ReportBlock, ...]:
    return tuple(
        ReportBlock.parse(data, off + 24 * i) for i in range(count) if off + 24 * (i + 1) <= end
    )


def ntp_time(wallclock: float) -> int:
    """64-bit NTP timestamp of a Unix time."""
    seconds = wallclock + 2208988800
    return (int(seconds) << 32) | int((seconds % 1) * (1 << 32))
