"""Simulcast from a real browser, down the ladder and back on a shaped link.

The doctor is Debian's Chromium on the host (loopback): the demo page, its fake camera
published by consult.js with its default simulcast layers (`sendEncodings`). The patient is a
second Chromium inside a network namespace behind a shaped veth (tests/shaping.py), the demo
page subscribed to the doctor and publishing nothing. The node forwards the patient the
layer its link carries:
- unshaped: the best layer the doctor sends;
- 400 kbit/s: a lower layer, still video (frames decoded at 10 fps or more), not audio-only;
- 150 kbit/s: audio-only, as without simulcast;
- cleared: video again, and back up to the best layer.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mediaserver.subscription import Subscription

from .test_browser import CHROMIUM, CHROMIUM_FLAGS, _playwright, _until
from .test_fallback_browser import ROOM, BrowserCall, chromium_in, shaped_call

__all__ = ["shaped_call"]  # the fixture, used by name
pytestmark = pytest.mark.timeout(300)

# frames decoded and the frame width of the page's inbound video
VIDEO_JS = """async () => {
  let frames = 0, width = 0;
  (await window.consultation.getStats()).forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'video') {
      frames += r.framesDecoded || 0; width = Math.max(width, r.frameWidth || 0);
    }
  });
  return [frames, width];
}"""
# Two layers, 320x180 and 960x540, through consult.js's `simulcast` option (two, not three:
# cheap enough for a shared 2-core machine). The fake camera's pattern is simple: at 640x360
# it needs only about 270 kbit/s, which a 400 kbit/s link carries.
PUBLISH_JS = """async () => {
  const c = window.consultation;
  const stream = await navigator.mediaDevices.getUserMedia(
    {audio: true, video: {width: 960, height: 540, frameRate: 30}});
  const layers = [
    {rid: 'q', scaleResolutionDownBy: 3, maxBitrate: 150000},
    {rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1200000},
  ];
  for (const t of stream.getTracks()) {
    if (t.kind === 'audio') c.publish(t, {source: 'microphone'});
    else c.publish(t, {source: 'camera', simulcast: layers});
  }
  return c.publications.map((p) => [p.source, (p.encodings || []).map((e) => e.rid)]);
}"""


async def fps(page: Any, seconds: float = 3.0) -> tuple[float, int]:
    """Frames decoded per second over `seconds`, and the last frame width."""
    frames0, _ = await page.evaluate(VIDEO_JS)
    await asyncio.sleep(seconds)
    frames1, width = await page.evaluate(VIDEO_JS)
    return (frames1 - frames0) / seconds, int(width)


# The doctor's outbound video per rid, and its send-side estimate (for failure messages).
OUTBOUND_JS = """async () => {
  const out = [];
  (await window.consultation.getStats()).forEach((r) => {
    if (r.type === 'outbound-rtp' && r.kind === 'video') {
      out.push([r.rid, r.active, r.bytesSent, r.frameWidth, r.targetBitrate,
                r.qualityLimitationReason, r.encoderImplementation]);
    }
    if (r.type === 'candidate-pair' && r.nominated) out.push(['bwe', r.availableOutgoingBitrate]);
  });
  return out;
}"""


SDP_JS = """() => {
  const pc = window.consultation.peerConnection;
  const wanted = /rid|simulcast|m=video|ssrc-group/;
  const pick = (d) => (d ? d.sdp.split('\\r\\n').filter((l) => wanted.test(l)) : []);
  return {local: pick(pc.localDescription), remote: pick(pc.remoteDescription),
          params: pc.getSenders().filter((s) => s.track && s.track.kind === 'video')
            .map((s) => s.getParameters().encodings)};
}"""


class SimulcastCall:
    def __init__(self, call: BrowserCall) -> None:
        self.call = call
        self.doctor: Any = None
        self.patient: Any = None

    def url(self, host: str, role: str) -> str:
        token = self.call.token(role)
        return f"http://{host}:{self.call.port}/demo?token={token}&room={ROOM}&publish=0"

    def video_sub(self) -> Subscription | None:
        media = self.call.media()
        if media is None:
            return None
        return next((s for s in media.subscriptions.values() if s.kind == "video"), None)

    def layers(self) -> list[str]:
        """The doctor's layers that send now, lowest bitrate first (the node's ranking)."""
        sub = self.video_sub()
        return [p.rid for p in sub.publication.ranked] if sub is not None else []

    def layer(self) -> str:
        sub = self.video_sub()
        return sub.layer.rid if sub is not None and sub.layer is not None else ""

    def modes(self) -> dict[str, str]:
        media = self.call.media()
        return dict(media.info()["modes"]) if media is not None else {}

    async def diag(self) -> str:
        sub = self.video_sub()
        rates = (
            {p.rid: p.bitrate_bps for p in sub.publication.layers.values()}
            if sub is not None
            else {}
        )
        publisher = ""
        if self.doctor is not None:
            try:
                publisher = f"doctor sends {await self.doctor.evaluate(OUTBOUND_JS)}\n"
                publisher += str(await self.doctor.evaluate(SDP_JS)) + "\n"
            except Exception as exc:  # the page may be gone
                publisher = f"(doctor's stats unavailable: {exc!r})\n"
        media = self.call.media()
        if media is not None:
            for other in media.room.participants.values():
                if other is media or not hasattr(other, "demux"):
                    continue
                demux = other.demux
                publisher += (
                    f"publisher {other.id}: rid ext {demux.rid_ext_id}/{demux.rrid_ext_id}, "
                    f"ssrcs {list(demux.pub_by_ssrc)} rtx {list(demux.rtx_by_ssrc)}, publications "
                    + str(
                        [
                            (
                                p.source,
                                p.rids,
                                p.ssrc,
                                [
                                    (r, x.ssrc, x.rtx_ssrc, x.stats.received)
                                    for r, x in p.layers.items()
                                ],
                                p.stats.received,
                            )
                            for p in other.publications.values()
                        ]
                    )
                    + "\n"
                )
        return (
            publisher + f"layer {self.layer()!r} of {self.layers()} (bitrates {rates}), modes "
            f"{self.modes()}\n" + await self.call.diag()
        )


@pytest.fixture
async def simulcast_call(
    shaped_call: BrowserCall, tmp_path: Path
) -> AsyncIterator[tuple[SimulcastCall, Any]]:
    """The shaped call's node; the patient's Chromium in its namespace, the doctor's on the
    host."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is not installed (make test installs Debian's chromium)")
    async with chromium_in(shaped_call, tmp_path) as patient_browser:
        async with _playwright()() as pw:
            doctor_browser = await pw.chromium.launch(
                executable_path=CHROMIUM,
                args=list(CHROMIUM_FLAGS),
                ignore_default_args=["--headless"],
                timeout=30_000,
            )
            try:
                yield SimulcastCall(shaped_call), (doctor_browser, patient_browser)
            finally:
                await doctor_browser.close()


