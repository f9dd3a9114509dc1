"""Fallback scorecard: each shaped-link scenario run N times, pass rates and times.

    sudo .venv/bin/python -m benchmarks.fallback [--runs 10] [--scenario 150k ...]
        [--client aiortc|chromium|both] [--no-docs]

The node runs in this process, the doctor (aiortc, webcam-like grain video, Opus 40 kbit/s) on
loopback, the patient in a network namespace behind a veth pair shaped by tests/shaping.py
(tc tbf, nftables). Two patients (`--client`):
- `aiortc`: tests/test_fallback_shaped.py's `ShapedCall`, the patient
  tests/peers/shaped_peer.py (`ConsultClient`, which obeys `pause` and nothing else); what it
  received comes from its own reports (decoded frames every 0.5 s, chats as they arrive);
- `chromium`: tests/test_fallback_browser.py's `BrowserCall`, Debian's Chromium (headless,
  Playwright over a pipe) inside the namespace on the demo page (consult.js: obeys `pause` and
  the REMB cap), publishing its fake camera and microphone; what it received comes from the
  page: getStats every 0.5 s (inbound-rtp audio packets received and lost, video frames
  decoded) and consult.js's `chat` events, stamped by the page.
Every run is a fresh node, room, namespace and patient; with both, each scenario runs with one
patient then the other. Needs root (and Chromium and Playwright for `chromium`). Section
"fallback" of docs/benchmarks.md.

Scenarios and what passes (issue 20's targets):
- `150k`: 150 kbit/s both ways for 15 s: audio-only and never chat-only (either direction),
  no audio gap over 1 s (either way, in the 10 s after the step-down) and audio loss at most
  2% (worst direction, from 1.5 s after the step-down to the end of the shaped period). The
  uplink's gap and loss are the server's (packets received from the patient), the downlink's
  the patient's (aiortc: decoded audio frames and its receiver reports; Chromium: audio packets
  received and lost in getStats).
- `20k`: 20 kbit/s for 25 s: chat-only in both directions within 10 s; a chat each way at
  +12 s delivered within 5 s.
- `outage`: 5 s drop-all: no step-down in the 15 s after the link returns; media both ways
  within 2 s of the return.
- `oscillating`: 150 kbit/s <-> open every 2 s for 24 s: at most 3 mode changes per direction.
After each scenario the shaping is cleared: both directions back to video within 15 s (the
climb-back), and the patient's first decoded frame after the downlink's `video` event (either
patient's decoded frames are read every 0.5 s: that is the resolution).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pytest

from benchmarks.common import table
from loadtest.report import machine_summary, write_section
from mediaserver.participant import Participant
from mediaserver.rtc.media import set_opus_bitrate
from signaling.client import ConsultClient
from tests.netns import NetNS
from tests.shaping import ShapedLink, shaping_available
from tests.test_browser import CHROMIUM
from tests.test_fallback_browser import BrowserCall, chromium_in
from tests.test_fallback_shaped import OPUS_BPS, ShapedCall

SCENARIOS = ("150k", "20k", "outage", "oscillating")
CLIENTS = ("aiortc", "chromium")
DEFAULT_CLIENT = "both"
CLIMB_S = 15.0
STATS_EVERY_S = 0.5  # the page's getStats, as often as the aiortc patient reports


class Patient(Protocol):
    """What the scenarios read and do; `events` are the patient's, in shaped_peer.py's format
    (`stats` with `audio_frames` and `video_frames`, `chat` with the message under `message`),
    an `at` (monotonic) where the patient stamped it itself."""

    @property
    def link(self) -> ShapedLink: ...
    @property
    def doctor(self) -> ConsultClient | None: ...
    @property
    def patient_id(self) -> str: ...
    @property
    def events(self) -> list[dict[str, Any]]: ...

    def media(self) -> Participant: ...
    def uplink_received(self) -> int: ...
    def downlink_audio(self) -> tuple[int, int]:
        """(sequence or count of audio packets the patient expected, packets lost), both
        cumulative; deltas are taken modulo 2^16."""
        ...

    async def patient_chat(self, text: str) -> None: ...


class AiortcCall(ShapedCall):
    """The aiortc patient (tests/peers/shaped_peer.py): its downlink from its receiver reports
    as the server holds them."""

    def downlink_audio(self) -> tuple[int, int]:
        down = next(s for s in self.media().subscriptions.values() if s.kind == "audio")
        return down.highest_reported or 0, down.packets_lost

    async def patient_chat(self, text: str) -> None:
        self.send_patient({"cmd": "chat", "text": text})


# The page's inbound counters (summed per kind) and the chats consult.js announced since the
# last call, each stamped by the page (ms since the epoch).
PATIENT_POLL_JS = """async () => {
  const out = {audio_packets: 0, audio_lost: 0, video_frames: 0};
  (await window.consultation.getStats()).forEach((r) => {
    if (r.type !== 'inbound-rtp') return;
    if (r.kind === 'audio') {
      out.audio_packets += r.packetsReceived || 0;
      out.audio_lost += r.packetsLost || 0;
    } else if (r.kind === 'video') {
      out.video_frames += r.framesDecoded || 0;
    }
  });
  out.now = Date.now();  // after the stats; each chat drained here was stamped before it
  out.chats = (window.__benchChats || []).splice(0);
  return out;
}"""
CHAT_LISTENER_JS = """() => {
  window.__benchChats = [];
  window.consultation.addEventListener('chat', (e) => {
    if (!e.detail.earlier) window.__benchChats.push({t: Date.now(), message: e.detail.message});
  });
}"""


def page_time(ms: float) -> float:
    """A page's Date.now() (same machine, same clock) as time.monotonic()."""
    return time.monotonic() - (time.time() - ms / 1000)


