"""`loadtest run | capacity | compare`: how many consultations a node sustains (docs/loadtest.md).

Exit status: 0 measured and every probe's verdict printed (run: every consultation
sustained); 1 an error (target unreachable or refused, a process died): the partial report
is still written; 2 bad arguments; 3 (run only) measured, but not every consultation was
sustained.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from .procs import parse_cpus
from .report import (
    charts,
    machine_summary,
    probes_table,
    unsustained,
    write_json,
    write_section,
)
from .runner import Options, Progress, capacity, run_probe, verdict
from .slo import Thresholds
from .targets import usable_cpus


class RichProgress(Progress):
    """A live progress line on stderr (rich); plain lines when stderr is not a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.task = self.bar.add_task("starting", total=1)
        self.bar.start()

    def phase(self, text: str, done: float = 0.0, total: float = 1.0) -> None:
        self.bar.update(self.task, description=text, completed=done, total=total)

    def log(self, text: str) -> None:
        self.console.log(text)

    def stop(self) -> None:
        self.bar.stop()


def _options(args: argparse.Namespace) -> Options:
    cpus = usable_cpus()
    try:
        server_cpus, gen_cpus = parse_cpus(args.server_cpus), parse_cpus(args.gen_cpus)
    except ValueError as exc:
        raise SystemExit(f"loadtest: {exc}") from exc
    if len(cpus) < 2:
        server_cpus = gen_cpus = None  # one CPU: nothing to pin apart
    for group in (server_cpus, gen_cpus):
        for cpu in group or ():
            if cpu not in cpus:
                raise SystemExit(f"loadtest: CPU {cpu} is not usable here (usable: {cpus})")
    if args.workers < 0 or args.generators < 1:
        raise SystemExit("loadtest: --workers must be >= 0 and --generators >= 1")
    if getattr(args, "url", None) and args.target == "janus":
        raise SystemExit("loadtest: --url is for our node; --target janus starts Janus itself")
    if getattr(args, "url", None) and not (args.api_key and args.token_secret):
        raise SystemExit("loadtest: --url needs --api-key and --token-secret (the node's)")
    return Options(
        target=args.target,
        url=getattr(args, "url", None),
        api_key=getattr(args, "api_key", "") or "",
        token_secret=getattr(args, "token_secret", "") or "",
        node_pid=getattr(args, "node_pid", None),
        duration=args.duration,
        warmup=args.warmup,
        join_rate=args.join_rate,
        generators=args.generators,
        workers=args.workers,
        server_cpus=server_cpus,
        gen_cpus=gen_cpus,
        decrypt_all=args.decrypt_all,
        event_loop_receive=args.event_loop_receive,
        thresholds=Thresholds(
            max_loss=args.max_loss / 100,
            max_latency_p95_ms=args.max_latency_ms,
            max_freezes=args.max_freezes,
            max_join_s=args.max_join_s,
        ),
        out=Path(args.out)
        if args.out
        else Path("loadtest-results") / time.strftime(f"%Y%m%d-%H%M%S-{args.command}"),
    )


def _common(p: argparse.ArgumentParser, *, duration: float) -> None:
    p.add_argument("--target", choices=("ours", "janus"), default="ours")
    p.add_argument("--duration", type=float, default=duration, help="measurement window (s)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds after the joins")
    p.add_argument("--join-rate", type=float, default=4.0, help="consultations joined per s")
    p.add_argument(
        "--workers", type=int, default=0, help="our node's media worker processes (0: in-process)"
    )
    p.add_argument("--generators", type=int, default=2, help="generator processes")
    p.add_argument(
        "--server-cpus",
        "--server-cpu",
        default="0",
        help="CPUs of the SFU, a taskset list (0, 0-3, 0,2; -1: not pinned)",
    )
    p.add_argument(
        "--gen-cpus",
        "--gen-cpu",
        default="1",
        help="CPUs of the generator processes, a taskset list (-1: not pinned)",
    )
    p.add_argument("--out", help="report folder (default loadtest-results/<time>-<command>)")
    p.add_argument("--decrypt-all", action="store_true", help="decrypt every received packet")
    p.add_argument(
        "--event-loop-receive",
        action="store_true",
        help="generator: one event-loop wake-up per datagram (uvloop) instead of draining",
    )
    p.add_argument("--max-loss", type=float, default=1.0, help="SLO: loss per stream, %%")
    p.add_argument("--max-latency-ms", type=float, default=50.0, help="SLO: p95 latency")
    p.add_argument("--max-freezes", type=int, default=0, help="SLO: video gaps > 500 ms")
    p.add_argument("--max-join-s", type=float, default=2.0, help="SLO: join time")


