"""The SDP suite: the node's answers to recorded offers of browsers that cannot run here.

Safari (macOS, iOS), older Chrome and Firefox and Android offers are kept in
tests/fixtures/sdp/*.sdp, each with its public source in its header (`# key: value` lines,
then a blank line, then the SDP). Each offer is sent to the live node by a participant that
joins like a browser (`join` with the video codecs the offer carries, then `offer`), once in
a default room and once in a room that asks for H264; the answer is checked:

- it is a well-formed answer: the same m-lines in the same order with the same mids and kinds,
  BUNDLE only over offered mids, ICE credentials, a fingerprint, `a=setup` active or passive,
  rtcp-mux where offered, a direction compatible with the offered one;
- it picks only codecs the browser offered (same name, clock rate and channels), RTX only for
  a picked codec, H264 only in packetization-mode 1 with a profile the browser offered;
- the room's codec: VP8 in a default room, H264 in an H264 room when the browser offered
  packetization-mode 1 H264 (VP8 otherwise);
- header extensions only among those offered for that m-line, with the offered ids, each id
  naming one extension over the whole BUNDLE; `a=extmap-allow-mixed` only when offered;
- never a video codec the node cannot forward (H265, AV1, VP9), first or further down the list.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from signaling.client import ConsultClient, ServerError

TokenFn = Callable[[str, str, str], str]  # (room, role, sub) -> token
RoomFn = Callable[[str, dict[str, Any]], Awaitable[None]]  # (room, options): create it


@dataclass
class Media:
    kind: str
    port: int
    proto: str
    fmts: list[str]
    attrs: list[tuple[str, str]] = field(default_factory=list)

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.attrs if k == name]

    def first(self, name: str) -> str | None:
        vals = self.values(name)
        return vals[0] if vals else None

    @property
    def mid(self) -> str | None:
        return self.first("mid")

    @property
    def direction(self) -> str:
        for k, _ in self.attrs:
            if k in ("sendrecv", "sendonly", "recvonly", "inactive"):
                return k
        return "sendrecv"

    def rtpmap(self) -> dict[str, tuple[str, int, str]]:
        """payload type -> (codec name upper, clock rate, channels or '')."""
        out = {}
        for v in self.values("rtpmap"):
            pt, _, enc = v.partition(" ")
            parts = enc.split("/")
            name = parts[0].upper()
            rate = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            chans = parts[2] if len(parts) > 2 else ""
            if name == "OPUS" or chans == "1":
                chans = "" if chans == "1" else chans
            out[pt] = (name, rate, chans)
        return out

    def fmtp(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for v in self.values("fmtp"):
            pt, _, params = v.partition(" ")
            d = {}
            for item in params.split(";"):
                k, sep, val = item.strip().partition("=")
                if sep:
                    d[k.strip().lower()] = val.strip()
            out[pt] = d
        return out

    def extmap(self) -> dict[str, str]:
        """URI -> id."""
        out = {}
        for v in self.values("extmap"):
            ident, _, rest = v.partition(" ")
            out[rest.split()[0] if rest else ""] = ident.split("/")[0]
        return out


@dataclass
class Sdp:
    session: list[tuple[str, str]]
    media: list[Media]

    def session_values(self, name: str) -> list[str]:
        return [v for k, v in self.session if k == name]

    def attr(self, m: Media, name: str) -> str | None:
        """A media attribute, falling back to the session level."""
        v = m.first(name)
        if v is None:
            vals = self.session_values(name)
            v = vals[0] if vals else None
        return v


def parse(text: str) -> Sdp:
    session: list[tuple[str, str]] = []
    media: list[Media] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        t, v = line[0], line[2:]
        if t == "m":
            parts = v.split()
            if len(parts) < 4:
                raise ValueError(f"bad m-line: {line}")
            media.append(Media(parts[0], int(parts[1]), parts[2], parts[3:]))
            continue
        if t == "a":
            k, _, val = v.partition(":")
            (media[-1].attrs if media else session).append((k, val))
        elif t in "vost":
            session.append((t, v))
    return Sdp(session, media)


@dataclass
class Fixture:
    name: str
    meta: dict[str, str]
    sdp: str

    @property
    def video_codecs(self) -> list[str]:
        """What the browser declares at join: the fixture's `declares` line (what its
        getCapabilities lists, e.g. Firefox 140: H264 that its SDP lacks), else its SDP's."""
        if self.meta.get("declares"):
            return [c.upper() for c in self.meta["declares"].split()]
        names = set()
        for m in parse(self.sdp).media:
            if m.kind == "video":
                names |= {c[0] for c in m.rtpmap().values()}
        return [c for c in ("VP8", "H264") if c in names]


