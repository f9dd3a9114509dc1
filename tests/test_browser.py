"""One real browser call: Debian's Chromium (headless) and an aiortc peer through the SFU.

Everything runs inside one loopback-only network namespace that the test creates: the real
server (`python -m signaling run --dev`), the browser (driven by Playwright over a pipe, so
control crosses the namespace boundary) and the aiortc peer (`tests/peers/aiortc_peer.py`).
The browser opens the dev demo page, which imports `/client/consult.js`, joins as the doctor
and publishes its fake camera and microphone; the peer joins as the patient, is admitted from
the page's knock list, publishes synthetic audio and video and decodes the browser's video.
Checks: the browser's getStats shows inbound video packets and decoded frames rising and
inbound audio packets rising; the peer reports frames decoded from the browser.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from signaling.auth import encode_token
from signaling.config import DEV_API_KEY
from tests.netns import NetNS, netns  # noqa: F401  (netns is a fixture)

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT / "tests" / "peers" / "aiortc_peer.py"
CHROMIUM = "/usr/bin/chromium"
PORT = 8080  # the namespace is fresh: no port can be taken
BASE = f"http://127.0.0.1:{PORT}"

# Headless Chromium with fake capture devices, auto-granted permissions, loopback ICE
# candidates (the namespace has nothing else) and no background traffic of its own.
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Inbound RTP counters by kind, summed over streams, from the page's RTCPeerConnection.
INBOUND_STATS_JS = """async () => {
  const out = {audio: {packets: 0, frames: 0}, video: {packets: 0, frames: 0}};
  const report = await window.consultation.getStats();
  report.forEach((r) => {
    if (r.type !== 'inbound-rtp' || !out[r.kind]) return;
    out[r.kind].packets += r.packetsReceived || 0;
    out[r.kind].frames += r.framesDecoded || 0;
  });
  return out;
}"""

# consult.js state and the demo page's event log (errors included), for failure messages.
PAGE_STATE_JS = """() => {
  const c = window.consultation;
  if (!c) return {loaded: false};
  const pc = c.peerConnection;
  return {
    state: c.state, connection: c.connectionState, signaling: pc && pc.signalingState,
    publications: c.publications.map((p) => [p.source, p.transceiver && p.transceiver.mid]),
    remote: c.remoteTracks.map((t) => [t.mid, t.kind, t.source, t.participant]),
    transceivers: pc ? pc.getTransceivers().map((t) => [t.mid, t.currentDirection]) : [],
    log: (document.getElementById('log') || {}).innerText,
  };
}"""

pytestmark = pytest.mark.timeout(120)


def _playwright() -> Any:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("playwright is not installed (make test installs it)")
    return async_playwright


async def _until(
    what: str,
    check: Callable[[], Awaitable[bool]],
    within: float,
    diag: Callable[[], Awaitable[str]],
) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out after {within:.0f}s waiting for {what}\n{await diag()}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(none)"


def _peer_reports(path: Path) -> list[dict[str, Any]]:
    out = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


class Call:
    """What one test run started, with the logs to print when something fails."""

    def __init__(self, ns: NetNS, tmp: Path) -> None:
        self.ns = ns
        self.tmp = tmp
        self.secret = secrets.token_hex(24)
        self.room = "browser-call-" + secrets.token_hex(4)
        self.server_log = tmp / "server.log"
        self.peer_out = tmp / "peer.out"
        self.peer_err = tmp / "peer.err"
        self.console: list[str] = []
        self.page: Any = None

    async def diag(self) -> str:
        page = "(no page)"
        if self.page is not None:
            try:
                page = json.dumps(await self.page.evaluate(PAGE_STATE_JS), indent=1)
            except Exception as exc:  # the page may be gone; the logs still help
                page = f"(page state unavailable: {exc!r})"
        return (
            f"--- page\n{page}\n"
            f"--- server log\n{_tail(self.server_log)}\n"
            f"--- peer stdout\n{_tail(self.peer_out)}\n"
            f"--- peer stderr\n{_tail(self.peer_err)}\n"
            f"--- browser console\n" + "\n".join(self.console[-40:])
        )

    def token(self, role: str, name: str) -> str:
        return encode_token(
            secret=self.secret, room=self.room, sub=f"u-{role}", role=role, name=name
        )

    async def open_page(self, browser: Any, token: str, query: str = "") -> Any:
        """The demo page joined with `token`; its console goes to the failure report."""
        page = self.page = await browser.new_page()
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        await page.goto(f"{BASE}/demo?token={token}&room={self.room}{query}")
        return page

    async def page_true(self, expr: str) -> bool:
        return bool(await self.page.evaluate(expr))

    def page_errors(self) -> list[str]:
        return [c for c in self.console if c.startswith("pageerror")]

    def start_server(self, secret: str, workers: int = 0) -> None:
        self.server = self.ns.popen(
            [
                sys.executable, "-m", "signaling", "run", "--dev",
                "--host", "127.0.0.1", "--port", str(PORT),
                f"--token-secret={secret}", "--ice-host", "127.0.0.1",
                f"--workers={workers}",
            ],
            cwd=ROOT,
            stdout=self.server_log.open("wb"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    async def wait_server(self) -> None:
        probe = f"import urllib.request as u; u.urlopen('{BASE}/healthz', timeout=2).read()"

        async def up() -> bool:
            if self.server.poll() is not None:
                why = f"server exited ({self.server.returncode})"
                raise AssertionError(f"{why}\n{await self.diag()}")
            res = await asyncio.to_thread(self.ns.run, [sys.executable, "-c", probe], timeout=10)
            return res.returncode == 0

        await _until("the server to listen", up, 30, self.diag)

    def start_peer(self, token: str) -> None:
        self.peer = self.ns.popen(
            [sys.executable, str(PEER), "--url", BASE, "--token", token],
            cwd=ROOT,
            stdout=self.peer_out.open("wb"),
            stderr=self.peer_err.open("wb"),
        )

    def peer_frames(self) -> int:
        frames = [r.get("video_frames", 0) for r in _peer_reports(self.peer_out)]
        return max(frames, default=0)

    def peer_failed(self) -> str | None:
        if self.peer.poll() is not None:
            return f"peer exited ({self.peer.returncode})"
        for r in _peer_reports(self.peer_out):
            if r.get("event") == "error":
                return f"peer error: {r}"
        return None

    async def api(self, path: str) -> Any:
        """GET an API path of the server (from inside the namespace), its JSON body."""
        probe = (
            "import urllib.request as u, sys; r = u.Request(sys.argv[1],"
            f" headers={{'Authorization': 'Bearer {DEV_API_KEY}'}});"
            " sys.stdout.write(u.urlopen(r, timeout=5).read().decode())"
        )
        args = [sys.executable, "-c", probe, BASE + path]
        res = await asyncio.to_thread(self.ns.run, args, timeout=10)
        assert res.returncode == 0, res
        return json.loads(res.stdout)

    def worker_pid(self, name: str) -> int:
        """The pid of the server's media worker `name`, as its last start logged it."""
        found = re.findall(
            rf"media worker {name} started \(pid (\d+)\)", _tail(self.server_log, 10_000)
        )
        assert found, f"no start of media worker {name} in the server log"
        return int(found[-1])


