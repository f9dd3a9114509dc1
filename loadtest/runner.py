"""One load-test probe (N consultations for a window), the capacity search, the comparison.

A probe: start the target (or use the node at --url), start the generator processes (pinned
to the generator's CPU, consultations dealt round-robin, joins paced by --join-rate), wait
for every consultation to join or fail, warm up, then measure a window between two snapshots
of every counter: the generator's per-stream counters, the node's CPU time and memory from
/proc (all its processes), /proc/stat for the other load on each CPU, and the node's
/metrics (ours; scraped every 2 s during the window). Every wait is bounded; a target that
dies, a worker that dies or a consultation that cannot join ends with a clear error while
what was measured is kept.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .procs import CLK_TCK, Children, cpu_jiffies, cpu_label, proc_cpu, read_line, taskset
from .slo import Thresholds, consultation_window, evaluate
from .targets import ExternalTarget, Target, TargetError, scrape, start_target
from .worker import JOIN_TIMEOUT_S

GEN_BUSY_LIMIT = 0.90  # generator share of its core above which it is the bottleneck
LATE_TICKS_LIMIT = 0.15  # pacer ticks woken over a tick late (other load preempting it)
METRICS_EVERY_S = 2.0
METRICS_SILENT_S = 15.0  # a node silent on /metrics this long (3 tries at least) is dead


@dataclass
class Options:
    target: str = "ours"
    url: str | None = None
    api_key: str = ""
    token_secret: str = ""
    node_pid: int | None = None
    duration: float = 20.0
    warmup: float = 5.0
    join_rate: float = 4.0
    generators: int = 1  # generator processes
    workers: int = 0  # our node's media worker processes (0: in-process)
    server_cpus: tuple[int, ...] | None = (0,)  # None: not pinned
    gen_cpus: tuple[int, ...] | None = (1,)
    decrypt_all: bool = False
    event_loop_receive: bool = False
    thresholds: Thresholds = field(default_factory=Thresholds)
    out: Path = Path("loadtest-results")


class Progress:
    """What the runner tells the live display (rich) about a probe."""

    def phase(self, text: str, done: float = 0.0, total: float = 1.0) -> None:
        pass

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


def other_load(
    jif0: dict[int, tuple[int, int]],
    jif1: dict[int, tuple[int, int]],
    ours0: dict[tuple[int, ...], float],
    ours1: dict[tuple[int, ...], float],
    pinned: list[tuple[int, ...]],
    window: float,
) -> dict[str, float]:
    """Foreign load (share of one CPU, 0-1) per pinned CPU set ("cpu0-3": averaged over its
    CPUs, our processes' CPU subtracted) and per other CPU ("cpu5")."""
    out: dict[str, float] = {}
    seen: set[int] = set()
    for cpus in dict.fromkeys(pinned):  # the server and the generators may share one set
        present = [c for c in cpus if c in jif0 and c in jif1]
        if not present:
            continue
        seen.update(present)
        busy = sum(jif1[c][0] - jif0[c][0] for c in present) / CLK_TCK
        ours = ours1.get(cpus, 0.0) - ours0.get(cpus, 0.0)
        out[cpu_label(cpus)] = max(0.0, (busy - ours) / window / len(present))
    for c in jif1:
        if c in jif0 and c not in seen:
            out[f"cpu{c}"] = max(0.0, (jif1[c][0] - jif0[c][0]) / CLK_TCK / window)
    return out


def _worker_cmd(opts: Options, spec: dict[str, Any]) -> list[str]:
    return [*taskset(opts.gen_cpus), sys.executable, "-m", "loadtest.worker", json.dumps(spec)]


def run_probe(opts: Options, n: int, progress: Progress | None = None) -> dict[str, Any]:
    """N consultations against the target; returns the probe's report (never raises for a
    failing target: `error` says what happened, the numbers measured so far are kept)."""
    progress = progress or Progress()
    report: dict[str, Any] = {
        "target": opts.target,
        "consultations": n,
        "workers": opts.workers if opts.target == "ours" else None,
        "server_cpus": list(opts.server_cpus or ()),
        "gen_cpus": list(opts.gen_cpus or ()),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "error": "",
        "thresholds": opts.thresholds.as_dict(),
        "metrics": [],
        "consultation_results": [],
    }
    children = Children()
    target: Target | None = None
    try:
        progress.phase(f"{opts.target} N={n}: starting the target")
        if opts.url:
            target = ExternalTarget(opts.url, opts.api_key, opts.token_secret, opts.node_pid)
        else:
            target = start_target(
                opts.target, opts.server_cpus, opts.out / "logs", workers=opts.workers
            )
        _measure(opts, n, target, children, report, progress)
    except TargetError as exc:
        report["error"] = str(exc)
    except KeyboardInterrupt:
        report["error"] = "interrupted"
        raise  # after the cleanup below: Ctrl-C ends the whole command
    finally:
        children.stop()
        if target is not None:
            target.close()
    return report


def _measure(
    opts: Options,
    n: int,
    target: Target,
    children: Children,
    report: dict[str, Any],
    progress: Progress,
) -> None:
    run_id = secrets.token_hex(3)
    rss0 = target.rss_mb()
    report["node_rss_mb_idle"] = rss0
    workers = max(1, min(opts.generators, n))
    gens: list[subprocess.Popen[str]] = []
    budget = n / opts.join_rate + JOIN_TIMEOUT_S + opts.warmup + opts.duration + 120
    for w in range(workers):
        ids = [(f"c{i}", i / opts.join_rate) for i in range(w, n, workers)]
        spec = {
            "target": target.kind,
            "url": target.url,
            "ice_host": target.ice_host,
            "consultations": ids,
            "api_key": target.api_key,
            "token_secret": target.token_secret,
            "run_id": run_id,
            "max_seconds": budget,
            "decrypt_all": opts.decrypt_all,
            "event_loop_receive": opts.event_loop_receive,
        }
        log_dir = opts.out / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / f"generator-{target.kind}-{n}-{w}.log").open("w") as log:
            gens.append(children.start(_worker_cmd(opts, spec), stderr=log))

    def check() -> None:
        why = target.alive()
        if why:
            raise TargetError(why)
        for g in gens:
            if g.poll() is not None:
                raise TargetError(f"a generator process exited (code {g.returncode})")

    # -- join ---------------------------------------------------------------------------------
    joined: list[dict[str, Any]] = []
    t_join = time.monotonic()
    limit = n / opts.join_rate + JOIN_TIMEOUT_S + 30
    progress.phase(f"{target.kind} N={n}: joining", 0, n)
    for g in gens:
        assert g.stdout is not None
        while True:
            check()
            try:
                line = read_line(g.stdout, 1.0)
                break
            except TimeoutError as exc:
                if time.monotonic() - t_join > limit:
                    raise TargetError(
                        f"the consultations did not join within {limit:.0f} s"
                    ) from exc
                progress.phase(
                    f"{target.kind} N={n}: joining", min(n, (time.monotonic() - t_join) * 1), n
                )
            except RuntimeError as exc:
                raise TargetError(f"a generator process exited ({exc})") from exc
        joined += json.loads(line)["consultations"]
    report["join_phase_s"] = time.monotonic() - t_join
    failed = [c for c in joined if c["error"]]
    report["joined"] = n - len(failed)
    if failed:
        first = failed[0]["error"]
        progress.log(f"{len(failed)} of {n} consultations failed to join (first: {first})")
        if len(failed) == n:
            report["consultation_results"] = [
                {"id": c["id"], "error": c["error"], "join_s": None, "streams": []}
                | {"sustained": False, "reasons": [c["error"]]}
                for c in joined
            ]
            raise TargetError(f"no consultation could join: {first}")

    # -- warm-up, window ------------------------------------------------------------------------
    t0 = time.monotonic()
    while time.monotonic() - t0 < opts.warmup:
        check()
        progress.phase(f"{target.kind} N={n}: warm-up", time.monotonic() - t0, opts.warmup)
        time.sleep(0.5)
    report["server_processes"] = len(target.pids())  # our node: 1 + its media workers

    def snapshot() -> tuple[float, list[dict[str, Any]]]:
        for g in gens:
            assert g.stdin is not None
            g.stdin.write("SNAP\n")
            g.stdin.flush()
        t = time.monotonic()
        snaps = []
        for g in gens:
            assert g.stdout is not None
            try:
                snaps.append(json.loads(read_line(g.stdout, 30)))
            except (TimeoutError, RuntimeError) as exc:
                raise TargetError(f"a generator process stopped answering ({exc})") from exc
        return t, snaps

    pinned = [c for c in (opts.server_cpus, opts.gen_cpus) if c]

    def our_cpu() -> dict[tuple[int, ...], float]:
        """CPU seconds of our processes (node and its workers, generators) per pinned CPU set:
        subtracted from /proc/stat's load of that set."""
        out: dict[tuple[int, ...], float] = {}
        groups = ((opts.server_cpus, target.pids()), (opts.gen_cpus, [g.pid for g in gens]))
        for cpus, pids in groups:
            if not cpus:
                continue
            for pid in pids:
                try:
                    out[cpus] = out.get(cpus, 0.0) + proc_cpu(pid)
                except OSError:
                    pass
        return out

    scrape_failures = [0]
    last_scrape = [time.monotonic()]

    def metrics_sample() -> None:
        if not target.metrics_url:
            return
        try:
            m = scrape(target.metrics_url)
        except OSError as exc:
            scrape_failures[0] += 1
            silent = time.monotonic() - last_scrape[0]
            if scrape_failures[0] >= 3 and silent > METRICS_SILENT_S:
                raise TargetError(
                    f"the node stopped answering {target.metrics_url} ({silent:.0f} s): {exc}"
                ) from exc
            return
        scrape_failures[0] = 0
        last_scrape[0] = time.monotonic()
        keep = {
            k: v
            for k, v in m.items()
            if k.startswith(("consult_media_", "consult_rooms", "consult_participants"))
            or k.startswith(("process_cpu", "process_resident", "consult_event_loop_lag"))
        }
        report["metrics"].append({"t": round(time.monotonic() - t_start, 2)} | keep)

    t_start = time.monotonic()
    check()
    metrics_sample()
    cpu0 = target.cpu_s()
    jif0, ours0 = cpu_jiffies(), our_cpu()
    ta, snaps0 = snapshot()
    next_scrape = time.monotonic() + METRICS_EVERY_S
    while True:
        elapsed = time.monotonic() - ta
        if elapsed >= opts.duration:
            break
        check()
        if time.monotonic() >= next_scrape:
            metrics_sample()
            next_scrape += METRICS_EVERY_S
        cpu_now = target.cpu_s()
        busy = (cpu_now - cpu0) / elapsed if cpu0 is not None and cpu_now and elapsed > 0 else 0
        progress.phase(
            f"{target.kind} N={n}: measuring, node CPU {busy * 100:.0f}%", elapsed, opts.duration
        )
        time.sleep(min(0.5, max(0.01, opts.duration - elapsed)))
    cpu1 = target.cpu_s()
    jif1, ours1 = cpu_jiffies(), our_cpu()
    tb, snaps1 = snapshot()
    metrics_sample()
    window = tb - ta
    rss1 = target.rss_mb()
    _summarize(opts, n, report, window, snaps0, snaps1, cpu0, cpu1, rss0, rss1)
    report["other_load"] = other_load(jif0, jif1, ours0, ours1, pinned, window)
    if report["metrics"] and len(report["metrics"]) >= 2:
        first, last = report["metrics"][0], report["metrics"][-1]
        key = "consult_media_packets_forwarded_total"
        if key in first and key in last:
            report["node_forwarded_metric"] = last[key] - first[key]
    for g in gens:
        assert g.stdin is not None
        g.stdin.write("END\n")
        g.stdin.flush()


