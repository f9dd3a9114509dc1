"""Room: one consultation. Media never leaves a room."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .emitter import Emitter
from .events import CloseReason, Role, TrackInfo
from .participant import Participant
from .publication import Publication

if TYPE_CHECKING:
    from .ingest import IngestParticipant
    from .node import Node

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomOptions:
    """Media options of a room.

    video_codec: preferred video codec ("VP8" or "H264"); H264 is used only when every
    participant declared it, else VP8 (Firefox from Debian has no H264).
    max_participants: participants with media at once.
    """

    video_codec: str = "VP8"
    max_participants: int = 8

    def __post_init__(self) -> None:
        if self.video_codec.upper() not in ("VP8", "H264"):
            raise ValueError("video_codec must be VP8 or H264")
        if not 1 <= self.max_participants <= 64:
            raise ValueError("max_participants must be within 1..64")


class Room(Emitter):
    """Owns participants; wires every publication to every other participant.

    Events: "participant-added" (participant), "participant-removed" (participant_id, reason),
    "track-published" (TrackInfo), "track-unpublished" (TrackInfo), "close" (reason).
    """

    def __init__(self, room_id: str, options: RoomOptions, *, node: Node) -> None:
        super().__init__()
        self.id = room_id
        self.options = options
        self.node = node
        self.participants: dict[str, Participant] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def video_codec(self) -> str:
        """The room's video codec: the preferred one if every participant supports it."""
        want = self.options.video_codec.upper()
        if want == "VP8":
            return "VP8"
        if all(want in p.video_codecs for p in self.participants.values()):
            return want
        return "VP8"

    def add_participant(
        self,
        participant_id: str,
        *,
        role: Role,
        video_codecs: frozenset[str] | None = None,
    ) -> Participant:
        """Create the participant's media session; it subscribes to everything published."""
        if self._closed:
            raise RuntimeError("room is closed")
        if participant_id in self.participants:
            raise ValueError("participant exists")
        if len(self.participants) >= self.options.max_participants:
            raise ValueError("room is full")
        participant = Participant(
            participant_id,
            role=role,
            room=self,
            video_codecs=video_codecs or frozenset({"VP8"}),
        )
        self.participants[participant_id] = participant
        participant.on("publication", self._on_publication)
        participant.on("codecs", lambda _codecs: self._settle_video_codec())
        participant.once("close", lambda reason: self._participant_closed(participant_id, reason))
        self._settle_video_codec()  # codec-late (issue 3)
        for other in self.participants.values():
            if other is participant:
                continue
            for publication in other.publications.values():
                participant.subscribe(publication)
        self.emit("participant-added", participant)
        return participant

    # -- devices: publishers without a peer connection (mediaserver/ingest.py) -------------

    def add_publisher(self, publisher: IngestParticipant) -> None:
        """Wire an ingest device like a participant (it publishes, it subscribes to nothing)."""
        if self._closed:
            raise RuntimeError("room is closed")
        if publisher.id in self.participants:
            raise ValueError("participant exists")
        if len(self.participants) >= self.options.max_participants:
            raise ValueError("room is full")
        self.participants[publisher.id] = publisher  # type: ignore[assignment]
        publisher.on("publication", self._on_publication)
        publisher.once("close", lambda reason: self._participant_closed(publisher.id, reason))

    def _on_publication(self, publication: Publication) -> None:
        if self._switch_if_undecodable(publication):
            return  # codec-late: its replacement in the room's codec is published instead
        for other in list(self.participants.values()):
            if other.id != publication.participant_id:
                try:
                    other.subscribe(publication)
                except Exception:  # e.g. a connection aiortc closed: others still subscribe
                    logger.exception("participant %s cannot subscribe", other.id)
        info = publication.info()
        self.emit("track-published", info)
        publication.once("close", lambda _reason: self.emit("track-unpublished", info))

    # -- codec-late (issue 3): the room settles on a video codec every member decodes ------

    def _switch_if_undecodable(self, publication: Publication) -> bool:
        """A video publication some member cannot decode is renegotiated to the room's codec
        (VP8 once such a member is in); True when a switch is under way."""
        if publication.kind != "video" or publication.closed:
            return False
        name = publication.codec.name
        if all(
            name in p.video_codecs
            for p in self.participants.values()
            if p.id != publication.participant_id and isinstance(p, Participant)
        ):
            return False
        publisher = self.participants.get(publication.participant_id)
        if not isinstance(publisher, Participant):
            return False
        return publisher.switch_video_codec(publication, f"video/{self.video_codec()}")

    def _settle_video_codec(self) -> None:
        for participant in list(self.participants.values()):
            for publication in list(participant.publications.values()):
                self._switch_if_undecodable(publication)

    # -- end codec-late --

    def _participant_closed(self, participant_id: str, reason: CloseReason) -> None:
        self.participants.pop(participant_id, None)
        self.emit("participant-removed", participant_id, reason)

    def tracks(self) -> list[TrackInfo]:
        return [pub.info() for p in self.participants.values() for pub in p.publications.values()]

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "video_codec": self.video_codec(),
            "participants": [p.info() for p in self.participants.values()],
        }

    async def remove_participant(self, participant_id: str, reason: CloseReason) -> None:
        participant = self.participants.get(participant_id)
        if participant is not None:
            await participant.close(reason)

    async def close(self, reason: CloseReason = CloseReason.ENDED) -> None:
        if self._closed:
            return
        self._closed = True
        for participant in list(self.participants.values()):
            await participant._parent_closed(reason)
        self.emit("close", reason)
        self.remove_all_listeners()

    async def _parent_closed(self, reason: CloseReason) -> None:
        await self.close(reason)