class ChromiumCall:
    """The demo page in Chromium as the patient (tests/test_fallback_browser.py's
    `BrowserCall`), its getStats and chats turned into shaped_peer.py-like events."""

    def __init__(self, ns: NetNS, link: ShapedLink) -> None:
        self.call = BrowserCall(ns, link)  # media in this process: the live objects
        self._events: list[dict[str, Any]] = []
        self.last: dict[str, Any] = {}
        self._poller: asyncio.Task[None] | None = None

    @property
    def link(self) -> ShapedLink:
        return self.call.link

    @property
    def doctor(self) -> ConsultClient | None:
        return self.call.doctor

    @property
    def patient_id(self) -> str:
        return self.call.patient_id

    @property
    def events(self) -> list[dict[str, Any]]:
        return self._events

    def media(self) -> Participant:
        media = self.call.media()
        if media is None:
            raise KeyError(self.call.patient_id)
        return media

    def uplink_received(self) -> int:
        return sum(p.stats.received for p in self.media().publications.values())

    def downlink_audio(self) -> tuple[int, int]:
        received, lost = int(self.last.get("audio_packets", 0)), int(self.last.get("audio_lost", 0))
        return received + lost, lost

    async def patient_chat(self, text: str) -> None:
        await self.call.page.evaluate(
            "(t) => { window.consultation.sendChat(t).catch((e) => console.error(String(e))); }",
            text,
        )

    async def start(self, browser: Any) -> None:
        """The page joins, is admitted and publishes; media flows both ways."""
        page = await self.call.join(browser)
        await page.evaluate(CHAT_LISTENER_JS)
        self._poller = asyncio.get_running_loop().create_task(self._poll(page))

        def flowing() -> bool:
            try:
                media = self.media()
            except KeyError:
                return False
            pubs = list(media.publications.values())
            subs = list(media.subscriptions.values())
            return (
                len(pubs) == 2
                and all(p.stats.received > 30 for p in pubs)
                and len(subs) == 2
                and all(s.reports >= 2 for s in subs)
                and int(self.last.get("video_frames", 0)) > 10
            )

        if await wait(flowing, 60) is None:
            raise RuntimeError(f"no media both ways within 60 s\n{await self.call.diag()}")

    async def _poll(self, page: Any) -> None:
        while True:
            started = time.monotonic()
            try:
                got: dict[str, Any] = await page.evaluate(PATIENT_POLL_JS)
            except Exception as exc:  # the page crashed or closed: say so, go on trying
                self._events.append({"event": "error", "message": repr(exc)})
            else:
                for chat in got.pop("chats"):
                    self._events.append(
                        {
                            "event": "chat",
                            "message": {"type": "chat", "message": chat["message"]},
                            "at": page_time(chat["t"]),
                        }
                    )
                self.last = got
                self._events.append(
                    {
                        "event": "stats",
                        "audio_frames": got["audio_packets"],  # packets: see the report
                        "video_frames": got["video_frames"],
                        "audio_lost": got["audio_lost"],
                        "at": page_time(got["now"]),
                    }
                )
            await asyncio.sleep(max(0.05, STATS_EVERY_S - (time.monotonic() - started)))

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller


