"""Fallback scorecard: each shaped-link scenario run N times, pass rates and times.

    sudo .venv/bin/python -m benchmarks.fallback [--runs 10] [--scenario 150k ...] [--no-docs]

The set-up is tests/test_fallback_shaped.py's (`ShapedCall`): the node in this process, the
doctor (aiortc, webcam-like grain video, Opus 40 kbit/s) on loopback, the patient
(tests/peers/shaped_peer.py: `ConsultClient`, which obeys `pause` and nothing else) in a
network namespace behind a veth pair shaped by tests/shaping.py (tc tbf, nftables). Every run
is a fresh node, room, namespace and patient. Needs root. Section "fallback" of
docs/benchmarks.md.

Scenarios and what passes (issue 20's targets):
- `150k`: 150 kbit/s both ways for 15 s: audio-only and never chat-only (either direction),
  no audio gap over 1 s (either way, in the 10 s after the step-down) and audio loss at most
  2% (worst direction, from 1.5 s after the step-down to the end of the shaped period).
- `20k`: 20 kbit/s for 25 s: chat-only in both directions within 10 s; a chat each way at
  +12 s delivered within 5 s.
- `outage`: 5 s drop-all: no step-down in the 15 s after the link returns; media both ways
  within 2 s of the return.
- `oscillating`: 150 kbit/s <-> open every 2 s for 24 s: at most 3 mode changes per direction.
After each scenario the shaping is cleared: both directions back to video within 15 s (the
climb-back), and the patient's first decoded frame after the downlink's `video` event (the
patient reports its decoded frames every 0.5 s: that is the resolution).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from benchmarks.common import table
from loadtest.report import machine_summary, write_section
from mediaserver.rtc.media import set_opus_bitrate
from tests.netns import NetNS
from tests.shaping import ShapedLink, shaping_available
from tests.test_fallback_shaped import OPUS_BPS, ShapedCall

SCENARIOS = ("150k", "20k", "outage", "oscillating")
CLIMB_S = 15.0


@dataclass
class Run:
    scenario: str
    passed: bool = False
    why: str = ""
    step_down_s: float | None = None
    audio_gap_s: float | None = None  # longest, either way, during the step-down
    audio_loss: float | None = None  # worst direction, over the shaped period
    chat_s: float | None = None  # slowest chat
    climb_s: float | None = None
    first_frame_s: float | None = None
    mode_changes: dict[str, int] = field(default_factory=dict)
    timeline: list[str] = field(default_factory=list)  # mode changes, s since the shaping


class Recorder:
    """Stamps what the doctor is told, the patient's events and the server's uplink audio."""

    def __init__(self, call: ShapedCall) -> None:
        self.call = call
        self.doctor: list[tuple[float, dict[str, Any]]] = []
        self.patient: list[tuple[float, dict[str, Any]]] = []
        self.up_audio: list[tuple[float, int]] = []  # (when, uplink audio packets received)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self) -> None:
        call = self.call
        assert call.doctor is not None
        while True:
            now = time.monotonic()
            self.doctor += [(now, m) for m in call.doctor.messages[len(self.doctor) :]]
            self.patient += [(now, e) for e in call.events[len(self.patient) :]]
            with contextlib.suppress(KeyError, StopIteration):
                pub = next(p for p in call.media().publications.values() if p.kind == "audio")
                self.up_audio.append((now, pub.stats.received))
            await asyncio.sleep(0.05)

    def modes(self, since: float, until: float = 1e18) -> list[tuple[float, str, str]]:
        pid = self.call.patient_id
        return [
            (t, m["direction"], m["mode"])
            for t, m in self.doctor
            if m.get("type") == "mode" and m.get("participant") == pid and since <= t < until
        ]

    def gap_up(self, since: float, until: float) -> float:
        """Longest time without a new uplink audio packet at the server."""
        return _longest_flat([(t, n) for t, n in self.up_audio if since <= t <= until])

    def gap_down(self, since: float, until: float) -> float:
        """Longest time without a newly decoded audio frame at the patient (0.5 s steps)."""
        return _longest_flat(
            [
                (t, int(e["audio_frames"]))
                for t, e in self.patient
                if e.get("event") == "stats" and since <= t <= until
            ]
        )

    def video_frames(self) -> int:
        stats = [e for _, e in self.patient if e.get("event") == "stats"]
        return int(stats[-1]["video_frames"]) if stats else 0


def _longest_flat(series: list[tuple[float, int]]) -> float:
    longest, start, last = 0.0, None, None
    for t, n in series:
        if last is None or n != last:
            if start is not None:
                longest = max(longest, t - start)
            start, last = t, n
    if start is not None and series:
        longest = max(longest, series[-1][0] - start)
    return longest


async def wait(cond: Callable[[], bool], timeout: float) -> float | None:
    """When cond() first held (monotonic), or None after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return time.monotonic()
        await asyncio.sleep(0.05)
    return None


