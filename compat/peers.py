"""The two sides of a call: a page in a real browser, or the aiortc client.

Both give the same `status()` shape (what the scenarios check):
`{state, me: {id, role}, connection, ufrag, dataChannel, knocks, chat: [{text}], events,
remote: [{participant, source, kind, packets, framesDecoded, width, height, codec}],
closeReason, videoCodecs}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Any

import numpy as np
from aiortc import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

from compat.driver import Driver, DriverError
from compat.synth import BarsTrack, ToneTrack
from signaling.client import ConsultClient


class Peer:
    label = "peer"
    is_browser = False

    async def join(self, token: str, publish: bool = True) -> None:
        raise NotImplementedError

    async def status(self) -> dict[str, Any]:
        raise NotImplementedError

    async def admit_all(self) -> list[str]:
        raise NotImplementedError(f"{self.label} cannot admit")

    async def chat(self, text: str) -> None:
        raise NotImplementedError

    async def send_data(self, text: str) -> None:
        raise NotImplementedError

    async def leave(self) -> None:
        raise NotImplementedError

    async def end(self) -> None:
        raise NotImplementedError(f"{self.label} cannot end")

    async def screenshot(self, mid: str | None) -> str | None:
        return None

    async def close(self) -> None:
        raise NotImplementedError


class BrowserPeer(Peer):
    """One harness page (compat/pages/call.html) in one launched browser."""

    is_browser = True

    def __init__(self, driver: Driver, browser: str, label: str, page: str, harness: str, ws: str):
        self.driver = driver
        self.browser = browser
        self.label = label
        self.page = page
        self.harness = harness
        self.ws = ws
        self.url = ""

    async def _eval(self, body: str, timeout: float = 20) -> Any:
        try:
            res = await self.driver.call("eval", timeout, page=self.page, body=body)
        except DriverError as exc:
            what = body.removeprefix("return ").removeprefix("await ").split("(")[0]
            raise DriverError(f"{self.label} {what}: {exc}") from exc
        return res.get("value")

    async def join(self, token: str, publish: bool = True) -> None:
        self.url = f"{self.harness}/compat/call.html?token={token}&ws={self.ws}"
        if not publish:
            self.url += "&publish=0"
        await self.driver.call("open", 45, browser=self.browser, page=self.page, url=self.url)

    async def status(self) -> dict[str, Any]:
        value = await self._eval("return await window.compat.status();")
        return value if isinstance(value, dict) else {}

    async def admit_all(self) -> list[str]:
        return list(await self._eval("return await window.compat.admitAll();") or [])

    async def chat(self, text: str) -> None:
        await self._eval(f"return await window.compat.chat({json.dumps(text)});")

    async def send_data(self, text: str) -> None:
        await self._eval(f"return window.compat.sendData({json.dumps(text)});")

    async def set_muted(self, source: str, muted: bool) -> None:
        await self._eval(
            f"return await window.compat.setMuted({json.dumps(source)}, {json.dumps(muted)});"
        )

    async def publish_av(self) -> None:
        await self._eval("return await window.compat.publishAV();", timeout=30)

    async def add_exam_camera(self) -> None:
        await self._eval("return await window.compat.addExamCamera();", timeout=30)

    async def restart_ice(self) -> None:
        await self._eval("return window.compat.restartIce();")

    async def reload(self) -> None:
        await self.driver.call("reload", 45, page=self.page)

    async def leave(self) -> None:
        await self._eval("return await window.compat.leave();")

    async def end(self) -> None:
        await self._eval("return await window.compat.end();")

    async def screenshot(self, mid: str | None) -> str | None:
        sel = f"#r-{mid}" if mid is not None else None
        res = await self.driver.call("screenshot", 20, page=self.page, selector=sel)
        png = res.get("png")
        return png if isinstance(png, str) else None

    async def console(self) -> list[str]:
        with contextlib.suppress(Exception):
            return list((await self.driver.call("console", 10, page=self.page)).get("lines", []))
        return []

    async def diagnose(self) -> Any:
        with contextlib.suppress(Exception):
            return await self._eval("return await window.compat.diagnose();", timeout=10)
        return None

    async def debug_log(self) -> list[str]:
        """consult.js's negotiation steps as the page recorded them (evidence of a failure)."""
        with contextlib.suppress(Exception):
            return list(await self._eval("return window.compat.debugLog();", timeout=10) or [])
        return []

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.driver.call("closePage", 15, page=self.page)


_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([\w-]+)/", re.M)


def _answer_codecs(sdp: str) -> dict[str, str]:
    """mid -> the first codec of each m-line of an SDP (what the answer picked)."""
    out: dict[str, str] = {}
    for section in sdp.split("\nm=")[1:]:
        mline = section.split("\n", 1)[0].split()
        mid = re.search(r"^a=mid:(\S+)", section, re.M)
        if not mid or len(mline) < 4:
            continue
        maps = dict(_RTPMAP.findall(section))
        out[mid.group(1)] = maps.get(mline[3], mline[3])
    return out


