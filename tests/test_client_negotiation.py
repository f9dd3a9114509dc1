"""consult.js's negotiation chain, unit-tested in Node with a fake socket and peer connection.

Pure client logic (tests/js/negotiation_chain.mjs): a renegotiation waits while the peer
connection is still connecting, server offers are answered meanwhile, and the held offer goes
out once connected; a `room` snapshot replays the bandwidth modes a lost socket missed; the
server's `media-timeout` error starts a fresh peer connection and a `reconnect`. Real
browsers run the same client in tests/test_browser.py and compat. How Node runs it (as
Debian 12's Node 18 would): tests/client_js.py.
"""

from __future__ import annotations

from pathlib import Path

from .client_js import run_client_script


def test_renegotiation_waits_until_connected(tmp_path: Path) -> None:
    result = run_client_script("negotiation_chain.mjs", tmp_path)
    assert result["ok"], result
    checks = [c["what"] for c in result["checks"]]
    assert "no client errors" in checks and checks[-1] == "the error is reported"