def audio_counts(call: ShapedCall) -> tuple[int, int, int, int]:
    media = call.media()
    down = next(s for s in media.subscriptions.values() if s.kind == "audio")
    up = next(p for p in media.publications.values() if p.kind == "audio")
    return down.highest_reported or 0, down.packets_lost, up.stats.expected, up.stats.received


def loss_between(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    down = (b[0] - a[0]) & 0xFFFF
    down_loss = (b[1] - a[1]) / down if down > 0 else 1.0
    up = b[2] - a[2]
    up_loss = ((b[2] - a[2]) - (b[3] - a[3])) / up if up > 0 else 1.0
    return max(down_loss, up_loss)


async def climb(call: ShapedCall, rec: Recorder, run: Run) -> bool:
    """Clear the shaping: both directions back to video within CLIMB_S, then a frame."""
    t0 = time.monotonic()
    call.link.clear()

    def mode_now(direction: str) -> str:
        return str(call.media().info()["modes"][direction])

    back = await wait(
        lambda: mode_now("uplink") == "video" and mode_now("downlink") == "video", CLIMB_S + 5
    )
    if back is None:
        run.why = run.why or f"no climb back to video (modes {call.media().info()['modes']})"
        return False
    run.climb_s = back - t0

    def down_video() -> list[float]:
        return [t for t, d, m in rec.modes(t0) if d == "downlink" and m == "video"]

    # The doctor's copy of the `mode` broadcast lags the node's state by a poll or two: wait
    # for it. Without it (the downlink never left video) there is no first frame to time;
    # timing it from the clearing counted frames of a probe that ran before it.
    await wait(lambda: bool(down_video()), 3)
    if not down_video():
        return run.climb_s <= CLIMB_S or _too_slow(run)
    t_video = down_video()[0]
    await wait(lambda: rec.patient[-1][0] > t_video + 10, 11)
    stats = [(t, int(e["video_frames"])) for t, e in rec.patient if e.get("event") == "stats"]
    before = [n for t, n in stats if t <= t_video]
    after = [t for t, n in stats if t > t_video and n > (before[-1] if before else 0)]
    if after:
        run.first_frame_s = after[0] - t_video
    return run.climb_s <= CLIMB_S or _too_slow(run)


def _too_slow(run: Run) -> bool:
    run.why = run.why or f"back to video only after {run.climb_s:.1f} s"
    return False


async def scenario_150k(call: ShapedCall, rec: Recorder, run: Run) -> bool:
    t0 = time.monotonic()
    call.link.rate(150)
    stepped = await wait(lambda: bool(rec.modes(t0)), 10)
    if stepped is None:
        run.why = "no step-down in 10 s"
        await asyncio.sleep(5)
        return False
    run.step_down_s = stepped - t0
    await asyncio.sleep(1.5)  # queues drain
    a = audio_counts(call)
    await asyncio.sleep(15 - (time.monotonic() - t0))
    run.audio_loss = loss_between(a, audio_counts(call))
    end = time.monotonic()
    run.audio_gap_s = max(
        rec.gap_up(stepped, min(end, stepped + 10)), rec.gap_down(stepped, min(end, stepped + 10))
    )
    modes = [m for _, _, m in rec.modes(t0, end)]
    if "chat-only" in modes:
        run.why = f"chat-only at 150 kbit/s ({rec.modes(t0, end)})"
        return False
    if "audio-only" not in modes:
        run.why = "never audio-only"
        return False
    if run.audio_gap_s > 1.0 or run.audio_loss > 0.02:
        run.why = f"audio gap {run.audio_gap_s:.1f} s, loss {run.audio_loss:.1%}"
        return False
    return True


async def scenario_20k(call: ShapedCall, rec: Recorder, run: Run) -> bool:
    t0 = time.monotonic()
    call.link.rate(20)
    both = await wait(
        lambda: {d for _, d, m in rec.modes(t0) if m == "chat-only"} == {"uplink", "downlink"},
        12,
    )
    first = [t for t, _, m in rec.modes(t0) if m != "video"]
    run.step_down_s = first[0] - t0 if first else None
    ok = both is not None and both - t0 <= 10
    if not ok:
        run.why = f"not chat-only both ways within 10 s ({rec.modes(t0)})"
    await asyncio.sleep(max(0.0, 12 - (time.monotonic() - t0)))
    assert call.doctor is not None
    stamp = f"{time.time():.3f}"
    sent = time.monotonic()
    await call.doctor.chat(f"to patient {stamp}")
    call.send_patient({"cmd": "chat", "text": f"to doctor {stamp}"})
    to_patient = await wait(
        lambda: any(
            e.get("event") == "chat" and e["message"]["message"]["text"] == f"to patient {stamp}"
            for _, e in rec.patient
        ),
        12,
    )
    to_doctor = await wait(
        lambda: any(
            m.get("type") == "chat" and m["message"]["text"] == f"to doctor {stamp}"
            for _, m in rec.doctor
        ),
        max(0.1, 12 - (time.monotonic() - sent)),
    )
    if to_patient is None or to_doctor is None:
        run.why = run.why or "a chat was not delivered within 12 s"
        return False
    run.chat_s = max(to_patient, to_doctor) - sent
    if run.chat_s > 5:
        run.why = run.why or f"chat took {run.chat_s:.1f} s"
        ok = False
    await asyncio.sleep(max(0.0, 25 - (time.monotonic() - t0)))
    return ok


async def scenario_outage(call: ShapedCall, rec: Recorder, run: Run) -> bool:
    call.link.outage(True)
    await asyncio.sleep(5)
    up, down = call.uplink_received(), call.downlink_reported("audio")
    frames = [e for _, e in rec.patient if e.get("event") == "stats"]
    audio0 = int(frames[-1]["audio_frames"]) if frames else 0
    t_back = time.monotonic()
    call.link.outage(False)
    up_t = await wait(lambda: call.uplink_received() > up + 25, 10)

    def audio_frames() -> int:
        stats = [e for _, e in rec.patient if e.get("event") == "stats"]
        return int(stats[-1]["audio_frames"]) if stats else 0

    down_t = await wait(lambda: audio_frames() > audio0 + 10, 10)
    del down
    await asyncio.sleep(max(0.0, 15 - (time.monotonic() - t_back)))
    steps = [(d, m) for _, d, m in rec.modes(t_back) if m != "video"]
    if up_t is None or down_t is None:
        run.why = "media did not resume within 10 s"
        return False
    run.step_down_s = max(up_t, down_t) - t_back  # here: media back after the return
    if steps:
        run.why = f"stepped down after the return: {steps}"
        return False
    if run.step_down_s > 2:
        run.why = f"media back only after {run.step_down_s:.1f} s"
        return False
    return True


async def scenario_oscillating(call: ShapedCall, rec: Recorder, run: Run) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < 24:
        call.link.rate(150)
        await asyncio.sleep(2)
        call.link.rate(None)
        await asyncio.sleep(2)
    changes = rec.modes(t0)
    for direction in ("uplink", "downlink"):
        run.mode_changes[direction] = sum(1 for _, d, _ in changes if d == direction)
    if max(run.mode_changes.values()) > 3:
        run.why = f"{run.mode_changes} mode changes"
        return False
    return True


RUNNERS = {
    "150k": scenario_150k,
    "20k": scenario_20k,
    "outage": scenario_outage,
    "oscillating": scenario_oscillating,
}


async def one_run(scenario: str) -> Run:
    run = Run(scenario)
    with NetNS("consultfb") as ns, ShapedLink(ns) as link:
        call = ShapedCall(ns, link)
        rec: Recorder | None = None
        try:
            await call.start()
            rec = Recorder(call)
            rec.start()
            await asyncio.sleep(2)  # media settled
            t0 = time.monotonic()
            try:
                ok = await RUNNERS[scenario](call, rec, run)
                climbed = await climb(call, rec, run)
                run.passed = ok and climbed
            finally:
                run.timeline = [f"{t - t0:.1f} {d} {m}" for t, d, m in rec.modes(t0)]
        except pytest.fail.Exception as exc:  # ShapedCall's waits fail like a test
            run.why = f"set-up: {exc}"
        finally:
            if rec is not None:
                await rec.stop()
            with contextlib.suppress(Exception):
                if call.proc is not None:
                    call.proc.kill()
            await call.close()
    return run


def fmt(values: list[float | None], unit: str = " s") -> str:
    got = sorted(v for v in values if v is not None)
    if not got:
        return "-"
    if len(got) == 1:
        return f"{got[0]:.1f}{unit}"
    return f"{statistics.median(got):.1f}{unit} (max {got[-1]:.1f})"


def report(runs: list[Run], command: str, load: str) -> str:
    rows = []
    for scenario in SCENARIOS:
        mine = [r for r in runs if r.scenario == scenario]
        if not mine:
            continue
        changes = [max(r.mode_changes.values()) for r in mine if r.mode_changes]
        rows.append(
            [
                scenario,
                f"{sum(r.passed for r in mine)}/{len(mine)}",
                fmt([r.step_down_s for r in mine]),
                fmt([r.audio_gap_s for r in mine]),
                fmt([None if r.audio_loss is None else r.audio_loss * 100 for r in mine], " %"),
                fmt([r.chat_s for r in mine]),
                str(max(changes)) if changes else "-",
                fmt([r.climb_s for r in mine]),
                fmt([r.first_frame_s for r in mine]),
            ]
        )
    failures = [f"- {r.scenario}: {r.why}" for r in runs if not r.passed]
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "## Fallback scorecard (shaped links)",
            "",
            f"Command: `{command}`",
            "",
            f"Machine: {machine_summary()}.",
            f"Measured {now}, {load}.",
            "",
            "Patient: the aiortc client (`ConsultClient`, obeys `pause` and nothing else) in a "
            "network namespace, moving bars and a tone (Opus 40 kbit/s); doctor on loopback with "
            "grain video. Times are medians (max) over the runs; `step-down` is the first mode "
            "change after the shaping (outage: media back both ways after the return); "
            "`audio gap` the longest silence either way in the 10 s after the step-down; "
            "`mode changes` the most in one direction (oscillating); `climb` both directions "
            "back to video after clearing; `first frame` after the downlink's `video` event "
            "(0.5 s resolution). Chromium as the patient is not in this table yet.",
            "",
            table(
                [
                    "scenario",
                    "pass",
                    "step-down",
                    "audio gap",
                    "audio loss",
                    "chat",
                    "mode changes",
                    "climb",
                    "first frame",
                ],
                rows,
            ),
            "",
            *(["Failures:", *failures] if failures else ["No failures."]),
        ]
    )