def _search(p: argparse.ArgumentParser, *, resolution: int = 2) -> None:
    p.add_argument("--start", type=int, default=8, help="first N of the ramp (doubling)")
    p.add_argument("--max-consultations", type=int, default=64)
    p.add_argument("--resolution", type=int, default=resolution, help="bisection stops here")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="loadtest", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="N consultations for a window, one report")
    _common(run, duration=30.0)
    run.add_argument("--consultations", "-n", type=int, required=True)
    run.add_argument("--url", help="a running node (default: start one in a namespace)")
    run.add_argument("--api-key", help="with --url: the node's API key")
    run.add_argument("--token-secret", help="with --url: the node's token secret")
    run.add_argument("--node-pid", type=int, help="with --url: the node's pid (CPU, memory)")
    cap = sub.add_parser("capacity", help="ramp + binary search of sustained consultations")
    _common(cap, duration=20.0)
    _search(cap)
    cmp_ = sub.add_parser("compare", help="capacity of ours and Janus, side by side")
    _common(cmp_, duration=12.0)
    _search(cmp_, resolution=3)  # two searches in about ten minutes
    cmp_.add_argument("--docs", action="store_true", help="write docs/benchmarks.md's section")
    return ap


def _finish(opts: Options, name: str, report: dict[str, Any], probes: list[dict[str, Any]]) -> None:
    path = write_json(opts.out / f"{name}.json", report)
    try:
        pngs = charts(opts.out, probes)
    except Exception as exc:  # a chart is never worth losing the report
        pngs = []
        print(f"charts failed: {exc}", file=sys.stderr)
    print(probes_table(probes))
    print(f"report: {path}" + "".join(f"\nchart: {p}" for p in pngs))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        opts = _options(args)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "run" and args.consultations < 1:
        print("loadtest: --consultations must be at least 1", file=sys.stderr)
        return 2
    command = ".venv/bin/loadtest " + shlex.join(sys.argv[1:] if argv is None else argv)
    progress = RichProgress()
    probes: list[dict[str, Any]] = []
    try:
        if args.command == "run":
            r = run_probe(opts, args.consultations, progress)
            probes.append(r)
            progress.stop()
            _finish(opts, "run", {"command": command} | r, probes)
            print(f"verdict: {verdict(r)}")
            for line in unsustained(r):
                print(f"  not sustained: {line}")
            if r.get("error"):
                return 1
            return 0 if r.get("all_sustained") else 3
        targets = ["ours", "janus"] if args.command == "compare" else [opts.target]
        results: dict[str, dict[str, Any]] = {}
        for t in targets:
            opts.target = t
            results[t] = capacity(
                opts,
                start=args.start,
                max_n=args.max_consultations,
                resolution=args.resolution,
                progress=progress,
                probes=probes,
            )
        progress.stop()
        report = {"command": command, "results": results}
        _finish(opts, args.command, report, probes)
        for t, res in results.items():
            print(_capacity_line(t, res))
        if args.command == "compare":
            text = compare_text(results, command)
            print(text)
            if args.docs and not any(r["error"] for r in results.values()):
                write_section(
                    "loadtest-compare",
                    text.replace("MACHINE", machine_summary()) + "\n\n" + probes_table(probes),
                )
        return 1 if any(r["error"] for r in results.values()) else 0
    except KeyboardInterrupt:
        progress.stop()
        _finish(opts, args.command, {"command": command, "interrupted": True}, probes)
        return 1
    finally:
        progress.stop()