@pytest.fixture
async def call(netns: NetNS, tmp_path: Path, request: pytest.FixtureRequest) -> Call:  # noqa: F811
    """The real server running in the namespace (`--workers` the test's parameter, else 0)."""
    c = Call(netns, tmp_path)
    c.start_server(c.secret, workers=getattr(request, "param", 0))
    await c.wait_server()
    return c


@pytest.fixture
async def browser(netns: NetNS, tmp_path: Path) -> AsyncIterator[Any]:  # noqa: F811
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is not installed (make test installs Debian's chromium)")
    async_playwright = _playwright()
    wrapper = netns.wrapper(tmp_path / "chromium-in-netns", CHROMIUM)
    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=str(wrapper),
            args=CHROMIUM_FLAGS,
            ignore_default_args=["--headless"],  # replaced by --headless=new
            timeout=30_000,
        )
        try:
            yield b
        finally:
            await b.close()


@pytest.mark.parametrize("call", [0, 2], indirect=True, ids=["workers=0", "workers=2"])
async def test_one_real_browser_call(call: Call, browser: Any) -> None:
    page = await call.open_page(browser, call.token("doctor", "Dr Test"))
    await _until(
        "the doctor to be admitted",
        lambda: call.page_true("window.consultation && consultation.state === 'admitted'"),
        20,
        call.diag,
    )
    # The demo page publishes camera + microphone on admission.
    await _until(
        "the doctor's camera and microphone to be published",
        lambda: call.page_true("consultation.publications.every((p) => p.transceiver?.mid)"
                               " && consultation.publications.length === 2"),
        20,
        call.diag,
    )  # fmt: skip

    call.start_peer(call.token("patient", "Patient"))
    await _until(
        "the patient's knock on the doctor's page",
        lambda: call.page_true("document.querySelectorAll('#knocks button.admit').length === 1"),
        30,
        call.diag,
    )
    await page.click("#knocks button.admit")

    async def remote_tracks() -> bool:
        if msg := call.peer_failed():
            raise AssertionError(f"{msg}\n{await call.diag()}")
        return await call.page_true(
            "consultation.remoteTracks.filter((t) => t.participant).length >= 2"
        )

    await _until("the patient's audio and video in the browser", remote_tracks, 30, call.diag)
    tracks = await page.evaluate(
        "consultation.remoteTracks.map((t) => [t.kind, t.source].join(':')).sort()"
    )
    assert tracks == ["audio:microphone", "video:camera"], tracks

    first = await page.evaluate(INBOUND_STATS_JS)

    async def media_flowing() -> bool:
        now = await page.evaluate(INBOUND_STATS_JS)
        return (
            now["video"]["packets"] > first["video"]["packets"]
            and now["video"]["frames"] > first["video"]["frames"] + 10
            and now["audio"]["packets"] > first["audio"]["packets"] + 20
        )

    await _until("inbound audio and video in the browser", media_flowing, 30, call.diag)

    async def peer_decodes() -> bool:
        if msg := call.peer_failed():
            raise AssertionError(f"{msg}\n{await call.diag()}")
        return call.peer_frames() >= 10

    await _until("the peer to decode the browser's video", peer_decodes, 30, call.diag)
    before = call.peer_frames()
    await asyncio.sleep(1.5)
    assert call.peer_frames() > before, f"peer frames stopped at {before}\n{await call.diag()}"

    assert await page.evaluate("consultation.connectionState") == "connected"
    assert not await call.page_true("document.querySelector('#log .error')"), await call.diag()
    assert not call.page_errors(), call.page_errors()


