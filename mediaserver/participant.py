"""Participant: one peer's media session (one RTCPeerConnection, max-bundle). STUB: in progress."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .emitter import Emitter
from .events import CloseReason, LinkStats, Role, TrackMeta

if TYPE_CHECKING:
    from .publication import Publication
    from .room import Room


class NegotiationError(ValueError):
    """A broken SDP, or an answer with no offer pending. The participant stays usable."""


class Participant(Emitter):
    """Events: "offer" (sdp, tracks), "data" (text), "publication" (Publication),
    "connectionstatechange" (state), "close" (reason)."""

    def __init__(
        self, participant_id: str, *, role: Role, room: Room, video_codecs: frozenset[str]
    ) -> None:
        super().__init__()
        self.id = participant_id
        self.role = role
        self.room = room
        self.video_codecs = video_codecs
        self.publications: dict[str, Publication] = {}
        self._closed = False

    @property
    def connection_state(self) -> str:
        return "new"

    async def handle_offer(self, sdp: str, tracks: dict[str, TrackMeta]) -> str | None:
        raise NotImplementedError

    async def handle_answer(self, sdp: str) -> None:
        raise NotImplementedError

    async def add_ice_candidate(self, candidate: str | None, sdp_mid: str | None) -> None:
        raise NotImplementedError

    def request_publish(self, tracks: list[TrackMeta]) -> None:
        raise NotImplementedError

    def subscribe(self, publication: Publication) -> None:
        pass

    def send_data(self, text: str) -> bool:
        return False

    def link_stats(self) -> LinkStats:
        return LinkStats()

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "role": self.role.value, "tracks": [], "link": {}}

    async def close(self, reason: CloseReason = CloseReason.LEFT) -> None:
        if self._closed:
            return
        self._closed = True
        self.emit("close", reason)
        self.remove_all_listeners()

    async def _parent_closed(self, reason: CloseReason) -> None:
        await self.close(reason)