async def main_async(args: argparse.Namespace) -> list[Run]:
    runs: list[Run] = []
    for i in range(args.runs):
        for scenario in args.scenario or SCENARIOS:
            started = time.monotonic()
            run = await one_run(scenario)
            runs.append(run)
            print(
                f"run {i + 1}/{args.runs} {scenario}: {'pass' if run.passed else 'FAIL'} "
                f"{run} ({time.monotonic() - started:.0f} s)",
                flush=True,
            )
    return runs


def browser_like_opus() -> None:
    set_opus_bitrate(OPUS_BPS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--scenario", action="append", choices=SCENARIOS)
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--debug", action="store_true", help="the controllers' samples on stderr")
    args = parser.parse_args()
    ok, why = shaping_available()
    if not ok:
        print(f"cannot shape links here: {why}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(relativeCreated)d %(message)s")
    if args.debug:
        logging.getLogger("mediaserver.fallback").setLevel(logging.DEBUG)
    browser_like_opus()
    load0 = os.getloadavg()[0]
    runs = asyncio.run(main_async(args))
    load = f"load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    command = ".venv/bin/python -m benchmarks.fallback " + shlex.join(sys.argv[1:])
    text = report(runs, command.strip(), load)
    print(text)
    if not args.no_docs:
        write_section("fallback", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
