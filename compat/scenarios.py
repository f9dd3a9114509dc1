"""The scenarios: what a patient's browser must do with the node, checked with evidence.

Every scenario is an async function `(call, evidence) -> None` that raises `Failed` with the
reason; `evidence` collects what the report shows (stats samples, codecs, screenshots).
Side `a` is always a browser and the doctor; side `b` (browser or aiortc) is the patient.
Scenarios of kind "main" run one after another on the same call (a failed one makes the next
start on a fresh call); "fresh" ones get their own call (and room options).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from compat.peers import BrowserPeer, Peer

STEP_S = 30.0  # default limit of one wait; scenarios have an overall limit too


class Failed(Exception):
    pass


@dataclass
class Call:
    a: Peer
    b: Peer
    tokens: Callable[[str, str], str]  # (role, sub) -> token
    room: str
    a_sub: str = "compat-doctor"
    b_sub: str = "compat-patient"
    last: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def st(self, side: str) -> dict[str, Any]:
        peer = self.a if side == "a" else self.b
        s = await peer.status()
        self.last[side] = s
        return s

    def diag(self) -> str:
        parts = []
        for side in ("a", "b"):
            s = self.last.get(side) or {}
            brief = {k: s.get(k) for k in ("state", "connection", "signaling", "startError")}
            remote = [
                (
                    r.get("participant"),
                    r.get("source"),
                    r.get("packets"),
                    r.get("framesDecoded"),
                    r.get("brightness"),
                    r.get("audioEnergy"),
                )
                for r in s.get("remote", [])
            ]
            errs = [e for e in s.get("events", []) if e.get("type") == "error"][-3:]
            parts.append(f"{side}: {brief} remote={remote} errors={errs}")
        return "; ".join(parts)


async def until(
    call: Call, what: str, check: Callable[[], Awaitable[bool]], within: float = STEP_S
) -> None:
    deadline = time.monotonic() + within
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            for side in ("a", "b"):  # the diagnosis shows both sides now, not an old sample
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(call.st(side), 15)
            raise Failed(f"timed out after {within:.0f}s waiting for {what} [{call.diag()}]")
        await asyncio.sleep(0.5)


def remote(s: dict[str, Any], participant: str | None, source: str) -> dict[str, Any] | None:
    for r in s.get("remote", []):
        if r.get("participant") == participant and r.get("source") == source:
            return r
    return None


def me(s: dict[str, Any]) -> str | None:
    m = s.get("me") or {}
    return m.get("id") if isinstance(m, dict) else None


def counter(r: dict[str, Any] | None) -> int:
    """The rising counter of a received track: frames decoded (video) or packets (audio)."""
    if r is None:
        return -1
    if r.get("kind") == "video":
        return int(r.get("framesDecoded") or 0)
    return int(r.get("packets") or r.get("audioFrames") or 0)


def brief(r: dict[str, Any] | None) -> dict[str, Any] | None:
    if r is None:
        return None
    keys = (
        "kind",
        "source",
        "mid",
        "packets",
        "framesDecoded",
        "audioFrames",
        "width",
        "height",
        "fps",
        "codec",
        "decoder",
        "brightness",
        "audioEnergy",
    )
    return {k: r[k] for k in keys if r.get(k) is not None}


async def check_rising(
    call: Call,
    side: str,
    participant: str | None,
    source: str,
    by: int,
    ev: dict[str, Any],
    within: float = STEP_S,
) -> dict[str, Any]:
    """Wait for the track (side receives from participant/source) to rise by `by`; sample it."""
    first: dict[str, Any] = {}

    async def present() -> bool:
        r = remote(await call.st(side), participant, source)
        if r is not None and counter(r) >= 0:
            first.update(r)
            return True
        return False

    await until(call, f"{side} to receive {source} of {participant}", present, within)
    t0 = time.monotonic()
    last: dict[str, Any] = {}

    async def rising() -> bool:
        r = remote(await call.st(side), participant, source)
        if r is not None:
            last.clear()
            last.update(r)
        return r is not None and counter(r) >= counter(first) + by

    await until(call, f"{source} of {participant} rising by {by} at {side}", rising, within)
    samples = ev.setdefault("samples", [])
    samples.append(
        {
            "side": side,
            "source": source,
            "from": participant,
            "first": brief(first),
            "later": brief(last),
            "seconds": round(time.monotonic() - t0, 1),
        }
    )
    return last


async def shoot(
    call: Call, side: str, r: dict[str, Any] | None, ev: dict[str, Any], label: str
) -> None:
    peer = call.a if side == "a" else call.b
    if not peer.is_browser or r is None:
        return
    try:
        png = await peer.screenshot(r.get("mid"))
    except Exception as exc:  # evidence only: a failed screenshot is noted, not fatal
        ev.setdefault("notes", []).append(f"screenshot {label}: {exc}")
        return
    if png:
        ev.setdefault("screenshots", []).append({"label": label, "png": png})


# -- scenarios -------------------------------------------------------------------------------------


async def join_admit(call: Call, ev: dict[str, Any], a_publish: bool = True) -> None:
    """The doctor joins (admitted at once); the patient lands in the waiting room; admitted."""
    await call.a.join(call.tokens("doctor", call.a_sub), publish=a_publish)

    async def a_admitted() -> bool:
        s = await call.st("a")
        if s.get("startError"):
            raise Failed(f"doctor page: {s['startError']}")
        return s.get("state") == "admitted"

    await until(call, "the doctor to be admitted", a_admitted)
    await call.b.join(call.tokens("patient", call.b_sub))

    async def b_waiting() -> bool:
        s = await call.st("b")
        if s.get("startError"):
            raise Failed(f"patient page: {s['startError']}")
        return s.get("state") == "waiting"

    await until(call, "the patient to wait", b_waiting)
    b_id = me(call.last["b"])

    async def knock() -> bool:
        return b_id in (await call.st("a")).get("knocks", [])

    await until(call, "the patient's knock at the doctor", knock)
    admitted = await call.a.admit_all()

    async def b_admitted() -> bool:
        return (await call.st("b")).get("state") == "admitted"

    await until(call, "the patient to be admitted", b_admitted)
    ev["doctor"] = me(call.last["a"])
    ev["patient"] = b_id
    ev["admitted"] = admitted
    ev["patient_waited"] = True


async def _media(call: Call, ev: dict[str, Any], codec: str | None) -> None:
    a_id, b_id = me(call.last["a"]), me(call.last["b"])
    got: dict[str, Any] = {}
    for side, frm in (("a", b_id), ("b", a_id)):
        got[f"{side}-video"] = await check_rising(call, side, frm, "camera", 10, ev, 40)
        got[f"{side}-audio"] = await check_rising(call, side, frm, "microphone", 20, ev)
    codecs = {}
    for side in ("a", "b"):
        v = got[f"{side}-video"]
        mime = ((v.get("codec") or {}).get("mimeType") or "").split("/")[-1].upper()
        codecs[side] = {
            "video": mime,
            "audio": ((got[f"{side}-audio"].get("codec") or {}).get("mimeType")),
        }
        if side == "a" or call.b.is_browser:
            if not v.get("width") or not v.get("height"):
                raise Failed(f"{side}: no decoded resolution in getStats: {brief(v)}")
        if codec and mime != codec:
            raise Failed(f"{side} receives video as {mime or '?'}, expected {codec}")
    ev["codecs"] = codecs
    ev["candidate_pair"] = {s: call.last[s].get("candidatePair") for s in ("a", "b")}
    await shoot(call, "a", got["a-video"], ev, "a: remote camera")
    await shoot(call, "b", got["b-video"], ev, "b: remote camera")


async def media(call: Call, ev: dict[str, Any]) -> None:
    """Audio and video both ways: packets and decoded frames rising, resolution, VP8."""
    await _media(call, ev, "VP8")


async def chat_data(call: Call, ev: dict[str, Any]) -> None:
    """Chat over the socket and over the `consult` data channel, both ways, once each."""
    tag = secrets.token_hex(3)
    texts = [f"ws a {tag}", f"dc a {tag}", f"ws b {tag}", f"dc b {tag}"]

    async def dc_open() -> bool:
        states = [(await call.st(s)).get("dataChannel") for s in ("a", "b")]
        return states == ["open", "open"]

    await until(call, "the data channel to open on both sides", dc_open)
    await call.a.chat(texts[0])
    await call.a.send_data(texts[1])
    await call.b.chat(texts[2])
    await call.b.send_data(texts[3])

    async def all_there() -> bool:
        for s in ("a", "b"):
            got = [m.get("text") for m in (await call.st(s)).get("chat", [])]
            if not all(t in got for t in texts):
                return False
        return True

    await until(call, "the four chat messages on both sides", all_there)
    for s in ("a", "b"):
        got = [m.get("text") for m in call.last[s].get("chat", [])]
        dup = [t for t in texts if got.count(t) != 1]
        if dup:
            raise Failed(f"{s}: messages not exactly once: {dup}")
    ev["messages"] = texts


DARK = 40  # mean brightness (0-255) under which a picture counts as black


async def _muted(call: Call, side: str, participant: str | None, source: str) -> dict[str, Any]:
    """Wait until the track shows it is muted: its counter stays the same across a 1.5 s
    window (nothing sent), or its picture is black / its audio energy stays flat (a browser
    that sends black frames or silence instead). Returns what was seen."""
    prev: dict[str, Any] = {}

    async def muted() -> bool:
        r = remote(await call.st(side), participant, source) or {}
        if r.get("kind") == "video" and r.get("brightness") is not None and r["brightness"] < DARK:
            prev.update(r, how="black picture")
            return True
        if prev and counter(r) == counter(prev):
            prev.update(r, how="nothing received")
            return True
        energy, old = r.get("audioEnergy"), prev.get("audioEnergy")
        if prev and energy is not None and old is not None and energy - old < 1e-7:
            prev.update(r, how="silence")
            return True
        prev.clear()
        prev.update(r)
        await asyncio.sleep(1.5)
        return False

    await until(call, f"{source} of {participant} to be muted at {side}", muted)
    return {"how": prev.get("how"), **(brief(prev) or {})}


async def _unmuted(call: Call, ev: dict[str, Any], participant: str | None) -> None:
    await check_rising(call, "b", participant, "camera", 10, ev)
    await check_rising(call, "b", participant, "microphone", 20, ev)

    async def bright() -> bool:
        r = remote(await call.st("b"), participant, "camera") or {}
        return r.get("brightness") is None or r["brightness"] >= DARK

    await until(call, "the picture to come back", bright)


async def mute(call: Call, ev: dict[str, Any]) -> None:
    """The doctor mutes camera and microphone (track.enabled = false): the patient sees a black
    picture (or no frames) and hears silence (or no packets); unmuted, both come back."""
    assert isinstance(call.a, BrowserPeer)
    a_id = me(call.last["a"])
    await call.a.set_muted("camera", True)
    await call.a.set_muted("microphone", True)
    ev["muted"] = {
        "camera": await _muted(call, "b", a_id, "camera"),
        "microphone": await _muted(call, "b", a_id, "microphone"),
    }
    await call.a.set_muted("camera", False)
    await call.a.set_muted("microphone", False)
    await _unmuted(call, ev, a_id)


async def exam_camera(call: Call, ev: dict[str, Any]) -> None:
    """A second video track (exam camera) added mid-call: renegotiated, received, decoded."""
    assert isinstance(call.a, BrowserPeer)
    a_id = me(call.last["a"])
    await call.a.add_exam_camera()
    r = await check_rising(call, "b", a_id, "exam-camera", 10, ev, 40)
    await check_rising(call, "b", a_id, "camera", 10, ev)
    pubs = [p.get("source") for p in (await call.st("a")).get("publications", [])]
    if "exam-camera" not in pubs:
        raise Failed(f"the doctor's publications lack exam-camera: {pubs}")
    ev["publications"] = pubs
    await shoot(call, "b", r, ev, "b: remote exam camera")


async def ice_restart(call: Call, ev: dict[str, Any]) -> None:
    """restartIce() on the doctor's connection, twice: new ICE credentials and node candidates,
    media flows on over the new session."""
    rounds: list[dict[str, Any]] = []
    for _ in range(2):  # a second restart works like the first
        round_ev: dict[str, Any] = {}
        await _restart_ice_once(call, round_ev)
        rounds.append(round_ev)
    ev.update(rounds[-1])
    ev["restarts"] = [
        {k: r.get(k) for k in ("ufrag", "server_ufrag", "server_candidate")} for r in rounds
    ]


async def _restart_ice_once(call: Call, ev: dict[str, Any]) -> None:
    assert isinstance(call.a, BrowserPeer)
    s0 = await call.st("a")
    ufrag0, n_events = s0.get("ufrag"), len(s0.get("events", []))
    remote0 = s0.get("remoteUfrag")
    errors0 = sum(1 for e in s0.get("events", []) if e.get("type") == "error")
    await call.a.restart_ice()

    async def restarted() -> bool:
        s = await call.st("a")
        errs = [e for e in s.get("events", []) if e.get("type") == "error"]
        if len(errs) > errors0:
            raise Failed(f"the doctor's client reported {errs[-1]} after restartIce()")
        return (
            s.get("ufrag") not in (None, ufrag0)
            and s.get("signaling") == "stable"
            and s.get("connection") == "connected"
        )

    await until(call, "new ICE credentials, stable and connected", restarted)
    after = call.last["a"]
    ev["ufrag"] = {"before": ufrag0, "after": after.get("ufrag")}
    ev["server_ufrag"] = {"before": remote0, "after": after.get("remoteUfrag")}
    if after.get("remoteUfrag") in (None, remote0):
        # RFC 8445 9: an ICE restart answer carries new credentials. Same ones: the node kept
        # its old ICE session (media may flow on the old pair, but nothing was restarted).
        raise Failed(f"the node answered the ICE restart with its old credentials ({remote0})")
    ev["events"] = call.last["a"].get("events", [])[n_events - 1 :][-10:]
    a_id, b_id = me(call.last["a"]), me(call.last["b"])
    await check_rising(call, "b", a_id, "camera", 10, ev)
    await check_rising(call, "a", b_id, "camera", 10, ev)
    # The media runs on the new session: the doctor's selected pair ends at one of the
    # node's new sockets (a restart's answer brings new candidates; the old ones are closed).
    pair0 = (s0.get("candidatePair") or {}).get("remote")

    async def moved() -> bool:
        pair = ((await call.st("a")).get("candidatePair") or {}).get("remote")
        return pair is not None and pair != pair0

    await until(call, f"the doctor's selected candidate pair to leave {pair0}", moved)
    ev["server_candidate"] = {
        "before": pair0,
        "after": (call.last["a"].get("candidatePair") or {}).get("remote"),
    }
    await check_rising(call, "b", a_id, "camera", 10, ev)


async def reload(call: Call, ev: dict[str, Any]) -> None:
    """The doctor's page reloads: it rejoins, the chat is replayed, media flows again."""
    assert isinstance(call.a, BrowserPeer)
    text = f"before reload {secrets.token_hex(3)}"
    await call.a.chat(text)
    old = me(await call.st("a"))
    await call.a.reload()

    async def back() -> bool:
        s = await call.st("a")
        return s.get("state") == "admitted" and me(s) is not None

    await until(call, "the reloaded page to be admitted", back, 40)
    new = me(call.last["a"])
    b_id = me(call.last["b"])

    async def replayed() -> bool:
        return text in [m.get("text") for m in (await call.st("a")).get("chat", [])]

    await until(call, "the chat history replayed after the reload", replayed)
    got = [m.get("text") for m in call.last["a"].get("chat", [])]
    if got.count(text) != 1:
        raise Failed(f"chat replayed {got.count(text)} times")
    r = await check_rising(call, "a", b_id, "camera", 10, ev, 45)
    await check_rising(call, "b", new, "camera", 10, ev, 45)
    await check_rising(call, "b", new, "microphone", 20, ev)
    left = [e for e in call.last["b"].get("events", []) if e.get("type") == "participant-left"]
    ev["participant"] = {"before": old, "after": new, "b_saw_left": left[-2:]}
    await shoot(call, "a", r, ev, "a: remote camera after reload")


