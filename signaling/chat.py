"""Chat history of a consultation: server-assigned ids and timestamps, bounded, read in pages.

A room keeps its most recent messages within a count and a size (the JSON bytes of the
messages); the oldest go first. Ids are `m1`, `m2`, ... per room and never reused, so a
client names the oldest message it has (`before`) to fetch the page before it. Every message
knows its JSON size, so a page is cut to a byte budget without encoding anything again: a
reply costs O(page), whatever the room holds.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any


class ChatTooLarge(ValueError):
    """A message whose JSON would not fit in one server message."""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    seq: int
    sender: str  # participant id
    name: str
    role: str
    text: str
    ts: int  # milliseconds since the Unix epoch
    size: int = 0  # bytes of as_dict() as the server encodes it

    @property
    def id(self) -> str:
        return f"m{self.seq}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "from": self.sender,
            "name": self.name,
            "role": self.role,
            "text": self.text,
            "ts": self.ts,
        }


def encoded_size(value: Any) -> int:
    """Bytes of `value` as Session.send encodes it (compact, ASCII-escaped JSON)."""
    return len(json.dumps(value, separators=(",", ":")))


def parse_id(value: object) -> int | None:
    """`m42` -> 42; None for anything that is not a chat id."""
    if not isinstance(value, str) or len(value) > 20 or not value.startswith("m"):
        return None
    digits = value[1:]
    if not digits.isascii() or not digits.isdigit():
        return None
    return int(digits)


@dataclass(frozen=True, slots=True)
class Page:
    messages: list[dict[str, Any]]  # oldest first
    more: bool  # older messages are kept than the first of this page


class ChatLog:
    def __init__(self, *, max_messages: int = 1000, max_bytes: int = 1 << 20) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._messages: deque[ChatMessage] = deque()
        self._bytes = 0
        self._next = 1

    def append(self, *, sender: str, name: str, role: str, text: str, max_size: int) -> ChatMessage:
        """Store a message (dropping the oldest beyond the bounds); ChatTooLarge over max_size."""
        message = ChatMessage(
            seq=self._next,
            sender=sender,
            name=name,
            role=role,
            text=text,
            ts=int(time.time() * 1000),
        )
        size = encoded_size(message.as_dict())
        if size > max_size:
            raise ChatTooLarge(f"message larger than {max_size} bytes once encoded")
        message = ChatMessage(
            seq=message.seq,
            sender=sender,
            name=name,
            role=role,
            text=text,
            ts=message.ts,
            size=size,
        )
        self._next += 1
        self._messages.append(message)
        self._bytes += size
        while self._messages and (
            len(self._messages) > self.max_messages or self._bytes > self.max_bytes
        ):
            self._bytes -= self._messages.popleft().size
        return message

    def restore(self, messages: list[dict[str, Any]]) -> None:
        """Take back the messages another node kept (as_dict() form, oldest first): the same
        ids, so clients merge them with what they have; the next id follows the last."""
        for item in messages:
            seq = parse_id(item.get("id"))
            if seq is None or seq < self._next:
                continue  # malformed, or already here
            message = ChatMessage(
                seq=seq,
                sender=str(item.get("from", "")),
                name=str(item.get("name", "")),
                role=str(item.get("role", "")),
                text=str(item.get("text", "")),
                ts=int(item.get("ts", 0)),
            )
            size = encoded_size(message.as_dict())
            self._messages.append(
                ChatMessage(
                    seq=seq,
                    sender=message.sender,
                    name=message.name,
                    role=message.role,
                    text=message.text,
                    ts=message.ts,
                    size=size,
                )
            )
            self._bytes += size
            self._next = seq + 1
        while self._messages and (
            len(self._messages) > self.max_messages or self._bytes > self.max_bytes
        ):
            self._bytes -= self._messages.popleft().size

    def page(
        self, *, before: int | None = None, limit: int, max_bytes: int, hard_bytes: int
    ) -> Page:
        """The newest messages older than id `before` (all when None), oldest first: at most
        `limit` of them and `max_bytes` of JSON (brackets and commas included), never over
        `hard_bytes`; the newest one is there whenever it fits `hard_bytes` (pages advance)."""
        messages = self._messages
        if not messages:
            return Page([], False)
        first = messages[0].seq
        end = len(messages) if before is None else max(0, min(len(messages), before - first))
        soft = min(max_bytes, hard_bytes)
        used = 2  # the list's brackets
        start = end
        while start > 0 and end - start < limit:
            size = messages[start - 1].size + (1 if start < end else 0)  # with its comma
            if used + size > (soft if start < end else hard_bytes):
                break
            used += size
            start -= 1
        return Page([messages[i].as_dict() for i in range(start, end)], start > 0)

    def history(self) -> list[dict[str, Any]]:
        """Every message kept (oldest first); tests and tools only: replies use page()."""
        return [m.as_dict() for m in self._messages]

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._messages)