def _summarize(
    opts: Options,
    n: int,
    report: dict[str, Any],
    window: float,
    snaps0: list[dict[str, Any]],
    snaps1: list[dict[str, Any]],
    cpu0: float | None,
    cpu1: float | None,
    rss0: float | None,
    rss1: float | None,
) -> None:
    th = opts.thresholds
    before = {c["id"]: c for s in snaps0 for c in s["consultations"]}
    results = []
    forwarded = 0
    for s in snaps1:
        for c in s["consultations"]:
            w = consultation_window(before.get(c["id"]), c, window)
            ok, reasons = evaluate(w, th)
            w["sustained"], w["reasons"] = ok, reasons
            forwarded += sum(st["received"] for st in w["streams"])
            results.append(w)
    results.sort(key=lambda c: int(c["id"][1:]))
    report["consultation_results"] = results
    report["window_s"] = window
    report["forwarded_packets"] = forwarded
    report["forwarded_pps"] = forwarded / window
    gen_cpu = sum(b["cpu"] - a["cpu"] for a, b in zip(snaps0, snaps1, strict=True))
    ticks = sum(b["ticks"] - a["ticks"] for a, b in zip(snaps0, snaps1, strict=True))
    late = sum(b["late_ticks"] - a["late_ticks"] for a, b in zip(snaps0, snaps1, strict=True))
    gen = {
        "processes": len(snaps1),
        "cpu_s": gen_cpu,
        "cpu_share": gen_cpu / window,
        "us_per_packet": gen_cpu / forwarded * 1e6 if forwarded else None,
        "late_tick_share": late / ticks if ticks else 0.0,
        "late_max_ms": max(s["late_max_ms"] for s in snaps1),
    }
    gen["bound"] = bool(
        gen["cpu_share"] > GEN_BUSY_LIMIT or gen["late_tick_share"] > LATE_TICKS_LIMIT
    )
    report["generator"] = gen
    node: dict[str, Any] = {"cpu_s": None, "cpu_share": None, "us_per_packet": None}
    if cpu0 is not None and cpu1 is not None:
        node["cpu_s"] = cpu1 - cpu0
        node["cpu_share"] = (cpu1 - cpu0) / window
        node["us_per_packet"] = (cpu1 - cpu0) / forwarded * 1e6 if forwarded else None
        node["cpu_share_per_consultation"] = node["cpu_share"] / n
    node["rss_mb"] = rss1
    if rss0 is not None and rss1 is not None:
        node["rss_mb_per_consultation"] = (rss1 - rss0) / n
    report["node"] = node
    if gen["us_per_packet"] and node["us_per_packet"]:
        gen["ratio_to_node"] = gen["us_per_packet"] / node["us_per_packet"]
    report["sustained"] = sum(1 for c in results if c["sustained"])
    report["all_sustained"] = report["sustained"] == n


