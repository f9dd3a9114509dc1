"""ConsultClient: a Python client of the signaling protocol (aiohttp WebSocket + aiortc).

Used by the tests and the load-test harness. It never sends its own offer: to publish it sends
`publish` and attaches its tracks to the recvonly transceivers of the server's next offer.

    client = ConsultClient("http://127.0.0.1:8080")
    await client.connect(token)
    await client.wait_state("admitted")
    await client.publish(video_track, audio_track)
    track = await client.wait_track(participant_id, "video")
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)

from mediaserver.rtc.jitter import install as install_skipping_jitter_buffer
from mediaserver.rtc.peer import bundle_data_channel, set_sender_enabled, watch_inbound

from .tcp import cap_retransmissions

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 15.0
TERMINAL_STATES = frozenset({"denied", "kicked", "ended", "left", "closed"})


MAX_REDIRECTS = 3
NODE_CONNECT_TIMEOUT_S = 5.0  # connecting to a node a redirect named (not the entry address)


class ServerError(Exception):
    """The server answered a request with `error`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class JoinRefused(Exception):
    """The server closed the socket instead of answering `join`."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"join refused ({code}): {reason}")
        self.code = code
        self.reason = reason


class ConsultClient:
    def __init__(
        self,
        base_url: str,
        *,
        codecs: list[str] | None = None,
        http: aiohttp.ClientSession | None = None,
        auto_answer: bool = True,
        auto_reconnect: bool = False,
        ice_transport_policy: str = "all",
    ) -> None:
        """`auto_answer=False` leaves server offers unanswered (tests of glare use it).

        `ice_transport_policy="relay"` gathers and uses relay candidates only: every media
        packet goes through the TURN server `joined` names (docs/turn.md); "all" (the
        default) uses host candidates too, as a browser does.

        `auto_reconnect=True` resumes a dropped socket with the resume token, restarts the
        media connection when it fails or nothing arrives for `media_timeout_s` (`reconnect`),
        and obeys the server's `pause` (bandwidth fallback) by stopping those senders. The
        server's `media-timeout` error (a connection that never connected) restarts the media
        connection in any case (unless `auto_answer=False`).
        """
        self.ws_url = base_url.rstrip("/").replace("http", "ws", 1) + "/ws"
        # In a fleet the room may be on another node (`redirect`); if that node dies, the
        # client comes back through the address it was given, which sends it on again.
        self.entry_url = self.ws_url
        self.redirects = 0
        self.codecs = codecs
        self.auto_answer = auto_answer
        self.ice_transport_policy = RTCIceTransportPolicy(ice_transport_policy)
        self._http = http
        self._own_http = http is None
        self._ids = itertools.count(1)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._changed = asyncio.Condition()
        self.messages: list[dict[str, Any]] = []
        self._taken: set[int] = set()
        self.token: str | None = None
        self.state = "new"
        self.participant_id: str | None = None
        self.room: str | None = None
        self.resume_token: str | None = None
        self.ice_servers: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self.pc: RTCPeerConnection | None = None
        self.channel: RTCDataChannel | None = None
        self.data_messages: list[str] = []
        self._publish_queue: list[tuple[str, MediaStreamTrack]] = []
        self._track_meta: dict[str, dict[str, Any]] = {}
        self.remote_tracks: dict[tuple[str, str], MediaStreamTrack] = {}
        self._negotiation = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.negotiations = 0
        # -- automatic reconnection and bandwidth fallback (issue 5) --
        self.auto_reconnect = auto_reconnect
        self.media_timeout_s = 8.0
        self.heartbeat_s = 20.0  # shorter closes sockets that a slow link would still carry
        self.rto_max_ms = 1000  # the socket's TCP retransmission ceiling (signaling/tcp.py)
        self._media_started = 0.0
        self._media_wanted = False
        self.modes: dict[tuple[str, str], dict[str, Any]] = {}
        self.paused_sources: set[str] = set()
        self.reconnects = 0
        self.resumes = 0
        self._published: list[tuple[str, MediaStreamTrack]] = []
        self._publish_items: list[dict[str, Any]] = []  # what `publish` asked, to ask again
        self._fresh_participant = False  # the server forgot our media (rejoined, or moved)
        self._sender_sources: dict[Any, str] = {}
        self._last_inbound = 0.0
        self._watchdog: asyncio.Task[None] | None = None
        self._recovering: asyncio.Task[None] | None = None
        self._closing = False
        # -- end --

    # -- connection ---------------------------------------------------------------------------

    async def connect(self, token: str, *, resume: str | None = None) -> dict[str, Any]:
        """Open the socket and join; returns `joined`. Raises JoinRefused on a close."""
        self.token = token
        join: dict[str, Any] = {"type": "join", "id": self._next_id(), "v": 1, "token": token}
        if resume:
            join["resume"] = resume
        if self.codecs:
            join["codecs"] = self.codecs
        return await self.connect_raw(join)

    async def connect_raw(self, join: dict[str, Any]) -> dict[str, Any]:
        """Open the socket and send `join` as given (tests use it for bad joins)."""
        return await self.connect_raw_text(json.dumps(join), ref=join.get("id"))

    async def connect_raw_text(self, first: str, *, ref: Any = None) -> dict[str, Any]:
        """Open the socket, send `first` as the first frame, wait for the reply to `ref`;
        a `redirect` (the room is on another node) is followed, MAX_REDIRECTS at most."""
        for _ in range(MAX_REDIRECTS):
            reply = await self._connect_once(first, ref=ref)
            if reply.get("type") != "redirect":
                return reply
            url = reply.get("url")
            if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
                raise JoinRefused(self.close_code, "bad redirect")
            await self.drop()
            self.ws_url = url
            self.redirects += 1
        raise JoinRefused(self.close_code, "too many redirects")

    async def _connect_once(self, first: str, *, ref: Any = None) -> dict[str, Any]:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        self.close_code = None
        self.close_reason = ""
        heartbeat = self.heartbeat_s if self.auto_reconnect else None
        # Bounded: over a dead or saturated link the TCP handshake alone can hang for minutes.
        # Once `join` is sent the reply is awaited (should it be lost anyway, the server still
        # takes the same resume token again: docs/protocol.md, "Resume").
        # A node we were sent to that does not answer (its machine is gone) is given up on
        # sooner: the entry address sends us to the room's node again.
        limit = DEFAULT_TIMEOUT_S if self.ws_url == self.entry_url else NODE_CONNECT_TIMEOUT_S
        self.ws = await asyncio.wait_for(
            self._http.ws_connect(self.ws_url, autoping=True, heartbeat=heartbeat), limit
        )
        # A `pause` or chat sent on a link that was congested goes within about a second
        # of its clearing, not after TCP's backoff (signaling/tcp.py).
        cap_retransmissions(self.ws.get_extra_info("socket"), self.rto_max_ms)
        future = self._expect(ref if isinstance(ref, str) else "\0no-ref")
        await self.ws.send_str(first)
        self._reader = asyncio.create_task(self._read(self.ws))
        waiting: set[asyncio.Future[Any]] = {future, self._reader}
        done, _ = await asyncio.wait(
            waiting, timeout=DEFAULT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if future in done and not future.exception():
            return future.result()
        future.cancel()
        if self._reader in done or future.done():
            raise JoinRefused(self.close_code, self.close_reason)
        raise TimeoutError("no answer to join")

    async def resume(self) -> dict[str, Any]:
        """Reconnect after a dropped socket with the last resume token."""
        assert self.token is not None and self.resume_token is not None
        return await self.connect(self.token, resume=self.resume_token)

    async def drop(self) -> None:
        """Lose the socket without `leave` (what a network failure looks like to the server)."""
        ws = self.ws
        if ws is not None:
            await ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader

    async def close(self) -> None:
        """Close everything locally (no `leave`)."""
        self._closing = True
        for task in (self._watchdog, self._recovering):
            if task is not None:
                task.cancel()
        await self.drop()
        for task in list(self._tasks):
            task.cancel()
        if self.pc is not None:
            await self.pc.close()
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None

    def _next_id(self) -> str:
        return f"c{next(self._ids)}"

    def _expect(self, ref: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        return future

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.ws is not None, "not connected"
        await self.ws.send_str(json.dumps(msg))

    async def send_raw(self, text: str) -> None:
        assert self.ws is not None, "not connected"
        await self.ws.send_str(text)

    async def request(
        self, kind: str, timeout_s: float = DEFAULT_TIMEOUT_S, **fields: Any
    ) -> dict[str, Any]:
        """Send a message and wait for the reply carrying its ref; raise ServerError on error."""
        msg = {"type": kind, "id": self._next_id(), **fields}
        future = self._expect(msg["id"])
        await self.send(msg)
        try:
            reply = await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(msg["id"], None)
        if reply.get("type") == "error":
            raise ServerError(reply.get("code", ""), reply.get("message", ""))
        return reply

    # -- reading ------------------------------------------------------------------------------

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            while True:
                frame = await ws.receive()
                if frame.type == aiohttp.WSMsgType.TEXT:
                    await self._handle(json.loads(frame.data))
                    continue
                if frame.type == aiohttp.WSMsgType.CLOSE:
                    if ws is self.ws:
                        self.close_reason = str(frame.extra or "")
                    await ws.close()
                break
        finally:
            if ws is self.ws:
                self.close_code = ws.close_code
                if self.state not in TERMINAL_STATES and self.close_code in (4003, 4004, 4005):
                    self.state = {4003: "denied", 4004: "kicked", 4005: "ended"}[self.close_code]
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("socket closed"))
            self._pending.clear()
            async with self._changed:
                self._changed.notify_all()
            if ws is self.ws and self._should_recover():
                self._start_recovery(media=False)

    async def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "joined":
            self.participant_id = msg["participant"]["id"]
            self.room = msg["room"]
            self.resume_token = msg["resume"]
            self.ice_servers = msg.get("iceServers") or []
            self.state = msg["state"]
        elif kind == "waiting":
            self.state = "waiting"
        elif kind == "admitted":
            self.state = "admitted"
            self._ensure_pc()
        elif kind in ("denied", "kicked", "ended"):
            self.state = kind
        elif kind == "offer" and self.auto_answer:
            self._spawn(self._answer_offer(msg))
        elif kind == "mode":
            self.modes[(str(msg.get("participant")), str(msg.get("direction")))] = msg
        elif kind == "pause":
            self.paused_sources = {str(s) for s in msg.get("sources") or []}
            self._apply_pause()
        elif kind == "error" and msg.get("code") == "media-timeout":
            self._on_media_timeout()
        elif kind == "redirect" and msg.get("ref") is None:  # the room moves (drain, stop)
            url = msg.get("url")
            if isinstance(url, str) and url.startswith(("ws://", "wss://")):
                self.ws_url = url  # the socket closes (4011): the resume goes there
                self._media_wanted = True
                # aiortc stops a sender's track when its transport closes (the old node
                # closes it): take ours off first, the connection on the new node sends them.
                if self.pc is not None:
                    for transceiver in self.pc.getTransceivers():
                        transceiver.sender.replaceTrack(None)
        ref = msg.get("ref")
        if ref is not None and ref in self._pending:
            future = self._pending.pop(ref)
            if not future.done():
                future.set_result(msg)
        async with self._changed:
            self.messages.append(msg)
            self._changed.notify_all()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._spawned_done)

    def _spawned_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        if self._closing:  # an answer in flight as the client closed: its socket is gone
            logger.debug("client task ended as the client closed: %r", task.exception())
        else:
            logger.warning("client task failed: %r", task.exception())

    async def wait_for(
        self,
        kind: str,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Return the first not-yet-taken received message of `kind` matching `predicate`."""

        def find() -> dict[str, Any] | None:
            for i, msg in enumerate(self.messages):
                if i in self._taken or msg.get("type") != kind:
                    continue
                if predicate is None or predicate(msg):
                    self._taken.add(i)
                    return msg
            return None

        async def wait() -> dict[str, Any]:
            async with self._changed:
                while True:
                    found = find()
                    if found is not None:
                        return found
                    await self._changed.wait()

        return await asyncio.wait_for(wait(), timeout_s)

    def received(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    async def wait_state(self, state: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: self.state == state)

        await asyncio.wait_for(wait(), timeout_s)

    async def wait_closed(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> int | None:
        if self._reader is not None:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout_s)
        return self.close_code

    # -- requests -----------------------------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        return await self.request("ping")

    async def chat(self, text: str) -> dict[str, Any]:
        return await self.request("chat", text=text)

    async def chat_history(
        self, before: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """A page of older chat: `{messages (oldest first), more}`. `before` is the id of the
        oldest message held (`room` carries the newest page; `chat_more` says if there is
        more); None gives the newest page."""
        fields: dict[str, Any] = {}
        if before is not None:
            fields["before"] = before
        if limit is not None:
            fields["limit"] = limit
        return await self.request("chat-history", **fields)

    async def admit(self, participant: str) -> dict[str, Any]:
        return await self.request("admit", participant=participant)

    async def deny(self, participant: str) -> dict[str, Any]:
        return await self.request("deny", participant=participant)

    async def kick(self, participant: str) -> dict[str, Any]:
        return await self.request("kick", participant=participant)

    async def end(self) -> dict[str, Any]:
        return await self.request("end")

    async def leave(self) -> None:
        self.state = "left"
        await self.send({"type": "leave", "id": self._next_id()})
        await self.wait_closed()

    # -- media --------------------------------------------------------------------------------

    def _ensure_pc(self) -> RTCPeerConnection:
        if self.pc is None:
            servers = [
                RTCIceServer(
                    urls=s["urls"], username=s.get("username"), credential=s.get("credential")
                )
                for s in self.ice_servers
            ]
            self.pc = RTCPeerConnection(
                RTCConfiguration(
                    iceServers=servers,
                    bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
                    iceTransportPolicy=self.ice_transport_policy,
                )
            )
            self.channel = self.pc.createDataChannel("consult", negotiated=True, id=0)
            # aiortc max-bundle bug: see mediaserver/rtc/peer.py bundle_data_channel.
            bundle_data_channel(self.pc)
            self.channel.on("message", self._on_data)
            self.pc.on("track", self._on_track)
            if self.auto_reconnect:  # issue 5
                self._media_started = time.monotonic()
                self._last_inbound = 0.0
                watch_inbound(self.pc, self._inbound)
                if self._watchdog is None or self._watchdog.done():
                    self._watchdog = asyncio.get_running_loop().create_task(self._watch_media())
        return self.pc

    def _on_data(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self.data_messages.append(message)

    def send_data(self, text: str) -> None:
        assert self.channel is not None
        self.channel.send(text)

    async def publish(
        self,
        *tracks: MediaStreamTrack,
        sources: list[str] | None = None,
        settings: list[dict[str, Any] | None] | None = None,
    ) -> None:
        """Ask the server to receive these tracks; they go out with the next server offer.

        `settings` (one per track, None for none): what an audio track's capture does, e.g.
        `{"echoCancellation": False, "noiseSuppression": False, "autoGainControl": False,
        "channelCount": 2, "sampleRate": 48000}` (docs/devices.md); a stethoscope published
        without it is flagged `capture-unverified` to the doctor.
        """
        if sources is None:
            sources = ["microphone" if t.kind == "audio" else "camera" for t in tracks]
        per_track = settings if settings is not None else [None] * len(tracks)
        self._ensure_pc()
        for track, source in zip(tracks, sources, strict=True):
            self._publish_queue.append((source, track))
            self._published.append((source, track))
        items: list[dict[str, Any]] = []
        for t, s, capture in zip(tracks, sources, per_track, strict=True):
            items.append({"kind": t.kind, "source": s})
            if capture is not None:
                items[-1]["settings"] = capture
        self._publish_items.extend(items)
        await self.request("publish", tracks=items)

    def _take_track(self, kind: str, source: str | None) -> MediaStreamTrack | None:
        for i, (src, track) in enumerate(self._publish_queue):
            if track.kind == kind and (source is None or src == source):
                del self._publish_queue[i]
                return track
        return None

    async def _answer_offer(self, msg: dict[str, Any]) -> None:
        async with self._negotiation:
            pc = self._ensure_pc()
            tracks: dict[str, dict[str, Any]] = msg.get("tracks") or {}
            self._track_meta.update(tracks)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=msg["sdp"], type="offer"))
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "video":  # a lost packet must not stall decoding
                    install_skipping_jitter_buffer(transceiver.receiver)
                if transceiver.receiver.track is not None:  # a recycled m-line: a new source
                    self._label_track(transceiver, transceiver.receiver.track)
                meta = tracks.get(transceiver.mid or "")
                if meta is None or meta.get("direction") != "recvonly":
                    continue
                if transceiver.sender.track is not None:
                    continue
                track = self._take_track(transceiver.kind, meta.get("source"))
                track = track or self._take_track(transceiver.kind, None)
                if track is not None:
                    transceiver.sender.replaceTrack(track)
                    transceiver.direction = "sendonly"
                    self._sender_sources[transceiver.sender] = str(meta.get("source"))
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
            await self.request("answer", sdp=pc.localDescription.sdp)
            self.negotiations += 1
            self._apply_pause()
            async with self._changed:
                self._changed.notify_all()

    def _on_track(self, track: MediaStreamTrack) -> None:
        assert self.pc is not None
        for transceiver in self.pc.getTransceivers():
            if transceiver.receiver.track is track:
                self._label_track(transceiver, track)
        self._spawn(self._notify())

    def _label_track(self, transceiver: RTCRtpTransceiver, track: MediaStreamTrack) -> None:
        """File a received track under the participant and source its mid carries now.

        The server recycles the m-line of a closed subscription for a new one (the same mid,
        another participant's source): aiortc fires no `track` again for it (its receiver
        keeps its track), so each server offer files the track anew, under the new source
        only."""
        meta = self._track_meta.get(transceiver.mid or "")
        if meta is None or not meta.get("participant") or meta.get("direction") == "recvonly":
            return
        key = (str(meta["participant"]), str(meta.get("source") or track.kind))
        if self.remote_tracks.get(key) is track:
            return
        for stale in [k for k, t in self.remote_tracks.items() if t is track]:
            del self.remote_tracks[stale]
        self.remote_tracks[key] = track

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_track(
        self, participant: str, kind: str, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> MediaStreamTrack:
        """The received track of `participant` with this kind (any source)."""

        def find() -> MediaStreamTrack | None:
            for (pid, _source), track in self.remote_tracks.items():
                if pid == participant and track.kind == kind:
                    return track
            return None

        async def wait() -> MediaStreamTrack:
            async with self._changed:
                await self._changed.wait_for(lambda: find() is not None)
            found = find()
            assert found is not None
            return found

        return await asyncio.wait_for(wait(), timeout_s)

    # -- automatic reconnection and bandwidth fallback (issue 5) --------------------------------

    def _should_recover(self) -> bool:
        return (
            self.auto_reconnect
            and not self._closing
            and self.state not in TERMINAL_STATES
            and self.token is not None
            and self.resume_token is not None
        )

    def _start_recovery(self, *, media: bool) -> None:
        if media:
            self._media_wanted = True
        if self._recovering is None or self._recovering.done():
            self._recovering = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """Resume the socket if it is gone, then restart the media connection if wanted."""
        delay = 0.5
        while self._should_recover():
            try:
                if self.ws is None or self.ws.closed:
                    joined = await self.resume()
                    self.resumes += 1
                    if not joined.get("resumed"):
                        logger.warning("resume refused: joined again as a new participant")
                        self._media_wanted = self._fresh_participant = True
                    elif joined.get("moved"):  # the room moved to another node
                        self._media_wanted = self._fresh_participant = True
                if self._media_wanted and self.state == "admitted":
                    try:
                        await self._restart_media()
                    except (TimeoutError, ConnectionError):
                        # No answer on this socket either: it is dead too (an address change).
                        if self.ws is not None:
                            await self.ws.close()
                        raise
                    self._media_wanted = False
                return
            except JoinRefused as exc:
                if exc.code is not None and 4000 <= exc.code < 5000:
                    logger.warning("reconnection refused (%s): giving up", exc.code)
                    return
                logger.info("reconnection failed: %s", exc)
            except Exception as exc:
                logger.info("reconnection failed: %r", exc)
                if isinstance(exc, OSError | TimeoutError) and self.ws_url != self.entry_url:
                    self.ws_url = self.entry_url  # the room's node is gone: ask the entry
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _restart_media(self) -> None:
        """A fresh peer connection (aiortc does no ICE restart): the server offers on it."""
        async with self._negotiation:
            old, self.pc, self.channel = self.pc, None, None
            if old is not None:
                old.remove_all_listeners()
                for transceiver in old.getTransceivers():
                    # aiortc stops a sender's track when its sender stops: keep ours alive.
                    transceiver.sender.replaceTrack(None)
                with contextlib.suppress(Exception):
                    await old.close()
            self._sender_sources.clear()
            self.remote_tracks.clear()  # the old connection's tracks end with it
            self._publish_queue = list(self._published)
            self._ensure_pc()
        self.reconnects += 1
        logger.info("restarting the media connection (%d)", self.reconnects)
        await self.request("reconnect")
        if self._fresh_participant and self._publish_items:  # it publishes nothing yet
            await self.request("publish", tracks=self._publish_items)
        self._fresh_participant = False

    def _on_media_timeout(self) -> None:
        """The server closed a media connection that never connected: start a fresh one
        (`reconnect`), with or without `auto_reconnect`, as long as we answer offers."""
        if self._closing or self.state != "admitted" or not self.auto_answer:
            return
        if self._should_recover():
            self._start_recovery(media=True)  # retried until it works
        else:
            self._spawn(self._restart_media_once())

    async def _restart_media_once(self) -> None:
        try:
            await self._restart_media()
        except Exception as exc:
            logger.info("media restart failed: %r", exc)

    def _inbound(self) -> None:
        self._last_inbound = time.monotonic()

    async def _watch_media(self) -> None:
        """Restart the media connection when ICE fails or nothing arrives for a while."""
        while not self._closing:
            await asyncio.sleep(0.5)
            pc = self.pc
            if pc is None or self.state != "admitted":
                continue
            if self._recovering is not None and not self._recovering.done():
                continue
            watch_inbound(pc, self._inbound)  # the connections added since the last pass
            now = time.monotonic()
            ice = pc.iceConnectionState
            silent = self._last_inbound > 0 and now - self._last_inbound > self.media_timeout_s
            stuck = ice in ("new", "checking") and now - self._media_started > 20
            if ice in ("failed", "closed") or silent or (stuck and self._published):
                if self._should_recover():
                    logger.info("media connection lost (ice %s, silent %s)", ice, silent)
                    self._start_recovery(media=True)

    def _apply_pause(self) -> None:
        """Stop (or resume) the senders of the sources the server paused (bandwidth fallback).

        aiortc's sender then drops frames before encoding them (`set_sender_enabled`). Like a
        browser page, the client obeys `pause` and nothing else: no guess of its own."""
        for sender, source in self._sender_sources.items():
            set_sender_enabled(sender, source not in self.paused_sources)
