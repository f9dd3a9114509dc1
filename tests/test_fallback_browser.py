"""The demo page on a shaped link: a real browser patient goes to audio-only and back.

Debian's Chromium (headless, driven by Playwright over a pipe) runs in a network namespace
behind a veth pair that the kernel shapes (tests/shaping.py); it opens the node's demo page,
which joins as the patient, knocks and publishes its fake camera and microphone once
admitted. The node runs in this process on the host; the doctor is an aiortc client on
loopback with a webcam-like video. The link drops to 150 kbit/s: the page's mode pill shows
`audio-only`; the node holds the doctor's video back while its audio plays on in the browser
(and if the browser's own uplink was paused too, its camera stops reaching the node). The link is
restored: the pill shows `video` again and the doctor's video plays in the browser again.

The issue's time bounds are held by tests/test_fallback_shaped.py (aiortc peers, no browser
beside them); here the bounds are generous and the point is the browser and the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from compat.synth import ToneTrack
from mediaserver.api import IceConfig, MediaConfig, ParticipantSnapshot
from mediaserver.participant import Participant
from mediaserver.plane import LocalMediaPlane
from signaling.app import HUB, AccessLogger, create_app
from signaling.auth import encode_token
from signaling.client import ConsultClient
from signaling.hub import Hub

from .conftest import SECRET, make_config
from .netns import NetNS
from .shaping import ShapedLink, shaping_available
from .test_browser import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    INBOUND_STATS_JS,
    PAGE_STATE_JS,
    _playwright,
    _until,
)
from .test_fallback_shaped import WebcamVideo, browser_like_opus

ROOM = "shaped-browser"
# Video packets the page sent, summed over its outbound streams.
OUTBOUND_VIDEO_JS = """async () => {
  let packets = 0;
  (await window.consultation.getStats()).forEach((r) => {
    if (r.type === 'outbound-rtp' && r.kind === 'video') packets += r.packetsSent || 0;
  });
  return packets;
}"""
pytestmark = pytest.mark.timeout(240)


class BrowserCall:
    def __init__(self, ns: NetNS, link: ShapedLink, *, workers: int = 0) -> None:
        self.ns = ns
        self.link = link
        # 0: the media in this process (`media`, `received` read its live objects); N: in N
        # media worker processes (only the plane's snapshots: `snapshot`)
        self.workers = workers
        self.runner: web.AppRunner | None = None
        self.hub: Hub | None = None
        self.doctor: ConsultClient | None = None
        self.page: Any = None
        self.console: list[str] = []
        self.patient_id = ""
        self.port = 0

    async def start_node(self) -> None:
        media = MediaConfig(ice=IceConfig(host_addresses=("127.0.0.1", self.link.host_ip)))
        config = make_config(media=media, peer_timeout_s=30.0, dev=True, workers=self.workers)
        app = create_app(config=config)
        self.runner = web.AppRunner(app, access_log_class=AccessLogger)
        await self.runner.setup()
        self.hub = app[HUB]
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]
        await web.TCPSite(self.runner, self.link.host_ip, self.port).start()

    def token(self, role: str) -> str:
        return encode_token(
            secret=SECRET, room=ROOM, sub=f"u-{role}", role=role, name=role, ttl_s=600
        )

    async def close(self) -> None:
        if self.doctor is not None:
            await self.doctor.close()
        if self.runner is not None:
            await self.runner.cleanup()

    def snapshot(self) -> ParticipantSnapshot | None:
        """The media plane's snapshot of the patient: any number of workers."""
        assert self.hub is not None
        return self.hub.plane.participant(ROOM, self.patient_id) if self.patient_id else None

    def media(self) -> Participant | None:
        assert self.hub is not None
        if self.workers:
            return None  # the live media objects are in-process only
        plane = self.hub.plane  # the live objects of the in-process media plane
        assert isinstance(plane, LocalMediaPlane)
        room = plane.node.get_room(ROOM)
        media = room.participants.get(self.patient_id or "") if room is not None else None
        return media if isinstance(media, Participant) else None

    def received(self, source: str) -> int:
        media = self.media()
        if media is None:
            return 0
        return sum(p.stats.received for p in media.publications.values() if p.source == source)

    async def diag(self) -> str:
        page = "(no page)"
        if self.page is not None:
            try:
                page = str(await self.page.evaluate(PAGE_STATE_JS))
            except Exception as exc:  # the page may be gone; the rest still helps
                page = f"(page state unavailable: {exc!r})"
        media = self.media()
        info = media.info() if media is not None else self.snapshot()
        return f"page: {page}\nserver view: {info}\nconsole:\n" + "\n".join(self.console[-30:])

    async def join(self, browser: Any) -> Any:
        """The doctor (aiortc, on loopback: webcam-like video and a tone) joins and publishes;
        the demo page opens in `browser` as the patient and knocks; the doctor admits it (the
        page then publishes its fake camera and microphone). Returns the page."""
        doctor = self.doctor = ConsultClient(f"http://127.0.0.1:{self.port}")
        await doctor.connect(self.token("doctor"))
        await doctor.publish(WebcamVideo(), ToneTrack())

        page = self.page = await browser.new_page()
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        url = (
            f"http://{self.link.host_ip}:{self.port}/demo?token={self.token('patient')}&room={ROOM}"
        )
        await page.goto(url)

        async def knocked() -> bool:
            return any(m.get("type") == "knock" for m in doctor.messages)

        await _until("the browser patient's knock", knocked, 30, self.diag)
        knock = await doctor.wait_for("knock")
        self.patient_id = knock["participant"]["id"]
        await doctor.admit(self.patient_id)
        return page

    async def pill(self) -> str:
        return str(await self.page.evaluate("document.getElementById('mode').textContent"))