async def leave(call: Call, ev: dict[str, Any]) -> None:
    """The patient leaves: the doctor sees participant-left and the patient's tracks end."""
    b_id = me(call.last["b"])
    await call.b.leave()

    async def gone() -> bool:
        s = await call.st("a")
        left = [
            e
            for e in s.get("events", [])
            if e.get("type") == "participant-left" and e.get("participant") == b_id
        ]
        tracks = [r for r in s.get("remote", []) if r.get("participant") == b_id]
        return bool(left) and not tracks

    await until(call, "participant-left and the patient's tracks ended at the doctor", gone)

    async def b_left() -> bool:
        return (await call.st("b")).get("state") == "left"

    await until(call, "the patient's client to be left", b_left)
    ev["doctor_saw"] = [
        e
        for e in call.last["a"].get("events", [])
        if e.get("type") in ("participant-left", "track-ended")
    ][-4:]


async def end(call: Call, ev: dict[str, Any]) -> None:
    """The doctor ends the consultation: both clients end with reason `ended`."""
    await call.a.end()

    async def ended() -> bool:
        sa, sb = await call.st("a"), await call.st("b")
        return sa.get("state") == "ended" and sb.get("state") == "ended"

    await until(call, "both clients to end", ended)
    ev["close"] = {
        s: {"state": call.last[s].get("state"), "reason": call.last[s].get("closeReason")}
        for s in ("a", "b")
    }
    if call.last["b"].get("closeReason") != "ended":
        raise Failed(f"patient closed with {call.last['b'].get('closeReason')!r}, not 'ended'")


