"""An aiortc participant for browser tests, run as a subprocess (inside the test's netns).

    python tests/peers/aiortc_peer.py --url http://127.0.0.1:8080 --token JWT [--seconds 60]

Joins through `signaling.client.ConsultClient` (a patient waits until admitted), publishes
synthetic audio (a tone) and video (moving colour bars) through the server's `publish`
request (aiortc cannot roll back, so it never offers: the server offers recvonly m-lines and
the client answers), and decodes every track the server forwards to it. Prints one JSON
object per line on stdout: `{"event": "joined"|"admitted"|"track"|"stats"|"error"|"closed",
...}`; `stats` lines carry `video_frames` and `audio_frames` decoded so far. Logs go to
stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from compat.synth import BarsTrack, ToneTrack
from mediaserver.rtc.ice import gather_on_loopback
from signaling.client import ConsultClient

log = logging.getLogger("aiortc_peer")
VIDEO_RATE = 90000
AUDIO_RATE = 48000


def report(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": round(time.monotonic(), 3), **fields}), flush=True)


class DecodingPeer:
    """A ConsultClient that decodes and counts every track the server forwards to it.

    Shared by this peer and tests/peers/shaped_peer.py; `_run` (joining, publishing, reports)
    is each one's own.
    """

    def __init__(self, client: ConsultClient, token: str) -> None:
        self.client = client
        self.token = token
        self.frames = {"audio": 0, "video": 0}
        self._consumed: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, seconds: float) -> int:
        try:
            return await asyncio.wait_for(self._run(), seconds)
        except TimeoutError:
            return 0
        finally:
            for task in self._tasks:
                task.cancel()
            self._stopping()
            await self.client.close()

    async def _run(self) -> int:
        raise NotImplementedError

    def _stopping(self) -> None:
        """Called once the run ends, before the client closes."""

    def _new_track(self, participant: str, source: str, track: MediaStreamTrack) -> None:
        """Called once for each new remote track, before it is consumed."""

    def _consume_new_tracks(self) -> None:
        for (participant, source), track in list(self.client.remote_tracks.items()):
            if id(track) in self._consumed:
                continue
            self._consumed.add(id(track))
            self._new_track(participant, source, track)
            self._spawn(self._consume(track))

    async def _consume(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.frames[track.kind] += 1

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class Peer(DecodingPeer):
    """The patient: ConsultClient plus frame counting and JSON reports."""

    def __init__(self, base_url: str, token: str) -> None:
        super().__init__(ConsultClient(base_url, codecs=["VP8"]), token)

    async def _run(self) -> int:
        c = self.client
        joined = await c.connect(self.token)
        report("joined", state=joined["state"], participant=joined["participant"]["id"])
        await c.wait_state("admitted", timeout_s=60)
        report("admitted")
        assert c.pc is not None
        pc = c.pc

        @pc.on("connectionstatechange")
        def _state() -> None:
            report("connectionstate", state=pc.connectionState)

        await c.publish(ToneTrack(), BarsTrack(), sources=["microphone", "camera"])
        report("publish-requested")
        last: tuple[int, int] | None = None
        quiet = 0
        while c.state == "admitted" and c.close_code is None:
            self._consume_new_tracks()
            await asyncio.sleep(0.5)
            now = (self.frames["video"], self.frames["audio"])
            quiet += 1
            if now != last or quiet >= 10:
                self._report_stats()
                last, quiet = now, 0
        report("closed", state=c.state, code=c.close_code)
        return 0 if c.state in ("left", "ended") else 1

    def _stopping(self) -> None:
        self._report_stats()

    def _new_track(self, participant: str, source: str, track: MediaStreamTrack) -> None:
        report("track", participant=participant, source=source, kind=track.kind)

    def _report_stats(self) -> None:
        report("stats", video_frames=self.frames["video"], audio_frames=self.frames["audio"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the node, http://host:port")
    parser.add_argument("--token", required=True, help="participant token (JWT)")
    parser.add_argument("--seconds", type=float, default=120.0, help="stop after this long")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    gather_on_loopback()  # the test namespace holds only `lo`, which aioice skips
    try:
        return asyncio.run(Peer(args.url, args.token).run(args.seconds))
    except Exception as exc:
        report("error", code="exception", message=repr(exc))
        raise


if __name__ == "__main__":
    sys.exit(main())
