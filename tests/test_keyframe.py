from __future__ import annotations

from mediaserver.publication import payload_offset
from mediaserver.rtp.keyframe import h264_keyframe_start, vp8_keyframe_start
from tests.fixtures.packets import packet


def test_vp8_captured_keyframe_and_delta() -> None:
    key = packet("rtp_video_keyframe_start")
    delta = packet("rtp_video_delta")
    assert vp8_keyframe_start(key, payload_offset(key))
    assert not vp8_keyframe_start(delta, payload_offset(delta))


def test_vp8_descriptor_with_extensions() -> None:
    # X=1, S=1, PID=0; I=1 with 15-bit picture id, L=1, T=1; then P=0 (keyframe)
    payload = bytes([0x90, 0xE0, 0x80, 0x01, 0x05, 0x20, 0x10])
    assert vp8_keyframe_start(payload, 0)
    assert not vp8_keyframe_start(bytes([0x90, 0xE0, 0x80, 0x01, 0x05, 0x20, 0x11]), 0)
    assert not vp8_keyframe_start(bytes([0x80, 0xE0]), 0)  # S=0: not a start
    assert not vp8_keyframe_start(bytes([0x90, 0xE0, 0x80]), 0)  # truncated


def test_h264_single_nal_stap_a_and_fu_a() -> None:
    assert h264_keyframe_start(bytes([0x65, 0]), 0)  # IDR
    assert h264_keyframe_start(bytes([0x67, 0]), 0)  # SPS
    assert not h264_keyframe_start(bytes([0x41, 0]), 0)  # non-IDR slice
    stap = bytes([0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xCE])
    assert h264_keyframe_start(stap, 0)
    assert h264_keyframe_start(bytes([0x7C, 0x85, 0]), 0)  # FU-A start of IDR
    assert not h264_keyframe_start(bytes([0x7C, 0x05, 0]), 0)  # FU-A middle