@contextlib.asynccontextmanager
async def patient_call(client: str, ns: NetNS, link: ShapedLink) -> AsyncIterator[Patient]:
    """A started call with `client` as the patient; everything closed afterwards. Set-up
    failures raise (`pytest.fail`'s exception from ShapedCall's waits, others from Chromium)."""
    if client == "aiortc":
        call = AiortcCall(ns, link)
        try:
            await call.start()
            yield call
        finally:
            with contextlib.suppress(Exception):
                if call.proc is not None:
                    call.proc.kill()
            await call.close()
        return
    chromium = ChromiumCall(ns, link)
    try:
        with tempfile.TemporaryDirectory(prefix="fallback-chromium-") as folder:
            await chromium.call.start_node()
            async with chromium_in(chromium.call, Path(folder)) as browser:
                try:
                    await chromium.start(browser)
                    yield chromium
                finally:
                    await chromium.stop()
    finally:
        await chromium.call.close()


@dataclass
class Run:
    scenario: str
    client: str = "aiortc"
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

    def __init__(self, call: Patient) -> None:
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
            self.patient += [(e.get("at", now), e) for e in call.events[len(self.patient) :]]
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
        """Longest time without a newly decoded audio frame (Chromium: audio packet received)
        at the patient (0.5 s steps)."""
        return _longest_flat(
            [
                (t, int(e["audio_frames"]))
                for t, e in self.patient
                if e.get("event") == "stats" and since <= t <= until
            ]
        )

    def sample_step(self, since: float, until: float) -> float:
        """Longest time between two of the patient's stats samples: a downlink gap up to this
        long may be the sampling's (a busy patient or page), not the audio's."""
        return _longest_step(
            [t for t, e in self.patient if e.get("event") == "stats" and since <= t <= until]
        )

    def video_frames(self) -> int:
        stats = [e for _, e in self.patient if e.get("event") == "stats"]
        return int(stats[-1]["video_frames"]) if stats else 0


