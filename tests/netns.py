"""The `netns` pytest fixture over `loadtest.netns` (network namespaces for real peers).

The namespace helpers live in `loadtest/netns.py` (`compat run` and the load test use them
at run time); tests import them from here (`__all__`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadtest.netns import (
    IP,
    CreateClose,
    NetNS,
    VethNS,
    add_veth,
    netns_available,
    remove_stale,
)

__all__ = [
    "IP",
    "CreateClose",
    "NetNS",
    "VethNS",
    "add_veth",
    "netns",
    "netns_available",
    "remove_stale",
]


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
