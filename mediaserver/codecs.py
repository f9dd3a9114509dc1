"""Negotiated codecs: what aiortc offers for one codec, and what a transceiver negotiated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiortc import RTCRtpCodecCapability, RTCRtpCodecParameters, RTCRtpSender

from .rtc.media import is_rtx


@dataclass(frozen=True, slots=True)
class CodecInfo:
    """The codec a publisher sends, as negotiated (its payload types)."""

    mime_type: str
    clock_rate: int
    channels: int | None
    parameters: dict[str, Any]
    payload_type: int
    rtx_payload_type: int
    nack: bool

    @property
    def name(self) -> str:
        return self.mime_type.split("/")[1].upper()


def capabilities(
    kind: str, mime_type: str, parameters: dict[str, Any] | None = None
) -> list[RTCRtpCodecCapability]:
    """aiortc's capabilities for one codec (and RTX for video), in preference order."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    chosen = [c for c in caps if c.mimeType.lower() == mime_type.lower()]
    if parameters and "packetization-mode" in parameters:
        mode = parameters["packetization-mode"]
        chosen = [c for c in chosen if c.parameters.get("packetization-mode") == mode] or chosen
    if kind == "video":
        chosen += [c for c in caps if c.mimeType.lower() == "video/rtx"]
    return chosen


def subscription_capabilities(codec: CodecInfo, kind: str) -> list[RTCRtpCodecCapability]:
    """What a subscription's m-line offers: the publication's codec first, and VP8 after it
    for video (every browser decodes VP8, RFC 7742). A browser that declared a codec it cannot
    negotiate (Firefox 140 without its OpenH264 plugin lists H264 in getCapabilities) then
    answers VP8 instead of rejecting the m-line (port 0, which aiortc cannot take); the node
    learns it from that answer and the room settles on VP8 (Participant.sender_started)."""
    chosen = capabilities(kind, codec.mime_type, codec.parameters)
    if kind == "video" and codec.name != "VP8":
        vp8 = [c for c in RTCRtpSender.getCapabilities(kind).codecs if c.mimeType == "video/VP8"]
        rtx = [i for i, c in enumerate(chosen) if c.mimeType.lower() == "video/rtx"]
        at = rtx[0] if rtx else len(chosen)
        chosen[at:at] = vp8
    return chosen


def codec_info(codecs: list[RTCRtpCodecParameters]) -> CodecInfo:
    main = next(c for c in codecs if not is_rtx(c))
    rtx = next(
        (c for c in codecs if is_rtx(c) and c.parameters.get("apt") == main.payloadType), None
    )
    return CodecInfo(
        mime_type=main.mimeType,
        clock_rate=main.clockRate,
        channels=main.channels,
        parameters=dict(main.parameters),
        payload_type=main.payloadType or 0,
        rtx_payload_type=(rtx.payloadType or 0) if rtx else 0,
        nack=any(fb.type == "nack" and not fb.parameter for fb in main.rtcpFeedback),
    )
