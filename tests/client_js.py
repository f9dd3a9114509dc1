"""Run a unit test of consult.js in Node (tests/js/*.mjs), the way Debian 12's Node 18 runs it.

consult.js is an ES module served as `.js` with no package.json: Node 18 loads such a file as
CommonJS (`SyntaxError: Unexpected token 'export'`), while Node >= 20.19 / 22.7 guesses the
module type from its syntax. The script imports a copy named `.mjs`, a module for every Node,
and a newer Node runs with its guessing off, so a test that passes here passes on Node 18.
Each script prints one JSON line `{ok, checks, error}`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "signaling" / "static" / "consult.js"
AS_NODE_18 = ["--no-experimental-detect-module", "--no-experimental-require-module"]


def node_18_flags(node: str) -> list[str]:
    """The flags that make this Node load modules as Node 18 does (none on a Node without
    them: an older one, which already does)."""
    probe = subprocess.run(
        [node, *AS_NODE_18, "-e", "0"], capture_output=True, timeout=60, check=False
    )
    return AS_NODE_18 if probe.returncode == 0 else []


def run_client_script(name: str, tmp_path: Path) -> dict[str, Any]:
    """Run tests/js/NAME against a `.mjs` copy of consult.js; its result line, parsed."""
    node = shutil.which("node")
    assert node, "node is not installed (make test installs nodejs)"
    client = tmp_path / "consult.mjs"
    shutil.copyfile(CLIENT, client)
    proc = subprocess.run(
        [node, *node_18_flags(node), str(ROOT / "tests" / "js" / name), client.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from node (exit {proc.returncode}): {proc.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result
