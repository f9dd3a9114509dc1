"""Cost of plain-RTP ingest: forwarding as bytes versus transcoding with PyAV.

For each case, one media Node in this process creates an ingest device in a room with no
subscriber, so the number is the ingest's own cost (receive,
parse, and for transcoding: depacketize, decode, encode, packetize); a subscriber adds the
same per-packet forwarding cost as any publication (docs/benchmarks.md, forwarding). The
sender (PyAV encoder + rtp muxer) runs in a separate process so that its CPU is not counted.

    .venv/bin/python -m benchmarks.ingest [--duration 20] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import time
from datetime import UTC, datetime

from loadtest.report import machine_summary, write_section
from loadtest.rtp_sender import RtpSender
from mediaserver.api import MediaConfig, RoomOptions
from mediaserver.ingest import IngestParticipant, parse_sdp
from mediaserver.node import Node

from .common import table

CASES = [
    # (label, kind, codec, payload type, rtpmap, room video codec)
    ("VP8 640x480 30 fps into a VP8 room", "video", "VP8", 96, "VP8/90000", "VP8"),
    ("H264 640x480 30 fps into a VP8 room", "video", "H264", 102, "H264/90000", "VP8"),
    ("Opus 48 kHz 20 ms", "audio", "OPUS", 111, "opus/48000/2", "VP8"),
    ("PCMU 8 kHz 20 ms", "audio", "PCMU", 0, "", "VP8"),
]


def _send(port: int, codec: str, pt: int, seconds: float) -> None:
    sender = RtpSender("127.0.0.1", port, codec, payload_type=pt, width=640, height=480)
    sender.start()
    time.sleep(seconds)
    sender.stop()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


async def run_case(
    kind: str, codec: str, pt: int, rtpmap: str, room_codec: str, seconds: float
) -> list[str]:
    node = Node(MediaConfig())
    room = node.create_room("bench", RoomOptions(video_codec=room_codec))
    rtp = f"a=rtpmap:{pt} {rtpmap}\r\n" if rtpmap else ""
    text = f"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm={kind} 5004 RTP/AVP {pt}\r\n{rtp}"
    ingest = IngestParticipant("p_bench", room, parse_sdp(text))
    room.add_publisher(ingest)
    await ingest.start("127.0.0.1")
    stream = ingest.streams[0]
    warmup = 3.0
    proc = multiprocessing.get_context("spawn").Process(
        target=_send, args=(stream.port, codec, pt, seconds + warmup + 1)
    )
    proc.start()
    await asyncio.sleep(warmup)
    cpu0, wall0, packets0 = _cpu(), time.monotonic(), stream.stats.packets
    await asyncio.sleep(seconds)
    cpu, wall = _cpu() - cpu0, time.monotonic() - wall0
    packets = stream.stats.packets - packets0
    proc.join(30)
    mode = stream.mode
    transcoded = stream.stats.frames_transcoded
    await node.close()
    per_packet = cpu / packets * 1e6 if packets else float("nan")
    return [
        mode,
        f"{packets / wall:.0f}",
        f"{cpu / wall * 100:.1f}%",
        f"{per_packet:.0f}",
        str(transcoded),
    ]


async def main_async(args: argparse.Namespace) -> str:
    rows = []
    for label, kind, codec, pt, rtpmap, room_codec in CASES:
        result = await run_case(kind, codec, pt, rtpmap, room_codec, args.duration)
        rows.append([label, *result])
        print(label, result, flush=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""## Ingest (plain RTP over UDP)

Command: `.venv/bin/python -m benchmarks.ingest --duration {args.duration:g}`

Machine: {machine_summary()}.
Measured {stamp}.

One ingest stream into a room with no subscriber (a subscriber adds the forwarding cost
measured above, the same for any publication). The PyAV sender (`loadtest/rtp_sender.py`,
synthetic picture or a 440 Hz tone) runs in its own process and is not counted. `server CPU`
is this process's user+system time (all threads: the transcoder decodes and encodes in a
worker thread) over a {args.duration:g} s window after 3 s of warm-up, in % of one core.

{table(["stream", "mode", "pkt/s in", "server CPU", "us/packet", "frames transcoded (run)"], rows)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    body = asyncio.run(main_async(args))
    print(body)
    if not args.no_write:
        write_section("ingest", body)


if __name__ == "__main__":
    main()
