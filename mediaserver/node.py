"""Node: the media plane of one process, owner of its rooms."""

from __future__ import annotations

import logging

from .config import MediaConfig
from .emitter import Emitter
from .events import CloseReason, NodeCounters
from .room import Room, RoomOptions
from .rtc.ice import PortAllocator

logger = logging.getLogger(__name__)


class Node(Emitter):
    """Owns rooms; rooms are independent (a worker process per core owns whole rooms).

    Events: "room-added" (room), "room-removed" (room_id, reason), "close" (reason).
    """

    def __init__(self, config: MediaConfig | None = None) -> None:
        super().__init__()
        self.config = config or MediaConfig()
        self.counters = NodeCounters()
        self.ports = PortAllocator(self.config.ice)
        self.rooms: dict[str, Room] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def ice_servers(self) -> list[dict[str, object]]:
        """STUN/TURN servers handed to clients (from config; none by default)."""
        return [s.as_dict() for s in self.config.ice.ice_servers]

    async def start(self) -> None:
        logger.info("media node started")

    def create_room(self, room_id: str, options: RoomOptions | None = None) -> Room:
        if self._closed:
            raise RuntimeError("node is closed")
        if room_id in self.rooms:
            raise ValueError("room exists")
        room = Room(room_id, options or RoomOptions(), node=self)
        self.rooms[room_id] = room
        room.once("close", lambda reason: self._room_closed(room_id, reason))
        self.emit("room-added", room)
        return room

    def get_room(self, room_id: str) -> Room | None:
        return self.rooms.get(room_id)

    def _room_closed(self, room_id: str, reason: CloseReason) -> None:
        self.rooms.pop(room_id, None)
        self.emit("room-removed", room_id, reason)

    async def close(self, reason: CloseReason = CloseReason.SHUTDOWN) -> None:
        if self._closed:
            return
        self._closed = True
        for room in list(self.rooms.values()):
            await room._parent_closed(reason)
        self.emit("close", reason)
        self.remove_all_listeners()
        logger.info("media node closed (%s)", reason.value)