def _longest_step(times: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


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


def first_at(
    events: list[tuple[float, dict[str, Any]]], pred: Callable[[dict[str, Any]], bool]
) -> float | None:
    """When the first event matching `pred` happened (its stamp), or None."""
    return next((t for t, e in events if pred(e)), None)


def audio_counts(call: Patient) -> tuple[int, int, int, int]:
    """(downlink expected, downlink lost, uplink expected, uplink received), cumulative."""
    up = next(p for p in call.media().publications.values() if p.kind == "audio")
    return (*call.downlink_audio(), up.stats.expected, up.stats.received)


def losses_between(
    a: tuple[int, int, int, int], b: tuple[int, int, int, int]
) -> tuple[float, float]:
    """(downlink, uplink) audio loss between two `audio_counts`."""
    down = (b[0] - a[0]) & 0xFFFF
    down_loss = (b[1] - a[1]) / down if down > 0 else 1.0
    up = b[2] - a[2]
    up_loss = ((b[2] - a[2]) - (b[3] - a[3])) / up if up > 0 else 1.0
    return down_loss, up_loss


def loss_between(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    return max(losses_between(a, b))


async def climb(call: Patient, rec: Recorder, run: Run) -> bool:
    """Clear the shaping: both directions back to video within CLIMB_S, then a frame."""
    t0 = time.monotonic()
    call.link.clear()

    def mode_now(direction: str) -> str:
        return str(call.media().info()["modes"][direction])

    back = await wait(
        lambda: mode_now("uplink") == "video" and mode_now("downlink") == "video", CLIMB_S + 5
    )
    if back is None:
        run.why = _also(
            run.why, f"no climb back to video in 20 s (modes {call.media().info()['modes']})"
        )
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
    run.why = _also(run.why, f"back to video only after {run.climb_s:.1f} s")
    return False


async def scenario_150k(call: Patient, rec: Recorder, run: Run) -> bool:
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
    down_loss, up_loss = losses_between(a, audio_counts(call))
    run.audio_loss = max(down_loss, up_loss)
    end = time.monotonic()
    gap_up = rec.gap_up(stepped, min(end, stepped + 10))
    gap_down = rec.gap_down(stepped, min(end, stepped + 10))
    run.audio_gap_s = max(gap_up, gap_down)
    modes = [m for _, _, m in rec.modes(t0, end)]
    if "chat-only" in modes:
        run.why = f"chat-only at 150 kbit/s ({rec.modes(t0, end)})"
        return False
    if "audio-only" not in modes:
        run.why = "never audio-only"
        return False
    if run.audio_gap_s > 1.0 or run.audio_loss > 0.02:
        run.why = (
            f"audio gap {run.audio_gap_s:.1f} s, loss {run.audio_loss:.1%} (downlink: gap "
            f"{gap_down:.1f} s, patient samples up to "
            f"{rec.sample_step(stepped, min(end, stepped + 10)):.1f} s apart, loss "
            f"{down_loss:.1%}; uplink: gap {gap_up:.1f} s, loss {up_loss:.1%})"
        )
        return False
    return True


def _also(why: str, more: str) -> str:
    return f"{why}; {more}" if why else more


async def scenario_20k(call: Patient, rec: Recorder, run: Run) -> bool:
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
    await call.patient_chat(f"to doctor {stamp}")

    def at_patient(e: dict[str, Any]) -> bool:
        return e.get("event") == "chat" and e["message"]["message"]["text"] == f"to patient {stamp}"

    await wait(lambda: first_at(rec.patient, at_patient) is not None, 12)
    to_patient = first_at(rec.patient, at_patient)  # the patient's own stamp where it has one
    to_doctor = await wait(
        lambda: any(
            m.get("type") == "chat" and m["message"]["text"] == f"to doctor {stamp}"
            for _, m in rec.doctor
        ),
        max(0.1, 12 - (time.monotonic() - sent)),
    )
    if to_patient is None or to_doctor is None:
        missing = [
            w
            for w, t in (("to the patient", to_patient), ("to the doctor", to_doctor))
            if t is None
        ]
        run.why = _also(run.why, f"a chat was not delivered within 12 s ({', '.join(missing)})")
        return False
    run.chat_s = max(to_patient, to_doctor) - sent
    if run.chat_s > 5:
        run.why = _also(run.why, f"chat took {run.chat_s:.1f} s")
        ok = False
    await asyncio.sleep(max(0.0, 25 - (time.monotonic() - t0)))
    return ok


async def scenario_outage(call: Patient, rec: Recorder, run: Run) -> bool:
    call.link.outage(True)
    await asyncio.sleep(5)
    up = call.uplink_received()
    frames = [e for _, e in rec.patient if e.get("event") == "stats"]
    audio0 = int(frames[-1]["audio_frames"]) if frames else 0
    t_back = time.monotonic()
    call.link.outage(False)
    up_t = await wait(lambda: call.uplink_received() > up + 25, 10)

    def audio_frames() -> int:
        stats = [e for _, e in rec.patient if e.get("event") == "stats"]
        return int(stats[-1]["audio_frames"]) if stats else 0

    down_t = await wait(lambda: audio_frames() > audio0 + 10, 10)
    await asyncio.sleep(max(0.0, 15 - (time.monotonic() - t_back)))
    steps = [(d, m) for _, d, m in rec.modes(t_back) if m != "video"]
    if up_t is None or down_t is None:
        gone = [w for w, t in (("uplink", up_t), ("downlink", down_t)) if t is None]
        run.why = f"media did not resume within 10 s ({', '.join(gone)})"
        return False
    run.step_down_s = max(up_t, down_t) - t_back  # here: media back after the return
    if steps:
        run.why = f"stepped down after the return: {steps}"
        return False
    if run.step_down_s > 2:
        run.why = f"media back only after {run.step_down_s:.1f} s"
        return False
    return True


async def scenario_oscillating(call: Patient, rec: Recorder, run: Run) -> bool:
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


async def one_run(scenario: str, client: str = "aiortc") -> Run:
    run = Run(scenario, client)
    started = False
    with NetNS("consultfb") as ns, ShapedLink(ns) as link:
        try:
            async with patient_call(client, ns, link) as call:
                started = True
                rec = Recorder(call)
                rec.start()
                try:
                    await asyncio.sleep(2)  # media settled
                    t0 = time.monotonic()
                    try:
                        ok = await RUNNERS[scenario](call, rec, run)
                        climbed = await climb(call, rec, run)
                        run.passed = ok and climbed
                    finally:
                        run.timeline = [f"{t - t0:.1f} {d} {m}" for t, d, m in rec.modes(t0)]
                finally:
                    await rec.stop()
        except (Exception, pytest.fail.Exception) as exc:  # ShapedCall's waits fail like a test
            # One run's failure (the set-up's, or a page gone mid-run) fails that run only.
            print(f"{scenario} {client}:", file=sys.stderr)
            traceback.print_exception(exc, file=sys.stderr)
            first = str(exc).splitlines()[0] if str(exc) else repr(exc)
            run.passed = False
            run.why = f"{'error' if started else 'set-up'}: {first}"
    return run


def fmt(values: list[float | None], unit: str = " s") -> str:
    got = sorted(v for v in values if v is not None)
    if not got:
        return "-"
    if len(got) == 1:
        return f"{got[0]:.1f}{unit}"
    return f"{statistics.median(got):.1f}{unit} (max {got[-1]:.1f})"


HEADERS = [
    "scenario",
    "client",
    "pass",
    "step-down",
    "audio gap",
    "audio loss",
    "chat",
    "mode changes",
    "climb",
    "first frame",
]


def rows(runs: list[Run]) -> list[list[str]]:
    """One row per scenario and patient that ran, in SCENARIOS then CLIENTS order."""
    out = []
    for scenario in SCENARIOS:
        for client in CLIENTS:
            mine = [r for r in runs if r.scenario == scenario and r.client == client]
            if mine:
                out.append(row(scenario, client, mine))
    return out


def row(scenario: str, client: str, mine: list[Run]) -> list[str]:
    changes = [max(r.mode_changes.values()) for r in mine if r.mode_changes]
    return [
        scenario,
        client,
        f"{sum(r.passed for r in mine)}/{len(mine)}",
        fmt([r.step_down_s for r in mine]),
        fmt([r.audio_gap_s for r in mine]),
        fmt([None if r.audio_loss is None else r.audio_loss * 100 for r in mine], " %"),
        fmt([r.chat_s for r in mine]),
        str(max(changes)) if changes else "-",
        fmt([r.climb_s for r in mine]),
        fmt([r.first_frame_s for r in mine]),
    ]


PATIENTS = {
    "aiortc": "`aiortc`: the aiortc client (`ConsultClient`, obeys `pause` and nothing else), "
    "moving bars and a tone (Opus 40 kbit/s); what it received from its own reports (decoded "
    "frames every 0.5 s, chats as they arrive) and, for audio loss, its RTCP receiver reports.",
    "chromium": "`chromium`: Debian's Chromium (headless, Playwright) on the demo page "
    "(consult.js: obeys `pause` and the REMB cap), its fake camera and microphone; what it "
    "received from the page: getStats every 0.5 s (inbound-rtp audio packets received and "
    "lost: its downlink `audio gap` is the longest time without a new audio *packet*, not a "
    "decoded frame; video frames decoded) and consult.js's `chat` events, stamped by the page.",
}


def report(runs: list[Run], command: str, load: str) -> str:
    clients = [c for c in CLIENTS if any(r.client == c for r in runs)]
    failures = [f"- {r.scenario} ({r.client}): {r.why}" for r in runs if not r.passed]
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
            "The patient is in a network namespace behind the shaped veth, the doctor (aiortc, "
            "grain video, Opus 40 kbit/s) on loopback. Patients (`client`):",
            "",
            *[f"- {PATIENTS[c]}" for c in clients],
            "",
            "The uplink's audio gap and loss are the server's count of the patient's packets, "
            "for either patient. Times are medians (max) over the runs; `step-down` is the first "
            "mode change after the shaping (outage: media back both ways after the return); "
            "`audio gap` the longest silence either way in the 10 s after the step-down; "
            "`mode changes` the most in one direction (oscillating); `climb` both directions "
            "back to video after clearing; `first frame` after the downlink's `video` event "
            "(0.5 s resolution). `-`: not measured (not in that scenario, or no run got there: "
            "see the failures).",
            "",
            table(HEADERS, rows(runs)),
            "",
            *(["Failures:", *failures] if failures else ["No failures."]),
        ]
    )


