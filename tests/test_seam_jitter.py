"""The aiortc client's skipping jitter buffer (mediaserver/rtc/jitter.py) and its seam."""

from __future__ import annotations

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

from mediaserver.rtc.jitter import ATTRIBUTE, CODECS, SkippingJitterBuffer, install

KEY = b"\x10\x00"  # VP8 descriptor S=1 PID=0, then a payload header with the P bit clear
DELTA = b"\x10\x01"  # P bit set: an interframe


def packet(seq: int, frame: int, *, key: bool = False) -> RtpPacket:
    p = RtpPacket(payload_type=96, sequence_number=seq, timestamp=frame * 6000)
    p.payload = (KEY if key else DELTA) + bytes(100)
    p._data = p.payload  # type: ignore[attr-defined]  # what aiortc's depayloader sets
    return p


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def stream(buffer: JitterBuffer, clock: Clock | None) -> tuple[list[JitterFrame], int]:
    """Frames of two packets at 15 fps: a keyframe, interframes with packet 4 lost upstream
    (never retransmitted), a keyframe at frame 20 (after the receiver's PLI), more frames."""
    frames: list[JitterFrame] = []
    plis = 0
    for frame in range(40):
        if clock is not None:
            clock.t = frame / 15
        for part in range(2):
            seq = frame * 2 + part
            if seq == 4:
                continue
            pli, out = buffer.add(packet(seq, frame, key=frame in (0, 20) and part == 0))
            plis += pli
            if out is not None:
                frames.append(out)
    return frames, plis


def test_aiortc_alone_stalls_on_one_lost_packet() -> None:
    frames, plis = stream(JitterBuffer(capacity=512, is_video=True), None)
    assert [f.timestamp for f in frames] == [0]  # frame 1 waits for packet 4: nothing after
    assert plis == 0


def test_the_skipping_buffer_asks_for_a_keyframe_and_decodes_from_it() -> None:
    clock = Clock()
    buffer = SkippingJitterBuffer(512, clock=clock)
    frames, plis = stream(buffer, clock)
    stamps = [f.timestamp for f in frames]
    assert stamps[0] == 0
    assert plis >= 1 and buffer.skips == 1
    # From the keyframe on, every frame (but the last, which waits for the next one).
    assert stamps[1:] == [frame * 6000 for frame in range(20, 39)]


async def test_install_replaces_the_video_receivers_buffer() -> None:
    pc = RTCPeerConnection()
    try:
        video = pc.addTransceiver("video").receiver
        audio = pc.addTransceiver("audio").receiver
        assert isinstance(getattr(video, ATTRIBUTE), JitterBuffer)
        assert isinstance(getattr(video, CODECS), dict)
        installed = install(video)
        assert isinstance(installed, SkippingJitterBuffer)
        buffer: SkippingJitterBuffer = installed
        assert getattr(video, ATTRIBUTE) is buffer and install(video) is buffer
        assert buffer.capacity == 512
        assert install(audio) is None  # audio keeps aiortc's (it never stalls: no hole wait)
        assert callable(buffer._remove_frame) and callable(buffer.remove)
        for name in ("_origin", "_packets", "_capacity", "_is_video"):
            assert hasattr(buffer, name), name
    finally:
        await pc.close()
