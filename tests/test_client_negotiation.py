"""consult.js's negotiation chain, unit-tested in Node with a fake socket and peer connection.

Pure client logic (tests/js/negotiation_chain.mjs): a renegotiation waits while the peer
connection is still connecting, server offers are answered meanwhile, and the held offer goes
out once connected; a `room` snapshot replays the bandwidth modes a lost socket missed; the
server's `media-timeout` error starts a fresh peer connection and a `reconnect`. Real
browsers run the same client in tests/test_browser.py and compat.

consult.js is an ES module served as `.js` with no package.json: Node 18 (Debian 12's) loads
such a file as CommonJS (`SyntaxError: Unexpected token 'export'`); newer Nodes guess it is a
module from its syntax. The test imports a copy named `.mjs`, a module for every Node, and runs
Node without that guess where it has one, so a newer Node loads modules as Debian's does.
Node 18 also lacks the global CustomEvent (the client's events): the script defines it there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "js" / "negotiation_chain.mjs"
CLIENT = ROOT / "signaling" / "static" / "consult.js"


# Node >= 20.19 / 22.7 guess a `.js` file's module type from its syntax; Node 18 cannot.
AS_NODE_18 = ["--no-experimental-detect-module", "--no-experimental-require-module"]


def node_18_flags(node: str) -> list[str]:
    """The flags that make this Node load modules as Node 18 does (none on a Node without
    them: an older one, which already does)."""
    probe = subprocess.run(
        [node, *AS_NODE_18, "-e", "0"], capture_output=True, timeout=60, check=False
    )
    return AS_NODE_18 if probe.returncode == 0 else []


def test_renegotiation_waits_until_connected(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "node is not installed (make test installs nodejs)"
    client = tmp_path / "consult.mjs"
    shutil.copyfile(CLIENT, client)
    proc = subprocess.run(
        [node, *node_18_flags(node), str(SCRIPT), client.as_uri()],
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
