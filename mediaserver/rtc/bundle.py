"""Keep payload types and header-extension ids consistent across one BUNDLE session.

aiortc's createOffer() rewrites every m-line with its own defaults (Opus 96, VP8 97, mid id 1,
audio level id 2), while the browser already negotiated its own (Chromium: VP8 96, Opus 111,
audio level id 1, mid id 4). A browser refuses an offer in which one id or payload type means two
things inside a bundle ("RTP extension ID reassignment not supported"). `harmonize()` maps the
offer onto what is already established, and gives new codecs and extensions unused numbers.
"""

from __future__ import annotations

from typing import Any

from aiortc import sdp
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

CodecKey = tuple[Any, ...]
DYNAMIC = range(96, 128)
LOWER_DYNAMIC = range(35, 64)  # where Chrome goes when 96-127 are taken (RFC 8872 section 3)
EXT_IDS = range(1, 15)

# Numbers for what nothing has established yet: Chromium's (tests/fixtures/chromium_offer.json),
# so that a first server offer agrees with an offer Chromium made and rolled back (glare).
PREFERRED_EXT_IDS = {
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level": 1,
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time": 2,
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01": 3,
    "urn:ietf:params:rtp-hdrext:sdes:mid": 4,
}
_VP8: CodecKey = ("video/vp8", 90000, 1, ())
_H264_B: CodecKey = ("video/h264", 90000, 1, ("1", "42001f"))
_H264_CB: CodecKey = ("video/h264", 90000, 1, ("1", "42e01f"))
PREFERRED_PTS: dict[CodecKey, int] = {
    ("audio/opus", 48000, 2, ()): 111,
    _VP8: 96,
    ("rtx", 90000, _VP8): 97,
    _H264_B: 103,
    ("rtx", 90000, _H264_B): 104,
    _H264_CB: 109,
    ("rtx", 90000, _H264_CB): 114,
}


def _base_key(codec: RTCRtpCodecParameters) -> CodecKey:
    mime = codec.mimeType.lower()
    params: tuple[Any, ...] = ()
    if mime == "video/h264":
        params = (
            str(codec.parameters.get("packetization-mode", "0")),
            str(codec.parameters.get("profile-level-id", "")).lower(),
        )
    return (mime, codec.clockRate, codec.channels or 1, params)


def _keys(media: sdp.MediaDescription) -> dict[int, CodecKey]:
    """payload type -> codec key (RTX keyed by the codec it repairs)."""
    by_pt = {c.payloadType: c for c in media.rtp.codecs}
    keys: dict[int, CodecKey] = {}
    for codec in media.rtp.codecs:
        if codec.mimeType.lower().endswith("/rtx"):
            base = by_pt.get(codec.parameters.get("apt"))  # type: ignore[arg-type]
            if base is None:
                continue
            keys[codec.payloadType] = ("rtx", codec.clockRate, _base_key(base))  # type: ignore[index]
        else:
            keys[codec.payloadType] = _base_key(codec)  # type: ignore[index]
    return keys


def _pick(preferred: int, used: set[int], *pools: range) -> int | None:
    """`preferred` if it is free and in a pool, else the first free number; None if none is."""
    if any(preferred in pool for pool in pools) and preferred not in used:
        return preferred
    return next((n for pool in pools for n in pool if n not in used), None)


def _dynamic(pt: int) -> bool:
    return pt in DYNAMIC or pt in LOWER_DYNAMIC