def load_fixture(path: Path) -> Fixture:
    text = path.read_text()
    meta: dict[str, str] = {}
    lines = text.splitlines()
    i, key = 0, ""
    while i < len(lines) and lines[i].startswith("#"):
        body = lines[i][1:].strip()
        k, sep, v = body.partition(":")
        if sep and k and " " not in k and not lines[i].startswith("#  "):
            key = k.strip()
            meta[key] = v.strip()
        elif key:
            meta[key] += " " + body
        i += 1
    sdp = "\r\n".join(line for line in lines[i:] if line.strip()) + "\r\n"
    if not meta.get("source"):
        raise ValueError(f"{path.name}: fixture without a `# source:` line")
    return Fixture(path.stem, meta, sdp)


def sent_tracks(offer_text: str) -> dict[str, dict[str, str]]:
    """The `tracks` a browser declares with this offer: its audio and video m-lines that send
    (a microphone, a camera), by mid; never a data channel's m-line."""
    return {
        m.mid: {"source": "microphone" if m.kind == "audio" else "camera"}
        for m in parse(offer_text).media
        if m.kind in ("audio", "video") and m.direction in ("sendrecv", "sendonly") and m.mid
    }


def _h264_ok(params: dict[str, str], offered: list[dict[str, str]]) -> str | None:
    mode = params.get("packetization-mode", "0")
    if mode != "1":
        return f"H264 packetization-mode {mode} (browsers decode mode 1 interoperably)"
    plid = params.get("profile-level-id", "").lower()
    profiles = {
        o.get("profile-level-id", "").lower()[:2] + o.get("profile-level-id", "").lower()[2:4]
        for o in offered
        if o.get("packetization-mode", "0") == "1"
    }
    if plid[:4] not in profiles:
        return (
            f"H264 profile-level-id {plid} not among the offered mode-1 profiles {sorted(profiles)}"
        )
    return None


