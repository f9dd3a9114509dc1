"""Negotiator: a participant's peer connection and its SDP exchanges.

It owns the `RTCPeerConnection` (a `ServerPeerConnection`, max-bundle, one transport) and its
data channel, answers client offers, sends server offers (the server is the impolite peer: one
task, at most one offer in flight, changes made meanwhile folded into the next one), keeps the
transceivers' bookkeeping (requested recvonly m-lines, sendonly m-lines and their recycling),
replaces the peer connection on a reconnection, and switches a video publication's codec
(codec-late). The SDP checks and rewrites it applies are the functions below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiortc import (
    RTCDataChannel,
    RTCRtpCodecParameters,
    RTCRtpTransceiver,
    RTCSessionDescription,
)

from .codecs import capabilities, codec_info, subscription_capabilities
from .devices import apply_opus_fmtp, mid_order
from .events import CloseReason, TrackMeta
from .forwarder import Continuation
from .rtc import sdp as rtc_sdp
from .rtc.bundle import declared, drop_rejected_from_bundle, harmonize
from .rtc.tap import (
    ServerPeerConnection,
    mline_index,
    negotiated_codecs,
    receive_parameters,
    recycle_sender,
    set_codec_preferences,
)

if TYPE_CHECKING:
    from aiortc.rtcrtpparameters import RTCRtpReceiveParameters, RTCRtpSendParameters

    from .participant import Participant
    from .publication import Publication
    from .subscription import Subscription

logger = logging.getLogger(__name__)


class NegotiationError(ValueError):
    """A broken SDP, or an answer with no offer pending. The participant stays usable."""


def add_opus_fmtp(sdp: str) -> str:
    """Speech Opus fmtp on every audio m-line (per-source parameters: devices.apply_opus_fmtp)."""
    return apply_opus_fmtp(sdp, {})


def validate_sdp(text: str) -> None:
    """Refuse what aiortc would accept but cannot use (it takes "v=0" alone as a session)."""
    if not text.startswith("v=0"):
        raise NegotiationError("not an SDP (must start with v=0)")
    try:
        description = rtc_sdp.parse(text)
    except Exception as exc:
        raise NegotiationError(f"unparsable SDP: {exc}") from exc
    if not description.media:
        raise NegotiationError("SDP has no media section")
    for media in description.media:
        if media.kind not in ("audio", "video", "application"):
            raise NegotiationError(f"unsupported media kind {media.kind!r}")
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise NegotiationError("ICE username fragment or password is missing")
        if media.dtls is None or not media.dtls.fingerprints:
            raise NegotiationError("DTLS fingerprint is missing")


def offered_video_codecs(text: str) -> frozenset[str] | None:
    """The codec names (upper case) of an SDP's video m-lines that are not rejected (port 0
    without a=bundle-only), or None when it has none: it tells nothing about video then."""
    names: set[str] = set()
    seen = False
    for section in text.replace("\r\n", "\n").split("\nm=")[1:]:
        lines = section.split("\n")
        head = lines[0].split()
        if head[:1] != ["video"] or (head[1:2] == ["0"] and "a=bundle-only" not in lines):
            continue
        seen = True
        for line in lines:
            if line.startswith("a=rtpmap:") and " " in line:
                names.add(line.split(" ", 1)[1].split("/")[0].strip().upper())
    return frozenset(names) if seen else None


def strip_mdns_candidates(text: str) -> str:
    """Drop candidates named by mDNS (`<uuid>.local`).

    Only the browser's own LAN can resolve them, and resolving means multicasting queries out
    of the server; the browser's connectivity checks reach us anyway (peer-reflexive).
    """
    return "\r\n".join(
        line
        for line in text.split("\r\n")
        if not (line.startswith("a=candidate:") and ".local " in line)
    )


@dataclass(slots=True)
class SenderSlot:
    """A sendonly transceiver of ours: what codec it was set up for, and where its sender's
    numbering stopped when its last subscription closed (the next one continues there)."""

    codecs: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]
    resume: Continuation | None = None


def codec_fit(codecs: list[Any]) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
    """What a transceiver's codec preferences must equal for a subscription to reuse it."""
    return tuple((c.mimeType.lower(), tuple(sorted(c.parameters.items()))) for c in codecs)