def harmonize(offer: str, established: list[str]) -> str:
    """The offer with the payload types and extension ids of the established descriptions."""
    pts: dict[CodecKey, int] = {}
    used_pts: set[int] = set()
    ext_ids: dict[str, int] = {}
    used_ids: set[int] = set()
    for text in established:
        for media in sdp.SessionDescription.parse(text).media:
            if media.kind not in ("audio", "video"):
                continue
            for pt, key in _keys(media).items():
                pts.setdefault(key, pt)
                used_pts.add(pt)
            for ext in media.rtp.headerExtensions:
                ext_ids.setdefault(ext.uri, ext.id)
                used_ids.add(ext.id)
    description = sdp.SessionDescription.parse(offer)
    for media in description.media:
        if media.kind not in ("audio", "video"):
            continue
        keys = _keys(media)
        mapping: dict[int, int] = {}
        dropped: set[int] = set()  # no free number left: these codecs stay out of the offer
        for codec in sorted(media.rtp.codecs, key=lambda c: c.mimeType.lower().endswith("/rtx")):
            old = codec.payloadType
            if old is None or old not in keys:
                continue
            if codec.parameters.get("apt") in dropped:
                dropped.add(old)
                continue
            key = keys[old]
            if key not in pts:
                want = PREFERRED_PTS.get(key, old)
                new = _pick(want, used_pts, DYNAMIC, LOWER_DYNAMIC) if _dynamic(old) else old
                if new is None:
                    dropped.add(old)
                    continue
                pts[key] = new
                used_pts.add(new)
            mapping[old] = pts[key]
        media.rtp.codecs = [c for c in media.rtp.codecs if c.payloadType not in dropped]
        for codec in media.rtp.codecs:
            codec.payloadType = mapping.get(codec.payloadType, codec.payloadType)  # type: ignore[arg-type]
            apt = codec.parameters.get("apt")
            if isinstance(apt, int) and apt in mapping:
                codec.parameters["apt"] = mapping[apt]
        media.fmt = [mapping.get(pt, pt) for pt in media.fmt if pt not in dropped]
        kept = []
        for ext in media.rtp.headerExtensions:
            if ext.uri not in ext_ids:
                ident = _pick(PREFERRED_EXT_IDS.get(ext.uri, ext.id), used_ids, EXT_IDS)
                if ident is None:  # every id has a meaning already: the extension stays out
                    continue
                ext_ids[ext.uri] = ident
                used_ids.add(ident)
            ext.id = ext_ids[ext.uri]
            kept.append(ext)
        media.rtp.headerExtensions = kept
    return str(description)


def drop_rejected_from_bundle(answer: str, offer: str) -> str:
    """Leave m-lines the offer rejected (port 0) out of the answer's BUNDLE group.

    aiortc lists every mid; Chromium refuses an answer whose group names a rejected mid.
    """
    rejected = {m.rtp.muxId for m in sdp.SessionDescription.parse(offer).media if m.port == 0}
    if not rejected:
        return answer
    lines = []
    for line in answer.split("\r\n"):
        if line.startswith("a=group:BUNDLE"):
            items = [i for i in line.split()[1:] if i not in rejected]
            line = " ".join(["a=group:BUNDLE", *items])
        lines.append(line)
    return "\r\n".join(lines)


def _codec_keys(codecs: list[RTCRtpCodecParameters]) -> dict[int, CodecKey]:
    """payload type -> codec key (RTX keyed by the codec it repairs)."""
    by_pt = {c.payloadType: c for c in codecs}
    keys: dict[int, CodecKey] = {}
    for codec in codecs:
        if codec.payloadType is None:
            continue
        if codec.mimeType.lower().endswith("/rtx"):
            base = by_pt.get(codec.parameters.get("apt"))  # type: ignore[arg-type]
            if base is not None:
                keys[codec.payloadType] = ("rtx", codec.clockRate, _base_key(base))
        else:
            keys[codec.payloadType] = _base_key(codec)
    return keys


def declared(
    text: str, mid: str, codecs: list[RTCRtpCodecParameters]
) -> tuple[list[RTCRtpCodecParameters], dict[str, int]]:
    """`codecs` with the payload types, and the header-extension ids (uri -> id), that the
    m-line `mid` of our own SDP `text` declares.

    aiortc records a transceiver's payload types and extension ids from its own defaults until
    the answer is applied, and may start a sender or receiver before that, while `harmonize()`
    renumbered them in the SDP the peer got: our local description is the truth (an answerer
    uses the offerer's numbers). What the SDP does not name is left as aiortc has it.
    """
    for media in sdp.SessionDescription.parse(text).media:
        if media.rtp.muxId != mid:
            continue
        pt_of = {key: pt for pt, key in _codec_keys(media.rtp.codecs).items()}
        mapping = {pt: pt_of[key] for pt, key in _codec_keys(codecs).items() if key in pt_of}
        out = []
        for codec in codecs:
            params = dict(codec.parameters)
            if "apt" in params and params["apt"] in mapping:
                params["apt"] = mapping[params["apt"]]
            out.append(
                RTCRtpCodecParameters(
                    mimeType=codec.mimeType,
                    clockRate=codec.clockRate,
                    channels=codec.channels,
                    payloadType=None
                    if codec.payloadType is None
                    else mapping.get(codec.payloadType, codec.payloadType),
                    rtcpFeedback=codec.rtcpFeedback,
                    parameters=params,
                )
            )
        return out, {ext.uri: ext.id for ext in media.rtp.headerExtensions}
    return codecs, {}