def _sdp_codecs(s: dict[str, Any]) -> list[str]:
    codecs = s.get("sdpVideoCodecs")
    return list(codecs) if isinstance(codecs, list) else list(s.get("videoCodecs") or [])


async def _codec(call: Call, ev: dict[str, Any], late: bool) -> None:
    await join_admit(call, {}, a_publish=late)
    if not late:
        assert isinstance(call.a, BrowserPeer)
        await call.a.publish_av()
    sa, sb = await call.st("a"), await call.st("b")
    # H264 only where both browsers put it in their SDP: what getCapabilities() lists
    # (declared at join) may be more (Firefox 140 without its OpenH264 plugin).
    both = all("video/H264" in _sdp_codecs(s) for s in (sa, sb))
    expected = "H264" if both else "VP8"
    ev["declared"] = {"a": sa.get("videoCodecs"), "b": sb.get("videoCodecs")}
    ev["in_sdp"] = {"a": _sdp_codecs(sa), "b": _sdp_codecs(sb)}
    ev["expected"] = expected
    await _media(call, ev, expected)


async def codec(call: Call, ev: dict[str, Any]) -> None:
    """A room that asks for H264, both admitted before publishing: H264 if both decode it, else
    both settle on VP8."""
    await _codec(call, ev, late=False)


