"""The media plane's boundary: the only module `signaling/` imports from `mediaserver/`.

Signaling never holds a live media object (no Node, Room or Participant crosses this module).
It talks to a `MediaPlane` with plain data:

- **commands** (`execute`, awaited): CreateRoom, CloseRoom, AddParticipant, AddIngest,
  ClientOffer, ClientAnswer, AddCandidate, RequestPublish, RestartTransport, CloseConnection,
  CloseParticipant. Each is a frozen dataclass whose fields are checked on construction
  (`BadCommand` names the field); `Command[R]` says what `execute` returns.
- **queries** (`query`, synchronous): GetParticipant, GetRoom, answered with snapshots
  (ParticipantSnapshot, RoomSnapshot, TrackSnapshot), copies that never change afterwards.
- **events** (`subscribe(listener)`): ServerOffer, DataMessage, ConnectionState, ModeChanged,
  PauseChanged, DeviceState, TrackPublished, TrackUnpublished, ParticipantClosed, RoomClosed,
  MediaLost (worker processes: the participant's worker went away, reconnect its media),
  delivered in the order the media plane produced them, each naming its room and participant.
- **metrics**: `snapshot()`, the counters of each media worker (label `worker`).

Every field of a command, query result or event is plain data (str, int, float, bool, None,
tuples and dicts of those, enums, frozen dataclasses of those), so an implementation over IPC
to worker processes can pickle them. Nothing on the per-packet path crosses the boundary:
commands are signaling messages, events are state changes, snapshots are read at a client's
request, a metrics scrape or the link-stats interval.

One participant interface: a WebRTC participant and a plain-RTP device (`AddIngest`) are
both addressed by (room_id, participant_id) and both described by a `ParticipantSnapshot`
(`kind` says which). A command that does not apply to a device (negotiation) raises
`Unsupported`.

Negotiation contract (one RTCPeerConnection per participant, max-bundle, one transport):
- The client may offer (to publish): `ClientOffer(sdp, tracks)` returns the answer SDP, or
  None when the offer collided with a server offer in flight (glare). The server is the
  impolite peer: the client rolls back, answers the server's offer, and offers again when
  stable (perfect negotiation).
- The server offers (to add or remove subscriptions, or after `RequestPublish`): event
  `ServerOffer` (sdp, tracks: mid -> {kind, source, direction, ...}); the client answers with
  `ClientAnswer(sdp)`. At most one server offer is in flight; changes made meanwhile are
  folded into the next one.
- `RequestPublish(tracks)` lets a client that never offers (aiortc clients, devices)
  publish: the server's next offer carries recvonly m-lines for them, listed in `tracks` with
  `"direction": "recvonly"` and the requested source.
- `ParticipantSnapshot.pending_offer`: the server offer still waiting for an answer, to
  re-send after a WebSocket resume; `paused_sources`/`pause_reason`: what the publisher was
  told to stop sending (docs/fallback.md), to re-send too.
- Trickled client candidates: `AddCandidate(candidate, sdp_mid)`.
- aiortc clients call `bundle_data_channel(pc)` after creating their data channel (an aiortc
  max-bundle bug, see mediaserver/rtc/peer.py).
Link state: `ParticipantSnapshot.link` (LinkStats) and `modes` (per direction
`video|audio-only|chat-only`, driven by the bandwidth fallback); events ModeChanged and
PauseChanged (the publisher must stop those senders); see docs/fallback.md.
Reconnection: `RestartTransport` replaces the peer connection (the client starts a fresh one);
publications keep their identity, the server then offers. `CloseConnection` closes the peer
connection alone (one that never connected); the participant waits for the client's
reconnection.
Errors (all `MediaPlaneError` or ValueError, picklable): `BadCommand` (a field of the wrong
type or value), `UnknownRoom`, `UnknownParticipant`, `RoomExists`, `ParticipantExists`,
`RoomFull`, `Unsupported`, `NoPort` (ingest could not bind), `NegotiationError` (a
ValueError: a broken SDP, an answer with no offer pending; the participant stays usable) and
`IngestError` (a ValueError: a device SDP the ingest cannot use). Close commands are
idempotent: closing what is already gone does nothing.

Implementations: `mediaserver.plane.LocalMediaPlane` (in-process, over Node/Room/Participant)
and `mediaserver.workers.WorkerPool` (worker processes, each a LocalMediaPlane; errors carried
over the channel are re-raised as the same types, plus `WorkerLost`).
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import logging
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from .bandwidth import FallbackConfig
from .config import IceConfig, IceServer, MediaConfig, RecordingConfig
from .devices import (
    DEVICE_SOURCES,
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
from .ingest import IngestError, parse_sdp
from .participant import NegotiationError
from .room import RoomOptions
from .rtc.peer import bundle_data_channel

logger = logging.getLogger(__name__)

R = TypeVar("R", covariant=True)

# -- errors -----------------------------------------------------------------------------------


class MediaPlaneError(Exception):
    """A command or query the media plane refused (the message says why)."""


class BadCommand(MediaPlaneError, ValueError):
    """A command or query with a field of the wrong type or value, or no command at all."""


class UnknownRoom(MediaPlaneError, LookupError):
    pass


class UnknownParticipant(MediaPlaneError, LookupError):
    pass


class RoomExists(MediaPlaneError, ValueError):
    pass


class ParticipantExists(MediaPlaneError, ValueError):
    pass


class RoomFull(MediaPlaneError, ValueError):
    """The room's max_participants participants with media are in."""


