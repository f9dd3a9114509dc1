"""aiortc's SDP parser: its module `aiortc.sdp` is not part of aiortc's public API.

The node parses a remote description before aiortc applies it (`validate_sdp`, restart
detection, `bundle.py`'s rewrites) and trickled candidates (`parse_candidate`).
"""

from __future__ import annotations

from aiortc import RTCIceCandidate
from aiortc import sdp as aiortc_sdp

SessionDescription = aiortc_sdp.SessionDescription


def parse(text: str) -> aiortc_sdp.SessionDescription:
    """A description as aiortc reads it (raises ValueError and others on a malformed one)."""
    return aiortc_sdp.SessionDescription.parse(text)


def parse_candidate(text: str) -> RTCIceCandidate:
    """One `a=candidate` value (without the `candidate:` prefix)."""
    return aiortc_sdp.candidate_from_sdp(text)