def _cut_browser_sockets(ns: NetNS, port: int = PORT) -> int:
    """Destroy the browser's TCP connections to the server (both ends), as a network cut."""
    listing = ns.run(["ss", "-tnpH", "state", "established", f"( dport = :{port} )"]).stdout
    cut = 0
    for line in listing.splitlines():
        if "python" in line or "users:" not in line:
            continue  # the server's own end, or a socket of another process
        local = line.split()[2].rsplit(":", 1)[1]
        ns.run(["ss", "-K", "state", "established", f"( sport = :{local} or dport = :{local} )"])
        cut += 1
    return cut


async def test_browser_resumes_after_losing_its_socket(call: Call, browser: Any) -> None:
    """consult.js resumes the same participant after a network cut; chat survives once."""
    page = await call.open_page(browser, call.token("doctor", "Dr Test"), "&publish=0")
    await _until(
        "the doctor to be admitted",
        lambda: call.page_true("window.consultation && consultation.state === 'admitted'"),
        20,
        call.diag,
    )
    await page.evaluate("""() => {
      window.__events = [];
      for (const t of ['reconnecting', 'resumed', 'closed'])
        consultation.addEventListener(t, () => window.__events.push(t));
    }""")
    me = await page.evaluate("consultation.me.id")
    await page.evaluate("consultation.sendChat('before the cut')")

    assert _cut_browser_sockets(call.ns) >= 1, "found no browser socket to cut"
    await _until(
        "the client to resume",
        lambda: call.page_true(
            "window.__events.includes('resumed') && consultation.state === 'admitted'"
        ),
        20,
        call.diag,
    )
    assert await page.evaluate("window.__events") == ["reconnecting", "resumed"]
    assert await page.evaluate("consultation.me.id") == me
    await page.evaluate("consultation.sendChat('after the cut')")
    await _until(
        "the chat to hold both messages, once each",
        lambda: call.page_true(
            "consultation.chat.map((m) => m.text).join('|') === 'before the cut|after the cut'"
        ),
        10,
        call.diag,
    )
    assert await page.evaluate("document.querySelectorAll('#chat-log > div').length") == 2
    assert not call.page_errors(), call.page_errors()


