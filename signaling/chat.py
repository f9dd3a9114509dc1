"""Chat history of a consultation: server-assigned ids and timestamps, kept for the room's life."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ChatMessage:
    id: str
    sender: str  # participant id
    name: str
    role: str
    text: str
    ts: int  # milliseconds since the Unix epoch

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "from": self.sender,
            "name": self.name,
            "role": self.role,
            "text": self.text,
            "ts": self.ts,
        }


class ChatLog:
    def __init__(self) -> None:
        self._messages: list[ChatMessage] = []

    def append(self, *, sender: str, name: str, role: str, text: str) -> ChatMessage:
        message = ChatMessage(
            id=f"m{len(self._messages) + 1}",
            sender=sender,
            name=name,
            role=role,
            text=text,
            ts=int(time.time() * 1000),
        )
        self._messages.append(message)
        return message

    def history(self) -> list[dict[str, Any]]:
        return [m.as_dict() for m in self._messages]

    def __len__(self) -> int:
        return len(self._messages)
