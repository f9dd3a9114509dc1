"""VP8 and Opus depacketization of payloads made by aiortc's own encoders, the reorder
buffer, and muxing the frames into a sealed WebM that PyAV decodes."""

from __future__ import annotations

import io
import random
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtp import RtpPacket

from recorder.depacketizer import (
    Frame,
    H264Depacketizer,
    OpusDepacketizer,
    Vp8Depacketizer,
    h264_keyframe_size,
    vp8_keyframe_size,
)
from recorder.muxer import TrackMuxer
from recorder.reorder import ReorderBuffer
from recorder.sealed import Key, unseal

KEY = Key("k1", bytes(range(32)))


def vp8_packets(frames: int) -> list[bytes]:
    encoder = Vp8Encoder()
    packets = []
    seq = 1000
    noise = np.random.default_rng(7).integers(0, 255, (240, 320, 3), np.uint8)
    for i in range(frames):
        img = np.roll(noise, i * 8, axis=1)  # noise: frames of several packets each
        frame = av.VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts, frame.time_base = i * 3000, Fraction(1, 90000)
        payloads, ts = encoder.encode(frame, force_keyframe=i == 0)
        for j, payload in enumerate(payloads):
            packet = RtpPacket(
                payload_type=96,
                sequence_number=seq & 0xFFFF,
                timestamp=ts,
                marker=j == len(payloads) - 1,
                payload=payload,
            )
            packets.append(packet.serialize())
            seq += 1
    return packets


