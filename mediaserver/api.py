"""The media plane's public API: the only module `signaling/` and `recorder/` import.

Object model: Node -> Room -> Participant -> Publication / Subscription -> Forwarder.
Only a parent creates its children; `close(reason)` is idempotent and cascades.

Negotiation contract (one RTCPeerConnection per participant, max-bundle, one transport):
- The client may offer (to publish): `await participant.handle_offer(sdp, tracks)` returns the
  answer SDP, or None when the offer collided with a server offer in flight (glare). The
  server is the impolite peer: the client rolls back, answers the server's offer, and offers
  again when stable (perfect negotiation).
- The server offers (to add or remove subscriptions, or after `request_publish`): the
  participant emits "offer" (sdp: str, tracks: dict[mid, dict]) and the client answers with
  `await participant.handle_answer(sdp)`. At most one server offer is in flight; changes made
  meanwhile are folded into the next one.
- `participant.request_publish([TrackMeta, ...])` lets a client that never offers (aiortc
  clients, devices) publish: the server's next offer carries recvonly m-lines for them, listed in
  `tracks` with `"direction": "recvonly"` and the requested source; the client attaches its
  tracks to those transceivers in its answer.
- `participant.pending_offer()` returns the server offer still waiting for an answer (sdp,
  tracks), to re-send after a WebSocket resume.
- Trickled client candidates: `await participant.add_ice_candidate(candidate, sdp_mid)`.
- aiortc clients call `bundle_data_channel(pc)` after creating their data channel (an aiortc
  max-bundle bug, see rtc/peer.py).
Link state: `participant.link_stats()` (LinkStats) and `participant.info()` (also "modes": the
per-direction mode `video|audio-only|chat-only`, driven by the bandwidth fallback, and
"paused_sources": what the publisher was told to stop sending). Events "mode" (direction, mode,
reason) and "pause" (sources, reason: the publisher must stop those senders); see docs/fallback.md.
Reconnection: `await participant.restart_transport()` replaces the peer connection (the client
starts a fresh one); publications keep their identity, the server then offers.
`await participant.close_connection()` closes the peer connection alone (one that never
connected); the participant waits for the client's reconnection.
Errors: `NegotiationError` (a ValueError) for a broken SDP or an answer with no offer pending; the
participant stays usable.
"""

from .bandwidth import FallbackConfig
from .config import IceConfig, IceServer, MediaConfig
from .devices import (
    SOURCES,
    opus_fmtp,
    parse_capture,
    parse_opus_fmtp,
    validate_channels,
    validate_source,
)
from .events import (
    CloseReason,
    DirectionStats,
    LinkStats,
    NodeCounters,
    Role,
    TrackInfo,
    TrackMeta,
)
from .node import Node
from .participant import NegotiationError, Participant
from .room import Room, RoomOptions
from .rtc.peer import bundle_data_channel

__all__ = [
    "SOURCES",
    "CloseReason",
    "DirectionStats",
    "FallbackConfig",
    "IceConfig",
    "IceServer",
    "LinkStats",
    "MediaConfig",
    "NegotiationError",
    "Node",
    "NodeCounters",
    "Participant",
    "Role",
    "Room",
    "RoomOptions",
    "TrackInfo",
    "TrackMeta",
    "bundle_data_channel",
    "opus_fmtp",
    "parse_capture",
    "parse_opus_fmtp",
    "validate_channels",
    "validate_source",
]
