"""A fleet of two nodes against one node alone (issue 14): where rooms go, what Redis and the
redirect cost a join.

One run starts a redis-server and three real nodes on loopback: `alone` (no `--redis-url`)
and `f1`, `f2` (a fleet sharing the redis-server). Rounds alternate `loadtest run -n N`
against `alone` and against the fleet through `f1` (alone/fleet, then fleet/alone, ...): in
the fleet every room is created through `f1`, placed by load on `f1` or `f2`, and the
clients of a room placed on `f2` are redirected there. Per run: consultations joined, join
time (room creation to media flowing both ways, loadtest's `join_s`) p50/p95/max, and for
the fleet the rooms each node got (the delta of f1's `consult_fleet_placements_total`:
`local` on f1, `remote` on f2). Rooms are ended between runs.

    .venv/bin/python -m benchmarks.fleet -n 8 --rounds 3 --docs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.common import table
from loadtest.report import machine_summary, write_section
from loadtest.runner import Options, run_probe
from signaling.config import DEV_API_KEY, DEV_TOKEN_SECRET


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processes:
    """redis-server and the nodes, killed on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("wb")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            proc.wait(10)


def node_args(port: int, redis_url: str | None, node_id: str) -> list[str]:
    args = [sys.executable, "-m", "signaling", "run", "--dev", "--port", str(port)]
    args += ["--workers", "0", "--auto-create-rooms", "false", "--log-level", "WARNING"]
    if redis_url:
        args += ["--redis-url", redis_url, "--node-id", node_id]
    return args


def api(url: str, method: str, path: str) -> Any:
    request = urllib.request.Request(
        url + path, method=method, headers={"Authorization": f"Bearer {DEV_API_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def wait_fleet(url: str, size: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            info = api(url, "GET", "/api/v1/node")
            if len(info.get("fleet", [])) >= size:
                return
        time.sleep(0.2)
    raise SystemExit(f"the node at {url} did not see {size} node(s)")


def placements(url: str) -> dict[str, float]:
    """f1's consult_fleet_placements_total by outcome (labels kept)."""
    out: dict[str, float] = {}
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("consult_fleet_placements_total{"):
                outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
                out[outcome] = float(line.rsplit(" ", 1)[1])
    return out


def end_rooms(urls: list[str]) -> None:
    for url in urls:
        for room in api(url, "GET", "/api/v1/rooms")["rooms"]:
            with contextlib.suppress(OSError):
                api(url, "DELETE", f"/api/v1/rooms/{room['id']}")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is missing (apt-get install redis-server)")
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-fleet-"))
    out.mkdir(parents=True, exist_ok=True)
    procs = Processes(out)
    rows: list[dict[str, Any]] = []
    try:
        redis_port = _free_port()
        procs.start(
            "redis",
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
        )
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        ports = {name: _free_port() for name in ("alone", "f1", "f2")}
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        procs.start("alone", node_args(ports["alone"], None, "alone"))
        time.sleep(1)  # redis-server up before the fleet's nodes (they would wait anyway)
        procs.start("f1", node_args(ports["f1"], redis_url, "f1"))
        procs.start("f2", node_args(ports["f2"], redis_url, "f2"))
        wait_fleet(urls["alone"], 1)
        wait_fleet(urls["f1"], 2)
        wait_fleet(urls["f2"], 2)
        for r in range(args.rounds):
            order = ("alone", "fleet") if r % 2 == 0 else ("fleet", "alone")
            for which in order:
                entry = urls["alone" if which == "alone" else "f1"]
                before = placements(urls["f1"]) if which == "fleet" else {}
                opts = Options(
                    url=entry,
                    api_key=DEV_API_KEY,
                    token_secret=DEV_TOKEN_SECRET,
                    duration=args.duration,
                    warmup=args.warmup,
                    join_rate=args.join_rate,
                    generators=1,
                    server_cpus=None,
                    gen_cpus=None,
                    out=out / f"{r}-{which}",
                )
                report = run_probe(opts, args.consultations)
                joins = [
                    c["join_s"]
                    for c in report.get("consultation_results", [])
                    if c.get("join_s") is not None
                ]
                row: dict[str, Any] = {
                    "round": r + 1,
                    "config": which,
                    "joined": len(joins),
                    "n": args.consultations,
                    "join_p50_s": pct(joins, 0.5),
                    "join_p95_s": pct(joins, 0.95),
                    "join_max_s": max(joins, default=None),
                    "error": report.get("error", ""),
                }
                if which == "fleet":
                    after = placements(urls["f1"])
                    row["rooms_f1"] = int(after.get("local", 0) - before.get("local", 0))
                    row["rooms_f2"] = int(after.get("remote", 0) - before.get("remote", 0))
                rows.append(row)
                print(row, flush=True)
                end_rooms(list(urls.values()))
                time.sleep(1)
    finally:
        procs.close()
    return rows, str(out)


def render(rows: list[dict[str, Any]], args: argparse.Namespace, when: str) -> str:
    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f} s"

    body = [
        [
            str(r["round"]),
            r["config"],
            f"{r['joined']}/{r['n']}",
            s(r["join_p50_s"]),
            s(r["join_p95_s"]),
            s(r["join_max_s"]),
            f"{r['rooms_f1']} / {r['rooms_f2']}" if r["config"] == "fleet" else "-",
            r["error"][:40] or "-",
        ]
        for r in rows
    ]
    p95 = {
        c: statistics.median(
            [r["join_p95_s"] for r in rows if r["config"] == c and r["join_p95_s"] is not None]
            or [float("nan")]
        )
        for c in ("alone", "fleet")
    }
    spread = [abs(r["rooms_f1"] - r["rooms_f2"]) for r in rows if r["config"] == "fleet"]
    command = (
        f".venv/bin/python -m benchmarks.fleet -n {args.consultations} --rounds {args.rounds}"
        f" --duration {args.duration:g} --join-rate {args.join_rate:g}"
    )
    lines = [
        "## A fleet of two nodes",
        "",
        f"`{command}` ({when}; {machine_summary()}). Three nodes on loopback, `--workers 0`,",
        "not pinned, the generator beside them: `alone` without Redis, and a fleet of `f1`",
        "and `f2` sharing one redis-server, every room created and every client connecting",
        "through `f1` (a room placed on `f2` redirects its clients there). Join: room",
        "creation to media flowing both ways (loadtest's join time). Runs alternate.",
        "",
        table(
            [
                "round",
                "target",
                "joined",
                "join p50",
                "join p95",
                "join max",
                "rooms f1 / f2",
                "error",
            ],
            body,
        ),
        "",
        f"Median join p95: alone {p95['alone']:.2f} s, fleet {p95['fleet']:.2f} s"
        f" ({p95['fleet'] / p95['alone']:.2f}x; target <= 1.2x). Placement: the rooms of a run"
        f" differ by at most {max(spread, default=0)} between the two nodes (target: within"
        " one of even).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--consultations", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--join-rate", type=float, default=4.0)
    parser.add_argument("--out", help="logs and reports (default: a temporary folder)")
    parser.add_argument("--docs", action="store_true", help="write docs/benchmarks.md's section")
    args = parser.parse_args()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows, out = run(args)
    text = render(rows, args, when)
    print(text)
    print(f"(logs and reports: {out})")
    if args.docs:
        write_section("fleet", text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
