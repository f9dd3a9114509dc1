"""The `netns` pytest fixture over `compat.netns` (loopback-only network namespaces).

The namespace helper itself lives in `compat/netns.py` (the `compat` tool uses it at run
time); tests import `NetNS`, `netns_available` and `remove_stale` from here as before.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from compat.netns import IP, NetNS, netns_available, remove_stale

__all__ = ["IP", "NetNS", "netns", "netns_available", "remove_stale"]


@pytest.fixture
def netns() -> Iterator[NetNS]:
    """A fresh loopback-only namespace; fails (never skips) where one cannot be made.

    Use it from a test module with `from tests.netns import netns` (or a conftest).
    """
    ok, why = netns_available()
    if not ok:
        pytest.fail(f"cannot create a network namespace (make test runs as root): {why}")
    with NetNS() as ns:
        yield ns