async def _admitted(call: Call, page: Any, who: str) -> None:
    await _until(
        f"the {who} to be admitted",
        lambda: page.evaluate("window.consultation && consultation.state === 'admitted'"),
        30,
        call.diag,
    )


async def _inbound(page: Any) -> dict[str, dict[str, int]]:
    stats: dict[str, dict[str, int]] = await page.evaluate(INBOUND_STATS_JS)
    return stats


async def _media_flows(call: Call, pages: dict[str, Any], what: str, within: float) -> None:
    """Each page decodes fresh video frames and receives fresh audio from the other."""
    first = {who: await _inbound(page) for who, page in pages.items()}

    async def flowing() -> bool:
        for who, page in pages.items():
            now = await _inbound(page)
            if not (
                now["video"]["frames"] > first[who]["video"]["frames"] + 10
                and now["audio"]["packets"] > first[who]["audio"]["packets"] + 20
            ):
                return False
        return True

    await _until(what, flowing, within, call.diag)


@pytest.mark.parametrize("call", [2], indirect=True, ids=["workers=2"])
async def test_browsers_get_media_back_when_their_worker_is_killed(
    call: Call, browser: Any
) -> None:
    """Doctor and patient, both Chromium pages on consult.js, through a node with two media
    workers: media both ways; the room's worker killed (SIGKILL), the room moves to the other
    worker and both pages get media back by themselves (`media-timeout` -> a fresh peer
    connection), chat intact; the killed worker is started again."""
    doctor = await call.open_page(browser, call.token("doctor", "Dr Test"))
    await _admitted(call, doctor, "doctor")
    await doctor.evaluate("consultation.sendChat('before the kill')")
    patient = await call.open_page(browser, call.token("patient", "Patient"))
    await _until(
        "the patient's knock on the doctor's page",
        lambda: doctor.evaluate("document.querySelectorAll('#knocks button.admit').length === 1"),
        30,
        call.diag,
    )
    await doctor.click("#knocks button.admit")
    await _admitted(call, patient, "patient")
    pages = {"doctor": doctor, "patient": patient}
    await _media_flows(call, pages, "media both ways through the worker", 45)

    held_by = (await call.api(f"/api/v1/rooms/{call.room}"))["worker"]
    assert held_by in ("w0", "w1"), held_by
    os.kill(call.worker_pid(held_by), signal.SIGKILL)
    for page in pages.values():
        await page.evaluate("""() => {
          window.__events = [];
          consultation.addEventListener('reconnecting', (e) => window.__events.push(e.detail));
        }""")

    async def moved() -> bool:
        worker = (await call.api(f"/api/v1/rooms/{call.room}"))["worker"]
        return worker not in (None, held_by)

    await _until("the room on the other worker", moved, 30, call.diag)
    await _media_flows(call, pages, "media both ways again after the kill", 60)
    for page in pages.values():  # consult.js restarted its media; the socket stayed up
        events = await page.evaluate("window.__events")
        assert events and all(e.get("media") for e in events), events
        assert await page.evaluate("consultation.connectionState") == "connected"
        chat = await page.evaluate("consultation.chat.map((m) => m.text)")
        assert chat == ["before the kill"], chat

    async def restarted() -> bool:  # its first start, then the one after the kill
        return _tail(call.server_log, 10_000).count(f"media worker {held_by} started") >= 2

    await _until(f"media worker {held_by} started again", restarted, 30, call.diag)
    assert not call.page_errors(), call.page_errors()
