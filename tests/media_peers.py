"""In-process aiortc peers wired straight to a media-plane Participant (no WebSocket).

They use aiortc's full client stack (encoders, decoders) as real remote endpoints; only the
server side forwards bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from aiortc.rtcconfiguration import RTCBundlePolicy
from av import VideoFrame

from mediaserver.api import NegotiationError, TrackMeta
from mediaserver.participant import Participant
from mediaserver.rtc.peer import bundle_data_channel

VIDEO_CLOCK = 90000


class PatternVideoTrack(VideoStreamTrack):
    """A moving test pattern (something for the encoder to encode, frames to decode)."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        super().__init__()
        self.width, self.height = width, height
        self.counter = 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        img = np.zeros((self.height, self.width, 3), np.uint8)
        x = (self.counter * 4) % self.width
        img[:, x : x + 8] = 255
        img[..., 1] = 80
        self.counter += 1
        frame = VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


@dataclass
class Received:
    kind: str
    track: MediaStreamTrack
    frames: int = 0
    first_frame: float | None = None
    sizes: set[tuple[int, int]] = field(default_factory=set)


class Peer:
    """One client: publishes through client offers, answers server offers."""

    def __init__(self, participant: Participant) -> None:
        self.participant = participant
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self.channel = self.pc.createDataChannel("consult", negotiated=True, id=0)
        bundle_data_channel(self.pc)
        self.received: list[Received] = []
        self.track_event = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []
        self.offers = 0
        # Signaling messages are applied in order (a server offer may follow our answer at once).
        self._negotiation = asyncio.Lock()
        participant.on("offer", self._on_server_offer)
        self.pc.on("track", self._on_track)

    async def publish(self, tracks: dict[str, MediaStreamTrack]) -> None:
        """Publish {source: track} with one client offer."""
        async with self._negotiation:
            await self._publish(tracks)

    async def _publish(self, tracks: dict[str, MediaStreamTrack]) -> None:
        for track in tracks.values():
            self.pc.addTransceiver(track, direction="sendonly")
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        meta: dict[str, TrackMeta] = {}
        for t in self.pc.getTransceivers():
            for source, track in tracks.items():
                if t.sender.track is track and t.mid is not None:
                    meta[t.mid] = TrackMeta(kind=track.kind, source=source)
        answer = await self.participant.handle_offer(self.pc.localDescription.sdp, meta)
        assert answer is not None
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    def _on_server_offer(self, sdp: str, tracks: dict[str, dict[str, str]]) -> None:
        self.offers += 1
        self._readers.append(asyncio.ensure_future(self._answer(sdp)))

    async def _answer(self, sdp: str) -> None:
        async with self._negotiation:
            await self._apply_offer(sdp)

    async def _apply_offer(self, sdp: str) -> None:
        if self.participant.closed or self.pc.connectionState == "closed":
            return
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        with contextlib.suppress(NegotiationError):  # closed meanwhile
            await self.participant.handle_answer(self.pc.localDescription.sdp)

    def _on_track(self, track: MediaStreamTrack) -> None:
        item = Received(kind=track.kind, track=track)
        self.received.append(item)
        self._readers.append(asyncio.ensure_future(self._read(item)))
        self.track_event.set()

    async def _read(self, item: Received) -> None:
        while True:
            try:
                frame = await item.track.recv()
            except Exception:
                return
            item.frames += 1
            if item.first_frame is None:
                item.first_frame = time.monotonic()
            if isinstance(frame, VideoFrame):
                item.sizes.add((frame.width, frame.height))

    async def wait_frames(self, kind: str, count: int, timeout: float = 20) -> Received:
        async def poll() -> Received:
            while True:
                for item in self.received:
                    if item.kind == kind and item.frames >= count:
                        return item
                await asyncio.sleep(0.05)

        return await asyncio.wait_for(poll(), timeout)

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        await self.pc.close()


def av_tracks() -> dict[str, MediaStreamTrack]:
    return {"microphone": AudioStreamTrack(), "camera": PatternVideoTrack()}
