"""Receive statistics of one RTP source (RFC 3550 appendix A.1, A.3, A.8)."""

from __future__ import annotations

from .rtcp import ReportBlock


class ReceiveStats:
    """Updated once per received packet; read once per report interval."""

    __slots__ = (
        "base_seq",
        "bytes",
        "clock_rate",
        "cycles",
        "expected_prior",
        "jitter",
        "max_seq",
        "received",
        "received_prior",
        "started",
        "transit",
    )

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.started = False
        self.base_seq = 0
        self.max_seq = 0
        self.cycles = 0
        self.received = 0
        self.bytes = 0
        self.expected_prior = 0
        self.received_prior = 0
        self.jitter = 0.0
        self.transit = 0.0

    def update(self, seq: int, timestamp: int, arrival: float, size: int) -> int:
        """Count a packet; returns how many sequence numbers it skipped (0 if in order)."""
        self.received += 1
        self.bytes += size
        transit = arrival * self.clock_rate - timestamp
        if not self.started:
            self.started = True
            self.base_seq = self.max_seq = seq
            self.transit = transit
            return 0
        d = transit - self.transit
        self.transit = transit
        if d < 0:
            d = -d
        if d < self.clock_rate:  # ignore timestamp jumps (a new source, a long pause)
            self.jitter += (d - self.jitter) / 16
        delta = (seq - self.max_seq) & 0xFFFF
        if delta == 0 or delta >= 0x8000:
            return 0  # duplicate or late packet
        if seq < self.max_seq:
            self.cycles += 0x10000
        self.max_seq = seq
        return delta - 1

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return self.extended_max - self.base_seq + 1 if self.started else 0

    @property
    def lost(self) -> int:
        return self.expected - self.received

    def interval(self) -> tuple[float, int]:
        """Fraction lost since the previous call and packets expected in that interval."""
        expected = self.expected
        expected_interval = expected - self.expected_prior
        received_interval = self.received - self.received_prior
        self.expected_prior = expected
        self.received_prior = self.received
        lost_interval = expected_interval - received_interval
        if expected_interval <= 0 or lost_interval <= 0:
            return 0.0, max(expected_interval, 0)
        return lost_interval / expected_interval, expected_interval

    def report_block(self, ssrc: int, fraction: float, lsr: int, dlsr: int) -> ReportBlock:
        return ReportBlock(
            ssrc=ssrc,
            fraction_lost=min(255, int(fraction * 256)),
            packets_lost=self.lost,
            highest_seq=self.extended_max & 0xFFFFFFFF,
            jitter=int(self.jitter),
            lsr=lsr,
            dlsr=dlsr,
        )
