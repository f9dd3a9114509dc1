"""Pre-encoded media for the load generator: encoded once, packetized once, looped forever.

Nothing here runs per packet except `MediaLoop` lookups: the generator only stamps an RTP
header (sequence number, timestamp, SSRC, payload type, marker) in front of cached payloads.

- Video: a moving test pattern (with a noisy band so the encoder spends its budget) encoded
  once with PyAV/libvpx to VP8, 640x480, 30 fps, ~1 Mbps, a keyframe every ~2 s, cut into
  RTP payloads with the RFC 7741 payload descriptor (one byte: S bit on a frame's first
  packet, partition index 0, no picture id so payloads never change when the loop wraps).
- Audio: a tone encoded once with libopus, 48 kHz, one 20 ms frame per RTP packet.

`load_media()` caches the packetized loops on disk (pickle under the temp dir, keyed by the
parameters) so several generator processes encode only once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000
AUDIO_CLOCK = 48_000
MAX_PAYLOAD = 1100  # bytes of VP8 data per packet (1200-byte datagrams after headers and SRTP)
CACHE_VERSION = 1


@dataclass(frozen=True, slots=True)
class MediaPacket:
    """One cached RTP payload and where it sits in the loop."""

    at: float  # seconds from the start of the loop when it is due
    ts: int  # RTP timestamp offset from the start of the loop (media clock units)
    marker: bool
    keyframe: bool
    payload: bytes


@dataclass(slots=True)
class MediaLoop:
    """A packetized stream that repeats every `duration` seconds (`period_ts` clock units)."""

    kind: str
    clock_rate: int
    duration: float
    period_ts: int
    packets: list[MediaPacket] = field(default_factory=list)

    @property
    def bitrate_bps(self) -> float:
        return sum(len(p.payload) for p in self.packets) * 8 / self.duration

    @property
    def packet_rate(self) -> float:
        return len(self.packets) / self.duration

    @property
    def keyframes(self) -> int:
        return sum(1 for p in self.packets if p.keyframe)

    def index(self) -> dict[bytes, int]:
        """Payload -> position in the loop, for the payloads that occur once (latency probes)."""
        seen: dict[bytes, int] = {}
        dup: set[bytes] = set()
        for i, p in enumerate(self.packets):
            if p.payload in seen:
                dup.add(p.payload)
            seen[p.payload] = i
        return {k: v for k, v in seen.items() if k not in dup}


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaParams:
    seconds: float = 4.0
    width: int = 640
    height: int = 480
    fps: int = 30
    video_bitrate: int = 1_000_000
    keyframe_interval_s: float = 2.0
    audio_bitrate: int = 32_000
    max_payload: int = MAX_PAYLOAD

    def key(self) -> str:
        text = repr((CACHE_VERSION, *(getattr(self, f) for f in self.__dataclass_fields__)))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- packetizers (pure functions, unit-tested) ----------------------------------------------


def vp8_payloads(frame: bytes, max_payload: int = MAX_PAYLOAD) -> list[bytes]:
    """RFC 7741 payloads of one VP8 frame: a 1-byte descriptor (S on the first) + data.

    The frame is split into near-equal chunks of at most `max_payload` bytes of data.
    """
    if not frame:
        return []
    count = -(-len(frame) // max_payload)
    size, extra = divmod(len(frame), count)
    out = []
    pos = 0
    for i in range(count):
        end = pos + size + (1 if i < extra else 0)
        out.append((b"\x10" if i == 0 else b"\x00") + frame[pos:end])
        pos = end
    return out


def vp8_is_keyframe(frame: bytes) -> bool:
    """The VP8 frame tag's P bit (RFC 6386 9.1): 0 for a keyframe."""
    return bool(frame) and not frame[0] & 0x01


def packetize_video(
    frames: list[bytes], fps: int, max_payload: int = MAX_PAYLOAD
) -> list[MediaPacket]:
    packets: list[MediaPacket] = []
    step = VIDEO_CLOCK // fps
    for i, frame in enumerate(frames):
        payloads = vp8_payloads(frame, max_payload)
        key = vp8_is_keyframe(frame)
        for j, payload in enumerate(payloads):
            packets.append(
                MediaPacket(
                    at=i / fps,
                    ts=i * step,
                    marker=j == len(payloads) - 1,
                    keyframe=key and j == 0,
                    payload=payload,
                )
            )
    return packets


