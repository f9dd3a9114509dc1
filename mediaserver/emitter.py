"""Event emitter base: a listener's exception is logged and never breaks the emitter."""

from __future__ import annotations

import logging

from pyee.asyncio import AsyncIOEventEmitter

logger = logging.getLogger(__name__)


class Emitter(AsyncIOEventEmitter):
    def __init__(self) -> None:
        super().__init__()
        self.on("error", self._listener_failed)

    def _listener_failed(self, exc: BaseException) -> None:
        logger.error("event listener of %s failed: %r", type(self).__name__, exc)

    def remove_all_listeners(self, event: str | None = None) -> None:
        super().remove_all_listeners(event)
        if event is None or event == "error":
            self.on("error", self._listener_failed)