class _AiortcWarnings(logging.Handler):
    """aiortc logs (not raises) the failures that end a connection, e.g. an RTP packet its
    parser rejects; keep them so the report shows why an aiortc peer's connection closed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text += f" {type(exc).__name__}: {exc}"
        self.lines.append(f"{record.name}: {text}"[:500])
        del self.lines[:-20]


AIORTC_WARNINGS = _AiortcWarnings()
logging.getLogger("aiortc").addHandler(AIORTC_WARNINGS)


class AiortcPeer(Peer):
    """signaling.client.ConsultClient: publishes a tone and colour bars, decodes what it gets."""

    label = "aiortc"
    codecs = ("VP8",)

    def __init__(self, base_url: str) -> None:
        self.client = ConsultClient(base_url, codecs=list(self.codecs))
        self.frames: dict[int, dict[str, Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumed: set[int] = set()
        self.errors: list[str] = []

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    async def join(self, token: str, publish: bool = True) -> None:
        await self.client.connect(token)
        self._spawn(self._run())

    async def _run(self) -> None:
        c = self.client
        await c.wait_state("admitted", timeout_s=600)
        await c.publish(ToneTrack(), BarsTrack(), sources=["microphone", "camera"])
        while c.close_code is None:
            for track in list(c.remote_tracks.values()):
                if id(track) not in self._consumed:
                    self._consumed.add(id(track))
                    self._spawn(self._consume(track))
            await asyncio.sleep(0.3)

    async def _consume(self, track: MediaStreamTrack) -> None:
        entry: dict[str, Any] = {"frames": 0, "width": None, "height": None, "brightness": None}
        entry["energy"] = 0.0
        self.frames[id(track)] = entry
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                entry["frames"] += 1
                if entry["frames"] % 10:
                    continue
                # Every 10th frame: what a muted sender shows (black video, silent audio).
                if isinstance(frame, VideoFrame):
                    entry["width"], entry["height"] = frame.width, frame.height
                    entry["brightness"] = int(frame.to_ndarray(format="gray").mean())
                elif isinstance(frame, AudioFrame):
                    pcm = frame.to_ndarray().astype(np.float32) / 32768.0
                    entry["energy"] += float((pcm**2).mean()) * 10

    async def status(self) -> dict[str, Any]:
        c = self.client
        chat: list[dict[str, Any]] = []
        seen: set[Any] = set()
        events: list[dict[str, Any]] = []
        for m in c.messages:
            kind = m.get("type")
            msgs = m.get("chat") if kind == "room" else [m.get("message")] if kind == "chat" else []
            for cm in msgs or []:
                if isinstance(cm, dict) and cm.get("id") not in seen:
                    seen.add(cm.get("id"))
                    chat.append(
                        {"id": cm.get("id"), "from": cm.get("from"), "text": cm.get("text")}
                    )
            if kind in ("participant-left", "participant-joined", "ended", "error", "waiting"):
                p = m.get("participant")
                events.append(
                    {
                        "type": kind,
                        "participant": p.get("id") if isinstance(p, dict) else p,
                        "reason": m.get("reason"),
                        "code": m.get("code"),
                    }
                )
        remote: list[dict[str, Any]] = []
        pc = c.pc
        picked = _answer_codecs(pc.localDescription.sdp) if pc and pc.localDescription else {}
        if pc is not None:
            for tr in pc.getTransceivers():
                track = tr.receiver.track
                meta = c._track_meta.get(tr.mid or "", {})
                if not meta.get("participant") or tr.currentDirection not in (
                    "recvonly",
                    "sendrecv",
                ):
                    continue
                packets = 0
                with contextlib.suppress(Exception):
                    for s in (await tr.receiver.getStats()).values():
                        if s.type == "inbound-rtp":
                            packets += s.packetsReceived
                f = self.frames.get(id(track), {})
                remote.append(
                    {
                        "mid": tr.mid,
                        "kind": tr.kind,
                        "source": meta.get("source"),
                        "participant": meta.get("participant"),
                        "packets": packets,
                        "framesDecoded": f.get("frames", 0) if tr.kind == "video" else 0,
                        "audioFrames": f.get("frames", 0) if tr.kind == "audio" else 0,
                        "brightness": f.get("brightness"),
                        "audioEnergy": f.get("energy") if tr.kind == "audio" else None,
                        "width": f.get("width"),
                        "height": f.get("height"),
                        "codec": {"mimeType": f"{tr.kind}/{picked.get(tr.mid or '', '?')}"},
                    }
                )
        events += [{"type": "error", "code": "aiortc", "message": e} for e in self.errors]
        if c.pc is not None and c.pc.connectionState in ("failed", "closed"):
            events += [
                {"type": "error", "code": "aiortc-log", "message": line}
                for line in AIORTC_WARNINGS.lines[-3:]
            ]
        return {
            "received": [m.get("type") for m in c.messages][-25:],
            "negotiations": c.negotiations,
            "state": c.state,
            "me": {"id": c.participant_id},
            "closeCode": c.close_code,
            "connection": pc.connectionState if pc else "new",
            "dataChannel": c.channel.readyState if c.channel else None,
            "chat": chat,
            "events": events,
            "remote": remote,
            "knocks": [],
            "closeReason": {4005: "ended", 4004: "kicked", 1000: "left"}.get(c.close_code or 0),
            "videoCodecs": [f"video/{x}" for x in self.codecs],
        }

    async def chat(self, text: str) -> None:
        await self.client.chat(text)

    async def send_data(self, text: str) -> None:
        self.client.send_data(json.dumps({"type": "chat", "text": text}))

    async def leave(self) -> None:
        await self.client.leave()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.close(), 15)
