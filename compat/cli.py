"""`compat`: run the browser compatibility matrix (docs/compat.md).

    compat run                      # CI matrix: chromium-firefox core scenarios + SDP suite
    compat run --full               # every pair and every scenario
    compat run --pairs chromium-aiortc --scenarios media chat-data
    compat list                     # pairs and scenarios
    compat browsers [--fetch]       # browser versions: available, fetched, fetchable

`run` needs root: it creates a loopback-only network namespace, runs everything inside
(`compat inner`, a child process) and removes the namespace with whatever is left in it,
also on Ctrl-C or SIGTERM. Exit status 0 only when every cell and every SDP check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SDP = ROOT / "tests" / "fixtures" / "sdp"
CI_PAIRS = ["chromium-firefox"]
# The reduced matrix adds the older Firefox ESR (it declares H264 its SDP lacks, issue 12) for
# the codec cells only.
CI_EXTRA = {"chromium-firefox140": ["codec", "codec-late"]}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compat", description="Browser compatibility matrix")
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the matrix and write the reports")
    run.add_argument("--full", action="store_true", help="every pair and every scenario")
    run.add_argument(
        "--pairs",
        nargs="+",
        metavar="PAIR",
        help="BROWSER-BROWSER or BROWSER-aiortc (default: chromium-firefox)",
    )
    run.add_argument("--scenarios", nargs="+", metavar="NAME", help="default: the core ones")
    run.add_argument("--browsers", type=Path, metavar="JSON", help="extra browser config")
    run.add_argument(
        "--report-dir",
        type=Path,
        default=Path("compat-report"),
        help="where report.json, report.html and node.log go (default compat-report/)",
    )
    run.add_argument("--sdp-fixtures", type=Path, default=DEFAULT_SDP, help="*.sdp offers")
    run.add_argument("--no-sdp", action="store_true", help="skip the SDP suite")
    run.add_argument("--no-browsers", action="store_true", help="only the SDP suite")
    run.add_argument("--jobs", type=int, default=1, choices=(1, 2), help="calls at once (max 2)")
    run.add_argument(
        "--timeout",
        type=float,
        default=0,
        help="kill the whole run after this many seconds (default: 600, --full 2400)",
    )
    sub.add_parser("list", help="list pairs and scenarios")
    br = sub.add_parser("browsers", help="browser versions: available, fetched, fetchable")
    br.add_argument("--browsers", type=Path, metavar="JSON", help="extra browser config")
    br.add_argument("--fetch", nargs="*", metavar="NAME", help="fetch these (default: all)")
    inner = sub.add_parser("inner", help=argparse.SUPPRESS)
    inner.add_argument("options")
    return p


def _resolve(args: argparse.Namespace) -> dict[str, Any]:
    from compat.browsers import full_pairs, load_browsers, parse_pair
    from compat.scenarios import BY_NAME, SCENARIOS

    browsers = load_browsers(args.browsers)
    pair_scenarios: dict[str, list[str]] = {}
    if args.no_browsers:
        pairs: list[tuple[str, str]] = []
    elif args.pairs:
        pairs = [parse_pair(p, set(browsers)) for p in args.pairs]
    elif args.full:
        pairs = full_pairs(browsers)
    else:
        pairs = [parse_pair(p, set(browsers)) for p in CI_PAIRS]
        for label, only in CI_EXTRA.items():
            pairs.append(parse_pair(label, set(browsers)))
            if not args.scenarios:
                pair_scenarios[label] = only
    if args.scenarios:
        unknown = [s for s in args.scenarios if s not in BY_NAME]
        if unknown:
            raise ValueError(f"unknown scenarios {unknown}; known: {list(BY_NAME)}")
        names = [s.name for s in SCENARIOS if s.name in args.scenarios]
    else:
        names = [s.name for s in SCENARIOS if args.full or s.core]
    fetch_errors = _fetch(
        [browsers[n] for n in dict.fromkeys(x for p in pairs for x in p) if n in browsers]
    )
    return {
        "pairs": [list(p) for p in pairs],
        "pair_scenarios": pair_scenarios,
        "fetch_errors": fetch_errors,
        "scenarios": names,
        "browsers": str(args.browsers) if args.browsers else None,
        "report_dir": str(args.report_dir.resolve()),
        "sdp_dir": None if args.no_sdp else str(args.sdp_fixtures.resolve()),
        "jobs": args.jobs,
        "mode": "full" if args.full else "reduced",
    }


def _fetch(specs: list[Any]) -> dict[str, str]:
    """Fetch the browser versions a run needs (outside the namespace: it has no network);
    name -> why it is not available, for those that failed."""
    from compat import packages

    errors: dict[str, str] = {}
    for spec in specs:
        if not spec.fetched:
            continue
        t0 = time.monotonic()
        try:
            packages.fetch(spec.package, spec.version)
        except packages.FetchError as exc:
            errors[spec.name] = f"cannot fetch {spec.package} {spec.version}: {exc}"
            print(f"compat: {spec.name}: {errors[spec.name]}", file=sys.stderr, flush=True)
        else:
            took = time.monotonic() - t0
            print(f"compat: {spec.name} = {spec.package} {spec.version} ({took:.0f}s)", flush=True)
    return errors


def _browsers(args: argparse.Namespace) -> int:
    from compat import packages
    from compat.browsers import load_browsers

    try:
        specs = load_browsers(args.browsers)
    except ValueError as exc:
        print(f"compat: {exc}", file=sys.stderr)
        return 2
    errors: dict[str, str] = {}
    if args.fetch is not None:
        unknown = [n for n in args.fetch if n not in specs]
        if unknown:
            print(f"compat: unknown browsers {unknown}; known: {sorted(specs)}", file=sys.stderr)
            return 2
        errors = _fetch([specs[n] for n in (args.fetch or specs)])
    print("browsers (name, engine, version, state, binary):")
    for spec in sorted(specs.values(), key=lambda s: (s.engine, s.name)):
        state = errors.get(spec.name) or spec.missing() or "available"
        print(f"  {spec.name:<14} {spec.engine:<8} {spec.version or '?':<28} {state}")
        print(f"  {'':<14} {spec.executable}")
    print("fetchable from Debian's archive (apt-cache madison; add one to compat/versions.json):")
    for package in packages.LAYOUT:
        have = packages.installed_version(package)
        for version in packages.archive_versions(package):
            mark = " (installed)" if version == have else ""
            print(f"  {package:<12} {version}{mark}")
    return 1 if errors else 0


def _inner(blob: str) -> int:
    from compat import report
    from compat.browsers import load_browsers
    from compat.runner import RunOptions, run_matrix
    from compat.scenarios import BY_NAME
    from mediaserver.rtc.ice import gather_on_loopback

    gather_on_loopback()  # the namespace holds only `lo`, which aioice skips unless told
    o = json.loads(blob)
    opts = RunOptions(
        pairs=[(a, b) for a, b in o["pairs"]],
        pair_scenarios={k: [BY_NAME[n] for n in v] for k, v in o["pair_scenarios"].items()},
        fetch_errors=o["fetch_errors"],
        scenarios=[BY_NAME[n] for n in o["scenarios"]],
        browsers=load_browsers(Path(o["browsers"]) if o["browsers"] else None),
        report_dir=Path(o["report_dir"]),
        sdp_dir=Path(o["sdp_dir"]) if o["sdp_dir"] else None,
        jobs=o["jobs"],
        mode=o["mode"],
    )

    async def main() -> dict[str, Any]:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        return await run_matrix(opts)

    try:
        result = asyncio.run(main())
    except asyncio.CancelledError:
        print("compat: interrupted; browsers and the node were stopped", file=sys.stderr)
        return 130
    j, h = report.write(result, opts.report_dir)
    print()
    print(report.matrix_text(result))
    print(f"reports: {j} {h}")
    return 0 if report.passed(result) else 1


def _run(args: argparse.Namespace) -> int:
    from loadtest.netns import NetNS, netns_available

    ok, why = netns_available()
    if not ok:
        print(f"compat: {why} (compat run creates a network namespace)", file=sys.stderr)
        return 2
    try:
        options = _resolve(args)
    except ValueError as exc:
        print(f"compat: {exc}", file=sys.stderr)
        return 2
    limit = args.timeout or (2400 if args.full else 600)
    print(
        f"compat: pairs {['-'.join(p) for p in options['pairs']]}, "
        f"scenarios {options['scenarios']}, reports in {options['report_dir']}",
        flush=True,
    )

    class Stop(Exception):
        pass

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise Stop(signal.Signals(signum).name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    ns = NetNS(prefix="compat")
    proc: subprocess.Popen[bytes] | None = None
    try:
        ns.create()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = ns.popen(
            [sys.executable, "-m", "compat", "inner", json.dumps(options)], cwd=ROOT, env=env
        )
        deadline = time.monotonic() + limit
        while proc.poll() is None:
            if time.monotonic() > deadline:
                print(
                    f"compat: the run took longer than {limit:.0f}s; stopping it", file=sys.stderr
                )
                raise Stop("timeout")
            time.sleep(0.2)
        return proc.returncode
    except Stop as stop:
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the inner run stops browsers and node
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
        print(f"compat: stopped ({stop})", file=sys.stderr)
        return 130 if str(stop) != "timeout" else 124
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        ns.close()  # kills whatever is left inside (browsers included) and deletes it


def _list() -> int:
    from compat.browsers import full_pairs, load_browsers
    from compat.scenarios import SCENARIOS

    print("pairs (--full):", " ".join("-".join(p) for p in full_pairs(load_browsers(None))))
    print(
        "CI pairs:",
        " ".join(CI_PAIRS),
        " ".join(f"{k} ({' '.join(v)})" for k, v in CI_EXTRA.items()),
    )
    for s in SCENARIOS:
        print(f"  {s.name:<12} {'core' if s.core else 'full'}  {s.doc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "inner":
        return _inner(args.options)
    if args.cmd == "list":
        return _list()
    if args.cmd == "browsers":
        return _browsers(args)
    return _run(args)
