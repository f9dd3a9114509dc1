"""Transitional: moved to `mediaserver.rtc.bundle` (issue 13, the aiortc seam package).

Only `participant.py` imports from here, until it is switched to `mediaserver.rtc`; then this
module goes.
"""

from ..rtc.bundle import declared, drop_rejected_from_bundle, harmonize

__all__ = ["declared", "drop_rejected_from_bundle", "harmonize"]
