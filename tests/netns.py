"""Loopback-only network namespaces for tests (the helpers live in `loadtest.netns`).

with NetNS() as ns:
    server = ns.popen([sys.executable, "-m", "signaling", "run", ...])
    wrapper = ns.wrapper(tmp_path / "chromium", "/usr/bin/chromium")
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadtest.netns import NetNS, VethNS, netns_available, remove_stale

__all__ = ["NetNS", "VethNS", "netns", "netns_available", "remove_stale"]


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
