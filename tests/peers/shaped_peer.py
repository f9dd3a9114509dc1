"""A patient on an impaired link, run as a subprocess inside the test's client namespace.

    python tests/peers/shaped_peer.py --url http://10.1.2.1:8080 --token JWT [--seconds 120]

A `ConsultClient` with `auto_reconnect=True` (socket resume, media restart, obeys `pause`),
publishing a tone (`microphone`) and moving bars (`camera`), decoding what it receives. Prints
one JSON object per line on stdout: `joined`, `admitted`, `mode`, `pause`, `chat`, `error` (a
server error, under `message`) and, every half second, `stats` (frames decoded, reconnects,
resumes, ICE state). Reads commands from stdin, one JSON object per line:
`{"cmd": "chat", "text": "..."}`. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
# Only aiortc_peer's main() gathers on loopback; this namespace has the veth: aioice's default.
from aiortc_peer import DecodingPeer, report

from compat.synth import BarsTrack, ToneTrack
from mediaserver.rtc.media import set_opus_bitrate
from signaling.client import ConsultClient

log = logging.getLogger("shaped_peer")


class Patient(DecodingPeer):
    def __init__(self, url: str, token: str) -> None:
        super().__init__(ConsultClient(url, codecs=["VP8"], auto_reconnect=True), token)
        self._seen = 0

    async def _run(self) -> int:
        c = self.client
        joined = await c.connect(self.token)
        report("joined", participant=joined["participant"]["id"])
        await c.wait_state("admitted", timeout_s=60)
        report("admitted")
        await c.publish(ToneTrack(), BarsTrack(), sources=["microphone", "camera"])
        self._spawn(self._commands())
        while c.state == "admitted":
            self._forward_messages()
            self._consume_new_tracks()
            pc = c.pc
            report(
                "stats",
                video_frames=self.frames["video"],
                audio_frames=self.frames["audio"],
                reconnects=c.reconnects,
                resumes=c.resumes,
                ice=pc.iceConnectionState if pc is not None else None,
                paused=sorted(c.paused_sources),
            )
            await asyncio.sleep(0.5)
        report("closed", state=c.state, code=c.close_code)
        return 0

    def _forward_messages(self) -> None:
        messages = self.client.messages
        for msg in messages[self._seen :]:
            if msg.get("type") in ("mode", "pause", "chat", "error"):
                report(str(msg["type"]), message=msg)
            elif msg.get("type") == "room":
                # A resumed socket (the old one died on a lossy link) gets the chat it missed
                # in `room`, as a page shows it: report those as chats too.
                for entry in msg.get("chat") or []:
                    report("chat", message={"type": "chat", "message": entry, "via": "room"})
        self._seen = len(messages)

    async def _commands(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                return
            try:
                cmd = json.loads(line)
                if cmd.get("cmd") == "chat":
                    await self.client.chat(str(cmd["text"]))
                    report("chat-sent", text=cmd["text"])
            except Exception as exc:
                report("error", message=repr(exc))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--opus-bps", type=int, default=0, help="Opus bitrate (0: aiortc's)")
    args = parser.parse_args()
    if args.opus_bps:
        set_opus_bitrate(args.opus_bps)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    return asyncio.run(Patient(args.url, args.token).run(args.seconds))


if __name__ == "__main__":
    sys.exit(main())