async def test_a_simulcast_publisher_down_the_ladder_and_back(
    simulcast_call: tuple[SimulcastCall, Any],
) -> None:
    sc, (doctor_browser, patient_browser) = simulcast_call
    call = sc.call
    console = call.console
    doctor = sc.doctor = await doctor_browser.new_page()
    doctor.on("console", lambda m: console.append(f"doctor {m.type}: {m.text}"))
    await doctor.goto(sc.url("127.0.0.1", "doctor"))
    await _until(
        "the doctor to join",
        lambda: doctor.evaluate("window.consultation.state === 'admitted'"),
        30,
        sc.diag,
    )
    published = await doctor.evaluate(PUBLISH_JS)
    assert ["camera", ["q", "f"]] in published, published

    patient = sc.patient = call.page = await patient_browser.new_page()
    patient.on("console", lambda m: console.append(f"patient {m.type}: {m.text}"))
    await patient.goto(sc.url(call.link.host_ip, "patient"))
    await _until(
        "the patient's knock",
        lambda: doctor.evaluate("window.consultation.knocks.length > 0"),
        30,
        sc.diag,
    )
    call.patient_id = await doctor.evaluate("window.consultation.knocks[0].id")
    await doctor.evaluate(f"window.consultation.admit({call.patient_id!r})")

    async def best_layer() -> bool:
        layers = sc.layers()
        return len(layers) >= 2 and sc.layer() == layers[-1] and (await fps(patient, 2))[0] >= 10

    await _until("the best of two layers or more, decoded", best_layer, 45, sc.diag)
    best = sc.layer()

    call.link.rate(400)

    async def lower_layer() -> bool:
        layers = sc.layers()
        return sc.layer() in layers[:-1] and sc.modes().get("downlink") == "video"

    await _until("a lower layer at 400 kbit/s", lower_layer, 40, sc.diag)
    # Video goes on from the lower layer (climbs back are probes: they may try the best
    # layer for a moment, and fall back on its losses).
    frames0, _ = await patient.evaluate(VIDEO_JS)
    low = 0
    for _ in range(10):
        await asyncio.sleep(0.5)
        assert sc.modes().get("downlink") == "video", await sc.diag()
        low += sc.layer() != best
    frames1, width = await patient.evaluate(VIDEO_JS)
    rate = (frames1 - frames0) / 5.0
    assert rate >= 10, f"{rate:.1f} fps at {width}px\n{await sc.diag()}"
    assert low >= 6, f"on the lower layer {low} of 10 samples\n{await sc.diag()}"

    call.link.rate(150)

    async def audio_only() -> bool:
        return sc.modes().get("downlink") == "audio-only"

    await _until("audio-only at 150 kbit/s", audio_only, 40, sc.diag)

    frames_held, _ = await patient.evaluate(VIDEO_JS)
    call.link.rate(None)

    async def video_mode() -> bool:
        return sc.modes().get("downlink") == "video"

    await _until("video mode once the link clears", video_mode, 40, sc.diag)
    # the first frame decodes within 1 s of the climb (a keyframe of the layer was asked for)
    climbed = time.monotonic()
    while (await patient.evaluate(VIDEO_JS))[0] <= frames_held:
        assert time.monotonic() - climbed < 1.0, f"no frame 1 s after the climb\n{await sc.diag()}"
        await asyncio.sleep(0.05)

    async def best_again() -> bool:
        return await video_mode() and len(sc.layers()) >= 2 and sc.layer() == best

    await _until("back on the best layer", best_again, 60, sc.diag)
    rate, _ = await fps(patient, 3.0)
    assert rate >= 10, f"{rate:.1f} fps\n{await sc.diag()}"
    assert not [c for c in console if "pageerror" in c], console