class Unsupported(MediaPlaneError):
    """The command does not apply to this participant (a plain-RTP device negotiates nothing)."""


class NoPort(MediaPlaneError):
    """A plain-RTP device's UDP port could not be bound."""


class RecordingError(MediaPlaneError):
    """A recording that cannot start: no key, no directory, a codec it cannot record."""


class WorkerLost(MediaPlaneError):
    """The media worker process running the command went away before it answered."""


# -- field checks (commands and queries are checked on construction) --------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _conforms(value: object, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, h) for h in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_conforms(v, args[0]) for v in value)
        return len(args) == len(value) and all(
            _conforms(v, a) for v, a in zip(value, args, strict=True)
        )
    if origin is dict:
        key, item = typing.get_args(hint)
        return isinstance(value, dict) and all(
            _conforms(k, key) and _conforms(v, item) for k, v in value.items()
        )
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _check_fields(obj: object) -> None:
    cls = type(obj)
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if not _conforms(value, hints[f.name]):
            raise BadCommand(
                f"{cls.__name__}.{f.name} must be {_hint_name(hints[f.name])},"
                f" not {type(value).__name__}"
            )
        if f.name in ("room_id", "participant_id") and not 1 <= len(value) <= 128:
            raise BadCommand(f"{cls.__name__}.{f.name} must be 1-128 characters")


def _hint_name(hint: Any) -> str:
    if isinstance(hint, type) and typing.get_origin(hint) is None:
        return hint.__name__
    return str(hint).replace("typing.", "").replace("mediaserver.events.", "")


class Command(Generic[R]):
    """A request to the media plane; `execute` returns an R."""

    __slots__ = ()

    def __post_init__(self) -> None:
        _check_fields(self)


class Query(Generic[R]):
    """A question to the media plane; `query` returns an R (None: no such object)."""

    __slots__ = ()

    def __post_init__(self) -> None:
        _check_fields(self)


# -- snapshots: what a query returns ----------------------------------------------------------