async def main_async(args: argparse.Namespace) -> list[Run]:
    runs: list[Run] = []
    for i in range(args.runs):
        for scenario in args.scenario or SCENARIOS:
            for client in clients(args.client):
                started = time.monotonic()
                run = await one_run(scenario, client)
                runs.append(run)
                print(
                    f"run {i + 1}/{args.runs} {scenario} {client}: "
                    f"{'pass' if run.passed else 'FAIL'} {run} "
                    f"({time.monotonic() - started:.0f} s)",
                    flush=True,
                )
    return runs


def clients(choice: str) -> tuple[str, ...]:
    return CLIENTS if choice == "both" else (choice,)


def chromium_available() -> tuple[bool, str]:
    if shutil.which(CHROMIUM) is None:
        return False, f"{CHROMIUM} is not installed (make test installs Debian's chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return False, "playwright is not installed (make test installs it)"
    return True, ""


def browser_like_opus() -> None:
    set_opus_bitrate(OPUS_BPS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--scenario", action="append", choices=SCENARIOS)
    parser.add_argument(
        "--client",
        choices=(*CLIENTS, "both"),
        default=DEFAULT_CLIENT,
        help=f"the patient (default {DEFAULT_CLIENT})",
    )
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--debug", action="store_true", help="the controllers' samples on stderr")
    args = parser.parse_args()
    ok, why = shaping_available()
    if not ok:
        print(f"cannot shape links here: {why}", file=sys.stderr)
        return 2
    if "chromium" in clients(args.client):
        ok, why = chromium_available()
        if not ok:
            print(f"no Chromium patient here: {why}", file=sys.stderr)
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
