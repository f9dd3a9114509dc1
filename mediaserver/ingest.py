"""Ingest from devices that speak plain RTP over UDP (no ICE, DTLS or SRTP), described by SDP.

A gateway or device (an exam camera's encoder box, ffmpeg, GStreamer) is described by an SDP
like the one `ffmpeg -f rtp -sdp_file` writes. The server binds one UDP port per m-line (its
own choice: the ports in the posted SDP are ignored) and publishes each stream in the room as
a track of an `IngestParticipant`, which the room wires to every participant like any
publisher.

- Forwarded as bytes (no decoding) when the codec is one the room uses: Opus audio, and video
  in the room's codec (VP8, or H264 in an H264 room).
- Transcoded with PyAV (aiortc's depacketizers, decoders and encoders, in a worker thread)
  only when it must be: G.711 (PCMU/PCMA) audio -> Opus, VP8 <-> H264 when the room uses the
  other one. Cost: docs/benchmarks.md (`python -m benchmarks.ingest`).
- Garbage (not RTP version 2, a payload type the SDP does not list, a cut header) is counted
  and dropped; so is RTP from another address than the stream's sender (the port latches to
  the first sender while it is receiving, and accepts a new one once it stalled); decoder
  errors in the transcoder are counted and skipped. A stream that sends nothing for
  `stall_s` is `stalled` (state event), and `receiving` again on the next packet.
  Nothing that happens on an ingest port touches the rest of the room.
- There is no feedback channel: NACK and PLI are not sent to the device, so a forwarded video
  stream must carry a keyframe at least every few seconds (a new viewer starts on one). A
  transcoded stream answers PLIs with a keyframe of its own encoder.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiortc import RTCRtpCodecParameters

from .codecs import CodecInfo
from .emitter import Emitter
from .events import CloseReason, LinkStats, Role
from .publication import Publication
from .rtc.media import JitterBuffer, depayloaded, get_decoder, get_encoder

if TYPE_CHECKING:
    from .room import Room

logger = logging.getLogger(__name__)

STATIC_PT = {0: ("PCMU", 8000, 1), 8: ("PCMA", 8000, 1)}
FORWARD_AUDIO = frozenset({"OPUS"})
TRANSCODE_AUDIO = frozenset({"PCMU", "PCMA"})
VIDEO = frozenset({"VP8", "H264"})
OUT_PT = {"OPUS": 111, "VP8": 96, "H264": 102}
CLOCK_RATE = {"OPUS": 48000, "PCMU": 8000, "PCMA": 8000, "VP8": 90000, "H264": 90000}  # RFCs
MAX_MEDIA = 4


class IngestError(ValueError):
    """An SDP the ingest cannot use (the message says why)."""


@dataclass(frozen=True, slots=True)
class IngestMedia:
    """One m-line of the posted SDP."""

    index: int
    kind: str
    codec: str  # upper-case name
    payload_type: int
    clock_rate: int
    channels: int
    parameters: dict[str, str]
    source: str


def parse_sdp(text: str, *, sources: dict[int, str] | None = None) -> list[IngestMedia]:
    """The m-lines of a plain-RTP SDP; IngestError for anything unusable."""
    if not isinstance(text, str) or not text.lstrip().startswith("v=0"):
        raise IngestError("not an SDP (must start with v=0)")
    sections = re.split(r"(?=^m=)", text.replace("\r\n", "\n"), flags=re.MULTILINE)[1:]
    if not sections:
        raise IngestError("SDP has no media section")
    if len(sections) > MAX_MEDIA:
        raise IngestError(f"at most {MAX_MEDIA} media sections")
    out = []
    for index, section in enumerate(sections):
        first = section.split("\n", 1)[0].split()
        if len(first) < 4 or first[0][2:] not in ("audio", "video"):
            raise IngestError(f"m-line {index}: kind must be audio or video")
        kind = first[0][2:]
        if first[2] not in ("RTP/AVP", "RTP/AVPF"):
            raise IngestError(f"m-line {index}: transport must be RTP/AVP (plain RTP over UDP)")
        if not re.fullmatch(r"\d{1,3}", first[3], re.ASCII) or int(first[3]) > 127:
            raise IngestError(f"m-line {index}: bad payload type (0-127)")
        pt = int(first[3])
        rtpmap = re.search(
            rf"^a=rtpmap:{pt} ([\w.-]+)/(\d{{1,6}})(?:/(\d{{1,2}}))?\s*$", section, re.M | re.ASCII
        )
        if rtpmap:
            name, rate, channels = rtpmap.group(1).upper(), int(rtpmap.group(2)), rtpmap.group(3)
            nch = int(channels) if channels else 1
        elif pt in STATIC_PT:
            name, rate, nch = STATIC_PT[pt]
        else:
            raise IngestError(f"m-line {index}: payload type {pt} has no rtpmap")
        fmtp = re.search(rf"^a=fmtp:{pt} (.*?)\s*$", section, re.M)
        params = {}
        if fmtp:
            params = dict(p.strip().split("=", 1) for p in fmtp.group(1).split(";") if "=" in p)
        if kind == "audio" and name not in FORWARD_AUDIO | TRANSCODE_AUDIO:
            raise IngestError(f"m-line {index}: audio codec {name} unsupported (Opus, PCMU, PCMA)")
        if kind == "video" and name not in VIDEO:
            raise IngestError(f"m-line {index}: video codec {name} unsupported (VP8, H264)")
        if rate != CLOCK_RATE[name]:
            raise IngestError(f"m-line {index}: {name} has a clock rate of {CLOCK_RATE[name]}")
        if nch not in (1, 2):
            raise IngestError(f"m-line {index}: 1 or 2 audio channels")
        default = "stethoscope" if kind == "audio" else "exam-camera"
        source = (sources or {}).get(index, default)
        out.append(IngestMedia(index, kind, name, pt, rate, nch, params, source))
    return out


def _codec_parameters(name: str, kind: str, pt: int, rate: int, ch: int) -> RTCRtpCodecParameters:
    params: dict[str, Any] = {}
    if name == "H264":
        params = {
            "packetization-mode": "1",
            "level-asymmetry-allowed": "1",
            "profile-level-id": "42e01f",
        }
    return RTCRtpCodecParameters(
        mimeType=f"{kind}/{'opus' if name == 'OPUS' else name}",
        clockRate=rate,
        channels=ch if kind == "audio" else None,
        payloadType=pt,
        parameters=params,
    )


@dataclass(slots=True)
class StreamStats:
    packets: int = 0
    bytes: int = 0
    bad_packets: int = 0
    decode_errors: int = 0
    frames_transcoded: int = 0
    last_arrival: float = 0.0
    sender: tuple[str, int] | None = field(default=None)


class _Transcoder:
    """Decode the device's RTP and re-encode it into the room's codec, off the event loop."""

    def __init__(
        self,
        media: IngestMedia,
        out: RTCRtpCodecParameters,
        deliver: Any,
        stats: StreamStats,
    ) -> None:
        self.in_codec = _codec_parameters(
            media.codec, media.kind, media.payload_type, media.clock_rate, media.channels
        )
        self.out = out
        self.video = media.kind == "video"
        self.jitter = JitterBuffer(capacity=128 if self.video else 16, is_video=self.video)
        self.decoder = get_decoder(self.in_codec)
        self.encoder = get_encoder(out)
        self.deliver = deliver
        self.stats = stats
        self.force_keyframe = False
        self.ssrc = random.randrange(1, 1 << 32)
        self.seq = random.randrange(0, 1 << 16)
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ingest")
        self.loop = asyncio.get_running_loop()
        self.backlog = 0

    def on_rtp(self, data: bytes) -> None:
        try:
            packet = depayloaded(data, self.in_codec)
        except ValueError:
            self.stats.bad_packets += 1
            return
        _, frame = self.jitter.add(packet)
        if frame is None:
            return
        if self.backlog > 30:  # the worker cannot keep up: drop rather than queue forever
            self.stats.decode_errors += 1
            return
        self.backlog += 1
        self.executor.submit(self._work, frame)

    def _work(self, encoded: Any) -> None:
        try:
            frames = self.decoder.decode(encoded)
            packets: list[bytes] = []
            for frame in frames:
                force, self.force_keyframe = self.force_keyframe, False
                payloads, timestamp = self.encoder.encode(frame, force)
                if timestamp is None:
                    continue
                self.stats.frames_transcoded += 1
                for i, payload in enumerate(payloads):
                    last = i == len(payloads) - 1
                    marker = 1 if last or not self.video else 0
                    ts = timestamp if self.video else timestamp + i * 960
                    self.seq = (self.seq + 1) & 0xFFFF
                    header = (
                        bytes((0x80, (marker << 7) | (self.out.payloadType or 0)))
                        + self.seq.to_bytes(2, "big")
                        + (ts & 0xFFFFFFFF).to_bytes(4, "big")
                        + self.ssrc.to_bytes(4, "big")
                    )
                    packets.append(header + payload)
        except Exception:
            self.stats.decode_errors += 1
            packets = []
        self.loop.call_soon_threadsafe(self._done, packets)

    def _done(self, packets: list[bytes]) -> None:
        self.backlog -= 1
        now = time.monotonic()
        for packet in packets:
            self.deliver(packet, now)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class _Port(asyncio.DatagramProtocol):
    def __init__(self, stream: IngestStream) -> None:
        self.stream = stream

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            self.stream.on_datagram(data, (str(addr[0]), int(addr[1])))
        except Exception:  # never let one device's bytes break the loop
            self.stream.stats.bad_packets += 1


class IngestStream:
    """One m-line: a UDP port, and the publication its packets feed."""

    def __init__(self, owner: IngestParticipant, media: IngestMedia, room_video: str) -> None:
        self.owner = owner
        self.media = media
        self.stats = StreamStats()
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.transcoder: _Transcoder | None = None
        if media.kind == "audio":
            target = "OPUS"
        else:
            target = room_video
        self.mode = "forward" if media.codec == target else "transcode"
        if self.mode == "forward":
            pt, rate, ch = media.payload_type, media.clock_rate, media.channels
            params: dict[str, Any] = dict(media.parameters)
            name = media.codec
        else:
            pt, rate, ch = OUT_PT[target], 48000 if target == "OPUS" else 90000, 2
            params = {}
            name = target
        out = _codec_parameters(name, media.kind, pt, rate, ch)
        if name == "H264":
            params = {**out.parameters, **params}
        config = owner.room.node.config
        self.publication = Publication(
            participant_id=owner.id,
            kind=media.kind,
            source=media.source,
            mid=str(media.index),
            codec=CodecInfo(
                mime_type=out.mimeType,
                clock_rate=rate,
                channels=ch if media.kind == "audio" else None,
                parameters=params,
                payload_type=pt,
                rtx_payload_type=0,
                nack=False,
            ),
            ssrc=None,
            rtx_ssrc=None,
            audio_level_id=0,
            cache_size=config.packet_cache_size,
            counters=owner.room.node.counters,
            send_rtcp=self._rtcp,
            rtcp_ssrc=random.randrange(1, 1 << 32),
            pli_throttle_s=config.pli_throttle_s,
        )
        self.publication.channels = media.channels if media.kind == "audio" else 1
        if self.mode == "transcode":
            self.transcoder = _Transcoder(media, out, self._deliver, self.stats)

    def _rtcp(self, data: bytes) -> bool:
        """Feedback the publication would send upstream: a PLI makes the transcoder's
        encoder emit a keyframe; a plain-RTP device has no feedback channel."""
        if self.transcoder is not None and len(data) > 1 and data[1] == 206:
            self.transcoder.force_keyframe = True
            return True
        return False

    async def open(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Port(self), local_addr=(host, 0)
        )
        self.transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])

    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        stats = self.stats
        if (
            len(data) < 12
            or data[0] >> 6 != 2
            or (data[1] & 0x7F) != self.media.payload_type
            or 72 <= (data[1] & 0x7F) <= 79  # RTCP on the RTP port
        ):
            stats.bad_packets += 1
            return
        if stats.sender is not None and addr != stats.sender and self.owner.state == "receiving":
            stats.bad_packets += 1  # latched to the first sender until the stream stalls
            return
        now = time.monotonic()
        stats.packets += 1
        stats.bytes += len(data)
        stats.last_arrival = now
        stats.sender = addr
        self.owner._stream_alive()
        if self.transcoder is not None:
            self.transcoder.on_rtp(data)
            return
        self._deliver(data, now)

    def _deliver(self, data: bytes, arrival: float) -> None:
        pub = self.publication
        if pub.closed:
            return
        ssrc = int.from_bytes(data[8:12], "big")
        if pub.ssrc != ssrc:
            pub.ssrc = ssrc
        pub.on_rtp(data, arrival)

    def info(self) -> dict[str, Any]:
        s = self.stats
        return {
            "index": self.media.index,
            "kind": self.media.kind,
            "source": self.media.source,
            "codec": self.media.codec,
            "room_codec": self.publication.codec.name,
            "mode": self.mode,
            "port": self.port,
            "packets": s.packets,
            "bytes": s.bytes,
            "bad_packets": s.bad_packets,
            "decode_errors": s.decode_errors,
            "frames_transcoded": s.frames_transcoded,
        }

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.transcoder is not None:
            self.transcoder.close()


class IngestParticipant(Emitter):
    """A publisher without a peer connection, wired into a room with `room.add_publisher`.

    Events: "publication" (Publication), "state" (waiting|receiving|stalled), "close" (reason).
    """

    role = Role.DEVICE

    def __init__(
        self,
        participant_id: str,
        room: Room,
        media: list[IngestMedia],
        *,
        stall_s: float = 3.0,
    ) -> None:
        super().__init__()
        self.id = participant_id or "p_" + secrets.token_hex(8)
        self.room = room
        self.video_codecs = frozenset({"VP8", "H264"})  # it decodes nothing: never a limit
        self.streams = [IngestStream(self, m, room.video_codec()) for m in media]
        self.publications: dict[str, Publication] = {}
        self.subscriptions: dict[str, Any] = {}
        self.modes = {"uplink": "video", "downlink": "video"}
        self.state = "waiting"
        self.stall_s = stall_s
        self._closed = False
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def connection_state(self) -> str:
        return self.state

    async def start(self, host: str) -> None:
        try:
            for stream in self.streams:
                await stream.open(host)
        except OSError:
            for stream in self.streams:
                stream.close()
            raise
        for stream in self.streams:
            pub = stream.publication
            self.publications[pub.track_id] = pub
            self.emit("publication", pub)
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    def _stream_alive(self) -> None:
        if self.state != "receiving":
            self._set_state("receiving")

    def _set_state(self, state: str) -> None:
        self.state = state
        logger.info("ingest %s: %s", self.id, state)
        self.emit("state", state)

    async def _watch(self) -> None:
        while not self._closed:
            await asyncio.sleep(min(1.0, self.stall_s / 3))
            if self.state != "receiving":
                continue
            last = max(s.stats.last_arrival for s in self.streams)
            if time.monotonic() - last > self.stall_s:
                self._set_state("stalled")

    # the parts of Participant's interface the room and the control plane use
    def subscribe(self, publication: Publication) -> None:
        """An ingest device receives nothing."""

    def link_stats(self) -> LinkStats:
        """Uplink loss (cumulative) and jitter from the RTP the device sent; no downlink."""
        stats = LinkStats()
        for pub in self.publications.values():
            s = pub.stats
            if not s.started:
                continue
            expected = s.expected
            loss = max(0, s.lost) / expected if expected > 0 else 0.0
            stats.uplink.loss = max(stats.uplink.loss, loss)
            jitter_ms = s.jitter / pub.codec.clock_rate * 1000
            stats.uplink.jitter_ms = max(stats.uplink.jitter_ms, jitter_ms)
        return stats

    def pending_offer(self) -> None:
        return None

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role.value,
            "connection": self.state,
            "ingest": [s.info() for s in self.streams],
            "tracks": [
                {"track_id": p.track_id, "kind": p.kind, "source": p.source, "codec": p.codec.name}
                for p in self.publications.values()
            ],
            "subscriptions": 0,
            "modes": dict(self.modes),
            "link": self.link_stats().as_dict(),
        }

    async def close(self, reason: CloseReason = CloseReason.LEFT) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for stream in self.streams:
            stream.close()
        for pub in list(self.publications.values()):
            await pub._parent_closed(reason)
        self.publications.clear()
        self.emit("close", reason)
        self.remove_all_listeners()

    async def _parent_closed(self, reason: CloseReason) -> None:
        await self.close(reason)