def check_answer(
    offer_text: str, answer_text: str, room_codec: str
) -> tuple[list[str], dict[str, Any]]:
    """Problems with the node's answer (empty when valid) and what it picked."""
    problems: list[str] = []
    offer, answer = parse(offer_text), parse(answer_text)
    picked: dict[str, Any] = {}
    if not any(k == "v" for k, _ in answer.session):
        problems.append("answer has no v= line")
    if len(answer.media) != len(offer.media):
        problems.append(f"{len(answer.media)} m-lines answer {len(offer.media)} offered")
        return problems, picked
    offered_mids = {m.mid for m in offer.media}
    for g in answer.session_values("group"):
        kind, *mids = g.split()
        if kind == "BUNDLE" and not set(mids) <= offered_mids:
            problems.append(f"BUNDLE over unknown mids {sorted(set(mids) - offered_mids)}")
    if answer.session_values("extmap-allow-mixed") and not (
        offer.session_values("extmap-allow-mixed")
        or any(m.first("extmap-allow-mixed") is not None for m in offer.media)
    ):
        problems.append("a=extmap-allow-mixed in the answer, not in the offer")
    bundle_ids: dict[str, str] = {}  # extension id -> URI over the bundled m-lines
    offered_uris: dict[str, set[str]] = {}  # an old Firefox reuses an id across m-lines
    for m in offer.media:
        for uri, ident in m.extmap().items():
            offered_uris.setdefault(ident, set()).add(uri)
    compatible = {
        "sendrecv": {"sendrecv", "sendonly", "recvonly", "inactive"},
        "sendonly": {"recvonly", "inactive"},
        "recvonly": {"sendonly", "inactive"},
        "inactive": {"inactive"},
    }
    for om, am in zip(offer.media, answer.media, strict=True):
        where = f"m={om.kind} mid {om.mid}"
        if am.kind != om.kind or am.mid != om.mid:
            problems.append(f"{where}: answered as m={am.kind} mid {am.mid}")
            continue
        if am.port == 0:
            picked[str(om.mid)] = {"rejected": True}
            continue
        for attr in ("ice-ufrag", "ice-pwd", "fingerprint"):
            if not answer.attr(am, attr):
                problems.append(f"{where}: no a={attr}")
        setup = answer.attr(am, "setup")
        if setup not in ("active", "passive"):
            problems.append(f"{where}: a=setup:{setup} (an answer must be active or passive)")
        if om.kind == "application":
            if am.proto != om.proto:
                problems.append(f"{where}: proto {am.proto}, offered {om.proto}")
            picked[str(om.mid)] = {"proto": am.proto, "sctp-port": am.first("sctp-port")}
            continue
        if am.direction not in compatible[om.direction]:
            problems.append(f"{where}: direction {am.direction} answers {om.direction}")
        if om.first("rtcp-mux") is not None and am.first("rtcp-mux") is None:
            problems.append(f"{where}: rtcp-mux offered, not in the answer")
        o_map, a_map = om.rtpmap(), am.rtpmap()
        o_fmtp, a_fmtp = om.fmtp(), am.fmtp()
        for pt in am.fmts:
            if pt not in o_map or pt not in a_map:
                problems.append(f"{where}: payload type {pt} was not offered")
            elif a_map[pt] != o_map[pt]:
                problems.append(f"{where}: pt {pt} is {a_map[pt]}, offered as {o_map[pt]}")
        main = [
            pt
            for pt in am.fmts
            if a_map.get(pt, ("",))[0] not in ("RTX", "RED", "ULPFEC", "CN", "TELEPHONE-EVENT")
        ]
        for pt in am.fmts:
            if a_map.get(pt, ("",))[0] == "RTX":
                apt = a_fmtp.get(pt, {}).get("apt")
                if apt not in am.fmts:
                    problems.append(f"{where}: rtx {pt} for apt={apt}, not a picked codec")
        if not main:
            problems.append(f"{where}: no media codec picked")
            continue
        first = a_map.get(main[0], ("?",))[0]  # an unmapped pt was reported above
        entry: dict[str, Any] = {
            "kind": om.kind,
            "codec": first,
            "direction": am.direction,
            "fmtp": a_fmtp.get(main[0], {}),
            "extensions": sorted(am.extmap()),
        }
        if om.kind == "audio" and first != "OPUS":
            problems.append(f"{where}: audio codec {first}, expected opus")
        if om.kind == "video":
            for pt in main:
                if a_map[pt][0] == "H264":
                    offered_h264 = [o_fmtp.get(p, {}) for p, c in o_map.items() if c[0] == "H264"]
                    if why := _h264_ok(a_fmtp.get(pt, {}), offered_h264):
                        problems.append(f"{where}: {why}")
            offered_names = {c[0] for c in o_map.values()}
            h264_mode1 = any(
                o_fmtp.get(p, {}).get("packetization-mode") == "1"
                for p, c in o_map.items()
                if c[0] == "H264"
            )
            want = "H264" if room_codec == "H264" and h264_mode1 else "VP8"
            if want not in offered_names:
                want = first
            if first != want:
                problems.append(f"{where}: picked {first}, expected {want} in a {room_codec} room")
            if first not in {"VP8", "H264"}:
                problems.append(f"{where}: picked {first}, which the node does not forward")
            for other in sorted({a_map[pt][0] for pt in main[1:] if pt in a_map}):
                if other not in {"VP8", "H264"}:
                    # listed after the first, the browser may still send it (H265 from Safari)
                    problems.append(f"{where}: answer lists {other}, which the node cannot forward")
        o_ext = om.extmap()
        ids: dict[str, str] = {}
        for v in am.values("extmap"):
            ident, _, rest = v.partition(" ")
            ident, uri = ident.split("/")[0], (rest.split() or [""])[0]
            if ids.setdefault(ident, uri) != uri:
                problems.append(f"{where}: extension id {ident} used for {ids[ident]} and {uri}")
            reused = len(offered_uris.get(ident, ())) > 1  # as offered: echoing it is right
            if bundle_ids.setdefault(ident, uri) != uri and ids[ident] == uri and not reused:
                problems.append(
                    f"{where}: extension id {ident} is {uri} here, {bundle_ids[ident]} in another"
                    " m-line of the BUNDLE"
                )
        for uri, ident in am.extmap().items():
            if uri not in o_ext:
                problems.append(f"{where}: extension {uri} was not offered")
            elif o_ext[uri] != ident:
                problems.append(f"{where}: extension {uri} id {ident}, offered as {o_ext[uri]}")
        picked[str(om.mid)] = entry
    return problems, picked


