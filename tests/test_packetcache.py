from __future__ import annotations

import pytest

from mediaserver.packetcache import PacketCache


def test_get_returns_only_the_exact_sequence() -> None:
    cache = PacketCache(64)
    cache.put(10, b"a")
    assert cache.get(10) == b"a"
    assert cache.get(10 + 64) is None  # same slot, other sequence
    assert 10 in cache and 11 not in cache


def test_ring_overwrites_oldest_and_survives_wrap() -> None:
    cache = PacketCache(64)
    for seq in range(65500, 65536 + 100):
        cache.put(seq & 0xFFFF, seq.to_bytes(4, "big"))
    assert cache.get((65536 + 99) & 0xFFFF) == (65536 + 99).to_bytes(4, "big")
    assert cache.get(65500) is None  # evicted
    cache.clear()
    assert cache.get(99) is None


def test_size_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError):
        PacketCache(100)
