"""consult.js's negotiation chain, unit-tested in Node with a fake socket and peer connection.

Pure client logic (tests/js/negotiation_chain.mjs): a renegotiation waits while the peer
connection is still connecting, server offers are answered meanwhile, and the held offer goes
out once connected; a `room` snapshot replays the bandwidth modes a lost socket missed; the
server's `media-timeout` error starts a fresh peer connection and a `reconnect`. Real
browsers run the same client in tests/test_browser.py and compat.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "js" / "negotiation_chain.mjs"
CLIENT = ROOT / "signaling" / "static" / "consult.js"


def test_renegotiation_waits_until_connected() -> None:
    node = shutil.which("node")
    assert node, "node is not installed (make test installs nodejs)"
    proc = subprocess.run(
        [node, str(SCRIPT), CLIENT.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from node (exit {proc.returncode}): {proc.stderr[-2000:]}"
    result = json.loads(lines[-1])
    assert result["ok"], result
    checks = [c["what"] for c in result["checks"]]
    assert "no client errors" in checks and checks[-1] == "the error is reported"