async def codec_late(call: Call, ev: dict[str, Any]) -> None:
    """As `codec`, but the doctor already publishes (H264 if it can) when the patient is
    admitted: the patient must still get video in a codec it decodes."""
    await _codec(call, ev, late=True)


@dataclass(frozen=True)
class Scenario:
    name: str
    fn: Callable[[Call, dict[str, Any]], Awaitable[None]]
    kind: str = "main"  # main: chained on one call; fresh: its own call
    core: bool = True  # in the reduced (CI) matrix
    room: dict[str, Any] = field(default_factory=dict)  # options of a fresh call's room
    setup_join: bool = True  # the call is joined and admitted before the scenario
    setup_media: bool = True  # a fresh call checks media flows before the scenario
    limit_s: float = 150.0

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip()


H264_ROOM = {"video_codec": "H264"}
SCENARIOS = [
    Scenario("join-admit", join_admit),
    Scenario("media", media),
    Scenario("chat-data", chat_data),
    Scenario("mute", mute),
    # Not core until the fallback stops misreading Firefox's low REMB on loopback when a
    # second video starts (docs/compat.md, known results): --full runs it.
    Scenario("exam-camera", exam_camera),
    Scenario("ice-restart", ice_restart),
    Scenario("reload", reload),
    Scenario("leave", leave),
    Scenario("codec", codec, kind="fresh", room=H264_ROOM, setup_join=False, setup_media=False),
    Scenario(
        "codec-late", codec_late, kind="fresh", room=H264_ROOM, setup_join=False, setup_media=False
    ),
    Scenario("end", end, kind="fresh"),
]
BY_NAME = {s.name: s for s in SCENARIOS}