class ParticipantKind(enum.Enum):
    WEBRTC = "webrtc"  # a peer connection (browsers, aiortc clients)
    INGEST = "ingest"  # a plain-RTP device (docs/devices.md): publishes, receives nothing


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackSnapshot:
    """A publication: TrackInfo plus what its capture does and what the doctor must know."""

    track_id: str
    participant_id: str
    kind: str
    source: str
    codec: str | None
    mid: str
    capture: dict[str, bool | int] | None = None  # CaptureSettings.as_dict() (devices)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingOffer:
    sdp: str
    tracks: dict[str, dict[str, Any]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipantSnapshot:
    """A participant's media state at the time of the query.

    connection: a WebRTC participant's peer connection state (new, connecting, connected,
    disconnected, failed, closed); a device's stream state (waiting, receiving, stalled).
    ingest: per stream of a plain-RTP device, its port and counters (empty for WebRTC).
    """

    room_id: str
    participant_id: str
    role: Role
    kind: ParticipantKind
    connection: str
    closed: bool
    tracks: tuple[TrackSnapshot, ...]
    subscriptions: int
    modes: dict[str, str]
    paused_sources: tuple[str, ...] = ()
    pause_reason: str = ""
    pending_offer: PendingOffer | None = None
    link: LinkStats = field(default_factory=LinkStats)
    ingest: tuple[dict[str, Any], ...] = ()
    transport_restarts: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomSnapshot:
    room_id: str
    video_codec: str  # the codec the room settled on (RoomOptions.video_codec if all decode it)
    participants: tuple[ParticipantSnapshot, ...]
    worker: str = "local"  # the media worker holding the room (its metrics label)

    @property
    def tracks(self) -> tuple[TrackSnapshot, ...]:
        return tuple(t for p in self.participants for t in p.tracks)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSnapshot:
    """One media worker's load and monotonic counters (NodeCounters) at scrape time."""

    worker: str  # the `worker` label: "local" for the in-process plane
    rooms: int
    participants: int
    counters: dict[str, int]  # NodeCounters' integer fields
    mode_transitions: dict[str, int]  # "direction:mode" -> transitions into it
    mode_seconds: dict[str, float]  # "direction:mode" -> seconds spent in it (closed spells)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaneSnapshot:
    workers: tuple[WorkerSnapshot, ...]


# -- commands ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateRoom(Command[None]):
    room_id: str
    options: RoomOptions = field(default_factory=RoomOptions)


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseRoom(Command[None]):
    """Close a room and every participant in it (idempotent)."""

    room_id: str
    reason: CloseReason = CloseReason.ENDED


@dataclass(frozen=True, slots=True, kw_only=True)
class AddParticipant(Command[ParticipantSnapshot]):
    """A WebRTC participant; it subscribes to everything published in the room."""

    room_id: str
    participant_id: str
    role: Role
    video_codecs: tuple[str, ...] | None = None  # what it decodes; None: VP8 only


@dataclass(frozen=True, slots=True, kw_only=True)
class AddIngest(Command[ParticipantSnapshot]):
    """A plain-RTP device described by `sdp` (check it first with `check_ingest_sdp`): the plane
    binds a UDP port per m-line (ParticipantSnapshot.ingest says which)."""

    room_id: str
    participant_id: str
    sdp: str
    sources: tuple[str, ...] | None = None  # one source label per m-line


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientOffer(Command["str | None"]):
    """The client's offer; returns the answer SDP, or None on glare."""

    room_id: str
    participant_id: str
    sdp: str
    tracks: dict[str, TrackMeta]  # mid -> what the client says about it


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientAnswer(Command[None]):
    room_id: str
    participant_id: str
    sdp: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AddCandidate(Command[None]):
    """A trickled candidate; `candidate` None: end of candidates."""

    room_id: str
    participant_id: str
    candidate: str | None
    sdp_mid: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestPublish(Command[None]):
    room_id: str
    participant_id: str
    tracks: tuple[TrackMeta, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartTransport(Command[None]):
    room_id: str
    participant_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseConnection(Command[None]):
    room_id: str
    participant_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseParticipant(Command[None]):
    """Close a participant's media (idempotent)."""

    room_id: str
    participant_id: str
    reason: CloseReason = CloseReason.LEFT


@dataclass(frozen=True, slots=True, kw_only=True)
class StartRecording(Command[str]):
    """Record the room's tracks (of `sources`; None: all) as they are forwarded, now and as
    they are published, into `MediaConfig.recording.directory`/<recording_id>; returns the key
    id the files are sealed with. RecordingError: no key, no directory, a codec it cannot
    record. `audit`: the consent steps that led to it (the recording's event log keeps them)."""

    room_id: str
    recording_id: str
    sources: tuple[str, ...] | None = None
    audit: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StopRecording(Command[None]):
    """Stop a recording (idempotent): no packet is taken from now on; returns once every
    file is closed. Event `RecordingStopped` follows."""

    room_id: str
    recording_id: str
    reason: str
    audit: tuple[dict[str, Any], ...] = ()  # the last consent steps, written before the stop


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingNote(Command[None]):
    """A line of the recording's event log (kind: chat, mode, consent), timestamped."""

    room_id: str
    recording_id: str
    kind: str
    data: dict[str, Any]


# -- queries ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GetParticipant(Query["ParticipantSnapshot | None"]):
    room_id: str
    participant_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GetRoom(Query["RoomSnapshot | None"]):
    room_id: str


# -- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaEvent:
    room_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipantEvent(MediaEvent):
    participant_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerOffer(ParticipantEvent):
    """The server offers; `connection` is the peer connection's state when it did."""

    sdp: str
    tracks: dict[str, dict[str, Any]]
    connection: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DataMessage(ParticipantEvent):
    """A text message the client sent on its data channel."""

    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionState(ParticipantEvent):
    state: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ModeChanged(ParticipantEvent):
    direction: str  # uplink | downlink
    mode: str  # video | audio-only | chat-only
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PauseChanged(ParticipantEvent):
    """The publisher must stop (or may resume) sending these sources."""

    sources: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceState(ParticipantEvent):
    state: str  # a plain-RTP device: waiting | receiving | stalled


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackPublished(MediaEvent):
    track: TrackSnapshot


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackUnpublished(MediaEvent):
    track: TrackSnapshot


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipantClosed(ParticipantEvent):
    reason: CloseReason


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomClosed(MediaEvent):
    reason: CloseReason


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaLost(ParticipantEvent):
    """The participant's media connection is gone with the worker that held it; the room was
    re-created on another worker and the participant added again (its requested tracks too),
    with no connection: the client must start a fresh one (`RestartTransport`)."""

    reason: str  # worker-lost


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingStopped(MediaEvent):
    """A recording stopped: asked to (`StopRecording`'s reason), its room closed, or it
    failed (reason "error", `error` says what: a write error, a codec it cannot record)."""

    recording_id: str
    reason: str
    error: str = ""


EventListener = Callable[[MediaEvent], None]


# -- the interface ----------------------------------------------------------------------------


class MediaPlane(abc.ABC):
    """Rooms with media, behind commands, queries and events.

    One interface, several implementations: in-process (`LocalMediaPlane`) and, later, over
    an IPC channel to worker processes that each own whole rooms. Queries are synchronous: an
    implementation answers them from its own state (in-process: the live objects; over IPC:
    the state its workers report with their events and stats), never by a round trip.

    Ordering: events are delivered in the order the media plane produced them, and a
    command's caller resumes before any event the command causes is delivered (signaling
    registers a participant's session once `AddParticipant` returns; in-process this holds
    because participants emit from their own tasks, an IPC implementation must keep it).
    """

    workers: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._listeners: list[EventListener] = []

    @property
    @abc.abstractmethod
    def closed(self) -> bool: ...

    @property
    def ready(self) -> bool:
        """It takes rooms now (worker processes: at least one is up)."""
        return not self.closed

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self, reason: CloseReason = CloseReason.SHUTDOWN) -> None:
        """Close every room (idempotent)."""

    @abc.abstractmethod
    def ice_servers(self) -> list[dict[str, object]]:
        """STUN/TURN servers handed to clients."""

    @abc.abstractmethod
    async def execute(self, command: Command[R]) -> R:
        """Run a command; MediaPlaneError, NegotiationError or IngestError when refused."""

    @abc.abstractmethod
    def query(self, query: Query[R]) -> R: ...

    @abc.abstractmethod
    def snapshot(self) -> PlaneSnapshot:
        """Counters per worker, for metrics (read at scrape time)."""

    def participant(self, room_id: str, participant_id: str) -> ParticipantSnapshot | None:
        return self.query(GetParticipant(room_id=room_id, participant_id=participant_id))

    def room(self, room_id: str) -> RoomSnapshot | None:
        return self.query(GetRoom(room_id=room_id))

    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        """Call `listener` with every event, in order; returns the unsubscribe function.

        Listeners are called synchronously; one that raises is logged and skipped."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def publish(self, event: MediaEvent) -> None:
        """Deliver an event to the listeners (implementations call this)."""
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("media event listener failed on %s", type(event).__name__)


def check_ingest_sdp(sdp: object, sources: object = None) -> None:
    """IngestError (a ValueError) for a device SDP `AddIngest` would refuse, or sources that do
    not name one known source of the right kind per m-line."""
    if not isinstance(sdp, str):
        raise IngestError("sdp must be a string")
    media = parse_sdp(sdp)
    if sources is not None:
        if not isinstance(sources, list | tuple) or len(sources) != len(media):
            raise IngestError("sources must list one source per m-line")
        media = parse_sdp(sdp, sources=dict(enumerate(sources)))
        for m in media:
            if not isinstance(m.source, str):
                raise IngestError("sources must be strings")
            try:
                validate_source(m.kind, m.source)
            except ValueError as exc:
                raise IngestError(str(exc)) from exc


__all__ = [
    "DEVICE_SOURCES",
    "SOURCES",
    "AddCandidate",
    "AddIngest",
    "AddParticipant",
    "BadCommand",
    "ClientAnswer",
    "ClientOffer",
    "CloseConnection",
    "CloseParticipant",
    "CloseReason",
    "CloseRoom",
    "Command",
    "ConnectionState",
    "CreateRoom",
    "DataMessage",
    "DeviceState",
    "DirectionStats",
    "EventListener",
    "FallbackConfig",
    "GetParticipant",
    "GetRoom",
    "IceConfig",
    "IceServer",
    "IngestError",
    "LinkStats",
    "MediaConfig",
    "MediaEvent",
    "MediaLost",
    "MediaPlane",
    "MediaPlaneError",
    "ModeChanged",
    "NegotiationError",
    "NoPort",
    "NodeCounters",
    "ParticipantClosed",
    "ParticipantEvent",
    "ParticipantExists",
    "ParticipantKind",
    "ParticipantSnapshot",
    "PauseChanged",
    "PendingOffer",
    "PlaneSnapshot",
    "Query",
    "RecordingConfig",
    "RecordingError",
    "RecordingNote",
    "RecordingStopped",
    "RequestPublish",
    "RestartTransport",
    "Role",
    "RoomClosed",
    "RoomExists",
    "RoomFull",
    "RoomOptions",
    "RoomSnapshot",
    "ServerOffer",
    "StartRecording",
    "StopRecording",
    "TrackInfo",
    "TrackMeta",
    "TrackPublished",
    "TrackSnapshot",
    "TrackUnpublished",
    "UnknownParticipant",
    "UnknownRoom",
    "Unsupported",
    "WorkerLost",
    "WorkerSnapshot",
    "bundle_data_channel",
    "check_ingest_sdp",
    "opus_fmtp",
    "parse_capture",
    "parse_opus_fmtp",
    "validate_channels",
    "validate_source",
]
