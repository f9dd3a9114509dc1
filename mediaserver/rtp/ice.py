"""Server-side ICE: bind configured addresses within a UDP port range. STUB: in progress."""

from __future__ import annotations

from ..config import IceConfig


class PortAllocator:
    def __init__(self, config: IceConfig) -> None:
        self.config = config
