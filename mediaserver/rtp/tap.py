"""Transitional: moved to `mediaserver.rtc.tap` (issue 13, the aiortc seam package).

Only `participant.py` and `api.py` import from here, until they are switched to
`mediaserver.rtc`; then this module goes.
"""

from ..rtc.peer import bundle_data_channel
from ..rtc.tap import (
    MediaTransport,
    ServerPeerConnection,
    TapHooks,
    recycle_sender,
    sender_ssrcs,
    set_codec_preferences,
)

__all__ = [
    "MediaTransport",
    "ServerPeerConnection",
    "TapHooks",
    "bundle_data_channel",
    "recycle_sender",
    "sender_ssrcs",
    "set_codec_preferences",
]
