"""Simulcast in SDP: what a publisher's offer sends (`a=rid`, `a=simulcast:send`), and the
answer lines that let it (aiortc ignores both: without `a=simulcast:recv` in the answer,
Chromium sends one layer).

The layers themselves are demultiplexed by the Demux (rtp-stream-id, repaired-rtp-stream-id)
into layer Publications; each Subscription picks one (docs/media.md, "Simulcast").
"""

from __future__ import annotations

from dataclasses import dataclass

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
RRID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
# The send-side estimate a simulcast publisher starts from (kbit/s, libwebrtc's
# `x-google-start-bitrate` on the answer's video codecs). With REMB alone (aiortc has no
# transport-cc), libwebrtc's estimate stays near what its first layer sends (about 150 kbit/s:
# its padding probes need transport-cc feedback to be judged), never enough to enable a second
# layer; from here it has room for two and falls on loss if the uplink is shorter.
START_KBPS = 800


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


@dataclass(frozen=True, slots=True)
class SimulcastOffer:
    """What one m-section of a client's SDP sends: its rids (in `a=simulcast` order) and
    its rtp-stream-id header extension lines (kept verbatim: aiortc drops them)."""

    rids: tuple[str, ...]
    extmaps: tuple[str, ...]

    def ext_id(self, uri: str) -> int:
        """The client's id of a header extension (0: not offered)."""
        for line in self.extmaps:
            head, _, rest = line.partition(" ")
            if rest.strip() == uri:
                return int(head[len("a=extmap:") :].split("/")[0])
        return 0


def offered_simulcast(offer: str) -> dict[str, SimulcastOffer]:
    """mid -> what that m-section sends (only m-sections that send simulcast)."""
    result: dict[str, SimulcastOffer] = {}
    for lines in _sections(offer)[1]:
        mid, rids = _mid(lines), _send_rids(lines)
        if mid is not None and len(rids) > 1:
            ext = tuple(
                line
                for line in lines
                if line.startswith("a=extmap:") and line.split()[-1] in (RID_URI, RRID_URI)
            )
            result[mid] = SimulcastOffer(rids, ext)
    return result


def answer_simulcast(answer: str, offer: str) -> str:
    """`answer` with the simulcast lines for what `offer` sends (`add_simulcast`)."""
    return add_simulcast(answer, offered_simulcast(offer))


def add_simulcast(sdp: str, offered: dict[str, SimulcastOffer]) -> str:
    """`sdp` (ours, an answer or a later offer) with `a=rid:<id> recv` and
    `a=simulcast:recv <ids>` (and the rtp-stream-id header extensions, at the client's ids) on
    each m-section whose mid sends simulcast and that accepts media (port not 0): without
    them in every later exchange too, Chromium refuses the description."""
    if not offered:
        return sdp
    session, sections = _sections(sdp)
    out = [session]
    for lines in sections:
        mid = _mid(lines)
        head = lines[0].split()
        sim = offered.get(mid) if mid is not None else None
        if sim is not None and len(head) > 1 and head[1] != "0":
            lines = [
                line
                for line in lines
                if not line.startswith(("a=rid:", "a=simulcast:"))
                and not (line.startswith("a=extmap:") and line.split()[-1] in (RID_URI, RRID_URI))
            ]
            extra = [*sim.extmaps, *(f"a=rid:{rid} recv" for rid in sim.rids)]
            extra.append("a=simulcast:recv " + ";".join(sim.rids))
            lines = _start_bitrate(_insert_after_extmaps(lines, extra))
        out.append("\n".join(lines))
    return "\r\n".join("\n".join(out).split("\n")) + "\r\n"


def offer_rid_extensions(sdp: str) -> str:
    """Our offer with the rtp-stream-id header extensions on every video m-section that
    accepts media: a browser that first negotiated without them (a server offer came first)
    leaves them out of its own later offers, then refuses its own simulcast offer ("negotiates
    simulcast but does not negotiate the RID RTP header extension"). Ids already in use for
    them are kept; otherwise the first free ids from 10 on."""
    session, sections = _sections(sdp)
    ids: dict[str, int] = {}
    used: set[int] = set()
    for lines in sections:
        for line in lines:
            if line.startswith("a=extmap:"):
                key, _, uri = line.partition(" ")
                ident = int(key[len("a=extmap:") :].split("/")[0])
                used.add(ident)
                ids.setdefault(uri.strip(), ident)
    free = [i for i in (*range(10, 15), *range(4, 10)) if i not in used]
    for uri in (RID_URI, RRID_URI):
        if uri not in ids and free:
            ids[uri] = free.pop(0)
    if RID_URI not in ids or RRID_URI not in ids:
        return sdp
    out = [session]
    for lines in sections:
        head = lines[0].split()
        have = {line.split()[-1] for line in lines if line.startswith("a=extmap:")}
        if head[0] == "m=video" and len(head) > 1 and head[1] != "0":
            extra = [f"a=extmap:{ids[u]} {u}" for u in (RID_URI, RRID_URI) if u not in have]
            if extra:
                lines = _insert_after_extmaps(lines, extra)
        out.append("\n".join(lines))
    return "\r\n".join("\n".join(out).split("\n")) + "\r\n"


def _start_bitrate(lines: list[str]) -> list[str]:
    """`x-google-start-bitrate` on the m-section's video codecs (not RTX, RED, FEC)."""
    pts = [
        line[len("a=rtpmap:") :].split()[0]
        for line in lines
        if line.startswith("a=rtpmap:")
        and line.split()[1].split("/")[0].upper() in ("VP8", "VP9", "H264", "AV1")
    ]
    param = f"x-google-start-bitrate={START_KBPS}"
    out = []
    for line in lines:
        if line.startswith("a=fmtp:") and line[len("a=fmtp:") :].split()[0] in pts:
            if "x-google-start-bitrate" not in line:
                line += ";" + param
            pts.remove(line[len("a=fmtp:") :].split()[0])
        out.append(line)
    for pt in pts:  # no fmtp yet: after its rtpmap
        at = out.index(next(x for x in out if x.startswith(f"a=rtpmap:{pt} ")))
        out.insert(at + 1, f"a=fmtp:{pt} {param}")
    return out


def _insert_after_extmaps(lines: list[str], extra: list[str]) -> list[str]:
    at = max((i for i, line in enumerate(lines) if line.startswith("a=extmap:")), default=None)
    if at is None:
        at = max(i for i, line in enumerate(lines) if line.startswith("a="))
    return [*lines[: at + 1], *extra, *lines[at + 1 :]]