def probe_ok(report: dict[str, Any]) -> bool:
    return (
        not report.get("error")
        and bool(report.get("all_sustained"))
        and not report.get("generator", {}).get("bound")
    )


def verdict(report: dict[str, Any]) -> str:
    if report.get("error"):
        return f"ERROR: {report['error']}"
    n = report["consultations"]
    parts = [f"{report.get('sustained', 0)}/{n} sustained"]
    gen = report.get("generator", {})
    if gen.get("bound"):
        parts.append("GENERATOR-BOUND (the generator, not the node, was measured)")
    busy = max(report.get("other_load", {}).values(), default=0.0)
    if busy > 0.1:
        parts.append(f"other processes used up to {busy * 100:.0f}% of a CPU")
    return ", ".join(parts)


# -- capacity -----------------------------------------------------------------------------------


def capacity(
    opts: Options,
    *,
    start: int,
    max_n: int,
    resolution: int,
    progress: Progress | None = None,
    probes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Ramp (doubling from `start`) until a probe is not sustained, then binary search.
    A generator-bound probe stops the search: capacity is then only a lower bound."""
    progress = progress or Progress()
    everything = probes if probes is not None else []
    probes = []  # this target's
    good, bad = 0, None
    bound = False
    error = ""

    def probe(n: int) -> str:
        """Outcome: ok, fail, or bound (the generator was the bottleneck: no verdict on N)."""
        nonlocal bound, error, good
        r = run_probe(opts, n, progress)
        probes.append(r)
        everything.append(r)
        progress.log(f"{opts.target} N={n}: {verdict(r)}")
        if r.get("error") and not r.get("consultation_results"):
            error = r["error"]
            return "fail"
        if r.get("generator", {}).get("bound"):
            bound = True
            if r.get("all_sustained") and not r.get("error"):
                good = max(good, n)  # sustained even so: capacity is at least N
            return "bound"
        return "ok" if probe_ok(r) else "fail"

    n = start
    while n <= max_n:
        outcome = probe(n)
        if outcome == "ok":
            good = n
            if n >= max_n:
                break
            n = min(max_n, n * 2)
            continue
        if outcome == "fail":
            bad = n
        break
    while bad is not None and bad - good > resolution and not bound and not error:
        mid = (good + bad) // 2
        outcome = probe(mid)
        if outcome == "ok":
            good = mid
        elif outcome == "fail":
            bad = mid
        else:
            break
    best = max((p for p in probes if probe_ok(p)), key=lambda p: p["consultations"], default=None)
    result: dict[str, Any] = {
        "target": opts.target,
        "capacity": good,
        "first_failing": bad,
        "generator_bound": bound,
        "error": error,
        "probes": probes,
    }
    if best is not None:
        result["at_capacity"] = {
            "node_cpu_share": best["node"]["cpu_share"],
            "node_us_per_packet": best["node"]["us_per_packet"],
            "node_cpu_share_per_consultation": best["node"].get("cpu_share_per_consultation"),
            "node_rss_mb": best["node"]["rss_mb"],
            "node_rss_mb_per_consultation": best["node"].get("rss_mb_per_consultation"),
            "generator_us_per_packet": best["generator"]["us_per_packet"],
            "generator_ratio_to_node": best["generator"].get("ratio_to_node"),
        }
    return result
