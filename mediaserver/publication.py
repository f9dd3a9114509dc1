"""Publication: one incoming track. STUB: in progress."""

from __future__ import annotations

from .emitter import Emitter
from .events import TrackInfo


class Publication(Emitter):
    participant_id: str

    def info(self) -> TrackInfo:
        raise NotImplementedError
