"""Safe JSON parsing for everything a client sends (WebSocket frames, HTTP bodies, tokens).

`json.loads` recurses once per nesting level: 100 000 `[` raise RecursionError, which is no
ValueError and escaped every handler (a 500, a close 1011, a traceback). `loads` refuses a
document nested deeper than MAX_DEPTH before parsing it, and turns every decoding failure
(bad UTF-8, bad syntax, recursion) into BadJson, a ValueError.
"""

from __future__ import annotations

import json
from typing import Any

# Deeper than any message of the protocol or the API (a telemetry batch is 4 levels deep).
MAX_DEPTH = 32

_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'[]{}"')))


class BadJson(ValueError):
    """Not a JSON document we parse; the message is fixed text, safe to send back."""


def too_deep(text: str, max_depth: int = MAX_DEPTH) -> bool:
    """True when the brackets of `text` (outside strings) nest deeper than `max_depth`.

    C-speed passes only (a 64 KiB frame costs well under json.loads itself): drop escaped
    backslashes and quotes, keep brackets and quotes, drop the strings (every other run
    between quotes), then peel the innermost `[]`/`{}` level once per pass. Brackets that
    are not balanced count as too deep: the text is not JSON either way.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return False  # the common case: no scan at all
    data = text.encode("utf-8", "surrogatepass").replace(b"\\\\", b"").replace(b'\\"', b"")
    rest = b"".join(data.translate(None, _NOT_STRUCTURE).split(b'"')[::2])
    for _ in range(max_depth):
        if not rest:
            return False
        peeled = rest.replace(b"[]", b"").replace(b"{}", b"")
        if len(peeled) == len(rest):
            return True
        rest = peeled
    return bool(rest)


def loads(data: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse one JSON document; BadJson for anything that is not one we accept."""
    if isinstance(data, bytes | bytearray):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadJson("not UTF-8") from exc
    if too_deep(data, max_depth):
        raise BadJson(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise BadJson("not valid JSON") from exc
