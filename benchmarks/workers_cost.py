"""Media workers' cost (issue 13): CPU per forwarded packet with workers against the single
process, side by side in one run; and one worker against two (`--capacity`).

Per packet: `loadtest run -n N` alternated between `--workers 0` (media in the node's
process) and `--workers 1` (media in one worker process), A/B/A/B..., at the same N, node on
`--server-cpus`, generators on `--gen-cpus`. Each run's node CPU is summed over the node and
its workers (loadtest), so the boundary's cost, if any, shows in `node us/pkt`. Rows are
interleaved so that the machine's other load (it is shared) falls on both alike; each row
says that load.

Capacity (`--capacity`): `loadtest capacity --workers 1` (node on CPU 0, generators on
CPU 1) then `--workers 2` with the node and the generators sharing CPUs 0-1 (a 2-core
machine has no third core for the generators): the generators' CPU share is in the table.

    .venv/bin/python -m benchmarks.workers_cost -n 6 --rounds 2 --docs
    .venv/bin/python -m benchmarks.workers_cost --capacity --docs
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import table
from loadtest.report import machine_summary, write_section

LOADTEST = [sys.executable, "-m", "loadtest.cli"]


def loadtest_command(
    kind: str, workers: int, args: argparse.Namespace, out: Path, n: int = 0
) -> list[str]:
    """The `loadtest` command line of one run (as written in the docs, `.venv/bin/loadtest`)."""
    cmd = [kind]
    if kind == "run":
        cmd += ["-n", str(n), "--duration", f"{args.duration:g}"]
    cmd += ["--workers", str(workers)]
    if kind == "capacity":
        for flag in ("start", "max_consultations", "resolution"):
            if getattr(args, flag) is not None:
                cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    if kind == "capacity" and workers >= 2:
        cmd += ["--server-cpus", args.shared_cpus, "--gen-cpus", args.shared_cpus]
    else:
        cmd += ["--server-cpus", args.server_cpus, "--gen-cpus", args.gen_cpus]
    return [*cmd, "--out", str(out)]


def run_loadtest(cmd: list[str], out: Path, name: str) -> dict[str, Any]:
    """Run one `loadtest` command; its JSON report (exit status 3, not sustained, is a result)."""
    print("$ loadtest " + " ".join(cmd), flush=True)
    proc = subprocess.run([*LOADTEST, *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tail = proc.stdout.decode(errors="replace").strip().splitlines()[-3:]
    print("\n".join(tail), flush=True)
    report = out / f"{name}.json"
    if proc.returncode not in (0, 3) or not report.exists():
        raise SystemExit(f"loadtest exited {proc.returncode}: {' '.join(cmd)}")
    data: dict[str, Any] = json.loads(report.read_text())
    return data


def other_load(report: dict[str, Any]) -> str:
    other = report.get("other_load") or {}
    return "/".join(f"{v * 100:.0f}%" for _, v in sorted(other.items())) or "-"


def run_row(label: str, r: dict[str, Any]) -> list[str]:
    node, gen = r.get("node", {}), r.get("generator", {})
    return [
        label,
        str(r["consultations"]),
        str(r.get("workers", 0)),
        str(r.get("server_processes", "-")),
        f"{r.get('sustained', 0)}/{r['consultations']}",
        f"{r.get('forwarded_pps', 0):.0f}",
        f"{node.get('cpu_share', 0) * 100:.0f}%",
        f"{node.get('us_per_packet', 0):.1f}",
        f"{gen.get('us_per_packet', 0):.1f}",
        other_load(r),
    ]


def per_packet(args: argparse.Namespace) -> None:
    root = Path(args.out or f"loadtest-results/{time.strftime('%Y%m%d-%H%M%S')}-workers-cost")
    rows: list[list[str]] = []
    costs: dict[tuple[int, int], list[float]] = {}
    commands: list[str] = []
    for i in range(args.rounds):
        for n in args.consultations:
            for workers in (0, 1):
                out = root / f"r{i + 1}-n{n}-w{workers}"
                cmd = loadtest_command("run", workers, args, out, n)
                if i == 0:
                    commands.append(".venv/bin/loadtest " + " ".join(cmd[:-2]))
                r = run_loadtest(cmd, out, "run")
                if r.get("error"):
                    raise SystemExit(f"loadtest run failed: {r['error']}")
                costs.setdefault((n, workers), []).append(r["node"]["us_per_packet"])
                rows.append(run_row(f"{i + 1}{'AB'[workers]}", r))
    lines = []
    for n in args.consultations:
        a, b = statistics.median(costs[n, 0]), statistics.median(costs[n, 1])
        lines.append(
            f"- N={n}: median node us/pkt, single process (A) {a:.1f}, one worker (B) {b:.1f}"
            f" ({(b / a - 1) * 100:+.0f}%)"
        )
    summary = "\n".join(lines)
    print(table(HEADERS, rows))
    print(summary)
    if args.docs:
        write_section("workers-cost", per_packet_doc(args, commands, rows, summary))


HEADERS = [
    "run",
    "N",
    "workers",
    "node processes",
    "sustained",
    "fwd pkt/s",
    "node CPU",
    "node us/pkt",
    "gen us/pkt",
    "other load cpu0/cpu1",
]


def per_packet_doc(
    args: argparse.Namespace, commands: list[str], rows: list[list[str]], summary: str
) -> str:
    return f"""## Workers: CPU per forwarded packet against the single process