async def check_fixture(
    fx: Fixture, base_url: str, token: TokenFn, make_room: RoomFn, room_codec: str
) -> dict[str, Any]:
    room = f"compat-sdp-{fx.name}-{room_codec.lower()}-{secrets.token_hex(3)}"
    t0 = time.monotonic()
    result: dict[str, Any] = {
        "fixture": fx.name,
        "room_codec": room_codec,
        "browser": fx.meta.get("browser"),
        "source": fx.meta.get("source"),
        "status": "fail",
    }
    client = ConsultClient(base_url, codecs=fx.video_codecs or None, auto_answer=False)
    try:
        if room_codec != "VP8":
            await make_room(room, {"video_codec": room_codec})
        await asyncio.wait_for(client.connect(token(room, "doctor", "sdp-" + fx.name)), 20)
        await client.wait_state("admitted", timeout_s=20)
        try:
            reply = await client.request(
                "offer", timeout_s=30, sdp=fx.sdp, tracks=sent_tracks(fx.sdp)
            )
        except ServerError as exc:
            result["error"] = f"the node refused the offer: {exc.code}: {exc.message}"
            return result
        answer = reply.get("sdp", "")
        problems, picked = check_answer(fx.sdp, answer, room_codec)
        result.update(picked=picked, problems=problems, answer=answer)
        if problems:
            result["error"] = "; ".join(problems)
        else:
            result["status"] = "pass"
        return result
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        return result
    finally:
        result["seconds"] = round(time.monotonic() - t0, 1)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.request("leave", timeout_s=5), 6)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 10)


def load_fixtures(directory: Path) -> list[Fixture]:
    return [load_fixture(p) for p in sorted(directory.glob("*.sdp"))]


async def run_suite(
    directory: Path, base_url: str, token: TokenFn, make_room: RoomFn
) -> list[dict[str, Any]]:
    try:
        fixtures = load_fixtures(directory)
    except (OSError, ValueError) as exc:
        return [{"fixture": str(directory), "status": "fail", "error": str(exc)}]
    if not fixtures:
        return [{"fixture": str(directory), "status": "fail", "error": "no *.sdp fixtures"}]
    out = []
    for fx in fixtures:
        for room_codec in ("VP8", "H264"):
            r = await check_fixture(fx, base_url, token, make_room, room_codec)
            mark = "ok  " if r["status"] == "pass" else "FAIL"
            err = f"  {str(r.get('error'))[:300]}" if r.get("error") else ""
            video = [
                v.get("codec") for v in (r.get("picked") or {}).values() if v.get("kind") == "video"
            ]
            print(f"  {mark} {fx.name:<28} {room_codec} room -> video {video}{err}", flush=True)
            out.append(r)
    return out