class Negotiator:
    """The peer connection of one participant (`participant`, its parent) and everything that
    negotiates it. `pc` and `channel` are replaced by `restart()`."""

    def __init__(self, participant: Participant) -> None:
        self._participant = participant
        self.pc: ServerPeerConnection
        self.channel: RTCDataChannel
        # Tracks the client will publish on m-lines we offer (`request_publish`), and what the
        # client said of the m-lines of its own offer (by mid).
        self.requested: dict[RTCRtpTransceiver, TrackMeta] = {}
        self.track_meta: dict[str, TrackMeta] = {}
        # Every sendonly transceiver of this peer connection; a free one (inactive, no
        # subscription) is recycled by the next subscription of its kind and codec.
        self.senders: dict[RTCRtpTransceiver, SenderSlot] = {}
        self.sub_by_transceiver: dict[RTCRtpTransceiver, Subscription] = {}
        # Publications offered again on a replaced connection (reconnection): same identity.
        self.rebind: dict[RTCRtpTransceiver, Publication] = {}
        self.restarted_at = 0.0
        self._codec_switch: dict[RTCRtpTransceiver, Publication] = {}  # codec-late (issue 3)
        self._codec_switch_to: dict[RTCRtpTransceiver, str] = {}  # applied at our next offer
        self._sdp_lock = asyncio.Lock()
        self._needs_offer = False
        self.answered = asyncio.Event()  # our last offer was answered (or there is none)
        self._transport_settled = asyncio.Event()  # not `connecting` (any more): offers may go
        self.task: asyncio.Task[None] | None = None  # the server offers' task
        self._connect()

    def _connect(self) -> None:
        participant = self._participant
        self.pc = ServerPeerConnection(hooks=participant, ports=participant.room.node.ports)
        self.channel = self.pc.createDataChannel("consult", negotiated=True, id=0)
        self.channel.on("message", participant._on_channel_message)
        self.pc.on("connectionstatechange", self._on_connection_state)

    def _on_connection_state(self) -> None:
        if not self._still_connecting():
            self._transport_settled.set()  # a held offer goes (_negotiate)
        self._participant._on_connection_state()

    def check_open(self) -> None:
        if self._participant.closed:
            raise NegotiationError("participant is closed")

    # -- client offers and answers -------------------------------------------------------------

    async def handle_offer(self, sdp: str, tracks: dict[str, TrackMeta]) -> str | None:
        """Answer a client offer; None when it crossed a server offer (glare)."""
        self.check_open()
        pc = self.pc
        async with self._sdp_lock:
            if pc.signalingState != "stable":
                return None
            validate_sdp(sdp)
            if (offered := offered_video_codecs(sdp)) is not None:
                # before aiortc applies the offer: its new m-lines get the room's codec
                participant = self._participant
                participant._cannot_decode(participant.video_codecs - offered)
            self.track_meta.update(tracks)
            try:
                await pc.setRemoteDescription(
                    RTCSessionDescription(sdp=strip_mdns_candidates(sdp), type="offer")
                )
                answer = await pc.createAnswer()
                text = apply_opus_fmtp(  # devices: fmtp per track source
                    drop_rejected_from_bundle(answer.sdp, sdp), self._mid_sources(tracks)
                )
                await pc.setLocalDescription(RTCSessionDescription(sdp=text, type="answer"))
            except Exception as exc:
                raise NegotiationError(f"cannot apply offer: {exc}") from exc
            result = pc.localDescription.sdp
        if self._needs_offer:
            self._kick()
        return result

    async def handle_answer(self, sdp: str) -> None:
        self.check_open()
        async with self._sdp_lock:
            if self.pc.signalingState != "have-local-offer":
                raise NegotiationError("no offer pending")
            validate_sdp(sdp)
            try:
                await self.pc.setRemoteDescription(
                    RTCSessionDescription(sdp=strip_mdns_candidates(sdp), type="answer")
                )
            except Exception as exc:
                raise NegotiationError(f"cannot apply answer: {exc}") from exc
        self.answered.set()
        if self._codec_switch:
            await self._apply_codec_switches()  # codec-late (issue 3)

    def pending_offer(self) -> tuple[str, dict[str, dict[str, Any]]] | None:
        """The server offer still waiting for an answer (to re-send after a resume)."""
        local = self.pc.localDescription  # None while aiortc is still setting it
        closed = self._participant.closed
        if closed or self.pc.signalingState != "have-local-offer" or local is None:
            return None
        return local.sdp, self.offer_tracks()

    async def add_ice_candidate(self, candidate: str | None, sdp_mid: str | None) -> None:
        self.check_open()
        if not candidate:
            return  # end of candidates: nothing to do for aioice here
        if ".local " in candidate:
            return  # mDNS name: see strip_mdns_candidates
        try:
            parsed = rtc_sdp.parse_candidate(candidate.removeprefix("candidate:"))
            parsed.sdpMid = sdp_mid
            parsed.sdpMLineIndex = 0 if sdp_mid is None else None
            if sdp_mid is None:
                parsed.sdpMid = self._first_mid()
            await self.pc.addIceCandidate(parsed)
        except Exception as exc:
            raise NegotiationError(f"bad candidate: {exc}") from exc

    def _first_mid(self) -> str | None:
        for t in self.pc.getTransceivers():
            if t.mid is not None:
                return str(t.mid)
        return None

    # -- transceivers ----------------------------------------------------------------------------

    def request_publish(self, tracks: list[TrackMeta]) -> None:
        """Offer recvonly m-lines for tracks the client will attach in its answer."""
        self.check_open()
        for meta in tracks:
            if meta.kind not in ("audio", "video"):
                raise ValueError("kind must be audio or video")
            transceiver = self.pc.addTransceiver(meta.kind, direction="recvonly")
            self.requested[transceiver] = meta
        self.schedule_offer()

    def publication_meta(self, transceiver: RTCRtpTransceiver, mid: str) -> TrackMeta:
        """What the client said of the track a receiver just started for (taken once)."""
        return (
            self.track_meta.pop(mid, None)
            or self.requested.pop(transceiver, None)
            or TrackMeta.default(transceiver.kind)
        )

    def rebound(self, transceiver: RTCRtpTransceiver) -> tuple[Publication, float] | None:
        """The publication a receiver on a replaced connection starts again for, and the
        seconds since the replacement (None: a new publication)."""
        pub = self.rebind.pop(transceiver, None)
        if pub is None or pub.closed:
            return None
        self.requested.pop(transceiver, None)
        return pub, time.monotonic() - self.restarted_at

    def add_sender(self, sub: Subscription) -> None:
        """The sendonly transceiver that carries a subscription (offered with the next offer).

        A free one of the same kind and codec is recycled (its mid, sender and SSRC stay; the
        numbering continues: `SenderSlot.resume`), else one is added: the peer connection
        holds no more senders than it ever carried subscriptions at once."""
        codec = sub.publication.codec
        codecs = subscription_capabilities(codec, sub.kind)  # and VP8 after H264
        fit = codec_fit(codecs)
        transceiver = self._free_sender(sub.kind, fit)
        if transceiver is not None:
            recycle_sender(transceiver, codecs)
        else:
            transceiver = self.pc.addTransceiver(sub.kind, direction="sendonly")
            set_codec_preferences(transceiver, codecs)
            self.senders[transceiver] = SenderSlot(fit)
        self.sub_by_transceiver[transceiver] = sub

    def _free_sender(self, kind: str, fit: tuple[Any, ...]) -> RTCRtpTransceiver | None:
        """The first (lowest m-line) inactive sender of this kind and codec with no subscription."""
        carrying = self.sub_by_transceiver
        for transceiver, slot in self.senders.items():
            if (
                transceiver.kind == kind
                and slot.codecs == fit
                and transceiver.direction == "inactive"
                and transceiver not in carrying
            ):
                return transceiver
        return None

    def resume_of(self, transceiver: RTCRtpTransceiver) -> Continuation | None:
        """Where the numbering of this sender's last subscription stopped (a recycled m-line)."""
        slot = self.senders.get(transceiver)
        return slot.resume if slot is not None else None

    def release_sender(self, sub: Subscription) -> None:
        """A subscription closed: its m-line goes inactive in our next offer (free for the
        next subscription of its kind and codec)."""
        transceiver = next((t for t, s in self.sub_by_transceiver.items() if s is sub), None)
        if transceiver is None:
            return
        self.sub_by_transceiver.pop(transceiver, None)
        slot = self.senders.get(transceiver)
        if slot is not None and sub.forwarder is not None:  # it sent (or was set to): go on
            slot.resume = sub.forwarder.continuation(time.monotonic())
        if not self._participant.closed:
            transceiver.direction = "inactive"
            self.schedule_offer()

    def declared(
        self, parameters: RTCRtpReceiveParameters | RTCRtpSendParameters
    ) -> tuple[list[RTCRtpCodecParameters], dict[str, int]]:
        """Payload types and extension ids as our SDP declared them (bundle.declared)."""
        aiortc_ext = {h.uri: h.id for h in parameters.headerExtensions}
        local = self.pc.localDescription
        if local is None:
            return parameters.codecs, aiortc_ext
        codecs, ext = declared(local.sdp, str(parameters.muxId), parameters.codecs)
        return codecs, ext or aiortc_ext

    # -- server offers ---------------------------------------------------------------------------

    def schedule_offer(self) -> None:
        self._needs_offer = True
        self._kick()

    def _kick(self) -> None:
        if not self._participant.closed and (self.task is None or self.task.done()):
            self.task = asyncio.get_running_loop().create_task(self._negotiate())

    async def _negotiate(self) -> None:
        """Send server offers while one is needed, one at a time, each after the previous
        exchange completed.

        Not stable means an exchange is still pending (our offer awaits its answer) or the
        peer connection is closed (a reconnect replaces it and kicks a new task): the task
        waits or ends, it never loops without awaiting (which froze the whole node). A failure
        is logged, not lost with the task.
        """
        try:
            while self._needs_offer and not self._participant.closed:
                self._transport_settled.clear()
                if self._still_connecting():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._transport_settled.wait(),
                            self._participant.room.node.config.offer_hold_s,
                        )
                    if self._participant.closed:
                        return
                async with self._sdp_lock:
                    state = self.pc.signalingState
                    if state == "closed":
                        return  # restart() offers on the new connection
                    self.answered.clear()
                    if state == "stable":
                        self._needs_offer = False
                        await self._send_offer()
                await self.answered.wait()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("server offer failed for participant %s", self._participant.id)

    def _still_connecting(self) -> bool:
        """An exchange completed and the transport is still being set up (`connecting`).

        Our offers wait until it is up (or failed, or replaced), as consult.js's do, for at
        most `offer_hold_s`: a Firefox page that answered a renegotiation in the milliseconds
        after its first exchange, while its ICE/DTLS transport was connecting, never left
        `connecting` (compat `codec` cells; docs/compat.md). The first offer (no exchange
        yet) goes at once; one that waited its time goes anyway (a transport slow to connect
        must not keep a subscription from being offered).
        """
        return self.pc.has_remote_description and self.pc.connectionState in (
            "new",
            "connecting",
        )

    async def _send_offer(self) -> None:
        pc = self.pc
        self._prefer_switched_codecs()  # codec-late (issue 3)
        offer = await pc.createOffer()
        established = [d.sdp for d in (pc.remoteDescription, pc.localDescription) if d is not None]
        text = apply_opus_fmtp(  # devices: fmtp per track source
            harmonize(offer.sdp, established), self._mid_sources({}, offer.sdp)
        )
        await pc.setLocalDescription(RTCSessionDescription(sdp=text, type="offer"))
        self._participant.emit("offer", pc.localDescription.sdp, self.offer_tracks())

    def offer_tracks(self) -> dict[str, dict[str, Any]]:
        """mid -> what it carries, for the client (direction as in the server's SDP)."""
        tracks: dict[str, dict[str, Any]] = {}
        for t in self.pc.getTransceivers():
            if t.mid is None:
                continue
            sub = self.sub_by_transceiver.get(t)
            if sub is not None and not sub.closed:
                pub = sub.publication
                tracks[t.mid] = {
                    "participant": pub.participant_id,
                    "track": pub.track_id,
                    "kind": pub.kind,
                    "source": pub.source,
                    "direction": "sendonly",
                }
                if pub.warnings:  # devices: e.g. a stethoscope with speech processing on
                    tracks[t.mid]["warnings"] = list(pub.warnings)
            meta = self.requested.get(t)
            if meta is not None:
                tracks[t.mid] = {"kind": meta.kind, "source": meta.source, "direction": "recvonly"}
        return tracks

    def _mid_sources(
        self, offered: dict[str, TrackMeta], offer: str = ""
    ) -> dict[str, tuple[str, int]]:
        """devices: mid -> (source, channels) of each m-line, for its Opus fmtp. New
        transceivers get their mid at setLocalDescription, so their m-line in `offer` (the SDP
        being made) names it."""
        mids = mid_order(offer)

        def mid_of(t: RTCRtpTransceiver) -> str | None:
            index = mline_index(t)
            if t.mid is None and index is not None and index < len(mids):
                return mids[index]
            return None if t.mid is None else str(t.mid)

        publications = self._participant.publications.values()
        sources = {p.mid: (p.source, p.channels) for p in publications}
        for transceiver, meta in self.requested.items():
            if (mid := mid_of(transceiver)) is not None:
                sources[mid] = (meta.source, meta.channels)
        for transceiver, sub in self.sub_by_transceiver.items():
            if (mid := mid_of(transceiver)) is not None:
                sources[mid] = (sub.publication.source, sub.publication.channels)
        sources.update({mid: (m.source, m.channels) for mid, m in offered.items()})
        return sources

    # -- reconnection (issue 5) and close --------------------------------------------------------

    async def restart(self) -> None:
        """Replace the peer connection (the client starts a fresh one; aiortc does no ICE
        restart of its own, so ICE, DTLS and SCTP are all new), then offer on the new one:
        recvonly m-lines for what the participant published (`rebind`: the same publications)
        and for requested tracks that never started, sendonly for its subscriptions."""
        self.check_open()
        participant = self._participant
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        async with self._sdp_lock:
            old = self.pc
            old.remove_all_listeners()
            self.channel.remove_all_listeners()
            participant._transport_replaced()
            self.restarted_at = time.monotonic()
            self._connect()
            self.sub_by_transceiver.clear()
            self.senders.clear()  # the old connection's senders (and their SSRCs) are gone
            for sub in list(participant.subscriptions.values()):  # those made while closed too
                sub.transport_lost()
                self.add_sender(sub)
            # Tracks that never started (the old connection never connected: no publication
            # yet) are requested again on the new one: those asked for with `publish`, and
            # those the client offered itself (a browser's sendonly m-lines, which its fresh
            # connection attaches to our recvonly ones by source).
            started = {pub.mid for pub in participant.publications.values()}
            unstarted = [
                meta
                for t, meta in self.requested.items()
                if t not in self.rebind and t.mid not in started
            ]
            receiving = {
                str(t.mid)
                for t in old.getTransceivers()
                if t.mid is not None and t.currentDirection in ("recvonly", "sendrecv")
            }
            unstarted += [
                meta
                for mid, meta in self.track_meta.items()
                if mid in receiving and mid not in started
            ]
            self.requested.clear()
            self.track_meta.clear()
            self.rebind.clear()
            for pub in participant.publications.values():
                transceiver = self.pc.addTransceiver(pub.kind, direction="recvonly")
                self.requested[transceiver] = TrackMeta(
                    kind=pub.kind, source=pub.source, channels=pub.channels, capture=pub.capture
                )
                self.rebind[transceiver] = pub
            for meta in unstarted:
                self.requested[self.pc.addTransceiver(meta.kind, direction="recvonly")] = meta
            self.answered.set()
            self._needs_offer = True
        self.task = None
        self._on_connection_state()  # a fresh connection: "new" (the control plane's timers)
        self._kick()
        try:
            await old.close()
        except Exception:
            logger.exception("closing the replaced peer connection failed")

    async def close_connection(self) -> None:
        """Close the peer connection alone; a `restart()` replaces it."""
        self.check_open()
        async with self._sdp_lock:
            await self.pc.close()

    async def stop(self) -> None:
        """Cancel the server offers' task (the participant closes)."""
        task, self.task = self.task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    # -- room codec switch (issue 3, codec-late) ---------------------------------------------

    def switch_video_codec(self, pub: Publication, mime_type: str) -> bool:
        """Renegotiate a video publication to `mime_type`: a server offer with only that codec
        on its m-line; once answered, the publication is replaced (`_apply_codec_switches`)."""
        transceiver = next((t for t in self.pc.getTransceivers() if t.mid == pub.mid), None)
        if transceiver is None:
            return False
        if self._codec_switch.get(transceiver) is pub:
            return True  # already under way
        # The preference changes when our next offer is made, not now: an offer of ours still
        # unanswered carries the old codec, and aiortc checks its answer against the
        # transceiver's preferences (changed now, that answer would fail).
        self._codec_switch_to[transceiver] = mime_type
        self._codec_switch[transceiver] = pub
        logger.info(
            "participant %s: video %s -> %s", self._participant.id, pub.codec.name, mime_type
        )
        self.schedule_offer()
        return True

    def _prefer_switched_codecs(self) -> None:
        for transceiver, mime_type in self._codec_switch_to.items():
            set_codec_preferences(transceiver, capabilities("video", mime_type))
        self._codec_switch_to.clear()

    async def _apply_codec_switches(self) -> None:
        """An answer gave a switched m-line its new codec: the publication on it closes and a
        new one (a new track id, the same source) starts on the same mid and SSRCs."""
        local = self.pc.localDescription
        if local is None or self.pc.signalingState != "stable":
            return
        for transceiver, pub in list(self._codec_switch.items()):
            mid = pub.mid
            negotiated = negotiated_codecs(transceiver)
            if pub.closed or transceiver.mid != mid or not negotiated:
                self._codec_switch.pop(transceiver, None)
                continue
            codecs, _ = declared(local.sdp, mid, negotiated)
            codec = codec_info(codecs)
            if codec.mime_type.lower() == pub.codec.mime_type.lower():
                continue  # not this answer's m-line yet
            self._codec_switch.pop(transceiver, None)
            meta = TrackMeta(
                kind=pub.kind, source=pub.source, channels=pub.channels, capture=pub.capture
            )
            ssrc, rtx_ssrc = pub.ssrc, pub.rtx_ssrc
            await pub.close(CloseReason.LEFT)
            self.track_meta[mid] = meta
            self._participant.receiver_started(
                transceiver,
                receive_parameters(
                    transceiver,
                    codecs,
                    ssrc=ssrc,
                    payload_type=codec.payload_type,
                    rtx_ssrc=rtx_ssrc,
                ),
            )