def _capacity_line(target: str, res: dict[str, Any]) -> str:
    if res["error"]:
        return f"{target}: ERROR {res['error']}"
    cap = res["capacity"]
    bound = " (a lower bound: the generator was the bottleneck)" if res["generator_bound"] else ""
    at = res.get("at_capacity") or {}
    extra = ""
    if at:
        per = at.get("node_cpu_share_per_consultation")
        mem = at.get("node_rss_mb_per_consultation")
        extra = (
            f"; at N={cap}: node CPU {at['node_cpu_share'] * 100:.0f}% of a core"
            f" ({(per or 0) * 100:.1f}% per consultation), "
            f"{at['node_us_per_packet']:.1f} us/packet, RSS {at['node_rss_mb']:.0f} MB"
            + (f" ({mem:.1f} MB per consultation)" if mem is not None else "")
            + f"; generator {at['generator_ratio_to_node'] or 0:.2f}x the node per packet"
        )
    busy = max(
        (v for p in res.get("probes", []) for v in p.get("other_load", {}).values()), default=0.0
    )
    noisy = (
        f" [other processes used up to {busy * 100:.0f}% of a CPU: re-run on a quiet machine]"
        if busy > 0.1
        else ""
    )
    return f"{target}: {cap} consultations sustained{bound}{extra}{noisy}"


def compare_text(results: dict[str, dict[str, Any]], command: str) -> str:
    """Ours against Janus: sustained consultations, CPU per packet at equal N, memory."""
    ours, janus = results.get("ours", {}), results.get("janus", {})

    def by_n(res: dict[str, Any]) -> dict[int, dict[str, Any]]:
        return {
            p["consultations"]: p
            for p in res.get("probes", [])
            if "node" in p and p["target"] == res.get("target")
        }

    a, b = by_n(ours), by_n(janus)
    common = sorted(set(a) & set(b))
    rows = []
    for n in common:
        pa, pb = a[n]["node"], b[n]["node"]
        rows.append(
            f"| {n} | {_us(pa)} | {_us(pb)} | {a[n].get('sustained', 0)}/{n} | "
            f"{b[n].get('sustained', 0)}/{n} | {pa.get('rss_mb') or 0:.0f} MB | "
            f"{pb.get('rss_mb') or 0:.0f} MB |"
        )
    lines = [
        "## Load test: ours against Janus",
        "",
        f"Command: `{command}`",
        "",
        "Machine: MACHINE.",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"Other processes' load during the windows (mean over probes, % of CPU0/CPU1): "
        f"{_mean_load(ours, janus)}.",
        "",
        "Each SFU in its own network namespace (veth pair), pinned to CPU 0; the generator",
        "(`loadtest`) outside, on CPU 1. CPU per packet = the SFU's CPU time over the window",
        "/ packets received by the generator's subscribers. See docs/loadtest.md.",
        "",
        f"Sustained consultations: ours **{ours.get('capacity')}**"
        + (" (generator-bound)" if ours.get("generator_bound") else "")
        + f", Janus **{janus.get('capacity')}**"
        + (" (generator-bound)" if janus.get("generator_bound") else "")
        + ".",
        "",
        "| N | ours us/pkt | Janus us/pkt | ours sustained | Janus sustained | ours RSS |"
        " Janus RSS |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    return "\n".join(lines)


def _mean_load(*results: dict[str, Any]) -> str:
    loads = [p["other_load"] for r in results for p in r.get("probes", []) if "other_load" in p]
    if not loads:
        return "-"
    cpus = sorted({c for load in loads for c in load})
    return "/".join(
        f"{sum(load.get(c, 0.0) for load in loads) / len(loads) * 100:.0f}%" for c in cpus
    )


def _us(node: dict[str, Any]) -> str:
    v = node.get("us_per_packet")
    return "-" if v is None else f"{v:.1f}"


if __name__ == "__main__":
    sys.exit(main())
