"""Per-publication ring of recent packets to answer NACKs (Galene's packetcache)."""

from __future__ import annotations


class PacketCache:
    __slots__ = ("__weakref__", "_mask", "_packets", "_seqs")  # weakref: tests prove it is freed

    def __init__(self, size: int = 1024) -> None:
        if size < 16 or size & (size - 1):
            raise ValueError("size must be a power of two >= 16")
        self._mask = size - 1
        self._packets: list[bytes | None] = [None] * size
        self._seqs: list[int] = [-1] * size

    def put(self, seq: int, packet: bytes) -> None:
        i = seq & self._mask
        self._packets[i] = packet
        self._seqs[i] = seq

    def get(self, seq: int) -> bytes | None:
        i = seq & self._mask
        return self._packets[i] if self._seqs[i] == seq else None

    def __contains__(self, seq: int) -> bool:
        return self._seqs[seq & self._mask] == seq

    def clear(self) -> None:
        self._packets = [None] * len(self._packets)
        self._seqs = [-1] * len(self._seqs)