def opus_packets(frames: int) -> list[bytes]:
    encoder = OpusEncoder()
    packets = []
    t = np.arange(960) / 48000
    for i in range(frames):
        tone = (np.sin(2 * np.pi * 440 * (t + i * 0.02)) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(tone, 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate, frame.pts, frame.time_base = 48000, i * 960, Fraction(1, 48000)
        payloads, ts = encoder.encode(frame)
        for payload in payloads:
            rtp = RtpPacket(payload_type=111, sequence_number=i, timestamp=ts, payload=payload)
            packets.append(rtp.serialize())
    return packets


def in_order(packets: list[bytes], buffer: ReorderBuffer) -> list[bytes | None]:
    out: list[bytes | None] = []
    for p in packets:
        out.extend(buffer.push((p[2] << 8) | p[3], p))
    out.extend(buffer.drain())
    return out


def test_vp8_frames_from_aiortc_packets_survive_reordering() -> None:
    packets = vp8_packets(20)
    assert len(packets) > 20  # some frames span several packets
    shuffled = list(packets)
    rng = random.Random(1)
    for i in range(1, len(shuffled) - 3, 3):  # local reordering, as on a network
        window = shuffled[i : i + 3]
        rng.shuffle(window)
        shuffled[i : i + 3] = window
    depacketizer = Vp8Depacketizer()
    frames = [depacketizer.push(p) for p in in_order(shuffled, ReorderBuffer(16)) if p]
    got = [f for f in frames if f is not None]
    assert len(got) == 20 and depacketizer.lost == 0
    assert got[0].keyframe and vp8_keyframe_size(got[0].data) == (320, 240)
    assert not any(f.keyframe for f in got[1:])
    decoder = av.CodecContext.create("vp8", "r")
    decoded = [f for frame in got for f in decoder.decode(av.Packet(frame.data))]
    assert len(decoded) == 20 and decoded[0].width == 320


def test_padding_only_packets_are_skipped() -> None:
    packets = vp8_packets(3)
    padding = bytearray(RtpPacket(payload_type=96, sequence_number=1, timestamp=5).serialize())
    padding[0] |= 0x20  # P: the payload is padding only
    padding += bytes(255) + b"\xff"
    depacketizer = Vp8Depacketizer()
    got = []
    for p in [packets[0], bytes(padding), *packets[1:]]:
        frame = depacketizer.push(p)
        if frame is not None:
            got.append(frame)
    assert len(got) == 3 and depacketizer.lost == 0


def test_a_lost_packet_loses_its_frame_and_is_said() -> None:
    packets = vp8_packets(6)
    multi = next(
        i for i in range(1, len(packets)) if not packets[i][1] & 0x80 and packets[i - 1][1] & 0x80
    )
    del packets[multi + 1]  # the second packet of a frame of several
    buffer = ReorderBuffer(2)
    depacketizer = Vp8Depacketizer()
    got: list[Frame] = []
    for p in in_order(packets, buffer):
        if p is None:
            depacketizer.gap()
            continue
        frame = depacketizer.push(p)
        if frame is not None:
            got.append(frame)
    assert buffer.gaps == 1 and depacketizer.lost == 1 and len(got) == 5


def test_opus_is_one_frame_per_packet() -> None:
    packets = opus_packets(10)
    depacketizer = OpusDepacketizer()
    frames = [depacketizer.push(p) for p in packets]
    assert all(f is not None and f.keyframe for f in frames)


def test_muxed_tracks_decode_after_unsealing(tmp_path: Path) -> None:
    video = Vp8Depacketizer()
    muxer = TrackMuxer(str(tmp_path / "v"), KEY, codec="VP8", clock_rate=90000, size=(320, 240))
    base = None
    for p in vp8_packets(30):
        frame = video.push(p)
        if frame is not None:
            base = frame.timestamp if base is None else base
            muxer.mux(frame.data, (frame.timestamp - base) & 0xFFFFFFFF, frame.keyframe)
    muxer.close()
    audio = TrackMuxer(str(tmp_path / "a"), KEY, codec="opus", clock_rate=48000, channels=2)
    for i, p in enumerate(opus_packets(50)):
        frame = OpusDepacketizer().push(p)
        assert frame is not None
        audio.mux(frame.data, i * 960, True)
    audio.close()
    raw = (tmp_path / "v").read_bytes()
    assert b"\x1a\x45\xdf\xa3" not in raw  # no WebM header in the clear
    with av.open(io.BytesIO(unseal(str(tmp_path / "v"), KEY).data), "r") as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 30 and frames[0].width == 320
    assert frames[-1].time is not None and abs(frames[-1].time - 29 / 30) < 0.01
    with av.open(io.BytesIO(unseal(str(tmp_path / "a"), KEY).data), "r") as container:
        samples = sum(f.samples for f in container.decode(audio=0))
    assert abs(samples / 48000 - 1.0) < 0.03


def h264_packets(frames: int) -> list[bytes]:
    encoder = H264Encoder()
    packets = []
    seq = 7
    noise = np.random.default_rng(5).integers(0, 255, (240, 320, 3), np.uint8)
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(np.roll(noise, i * 8, axis=1), format="bgr24")
        frame.pts, frame.time_base = i * 3000, Fraction(1, 90000)
        payloads, ts = encoder.encode(frame, force_keyframe=i == 0)
        for j, payload in enumerate(payloads):
            last = j == len(payloads) - 1
            rtp = RtpPacket(
                payload_type=102, sequence_number=seq, timestamp=ts, marker=last, payload=payload
            )
            packets.append(rtp.serialize())
            seq += 1
    return packets


def test_h264_fu_a_and_stap_a_into_matroska(tmp_path: Path) -> None:
    packets = h264_packets(12)
    kinds = {p[12] & 0x1F for p in packets}
    assert {24, 28} <= kinds  # STAP-A (SPS, PPS, ...) and FU-A fragments
    depacketizer = H264Depacketizer()
    frames = [f for f in (depacketizer.push(p) for p in packets) if f is not None]
    assert len(frames) == 12 and depacketizer.lost == 0
    assert frames[0].keyframe and not frames[1].keyframe
    assert h264_keyframe_size(frames[0].data) == (320, 240)  # from its SPS
    assert h264_keyframe_size(frames[1].data) is None
    muxer = TrackMuxer(str(tmp_path / "h"), KEY, codec="H264", clock_rate=90000, size=(320, 240))
    for f in frames:
        muxer.mux(f.data, (f.timestamp - frames[0].timestamp) & 0xFFFFFFFF, f.keyframe)
    muxer.close()
    with av.open(io.BytesIO(unseal(str(tmp_path / "h"), KEY).data), "r") as container:
        assert container.format.name.startswith("matroska")
        decoded = list(container.decode(video=0))
    assert len(decoded) == 12 and decoded[0].width == 320