def packetize_audio(frames: list[bytes], frame_samples: int = 960) -> list[MediaPacket]:
    return [
        MediaPacket(
            at=i * frame_samples / AUDIO_CLOCK,
            ts=i * frame_samples,
            marker=i == 0,
            keyframe=False,
            payload=frame,
        )
        for i, frame in enumerate(frames)
    ]


# -- encoders (run once) --------------------------------------------------------------------


def _pattern(width: int, height: int, index: int, rng: np.random.Generator) -> np.ndarray:
    """A moving bar over a gradient, plus a moving band of noise (keeps the bitrate up)."""
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    img[..., 1] = 80
    img[..., 2] = (index * 3) % 256
    x = (index * 8) % width
    img[:, x : x + 16] = 255
    y = (index * 4) % (height - 64)
    img[y : y + 64, :, :] = rng.integers(0, 256, (64, width, 3), dtype=np.uint8)
    return img


def encode_video(params: MediaParams) -> list[bytes]:
    import av

    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = params.width, params.height
    codec.pix_fmt = "yuv420p"
    codec.time_base = Fraction(1, params.fps)
    codec.framerate = Fraction(params.fps, 1)
    codec.bit_rate = params.video_bitrate
    codec.gop_size = round(params.keyframe_interval_s * params.fps)
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "minrate": str(params.video_bitrate),
        "maxrate": str(params.video_bitrate),
        "b": str(params.video_bitrate),
        "keyint_min": str(codec.gop_size),
    }
    rng = np.random.default_rng(7)
    frames: list[bytes] = []
    total = round(params.seconds * params.fps)
    for i in range(total):
        frame = av.VideoFrame.from_ndarray(_pattern(params.width, params.height, i, rng), "rgb24")
        frame.pts = i
        frame.time_base = codec.time_base
        frames += [bytes(p) for p in codec.encode(frame.reformat(format="yuv420p"))]
    frames += [bytes(p) for p in codec.encode(None)]
    return frames[:total]


def encode_audio(params: MediaParams) -> list[bytes]:
    import av

    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = AUDIO_CLOCK
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = params.audio_bitrate
    codec.time_base = Fraction(1, AUDIO_CLOCK)
    samples = 960
    total = round(params.seconds * AUDIO_CLOCK / samples)
    frames: list[bytes] = []
    t = np.arange(samples * total) / AUDIO_CLOCK
    tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    for i in range(total):
        chunk = tone[i * samples : (i + 1) * samples]
        data = np.repeat(chunk, 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout="stereo")
        frame.sample_rate = AUDIO_CLOCK
        frame.pts = i * samples
        frames += [bytes(p) for p in codec.encode(frame)]
    frames += [bytes(p) for p in codec.encode(None)]
    return frames[:total]


def build_media(params: MediaParams) -> tuple[MediaLoop, MediaLoop]:
    frames = encode_video(params)
    video = MediaLoop(
        kind="video",
        clock_rate=VIDEO_CLOCK,
        duration=len(frames) / params.fps,
        period_ts=len(frames) * (VIDEO_CLOCK // params.fps),
        packets=packetize_video(frames, params.fps, params.max_payload),
    )
    opus = encode_audio(params)
    audio = MediaLoop(
        kind="audio",
        clock_rate=AUDIO_CLOCK,
        duration=len(opus) * 960 / AUDIO_CLOCK,
        period_ts=len(opus) * 960,
        packets=packetize_audio(opus),
    )
    return video, audio


def cache_path(params: MediaParams) -> Path:
    return Path(tempfile.gettempdir()) / f"consult-loadtest-media-{params.key()}.pickle"


def load_media(params: MediaParams | None = None) -> tuple[MediaLoop, MediaLoop]:
    """The packetized loops, from the on-disk cache when present (else encoded and cached)."""
    params = params or MediaParams()
    path = cache_path(params)
    try:
        with path.open("rb") as f:
            video, audio = pickle.load(f)  # our own file in the temp dir, written below
        if isinstance(video, MediaLoop) and isinstance(audio, MediaLoop):
            return video, audio
    except (OSError, pickle.PickleError, EOFError, ValueError, AttributeError, TypeError):
        pass
    video, audio = build_media(params)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        pickle.dump((video, audio), f)
    tmp.replace(path)
    logger.info(
        "encoded media: video %.0f kbps %.0f pkt/s, audio %.0f kbps",
        video.bitrate_bps / 1000,
        video.packet_rate,
        audio.bitrate_bps / 1000,
    )
    return video, audio
