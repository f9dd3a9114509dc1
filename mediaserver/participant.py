"""Participant: one peer's media session (one RTCPeerConnection, max-bundle, one transport).

It owns its publications (what it sends) and subscriptions (what it receives), demultiplexes
its RTP by SSRC and its RTCP by type, writes its reports every interval, and drives
server-side renegotiation (the server is the impolite peer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiortc import RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpDecodingParameters,
    RTCRtpReceiveParameters,
    RTCRtpRtxParameters,
    RTCRtpSendParameters,
)
from aiortc.rtcrtptransceiver import RTCRtpTransceiver
from aiortc.sdp import candidate_from_sdp

from .codecs import capabilities, codec_info, subscription_capabilities
from .devices import SPEECH_OPUS_FMTP, apply_opus_fmtp, capture_warnings, mid_order
from .emitter import Emitter
from .events import CloseReason, LinkStats, Role, TrackMeta
from .fallback import LinkFallback
from .forwarder import Continuation, ExtensionIds
from .publication import Publication, extension_value
from .rtp import rtcp
from .rtp.bundle import declared, drop_rejected_from_bundle, harmonize
from .rtp.tap import (
    MediaTransport,
    ServerPeerConnection,
    TapHooks,
    recycle_sender,
    sender_ssrcs,
    set_codec_preferences,
)
from .subscription import Subscription

if TYPE_CHECKING:
    from .room import Room

logger = logging.getLogger(__name__)

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
OPUS_FMTP = SPEECH_OPUS_FMTP


@dataclass(slots=True)
class SenderSlot:
    """A sendonly transceiver of ours: what codec it was set up for, and where its sender's
    numbering stopped when its last subscription closed (the next one continues there)."""

    codecs: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]
    resume: Continuation | None = None


def codec_fit(codecs: list[Any]) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
    """What a transceiver's codec preferences must equal for a subscription to reuse it."""
    return tuple((c.mimeType.lower(), tuple(sorted(c.parameters.items()))) for c in codecs)


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
        description = aiortc_sdp.SessionDescription.parse(text)
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


