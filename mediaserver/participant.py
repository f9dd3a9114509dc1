"""Participant: one peer's media session, the parent of the parts that run it.

It owns its publications (what it sends) and subscriptions (what it receives), and three
children: its `Negotiator` (the peer connection, max-bundle and one transport, and every SDP
exchange: the server is the impolite peer), its `Demux` (RTP by SSRC, RTCP by type) and its
`Reporter` (RTCP reports and link state every interval). aiortc reports what it negotiated
through the tap hooks (`rtc.tap.TapHooks`), which create publications and start subscriptions.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from typing import TYPE_CHECKING, Any

from aiortc import RTCRtpTransceiver

from .codecs import capabilities, codec_info
from .demux import Demux
from .devices import capture_warnings
from .emitter import Emitter
from .events import CloseReason, LinkStats, Role, TrackMeta
from .fallback import LinkFallback
from .forwarder import ExtensionIds
from .negotiator import NegotiationError, Negotiator, validate_sdp
from .publication import Publication
from .reporter import Reporter
from .rtc.tap import (
    MediaTransport,
    ServerPeerConnection,
    TapHooks,
    sender_ssrcs,
    set_codec_preferences,
)
from .subscription import Subscription

if TYPE_CHECKING:
    from aiortc import RTCDataChannel
    from aiortc.rtcrtpparameters import RTCRtpReceiveParameters, RTCRtpSendParameters

    from .room import Room

__all__ = ["NegotiationError", "Participant", "validate_sdp"]  # api.py, tests

logger = logging.getLogger(__name__)

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"


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
        self.modes = {"uplink": "video", "downlink": "video"}
        self.transport_restarts = 0
        self._closing: set[asyncio.Task[None]] = set()  # subscriptions in a codec it lacks
        self._closed = False
        # -- bandwidth fallback (issue 5): see mediaserver/fallback.py --
        self.fallback = LinkFallback(
            self._config.fallback,
            self._counters,
            emit_mode=self._fallback_mode,
            emit_pause=self._fallback_pause,
            report_interval_s=self._config.rtcp_interval_s,
        )
        self.demux = Demux(self.publications, self.fallback)
        self.reporter = Reporter(
            config=self._config,
            fallback=self.fallback,
            publications=self.publications,
            subscriptions=self.subscriptions,
            send=self._send,
            connected=self._connected,
            rtcp_ssrc=self.rtcp_ssrc,
            cname=self.cname,
        )
        self.negotiator = Negotiator(self)
        self.reporter.start()

    # -- control-plane API -----------------------------------------------------------------

    @property
    def pc(self) -> ServerPeerConnection:
        """The peer connection now (`restart_transport` replaces it)."""
        return self.negotiator.pc

    @property
    def channel(self) -> RTCDataChannel:
        """The data channel `consult` of the peer connection now."""
        return self.negotiator.channel

    @property
    def connection_state(self) -> str:
        return str(self.pc.connectionState)

    @property
    def closed(self) -> bool:
        return self._closed

    async def handle_offer(self, sdp: str, tracks: dict[str, TrackMeta]) -> str | None:
        """Answer a client offer; None when it crossed a server offer (glare)."""
        return await self.negotiator.handle_offer(sdp, tracks)

    async def handle_answer(self, sdp: str) -> None:
        await self.negotiator.handle_answer(sdp)

    def pending_offer(self) -> tuple[str, dict[str, dict[str, Any]]] | None:
        """The server offer still waiting for an answer (to re-send after a resume)."""
        return self.negotiator.pending_offer()

    async def add_ice_candidate(self, candidate: str | None, sdp_mid: str | None) -> None:
        await self.negotiator.add_ice_candidate(candidate, sdp_mid)

    def request_publish(self, tracks: list[TrackMeta]) -> None:
        """Offer recvonly m-lines for tracks the client will attach in its answer."""
        self.negotiator.request_publish(tracks)

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
        self.negotiator.add_sender(sub)
        self.negotiator.schedule_offer()

    def send_data(self, text: str) -> bool:
        channel = self.negotiator.channel
        if channel.readyState != "open":
            return False
        channel.send(text)
        return True

    def link_stats(self) -> LinkStats:
        return self.reporter.link

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
            "link": self.reporter.link.as_dict(),
        }

    def _subscription_closed(self, sub: Subscription) -> None:
        self.subscriptions.pop(sub.publication.track_id, None)
        self.demux.remove_subscription(sub)
        self.negotiator.release_sender(sub)

    # -- tap hooks (called by ServerPeerConnection) -------------------------------------------

    def transport_created(self, transport: MediaTransport) -> None:
        self.transport = transport
        demux = self.demux
        transport.on_rtp = demux.on_rtp  # the packet path: one bound method per datagram
        transport.on_rtcp = demux.on_rtcp

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
        meta = self.negotiator.publication_meta(transceiver, mid)
        codecs, ext = self.negotiator.declared(parameters)
        self.demux.mid_ext_id = ext.get(MID_URI, self.demux.mid_ext_id)
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
        self.demux.add_publication(pub)
        self.publications[pub.track_id] = pub
        pub.once("close", lambda _reason: self._publication_closed(pub))
        self.emit("publication", pub)

    def sender_started(
        self, transceiver: RTCRtpTransceiver, parameters: RTCRtpSendParameters
    ) -> None:
        sub = self.negotiator.sub_by_transceiver.get(transceiver)
        if sub is None or sub.closed or not parameters.codecs:
            return
        codecs, ext = self.negotiator.declared(parameters)
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
        sub.start(
            mid=str(parameters.muxId),
            ssrc=ssrc,
            rtx_ssrc=rtx_ssrc,
            payload_type=codec.payload_type,
            rtx_payload_type=codec.rtx_payload_type,
            ext=ExtensionIds.from_uris(ext),
            resume=self.negotiator.resume_of(transceiver),
        )
        self.demux.add_subscription(sub)

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

    def _publication_closed(self, pub: Publication) -> None:
        self.publications.pop(pub.track_id, None)
        self.demux.remove_publication(pub)

    # -- the packet path: our RTCP and the subscriptions' RTP go out here ----------------------

    def _send(self, packet: bytes) -> bool:
        transport = self.transport
        return transport is not None and transport.send(packet)

    def _connected(self) -> bool:
        return self.transport is not None and self.pc.connectionState == "connected"

    # -- events and lifecycle -----------------------------------------------------------------

    def _on_channel_message(self, message: object) -> None:
        if isinstance(message, str):
            self.emit("data", message)

    def _on_connection_state(self) -> None:
        self.emit("connectionstatechange", self.connection_state)

    async def close(self, reason: CloseReason = CloseReason.LEFT) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.reporter.close()
            await self.negotiator.stop()
            self.fallback.close(time.monotonic())
            for pub in list(self.publications.values()):
                await pub._parent_closed(reason)
            for sub in list(self.subscriptions.values()):
                await sub._parent_closed(reason)
            await self.pc.close()
        finally:
            # Whatever a step raised, the room forgets the participant (else it stays counted
            # against max_participants until the room ends).
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
        # each report repeats it (`Reporter.estimate`) while the uplink mode sheds the video.
        self.reporter.cap_video_now()
        self.emit("pause", sources, reason)

    async def restart_transport(self) -> None:
        """The client lost its media connection and starts a fresh one: replace ours.

        aiortc does no ICE restart, so the whole transport (ICE, DTLS, SCTP) is new. The
        participant's publications keep their identity: the client's new senders for the same
        sources feed them, and their subscribers keep their SSRC and continuous numbering
        (`Publication.rebind`). Its subscriptions are offered again on the new transport. The
        server then offers (recvonly m-lines for what it published, sendonly for what it
        receives); the client answers as for any server offer (`Negotiator.restart`).
        """
        await self.negotiator.restart()

    def _transport_replaced(self) -> None:
        """The negotiator replaces the peer connection: the old transport and its SSRCs go."""
        self.transport = None
        self.transport_restarts += 1
        self.demux.clear_subscriptions()
        self.demux.clear_publications()

    async def close_connection(self) -> None:
        """Close the peer connection alone (it never connected within the control plane's
        timeout): the participant, its publications and subscriptions stay, and the client's
        `reconnect` (restart_transport) starts a fresh connection. Emits
        "connectionstatechange" ("closed")."""
        await self.negotiator.close_connection()

    def _rebind_publication(
        self, transceiver: RTCRtpTransceiver, parameters: RTCRtpReceiveParameters
    ) -> bool:
        """A publication's track comes back on a restarted transport: same identity."""
        rebound = self.negotiator.rebound(transceiver)
        if rebound is None:
            return False
        pub, gap_s = rebound
        codecs, ext = self.negotiator.declared(parameters)
        self.demux.mid_ext_id = ext.get(MID_URI, self.demux.mid_ext_id)
        encoding = parameters.encodings[0] if parameters.encodings else None
        pub.rebind(
            mid=str(parameters.muxId),
            codec=codec_info(codecs),
            ssrc=encoding.ssrc if encoding else None,
            rtx_ssrc=encoding.rtx.ssrc if encoding and encoding.rtx else None,
            audio_level_id=ExtensionIds.from_uris(ext).audio_level,
            gap_s=gap_s,
        )
        self.demux.add_publication(pub)
        return True

    # -- end bandwidth fallback and reconnection --

    def switch_video_codec(self, pub: Publication, mime_type: str) -> bool:
        """Renegotiate a video publication to `mime_type` (the room settles on a codec every
        member decodes, issue 3, codec-late): a server offer with only that codec on its
        m-line. Once answered, the publication is replaced by one in the new codec (a new track
        id, the same source), which every member subscribes to; subscribers of the old one
        lose it."""
        if self._closed or pub.closed or pub.kind != "video":
            return False
        if pub.codec.mime_type.lower() == mime_type.lower():
            return False
        return self.negotiator.switch_video_codec(pub, mime_type)
