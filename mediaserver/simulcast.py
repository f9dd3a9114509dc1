"""Simulcast in SDP: what a publisher's offer sends (`a=rid`, `a=simulcast:send`), and the
answer lines that let it (aiortc ignores both: without `a=simulcast:recv` in the answer,
Chromium sends one layer).

The layers themselves are demultiplexed by the Demux (rtp-stream-id, repaired-rtp-stream-id)
into layer Publications; each Subscription picks one (docs/media.md, "Simulcast").
"""

from __future__ import annotations

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
RRID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"


def _sections(text: str) -> tuple[str, list[list[str]]]:
    """The session part and each m-section's lines (CRLF or LF)."""
    parts = text.replace("\r\n", "\n").split("\nm=")
    return parts[0], [("m=" + p).rstrip("\n").split("\n") for p in parts[1:]]


def _mid(lines: list[str]) -> str | None:
    return next((line[6:].strip() for line in lines if line.startswith("a=mid:")), None)


def _send_rids(lines: list[str]) -> tuple[str, ...]:
    """The rids an m-section sends, in its `a=simulcast:send` order (alternatives: the first;
    a paused `~rid` is still a layer)."""
    for line in lines:
        if line.startswith("a=simulcast:"):
            fields = line[len("a=simulcast:") :].split()
            for direction, value in zip(fields[::2], fields[1::2], strict=False):
                if direction == "send":
                    return tuple(alt.split(",")[0].lstrip("~") for alt in value.split(";") if alt)
    return ()


def offered_simulcast(offer: str) -> dict[str, tuple[str, ...]]:
    """mid -> the rids that m-section sends (only m-sections that offer simulcast)."""
    result: dict[str, tuple[str, ...]] = {}
    for lines in _sections(offer)[1]:
        mid = _mid(lines)
        rids = _send_rids(lines)
        if mid is not None and len(rids) > 1:
            result[mid] = rids
    return result


def answer_simulcast(answer: str, offer: str) -> str:
    """`answer` with `a=rid:<id> recv` and `a=simulcast:recv <ids>` (and the rtp-stream-id
    header extensions, at the offer's ids) on each m-section whose offer sends simulcast and
    whose answer accepts media (port not 0)."""
    offered: dict[str, tuple[tuple[str, ...], list[str]]] = {}
    for lines in _sections(offer)[1]:
        mid, rids = _mid(lines), _send_rids(lines)
        if mid is not None and len(rids) > 1:
            ext = [
                line
                for line in lines
                if line.startswith("a=extmap:") and line.split()[-1] in (RID_URI, RRID_URI)
            ]
            offered[mid] = (rids, ext)
    if not offered:
        return answer
    session, sections = _sections(answer)
    out = [session]
    for lines in sections:
        mid = _mid(lines)
        head = lines[0].split()
        if mid in offered and len(head) > 1 and head[1] != "0":
            rids, ext = offered[mid]
            have = {line.split()[-1] for line in lines if line.startswith("a=extmap:")}
            extra = [line for line in ext if line.split()[-1] not in have]
            extra += [f"a=rid:{rid} recv" for rid in rids]
            extra.append("a=simulcast:recv " + ";".join(rids))
            lines = _insert_after_extmaps(lines, extra)
        out.append("\n".join(lines))
    return "\r\n".join("\n".join(out).split("\n")) + "\r\n"


def _insert_after_extmaps(lines: list[str], extra: list[str]) -> list[str]:
    at = max((i for i, line in enumerate(lines) if line.startswith("a=extmap:")), default=None)
    if at is None:
        at = max(i for i, line in enumerate(lines) if line.startswith("a="))
    return [*lines[: at + 1], *extra, *lines[at + 1 :]]