Command: `{args.command}`, which runs, alternated {args.rounds} times (A, B, A, B...):

{chr(10).join(f"- {'AB'[i % 2]}: `{c}`" for i, c in enumerate(commands))}

Machine: {machine_summary()}.
Measured {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}.

N consultations through the real signaling (docs/loadtest.md), node in
a network namespace pinned to CPU {args.server_cpus}, generators on CPU {args.gen_cpus}. A: media
in the node's process (`--workers 0`); B: media in one worker process (`--workers 1`, the node
is then 2 processes). `node us/pkt` = CPU of the node and its workers / packets forwarded
over the {args.duration:.0f} s window. `other load` is the CPU that processes outside the
run used on each CPU during the window: the machine is shared, and rows under such load are
noisier. Target (issue 13): B no higher than A.

{table(HEADERS, rows)}

{summary}
"""


def capacity_row(label: str, res: dict[str, Any]) -> list[str]:
    at = res.get("at_capacity") or {}
    best: dict[str, Any] = max(
        (p for p in res.get("probes", []) if p.get("consultations") == res.get("capacity")),
        key=lambda p: p.get("sustained", 0),
        default={},
    )
    gen = best.get("generator", {}) if best else {}
    return [
        label,
        str(res.get("capacity")),
        f"{at.get('node_cpu_share', 0) * 100:.0f}%" if at else "-",
        f"{at.get('node_us_per_packet', 0):.1f}" if at else "-",
        f"{gen.get('cpu_share', 0) * 100:.0f}%" if gen else "-",
        other_load(best) if best else "-",
    ]


def capacity(args: argparse.Namespace) -> None:
    root = Path(args.out or f"loadtest-results/{time.strftime('%Y%m%d-%H%M%S')}-workers-capacity")
    rows: list[list[str]] = []
    commands: list[str] = []
    for workers in (1, 2):
        out = root / f"w{workers}"
        cmd = loadtest_command("capacity", workers, args, out)
        commands.append(".venv/bin/loadtest " + " ".join(cmd[:-2]))
        res = run_loadtest(cmd, out, "capacity")
        cap = res.get("results", {}).get("ours", res)
        row = capacity_row(commands[-1].split(" ", 2)[2], cap)
        if cap.get("capacity") == (args.max_consultations or 64):  # loadtest's default top
            row[1] = f">= {row[1]} (the ramp's top)"
        rows.append(row)
    headers = [
        "command",
        "capacity",
        "node CPU at capacity",
        "node us/pkt",
        "generators' CPU",
        "other load",
    ]
    print(table(headers, rows))
    if args.docs:
        body = f"""## Workers: one worker against two (capacity)

Command: `{args.command}`, which runs `{commands[0]}` then `{commands[1]}`.

Machine: {machine_summary()}.
Measured {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}.

`loadtest capacity` (docs/loadtest.md): the most consultations with every one sustained. With
one worker the node has CPU {args.server_cpus} and the generators CPU {args.gen_cpus}; this
machine has no third core, so with two workers the node, its workers and the generators share
CPUs {args.shared_cpus}: `generators' CPU` (in % of one core, at the capacity probe) is what
the generators took from the two workers. `node CPU` is the node and its workers together, in
% of one core. `other load` is the CPU other processes used on each CPU during that probe.

{table(headers, rows)}
"""
        write_section("workers-capacity", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--consultations", type=int, nargs="+", default=[6])
    parser.add_argument("--duration", type=float, default=30.0, help="window of each run (s)")
    parser.add_argument("--rounds", type=int, default=2, help="A/B pairs")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--gen-cpus", default="1")
    parser.add_argument("--shared-cpus", default="0-1", help="--capacity, two workers: all CPUs")
    parser.add_argument("--capacity", action="store_true", help="one worker against two")
    parser.add_argument("--start", type=int, help="--capacity: loadtest's first N")
    parser.add_argument("--max-consultations", type=int, help="--capacity: loadtest's top N")
    parser.add_argument("--resolution", type=int, help="--capacity: loadtest's bisection step")
    parser.add_argument("--out", help="folder of the loadtest reports")
    parser.add_argument("--docs", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()
    shown = [a for a in sys.argv[1:] if a != "--out" and a != args.out]  # (its own folder)
    args.command = ".venv/bin/python -m benchmarks.workers_cost " + " ".join(shown)
    if args.capacity:
        capacity(args)
    else:
        per_packet(args)


if __name__ == "__main__":
    main()
