"""ReorderBuffer: RTP packets of one track back into sequence order, with gaps said.

Packets arrive mostly in order; a late one (NACK-resent, reordered) waits here up to
`depth` packets. Once more than `depth` packets wait behind a missing one, it is given up:
`pop()` yields `None` (a gap) and goes on from the next packet there is. Duplicates and
packets older than what was already released are dropped.
"""

from __future__ import annotations

from collections.abc import Iterator


class ReorderBuffer:
    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._waiting: dict[int, bytes] = {}
        self._next: int | None = None  # the sequence number released next
        self.gaps = 0

    def push(self, seq: int, packet: bytes) -> Iterator[bytes | None]:
        """Add a packet; yield what is now in order (None where packets were given up)."""
        if self._next is None:
            self._next = seq
        delta = (seq - self._next) & 0xFFFF
        if delta >= 0x8000 or seq in self._waiting:
            return  # older than what was released, or a duplicate
        self._waiting[seq] = packet
        while self._waiting:
            packet_ = self._waiting.pop(self._next, None)
            if packet_ is not None:
                self._next = (self._next + 1) & 0xFFFF
                yield packet_
                continue
            if len(self._waiting) <= self.depth:
                return
            self.gaps += 1
            yield None
            self._next = min(self._waiting, key=lambda s: (s - self._next) & 0xFFFF)  # type: ignore[operator]

    def drain(self) -> Iterator[bytes | None]:
        """Everything still waiting, in order (at the end of a recording)."""
        while self._waiting and self._next is not None:
            packet = self._waiting.pop(self._next, None)
            if packet is None:
                self.gaps += 1
                yield None
                self._next = min(self._waiting, key=lambda s: (s - self._next) & 0xFFFF)  # type: ignore[operator]
                continue
            self._next = (self._next + 1) & 0xFFFF
            yield packet
