"""The picture size an H264 sequence parameter set declares (ITU-T H.264 7.3.2.1.1).

Matroska wants a video track's size in its header; H264 says it only in the SPS (VP8 in its
keyframe header, recorder/depacketizer.py). Read with Exp-Golomb codes, after the emulation
prevention bytes are removed; None for an SPS it cannot read.
"""

from __future__ import annotations

HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.data = data.replace(b"\x00\x00\x03", b"\x00\x00")
        self.pos = 0

    def u(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]  # IndexError past the end
            value = (value << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while not self.u(1):
            zeros += 1
            if zeros > 31:
                raise ValueError("bad Exp-Golomb code")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + bits.se()) % 256
        last = nxt or last


def sps_size(nal: bytes) -> tuple[int, int] | None:
    """(width, height) of an SPS NAL unit (its header byte included)."""
    try:
        return _size(_Bits(nal[1:]))
    except (IndexError, ValueError):
        return None


def _size(b: _Bits) -> tuple[int, int]:
    profile = b.u(8)
    b.u(16)  # constraint flags, level
    b.ue()  # seq_parameter_set_id
    chroma = 1
    if profile in HIGH_PROFILES:
        chroma = b.ue()
        if chroma == 3:
            b.u(1)  # separate_colour_plane_flag
        b.ue(), b.ue(), b.u(1)  # bit depths, qpprime_y_zero_transform_bypass_flag
        if b.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if b.u(1):
                    _skip_scaling_list(b, 16 if i < 6 else 64)
    b.ue()  # log2_max_frame_num_minus4
    poc_type = b.ue()
    if poc_type == 0:
        b.ue()
    elif poc_type == 1:
        b.u(1), b.se(), b.se()
        for _ in range(b.ue()):
            b.se()
    b.ue(), b.u(1)  # max_num_ref_frames, gaps_in_frame_num_value_allowed_flag
    width_mbs, height_units = b.ue() + 1, b.ue() + 1
    frame_mbs_only = b.u(1)
    if not frame_mbs_only:
        b.u(1)  # mb_adaptive_frame_field_flag
    b.u(1)  # direct_8x8_inference_flag
    width, height = width_mbs * 16, (2 - frame_mbs_only) * height_units * 16
    if b.u(1):  # frame_cropping_flag
        left, right, top, bottom = b.ue(), b.ue(), b.ue(), b.ue()
        unit_x = 1 if chroma in (0, 3) else 2
        unit_y = (2 if chroma == 1 else 1) * (2 - frame_mbs_only)
        width -= unit_x * (left + right)
        height -= unit_y * (top + bottom)
    return width, height
