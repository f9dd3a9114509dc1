"""Cost of recording: CPU per recorded track and bytes per minute (recorder/, no network).

    .venv/bin/python -m benchmarks.recording [--seconds 30] [--width 640 --height 480] [--no-docs]

Real media first (not timed): aiortc's own VP8 encoder (a moving picture with some noise, at
its default 500 kbps target) and Opus encoder (a tone), packetized into RTP packets with
aiortc's RtpPacket. Then, timed: a `Recording` (sealed WebM per track, recorder/recording.py)
is fed every packet through the sink a publication would call, as fast as it takes them,
and stopped (every file closed). Reported per track kind: the sink's cost per packet (the
media event loop's share: one queue put; median, and mean, which includes the waits for the
GIL while the writer thread runs: fed as fast as possible, the writer competes the most), the
process CPU per minute of media (sink and writer thread: reorder, depacketize, mux, AES-GCM),
and the sealed bytes per minute. The table goes to docs/benchmarks.md (section "recording").
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from fractions import Fraction

import av
import numpy as np
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtp import RtpPacket

from benchmarks.common import table
from loadtest.report import machine_summary, write_section
from mediaserver.api import RecordingConfig
from mediaserver.recording import RecordedTrack, RecordingRequest
from recorder.recording import Recording


def video_packets(seconds: float, width: int, height: int) -> list[bytes]:
    encoder = Vp8Encoder()
    rng = np.random.default_rng(1)
    base = rng.integers(0, 60, (height, width, 3), np.uint8)
    packets, seq = [], 0
    for i in range(int(seconds * 30)):
        img = base.copy()
        x = (i * 6) % (width - 40)
        img[:, x : x + 40] = 220
        img[::8, ::8] = rng.integers(0, 255, img[::8, ::8].shape, np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts, frame.time_base = i * 3000, Fraction(1, 90000)
        payloads, ts = encoder.encode(frame, force_keyframe=i % 300 == 0)
        for j, payload in enumerate(payloads):
            last = j == len(payloads) - 1
            rtp = RtpPacket(payload_type=96, sequence_number=seq & 0xFFFF, timestamp=ts)
            rtp.marker, rtp.payload, rtp.ssrc = last, payload, 1
            packets.append(rtp.serialize())
            seq += 1
    return packets


def audio_packets(seconds: float) -> list[bytes]:
    encoder = OpusEncoder()
    t = np.arange(960) / 48000
    packets = []
    for i in range(int(seconds * 50)):
        tone = (np.sin(2 * np.pi * 220 * (t + i * 0.02)) * 6000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(tone, 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate, frame.pts, frame.time_base = 48000, i * 960, Fraction(1, 48000)
        payloads, ts = encoder.encode(frame)
        rtp = RtpPacket(payload_type=111, sequence_number=i & 0xFFFF, timestamp=ts)
        rtp.payload, rtp.ssrc = payloads[0], 2
        packets.append(rtp.serialize())
    return packets


def run(kind: str, packets: list[bytes], seconds: float, key_file: str) -> list[str]:
    with tempfile.TemporaryDirectory() as directory:
        config = RecordingConfig(
            directory=directory, key_file=key_file, queue_packets=len(packets) + 10
        )
        request = RecordingRequest(room_id="bench", recording_id="b", config=config)
        cpu0 = time.process_time()
        recording = Recording(request, print)
        codec = "VP8" if kind == "video" else "opus"
        track = RecordedTrack(
            track_id="t",
            participant_id="p",
            kind=kind,
            source="camera" if kind == "video" else "microphone",
            codec=codec,
            clock_rate=90000 if kind == "video" else 48000,
            channels=2,
        )
        sink = recording.add_track(track, lambda: None)
        now = time.monotonic()
        clock = time.perf_counter_ns
        costs = []
        for packet in packets:
            t0 = clock()
            sink.on_rtp(packet, now)
            costs.append(clock() - t0)
        median_ns = float(np.median(costs))
        mean_ns = float(np.mean(costs))  # with the writer thread's turns at the GIL
        recording.stop("stopped")
        cpu = time.process_time() - cpu0
        sealed = sum(e.stat().st_size for e in os.scandir(os.path.join(directory, "b")))
        frames = recording.manifest.tracks[0].frames
    minutes = seconds / 60
    return [
        kind,
        str(len(packets)),
        str(frames),
        f"{median_ns / 1000:.2f} / {mean_ns / 1000:.2f}",
        f"{cpu / minutes:.2f}",
        f"{100 * cpu / seconds:.2f}",
        f"{sealed / minutes / 1e6:.2f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--no-docs", action="store_true", help="print only")
    args = parser.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".key", delete=False) as f:
        f.write("bench:" + bytes(range(32)).hex())
    try:
        video = video_packets(args.seconds, args.width, args.height)
        audio = audio_packets(args.seconds)
        rows = [
            run("video", video, args.seconds, f.name),
            run("audio", audio, args.seconds, f.name),
        ]
    finally:
        os.unlink(f.name)
    result = table(
        [
            "track",
            "packets",
            "frames",
            "sink us/packet (median / mean)",
            "CPU s per media minute",
            "% of a core while live",
            "sealed MB/minute",
        ],
        rows,
    )
    print(result)
    if args.no_docs:
        return
    command = " ".join(["python -m benchmarks.recording", *map(shlex.quote, sys.argv[1:])])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    write_section(
        "recording",
        f"""## Recording: CPU and bytes per track

`.venv/bin/{command}` ({when}; {machine_summary()}). {args.seconds:g} s of
media per track, encoded beforehand by aiortc's encoders (video {args.width}x{args.height}
at 30 fps, VP8 at aiortc's 500 kbps target; audio Opus, 20 ms), fed to one `Recording`
through a publication's sink as fast as it takes them, then stopped (files closed). The sink
is what the media event loop pays per packet (median; mean with the writer thread's turns
at the GIL, which a live feed spreads out); CPU is the process's (sink and writer thread:
reorder, depacketize, mux, AES-256-GCM) per minute of media.

{result}
""",
    )


if __name__ == "__main__":
    main()