@pytest.fixture
async def shaped_call(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[BrowserCall]:
    """The node on the host and a namespace behind a shaped veth, for a browser to run in;
    its media in `request.param` worker processes (indirect), else 0."""
    ok, why = shaping_available()
    if not ok:
        pytest.fail(f"cannot shape links here (make test runs as root): {why}")
    browser_like_opus(monkeypatch)
    with NetNS("consult5b") as ns, ShapedLink(ns) as link:
        call = BrowserCall(ns, link, workers=getattr(request, "param", 0))
        try:
            await call.start_node()
            yield call
        finally:
            await call.close()


@contextlib.asynccontextmanager
async def chromium_in(call: BrowserCall, folder: Path) -> AsyncIterator[Any]:
    """Chromium (Playwright over a pipe) inside `call`'s namespace."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is not installed (make test installs Debian's chromium)")
    async_playwright = _playwright()
    wrapper = call.ns.wrapper(folder / "chromium-in-netns", CHROMIUM)
    async with async_playwright() as pw:
        # The page is served from the veth address, not localhost: let it capture.
        origin = f"http://{call.link.host_ip}:{call.port}"
        browser = await pw.chromium.launch(
            executable_path=str(wrapper),
            args=[*CHROMIUM_FLAGS, f"--unsafely-treat-insecure-origin-as-secure={origin}"],
            ignore_default_args=["--headless"],  # replaced by --headless=new
            timeout=30_000,
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def shaped_browser(
    shaped_call: BrowserCall, tmp_path: Path
) -> AsyncIterator[tuple[BrowserCall, Any]]:
    """Chromium inside `shaped_call`'s namespace."""
    async with chromium_in(shaped_call, tmp_path) as browser:
        yield shaped_call, browser


@pytest.mark.parametrize("shaped_call", [0, 2], indirect=True, ids=["workers=0", "workers=2"])
async def test_demo_page_shows_audio_only_on_a_short_link_and_video_back(
    shaped_browser: tuple[BrowserCall, Any],
) -> None:
    call, browser = shaped_browser
    page = await call.join(browser)

    async def inbound() -> dict[str, dict[str, int]]:
        stats: dict[str, dict[str, int]] = await page.evaluate(INBOUND_STATS_JS)
        return stats

    async def rising(kind: str, key: str, by: int, seconds: float = 2.0) -> bool:
        before = (await inbound())[kind][key]
        await asyncio.sleep(seconds)
        return (await inbound())[kind][key] >= before + by

    async def outbound_video() -> int:
        packets: int = await page.evaluate(OUTBOUND_VIDEO_JS)
        return packets

    async def uplink_flowing() -> bool:
        if not call.workers:
            return call.received("camera") > 100 and call.received("microphone") > 100
        snapshot = call.snapshot()  # with workers: what the plane's snapshots say
        return (
            snapshot is not None
            and len(snapshot.tracks) == 2
            and snapshot.link.uplink.bitrate_bps > 0
            and await outbound_video() > 100
        )

    async def flowing() -> bool:
        return await uplink_flowing() and await rising("video", "frames", 10)

    await _until("media both ways between the browser and the node", flowing, 60, call.diag)
    assert (await call.pill()).startswith("video")

    call.link.rate(150)

    async def audio_only() -> bool:
        return (await call.pill()).startswith("audio-only")

    await _until("the demo's mode pill to show audio-only", audio_only, 40, call.diag)
    media = call.media()
    snapshot = call.snapshot()
    assert snapshot is not None
    modes = media.info()["modes"] if media is not None else dict(snapshot.modes)
    assert "audio-only" in modes.values(), modes
    if modes["downlink"] == "audio-only" and not call.workers:
        # The node stops forwarding the doctor's video to the browser (between the probes
        # back up, which forward it for a moment); the doctor's audio keeps playing there.
        async def video_held() -> bool:
            media = call.media()
            subs = media.subscriptions.values() if media is not None else []
            return any(s.kind == "video" and s.paused for s in subs)

        await _until("the node to hold the doctor's video back", video_held, 20, call.diag)
    if modes["downlink"] == "audio-only":
        await _until(
            "the doctor's audio in the browser",
            lambda: rising("audio", "packets", 40),
            20,
            call.diag,
        )
    if modes["uplink"] == "audio-only":
        # The browser obeyed `pause`: its camera stops reaching the node, audio goes on.
        async def camera_stopped() -> bool:
            if call.workers:  # the browser's own count of what it sends
                sent = await outbound_video()
                await asyncio.sleep(2.0)
                return await outbound_video() - sent < 10
            before = call.received("camera")
            await asyncio.sleep(2.0)
            return call.received("camera") - before < 10

        await _until("the browser's camera to stop at the node", camera_stopped, 20, call.diag)

    call.link.rate(None)

    async def video_again() -> bool:
        return (await call.pill()).startswith("video")

    await _until("the demo's mode pill to show video again", video_again, 60, call.diag)
    await _until(
        "the doctor's video in the browser again",
        lambda: rising("video", "frames", 10),
        30,
        call.diag,
    )
    assert not [c for c in call.console if c.startswith("pageerror")], call.console