class Participant(Emitter, TapHooks):
    """Events: "offer" (sdp, tracks), "data" (text), "publication" (Publication),
    "connectionstatechange" (state), "codecs" (the video codecs it can negotiate), "mode"
    (direction, mode, reason), "pause" (sources, reason), "close" (reason)."""

    def __init__(
        self, participant_id: str, *, role: Role, room: Room, video_codecs: frozenset[str]
    ) -> None:
        super().__init__()
        self.id = participant_id
        self.role = role
        self.room = room
        self.video_codecs = frozenset(c.upper() for c in video_codecs)
        node = room.node
        self._config = node.config
        self._counters = node.counters
        self.publications: dict[str, Publication] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.transport: MediaTransport | None = None
        self.rtcp_ssrc = random.randrange(1, 1 << 32)
        self.cname = secrets.token_hex(8)
        self._pub_by_ssrc: dict[int, Publication] = {}
        self._rtx_by_ssrc: dict[int, Publication] = {}
        self._sub_by_ssrc: dict[int, Subscription] = {}
        self._sub_by_transceiver: dict[RTCRtpTransceiver, Subscription] = {}
        # Every sendonly transceiver of this peer connection; a free one (inactive, no
        # subscription) is recycled by the next subscription of its kind and codec.
        self._senders: dict[RTCRtpTransceiver, SenderSlot] = {}
        self._requested: dict[RTCRtpTransceiver, TrackMeta] = {}
        self._track_meta: dict[str, TrackMeta] = {}
        self._mid_ext_id = 0
        self._link = LinkStats()
        self.modes = {"uplink": "video", "downlink": "video"}
        # -- bandwidth fallback (issue 5): see mediaserver/fallback.py --
        self.fallback = LinkFallback(
            self._config.fallback,
            self._counters,
            emit_mode=self._fallback_mode,
            emit_pause=self._fallback_pause,
            report_interval_s=self._config.rtcp_interval_s,
        )
        self._rebind: dict[RTCRtpTransceiver, Publication] = {}
        self._restarted_at = 0.0
        self.transport_restarts = 0
        # -- end bandwidth fallback --
        self._codec_switch: dict[RTCRtpTransceiver, Publication] = {}  # codec-late (issue 3)
        self._codec_switch_to: dict[RTCRtpTransceiver, str] = {}  # applied at our next offer
        self._closing: set[asyncio.Task[None]] = set()  # subscriptions in a codec it lacks
        self._sdp_lock = asyncio.Lock()
        self._needs_offer = False
        self._answered = asyncio.Event()
        self._transport_settled = asyncio.Event()  # not `connecting` (any more): offers may go
        self._closed = False
        self.pc = ServerPeerConnection(hooks=self, ports=node.ports)
        self.channel = self.pc.createDataChannel("consult", negotiated=True, id=0)
        self.channel.on("message", self._on_channel_message)
        self.pc.on("connectionstatechange", self._on_connection_state)
        self._negotiation: asyncio.Task[None] | None = None
        self._rtcp_task = asyncio.get_running_loop().create_task(self._rtcp_loop())

    # -- control-plane API -----------------------------------------------------------------

    @property
    def connection_state(self) -> str:
        return str(self.pc.connectionState)

    @property
    def closed(self) -> bool:
        return self._closed

    async def handle_offer(self, sdp: str, tracks: dict[str, TrackMeta]) -> str | None:
        """Answer a client offer; None when it crossed a server offer (glare)."""
        self._check_open()
        async with self._sdp_lock:
            if self.pc.signalingState != "stable":
                return None
            validate_sdp(sdp)
            if (offered := offered_video_codecs(sdp)) is not None:
                # before aiortc applies the offer: its new m-lines get the room's codec
                self._cannot_decode(self.video_codecs - offered)
            self._track_meta.update(tracks)
            try:
                await self.pc.setRemoteDescription(
                    RTCSessionDescription(sdp=strip_mdns_candidates(sdp), type="offer")
                )
                answer = await self.pc.createAnswer()
                text = apply_opus_fmtp(  # devices: fmtp per track source
                    drop_rejected_from_bundle(answer.sdp, sdp), self._mid_sources(tracks)
                )
                await self.pc.setLocalDescription(RTCSessionDescription(sdp=text, type="answer"))
            except Exception as exc:
                raise NegotiationError(f"cannot apply offer: {exc}") from exc
            result = self.pc.localDescription.sdp
        if self._needs_offer:
            self._kick_negotiation()
        return result

    async def handle_answer(self, sdp: str) -> None:
        self._check_open()
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
        self._answered.set()
        if self._codec_switch:
            await self._apply_codec_switches()  # codec-late (issue 3)

    def pending_offer(self) -> tuple[str, dict[str, dict[str, Any]]] | None:
        """The server offer still waiting for an answer (to re-send after a resume)."""
        local = self.pc.localDescription  # None while aiortc is still setting it
        if self._closed or self.pc.signalingState != "have-local-offer" or local is None:
            return None
        return local.sdp, self._offer_tracks()

    async def add_ice_candidate(self, candidate: str | None, sdp_mid: str | None) -> None:
        self._check_open()
        if not candidate:
            return  # end of candidates: nothing to do for aioice here
        if ".local " in candidate:
            return  # mDNS name: see strip_mdns_candidates
        try:
            parsed = candidate_from_sdp(candidate.removeprefix("candidate:"))
            parsed.sdpMid = sdp_mid
            parsed.sdpMLineIndex = 0 if sdp_mid is None else None
            if sdp_mid is None:
                parsed.sdpMid = self._first_mid()
            await self.pc.addIceCandidate(parsed)
        except Exception as exc:
            raise NegotiationError(f"bad candidate: {exc}") from exc

    def request_publish(self, tracks: list[TrackMeta]) -> None:
        """Offer recvonly m-lines for tracks the client will attach in its answer."""
        self._check_open()
        for meta in tracks:
            if meta.kind not in ("audio", "video"):
                raise ValueError("kind must be audio or video")
            transceiver = self.pc.addTransceiver(meta.kind, direction="recvonly")
            self._requested[transceiver] = meta
        self._schedule_offer()

    def subscribe(self, publication: Publication) -> None:
        """Receive a publication of another participant (renegotiates)."""
        if self._closed or publication.closed or publication.track_id in self.subscriptions:
            return
        codec = publication.codec
        if publication.kind == "video" and codec.name not in self.video_codecs:
            logger.info("participant cannot decode %s: not subscribed", codec.name)
            return
        sub = Subscription(publication, send_rtp=self._send, counters=self._counters)
        self.subscriptions[publication.track_id] = sub
        sub.once("close", lambda _reason: self._subscription_closed(sub))
        if self.pc.signalingState == "closed":
            # No connection now (aiortc closed it, or it never connected): the client must
            # reconnect, and restart_transport() offers this subscription on the new one.
            return
        self._add_sender(sub)
        self._schedule_offer()

    def _add_sender(self, sub: Subscription) -> None:
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
            self._senders[transceiver] = SenderSlot(fit)
        self._sub_by_transceiver[transceiver] = sub

    def _free_sender(self, kind: str, fit: tuple[Any, ...]) -> RTCRtpTransceiver | None:
        """The first (lowest m-line) inactive sender of this kind and codec with no subscription."""
        carrying = self._sub_by_transceiver
        for transceiver, slot in self._senders.items():
            if (
                transceiver.kind == kind
                and slot.codecs == fit
                and transceiver.direction == "inactive"
                and transceiver not in carrying
            ):
                return transceiver
        return None

    def send_data(self, text: str) -> bool:
        if self.channel.readyState != "open":
            return False
        self.channel.send(text)
        return True

    def link_stats(self) -> LinkStats:
        return self._link

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role.value,
            "connection": self.connection_state,
            "tracks": [
                {
                    "track_id": p.track_id,
                    "kind": p.kind,
                    "source": p.source,
                    "codec": p.codec.name,
                }
                for p in self.publications.values()
            ],
            "subscriptions": len(self.subscriptions),
            "modes": dict(self.modes),
            "paused_sources": self.fallback.paused_sources(),
            "link": self._link.as_dict(),
        }

    # -- negotiation internals --------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise NegotiationError("participant is closed")

    def _first_mid(self) -> str | None:
        for t in self.pc.getTransceivers():
            if t.mid is not None:
                return str(t.mid)
        return None

    def _schedule_offer(self) -> None:
        self._needs_offer = True
        self._kick_negotiation()

    def _kick_negotiation(self) -> None:
        if not self._closed and (self._negotiation is None or self._negotiation.done()):
            self._negotiation = asyncio.get_running_loop().create_task(self._negotiate())

    async def _negotiate(self) -> None:
        """Send server offers while one is needed, one at a time, each after the previous
        exchange completed.

        Not stable means an exchange is still pending (our offer awaits its answer) or the
        peer connection is closed (a reconnect replaces it and kicks a new task): the task
        waits or ends, it never loops without awaiting (which froze the whole node). A failure
        is logged, not lost with the task.
        """
        try:
            while self._needs_offer and not self._closed:
                self._transport_settled.clear()
                if self._still_connecting():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._transport_settled.wait(), self._config.offer_hold_s
                        )
                    if self._closed:
                        return
                async with self._sdp_lock:
                    state = self.pc.signalingState
                    if state == "closed":
                        return  # restart_transport() offers on the new connection
                    self._answered.clear()
                    if state == "stable":
                        self._needs_offer = False
                        await self._send_offer()
                await self._answered.wait()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("server offer failed for participant %s", self.id)

    def _still_connecting(self) -> bool:
        """An exchange completed and the transport is still being set up (`connecting`).

        Our offers wait until it is up (or failed, or replaced), as consult.js's do, for at
        most `offer_hold_s`: a Firefox page that answered a renegotiation in the milliseconds
        after its first exchange, while its ICE/DTLS transport was connecting, never left
        `connecting` (compat `codec` cells; docs/compat.md). The first offer (no exchange
        yet) goes at once; one that waited its time goes anyway (a transport slow to connect
        must not keep a subscription from being offered).
        """
        return self.pc.remoteDescription is not None and self.pc.connectionState in (
            "new",
            "connecting",
        )

    async def _send_offer(self) -> None:
        self._prefer_switched_codecs()  # codec-late (issue 3)
        offer = await self.pc.createOffer()
        established = [
            d.sdp for d in (self.pc.remoteDescription, self.pc.localDescription) if d is not None
        ]
        text = apply_opus_fmtp(  # devices: fmtp per track source
            harmonize(offer.sdp, established), self._mid_sources({}, offer.sdp)
        )
        await self.pc.setLocalDescription(RTCSessionDescription(sdp=text, type="offer"))
        self.emit("offer", self.pc.localDescription.sdp, self._offer_tracks())

    def _offer_tracks(self) -> dict[str, dict[str, Any]]:
        """mid -> what it carries, for the client (direction as in the server's SDP)."""
        tracks: dict[str, dict[str, Any]] = {}
        for t in self.pc.getTransceivers():
            if t.mid is None:
                continue
            sub = self._sub_by_transceiver.get(t)
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
            meta = self._requested.get(t)
            if meta is not None:
                tracks[t.mid] = {"kind": meta.kind, "source": meta.source, "direction": "recvonly"}
        return tracks

    # -- devices: the source (and channels) of each audio m-line, for its Opus fmtp --------

    def _mid_sources(
        self, offered: dict[str, TrackMeta], offer: str = ""
    ) -> dict[str, tuple[str, int]]:
        """mid -> (source, channels); new transceivers get their mid at setLocalDescription,
        so their m-line in `offer` (the SDP being made) names it."""
        mids = mid_order(offer)

        def mid_of(t: RTCRtpTransceiver) -> str | None:
            index = t._get_mline_index()
            if t.mid is None and index is not None and index < len(mids):
                return mids[index]
            return None if t.mid is None else str(t.mid)

        sources = {p.mid: (p.source, p.channels) for p in self.publications.values()}
        for transceiver, meta in self._requested.items():
            if (mid := mid_of(transceiver)) is not None:
                sources[mid] = (meta.source, meta.channels)
        for transceiver, sub in self._sub_by_transceiver.items():
            if (mid := mid_of(transceiver)) is not None:
                sources[mid] = (sub.publication.source, sub.publication.channels)
        sources.update({mid: (m.source, m.channels) for mid, m in offered.items()})
        return sources

    def _subscription_closed(self, sub: Subscription) -> None:
        self.subscriptions.pop(sub.publication.track_id, None)
        transceiver = next((t for t, s in self._sub_by_transceiver.items() if s is sub), None)
        if transceiver is None:
            return
        self._sub_by_transceiver.pop(transceiver, None)
        slot = self._senders.get(transceiver)
        if slot is not None and sub.forwarder is not None:  # it sent (or was set to): go on
            slot.resume = sub.forwarder.continuation(time.monotonic())
        for ssrc in (sub.ssrc, sub.rtx_ssrc):
            if self._sub_by_ssrc.get(ssrc) is sub:
                del self._sub_by_ssrc[ssrc]
        if not self._closed:
            transceiver.direction = "inactive"
            self._schedule_offer()

    # -- tap hooks (called by ServerPeerConnection) -------------------------------------------

    def transport_created(self, transport: MediaTransport) -> None:
        self.transport = transport
        transport.on_rtp = self._on_rtp
        transport.on_rtcp = self._on_rtcp

    def transceiver_created(self, transceiver: RTCRtpTransceiver) -> None:
        if transceiver.kind == "video":
            set_codec_preferences(
                transceiver, capabilities("video", f"video/{self.room.video_codec()}")
            )
        else:
            set_codec_preferences(transceiver, capabilities("audio", "audio/opus"))

    def receiver_started(
        self, transceiver: RTCRtpTransceiver, parameters: RTCRtpReceiveParameters
    ) -> None:
        if self._closed or not parameters.codecs:
            return
        mid = str(parameters.muxId)
        if self._rebind_publication(transceiver, parameters):
            return
        meta = (
            self._track_meta.pop(mid, None)
            or self._requested.pop(transceiver, None)
            or TrackMeta.default(transceiver.kind)
        )
        codecs, ext = self._declared(parameters)
        self._mid_ext_id = ext.get(MID_URI, self._mid_ext_id)
        encoding = parameters.encodings[0] if parameters.encodings else None
        pub = Publication(
            participant_id=self.id,
            kind=transceiver.kind,
            source=meta.source,
            mid=mid,
            codec=codec_info(codecs),
            ssrc=encoding.ssrc if encoding else None,
            rtx_ssrc=encoding.rtx.ssrc if encoding and encoding.rtx else None,
            audio_level_id=ExtensionIds.from_uris(ext).audio_level,
            cache_size=self._config.packet_cache_size,
            counters=self._counters,
            send_rtcp=self._send,
            rtcp_ssrc=self.rtcp_ssrc,
            pli_throttle_s=self._config.pli_throttle_s,
        )
        pub.channels = meta.channels  # devices: a stereo stethoscope stays stereo downstream
        pub.capture = meta.capture  # devices: what its capture does, and what the doctor must know
        pub.warnings = capture_warnings(meta.source, meta.capture)
        if pub.ssrc is not None:
            self._pub_by_ssrc[pub.ssrc] = pub
        if pub.rtx_ssrc is not None:
            self._rtx_by_ssrc[pub.rtx_ssrc] = pub
        self.publications[pub.track_id] = pub
        pub.once("close", lambda _reason: self._publication_closed(pub))
        self.emit("publication", pub)

    def sender_started(
        self, transceiver: RTCRtpTransceiver, parameters: RTCRtpSendParameters
    ) -> None:
        sub = self._sub_by_transceiver.get(transceiver)
        if sub is None or sub.closed or not parameters.codecs:
            return
        codecs, ext = self._declared(parameters)
        codec = codec_info(codecs)
        if codec.name != sub.publication.codec.name:
            # It answered the VP8 fallback (codecs.subscription_capabilities): it cannot
            # receive the publication's codec after all. This subscription ends (its m-line
            # goes inactive); the room switches the publisher to a codec every member decodes
            # and this participant subscribes to that replacement.
            task = asyncio.get_running_loop().create_task(sub.close(CloseReason.LEFT))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            self._cannot_decode({sub.publication.codec.name})
            return
        ssrc, rtx_ssrc = sender_ssrcs(transceiver)
        slot = self._senders.get(transceiver)
        sub.start(
            mid=str(parameters.muxId),
            ssrc=ssrc,
            rtx_ssrc=rtx_ssrc,
            payload_type=codec.payload_type,
            rtx_payload_type=codec.rtx_payload_type,
            ext=ExtensionIds.from_uris(ext),
            resume=slot.resume if slot is not None else None,
        )
        self._sub_by_ssrc[ssrc] = sub
        if sub.rtx_ssrc:
            self._sub_by_ssrc[sub.rtx_ssrc] = sub

    def _cannot_decode(self, names: set[str] | frozenset[str]) -> None:
        """Its SDP shows it cannot negotiate these video codecs, whatever it declared at join
        (Firefox 140 declares H264 without its OpenH264 plugin): the room settles again."""
        remaining = self.video_codecs - names
        if not remaining or remaining == self.video_codecs:
            return
        logger.info(
            "participant %s cannot negotiate %s: video codecs %s",
            self.id,
            sorted(names & self.video_codecs),
            sorted(remaining),
        )
        self.video_codecs = remaining
        self.emit("codecs", remaining)

    def _declared(
        self, parameters: RTCRtpReceiveParameters | RTCRtpSendParameters
    ) -> tuple[list[RTCRtpCodecParameters], dict[str, int]]:
        """Payload types and extension ids as our SDP declared them (bundle.declared)."""
        aiortc_ext = {h.uri: h.id for h in parameters.headerExtensions}
        local = self.pc.localDescription
        if local is None:
            return parameters.codecs, aiortc_ext
        codecs, ext = declared(local.sdp, str(parameters.muxId), parameters.codecs)
        return codecs, ext or aiortc_ext

    def _publication_closed(self, pub: Publication) -> None:
        self.publications.pop(pub.track_id, None)
        for table in (self._pub_by_ssrc, self._rtx_by_ssrc):
            for ssrc in [s for s, p in table.items() if p is pub]:
                del table[ssrc]

    # -- the packet path -------------------------------------------------------------------

    def _send(self, packet: bytes) -> bool:
        transport = self.transport
        return transport is not None and transport.send(packet)

    def _on_rtp(self, data: bytes, arrival: float) -> None:
        ssrc = int.from_bytes(data[8:12], "big")
        pub = self._pub_by_ssrc.get(ssrc)
        if pub is not None:
            pub.on_rtp(data, arrival)
            return
        pub = self._rtx_by_ssrc.get(ssrc)
        if pub is not None:
            pub.on_rtx(data, arrival)
            return
        self._learn_ssrc(data, ssrc, arrival)

    def _learn_ssrc(self, data: bytes, ssrc: int, arrival: float) -> None:
        """An SSRC the SDP did not announce: route it by mid extension, else by payload type."""
        pt = data[1] & 0x7F
        mid = extension_value(data, self._mid_ext_id) if self._mid_ext_id else None
        pubs = list(self.publications.values())
        if mid is not None:
            pubs = [p for p in pubs if p.mid == mid.decode(errors="replace")]
        pubs = [p for p in pubs if pt in (p.codec.payload_type, p.codec.rtx_payload_type)]
        if len(pubs) != 1:
            return  # unknown or ambiguous: dropped
        pub = pubs[0]
        if pt == pub.codec.rtx_payload_type:
            pub.rtx_ssrc = ssrc
            self._rtx_by_ssrc[ssrc] = pub
            pub.on_rtx(data, arrival)
        elif pub.ssrc is None or pub.ssrc not in self._pub_by_ssrc or mid is not None:
            pub.ssrc = ssrc
            self._pub_by_ssrc[ssrc] = pub
            pub.on_rtp(data, arrival)

    def _on_rtcp(self, data: bytes) -> None:
        arrival = time.monotonic()
        self.fallback.last_rtcp = arrival
        subs = self._sub_by_ssrc
        for item in rtcp.parse(data):
            if isinstance(item, rtcp.SenderReport):
                pub = self._pub_by_ssrc.get(item.ssrc)
                if pub is not None:
                    pub.on_sender_report(item, arrival)
                self._on_report_blocks(item.reports)
            elif isinstance(item, rtcp.ReceiverReport):
                self._on_report_blocks(item.reports)
            elif isinstance(item, rtcp.Nack):
                sub = subs.get(item.media_ssrc)
                if sub is not None:
                    sub.on_nack(item.lost)
            elif isinstance(item, rtcp.KeyframeRequest):
                sub = subs.get(item.media_ssrc)
                if sub is not None:
                    sub.on_keyframe_request()
            elif isinstance(item, rtcp.Remb):
                for ssrc in item.ssrcs:
                    sub = subs.get(ssrc)
                    if sub is not None:
                        sub.on_remb(item.bitrate)

    def _on_report_blocks(self, blocks: tuple[rtcp.ReportBlock, ...]) -> None:
        for block in blocks:
            sub = self._sub_by_ssrc.get(block.ssrc)
            if sub is not None and block.ssrc == sub.ssrc:  # not the RTX stream's report
                sub.on_report(block)

    # -- reports and link state (once per interval) ------------------------------------------

    async def _rtcp_loop(self) -> None:
        """Reports once per (randomized) interval; in between, a fallback sample when one of
        its controllers can decide sooner (its settle or probe time ends)."""
        interval = self._config.rtcp_interval_s
        last = time.monotonic()
        next_report = last + interval * (0.75 + random.random() / 2)
        sent_octets: dict[int, int] = {}
        received: dict[int, int] = {}
        while True:
            wake = next_report
            due = self.fallback.due()
            if due is not None and time.monotonic() < due < wake:  # a past one: never a spin
                wake = due + 0.005  # just past it: that sample may decide
            await asyncio.sleep(max(0.0, wake - time.monotonic()))
            now = time.monotonic()
            try:
                if now >= next_report:
                    elapsed, last = now - last, now
                    next_report = now + interval * (0.75 + random.random() / 2)
                    self._report(elapsed, sent_octets, received)
                elif self.transport is not None and self.pc.connectionState == "connected":
                    self._fallback_tick(now)
            except Exception:
                logger.exception("RTCP report failed")

    def _fallback_tick(self, now: float) -> None:
        self.fallback.tick(now, list(self.publications.values()), list(self.subscriptions.values()))

    def _report(self, elapsed: float, sent: dict[int, int], received: dict[int, int]) -> None:
        if self.transport is None or self.pc.connectionState != "connected":
            return
        now = time.monotonic()
        up = self._link.uplink
        down = self._link.downlink
        blocks: list[rtcp.ReportBlock] = []
        rembs: list[bytes] = []
        up_loss = up_jitter = 0.0
        up_bytes = 0
        estimate = 0
        for pub in self.publications.values():
            if pub.ssrc is None or not pub.stats.started:
                continue
            fraction, _ = pub.stats.interval()
            up_loss = max(up_loss, fraction)
            up_jitter = max(up_jitter, pub.stats.jitter / pub.codec.clock_rate * 1000)
            key = id(pub)
            up_bytes += pub.stats.bytes - received.get(key, 0)
            received[key] = pub.stats.bytes
            lsr = dlsr = 0
            if pub.last_sr is not None:
                lsr = (pub.last_sr[0] >> 16) & 0xFFFFFFFF
                dlsr = int((now - pub.last_sr[2]) * 65536)
            blocks.append(pub.stats.report_block(pub.ssrc, fraction, lsr, dlsr))
            if pub.kind == "video":
                pub.estimate_bps = self._estimate(pub, fraction)
                estimate += pub.estimate_bps
                rembs.append(rtcp.remb(self.rtcp_ssrc, pub.estimate_bps, [pub.ssrc]))
        # Always one report: an empty RR keeps a client's media watchdog fed (reconnection).
        self._send(rtcp.receiver_report(self.rtcp_ssrc, blocks) + b"".join(rembs))
        down_loss = down_jitter = 0.0
        down_bytes = 0
        rtts: list[float] = []
        remb: int | None = None
        for sub in self.subscriptions.values():
            report = sub.sender_report(self.cname)
            if report is None:
                continue
            self._send(report)
            down_loss = max(down_loss, sub.fraction_lost)
            down_jitter = max(down_jitter, sub.jitter / sub.publication.codec.clock_rate * 1000)
            key = id(sub)
            down_bytes += sub.octets_sent - sent.get(key, 0)
            sent[key] = sub.octets_sent
            if sub.rtt is not None:
                rtts.append(sub.rtt)
            if sub.remb_bps is not None:
                remb = sub.remb_bps if remb is None else min(remb, sub.remb_bps)
        _keep_only(received, map(id, self.publications.values()))  # departed tracks' go
        _keep_only(sent, map(id, self.subscriptions.values()))
        rtt_ms = sum(rtts) / len(rtts) * 1000 if rtts else None
        up.loss, up.jitter_ms, up.rtt_ms = up_loss, up_jitter, rtt_ms
        up.bitrate_bps = int(up_bytes * 8 / elapsed) if elapsed > 0 else 0
        up.estimated_bps = estimate or None
        down.loss, down.jitter_ms, down.rtt_ms = down_loss, down_jitter, rtt_ms
        down.bitrate_bps = int(down_bytes * 8 / elapsed) if elapsed > 0 else 0
        down.estimated_bps = remb
        self._fallback_tick(now)

    def _estimate(self, pub: Publication, loss: float) -> int:
        """Loss-based rate control (Galene), capped by what its subscribers can take, and by
        the uplink fallback while it sheds this video (docs/fallback.md)."""
        cfg = self._config
        cap = self.fallback.video_cap(pub.source)
        if cap is not None:
            return cap
        est = pub.estimate_bps or cfg.max_video_bitrate_bps
        if loss > 0.10:
            est = int(est * (1 - 0.5 * loss))
        elif loss < 0.02:
            est = int(est * 1.08)
        caps = [s.remb_bps for s in pub.subscriptions if s.remb_bps and not s.paused]
        if caps:
            est = min(est, int(min(caps) * 1.5))
        elif pub.subscriptions and all(s.paused for s in pub.subscriptions):
            est = cfg.min_video_bitrate_bps  # nobody receives it (fallback): keep it small
        return max(cfg.min_video_bitrate_bps, min(cfg.max_video_bitrate_bps, est))

    # -- events and lifecycle -----------------------------------------------------------------

    def _on_channel_message(self, message: object) -> None:
        if isinstance(message, str):
            self.emit("data", message)

    def _on_connection_state(self) -> None:
        if not self._still_connecting():
            self._transport_settled.set()  # a held offer goes (_negotiate)
        self.emit("connectionstatechange", self.connection_state)

    async def close(self, reason: CloseReason = CloseReason.LEFT) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._rtcp_task, self._negotiation) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.fallback.close(time.monotonic())
        for pub in list(self.publications.values()):
            await pub._parent_closed(reason)
        for sub in list(self.subscriptions.values()):
            await sub._parent_closed(reason)
        await self.pc.close()
        self.emit("close", reason)
        self.remove_all_listeners()

    async def _parent_closed(self, reason: CloseReason) -> None:
        await self.close(reason)

    # -- bandwidth fallback and reconnection (issue 5) ----------------------------------------

    def _fallback_mode(self, direction: str, mode: str, reason: str) -> None:
        self.modes[direction] = mode
        logger.info("participant %s %s mode %s (%s)", self.id, direction, mode, reason)
        self.emit("mode", direction, mode, reason)

    def _fallback_pause(self, sources: list[str], reason: str) -> None:
        # The REMB cap goes on the media path at once, before the `pause` crosses the link;
        # each report repeats it (`_estimate`) while the uplink mode sheds the video.
        if self.transport is not None and self.pc.connectionState == "connected":
            for pub in self.publications.values():
                if pub.kind == "video" and pub.ssrc is not None:
                    pub.estimate_bps = self._estimate(pub, 0.0)
                    self._send(rtcp.remb(self.rtcp_ssrc, pub.estimate_bps, [pub.ssrc]))
        self.emit("pause", sources, reason)

    async def restart_transport(self) -> None:
        """The client lost its media connection and starts a fresh one: replace ours.

        aiortc does no ICE restart, so the whole transport (ICE, DTLS, SCTP) is new. The
        participant's publications keep their identity: the client's new senders for the same
        sources feed them, and their subscribers keep their SSRC and continuous numbering
        (`Publication.rebind`). Its subscriptions are offered again on the new transport. The
        server then offers (recvonly m-lines for what it published, sendonly for what it
        receives); the client answers as for any server offer.
        """
        self._check_open()
        task = self._negotiation
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        async with self._sdp_lock:
            old = self.pc
            old.remove_all_listeners()
            self.channel.remove_all_listeners()
            self.transport = None
            self._restarted_at = time.monotonic()
            self.transport_restarts += 1
            self.pc = ServerPeerConnection(hooks=self, ports=self.room.node.ports)
            self.channel = self.pc.createDataChannel("consult", negotiated=True, id=0)
            self.channel.on("message", self._on_channel_message)
            self.pc.on("connectionstatechange", self._on_connection_state)
            self._sub_by_ssrc.clear()
            self._sub_by_transceiver.clear()
            self._senders.clear()  # the old connection's senders (and their SSRCs) are gone
            for sub in list(self.subscriptions.values()):  # those made while closed too
                sub.transport_lost()
                self._add_sender(sub)
            # Tracks that never started (the old connection never connected: no publication
            # yet) are requested again on the new one: those asked for with `publish`, and
            # those the client offered itself (a browser's sendonly m-lines, which its fresh
            # connection attaches to our recvonly ones by source).
            started = {pub.mid for pub in self.publications.values()}
            unstarted = [
                meta
                for t, meta in self._requested.items()
                if t not in self._rebind and t.mid not in started
            ]
            receiving = {
                str(t.mid)
                for t in old.getTransceivers()
                if t.mid is not None and t.currentDirection in ("recvonly", "sendrecv")
            }
            unstarted += [
                meta
                for mid, meta in self._track_meta.items()
                if mid in receiving and mid not in started
            ]
            self._requested.clear()
            self._track_meta.clear()
            self._rebind.clear()
            self._pub_by_ssrc.clear()
            self._rtx_by_ssrc.clear()
            for pub in self.publications.values():
                transceiver = self.pc.addTransceiver(pub.kind, direction="recvonly")
                self._requested[transceiver] = TrackMeta(
                    kind=pub.kind, source=pub.source, channels=pub.channels, capture=pub.capture
                )
                self._rebind[transceiver] = pub
            for meta in unstarted:
                self._requested[self.pc.addTransceiver(meta.kind, direction="recvonly")] = meta
            self._answered.set()
            self._needs_offer = True
        self._negotiation = None
        self._on_connection_state()  # a fresh connection: "new" (the control plane's timers)
        self._kick_negotiation()
        try:
            await old.close()
        except Exception:
            logger.exception("closing the replaced peer connection failed")

    async def close_connection(self) -> None:
        """Close the peer connection alone (it never connected within the control plane's
        timeout): the participant, its publications and subscriptions stay, and the client's
        `reconnect` (restart_transport) starts a fresh connection. Emits
        "connectionstatechange" ("closed")."""
        self._check_open()
        async with self._sdp_lock:
            await self.pc.close()

    def _rebind_publication(
        self, transceiver: RTCRtpTransceiver, parameters: RTCRtpReceiveParameters
    ) -> bool:
        """A publication's track comes back on a restarted transport: same identity."""
        pub = self._rebind.pop(transceiver, None)
        if pub is None or pub.closed:
            return False
        self._requested.pop(transceiver, None)
        codecs, ext = self._declared(parameters)
        self._mid_ext_id = ext.get(MID_URI, self._mid_ext_id)
        encoding = parameters.encodings[0] if parameters.encodings else None
        pub.rebind(
            mid=str(parameters.muxId),
            codec=codec_info(codecs),
            ssrc=encoding.ssrc if encoding else None,
            rtx_ssrc=encoding.rtx.ssrc if encoding and encoding.rtx else None,
            audio_level_id=ExtensionIds.from_uris(ext).audio_level,
            gap_s=time.monotonic() - self._restarted_at,
        )
        if pub.ssrc is not None:
            self._pub_by_ssrc[pub.ssrc] = pub
        if pub.rtx_ssrc is not None:
            self._rtx_by_ssrc[pub.rtx_ssrc] = pub
        return True

    # -- end bandwidth fallback and reconnection --

    # -- room codec switch (issue 3, codec-late) ---------------------------------------------

    def switch_video_codec(self, pub: Publication, mime_type: str) -> bool:
        """Renegotiate a video publication to `mime_type` (the room settles on a codec every
        member decodes): a server offer with only that codec on its m-line. Once answered, the
        publication is replaced by one in the new codec (a new track id, the same source),
        which every member subscribes to; subscribers of the old one lose it."""
        if self._closed or pub.closed or pub.kind != "video":
            return False
        if pub.codec.mime_type.lower() == mime_type.lower():
            return False
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
        logger.info("participant %s: video %s -> %s", self.id, pub.codec.name, mime_type)
        self._schedule_offer()
        return True

    def _prefer_switched_codecs(self) -> None:
        for transceiver, mime_type in self._codec_switch_to.items():
            set_codec_preferences(transceiver, capabilities("video", mime_type))
        self._codec_switch_to.clear()

    async def _apply_codec_switches(self) -> None:
        local = self.pc.localDescription
        if local is None or self.pc.signalingState != "stable":
            return
        for transceiver, pub in list(self._codec_switch.items()):
            mid = pub.mid
            if pub.closed or transceiver.mid != mid or not transceiver._codecs:
                self._codec_switch.pop(transceiver, None)
                continue
            codecs, _ = declared(local.sdp, mid, list(transceiver._codecs))
            codec = codec_info(codecs)
            if codec.mime_type.lower() == pub.codec.mime_type.lower():
                continue  # not this answer's m-line yet
            self._codec_switch.pop(transceiver, None)
            meta = TrackMeta(
                kind=pub.kind, source=pub.source, channels=pub.channels, capture=pub.capture
            )
            ssrc, rtx_ssrc = pub.ssrc, pub.rtx_ssrc
            await pub.close(CloseReason.LEFT)
            encodings = []
            if ssrc is not None:
                encodings.append(
                    RTCRtpDecodingParameters(
                        ssrc=ssrc,
                        payloadType=codec.payload_type,
                        rtx=RTCRtpRtxParameters(ssrc=rtx_ssrc) if rtx_ssrc else None,
                    )
                )
            self._track_meta[mid] = meta
            self.receiver_started(
                transceiver,
                RTCRtpReceiveParameters(
                    codecs=codecs,
                    headerExtensions=list(transceiver._headerExtensions),
                    muxId=mid,
                    encodings=encodings,
                ),
            )

    # -- end room codec switch --


def _keep_only(counters: dict[int, int], keys: Iterable[int]) -> None:
    """Drop the counters of objects no longer there (their id() may be given to new ones)."""
    live = set(keys)
    for key in [k for k in counters if k not in live]:
        del counters[key]
