"""ICE restart under a live RTCIceTransport: a fresh aioice Connection, the same DTLS session.

aiortc 1.16 keeps one aioice `Connection` per RTCIceTransport for its whole life: an offer
with new `a=ice-ufrag`/`a=ice-pwd` (a browser's `pc.restartIce()`) changes nothing, and the
answer repeats the old credentials (RFC 8445 section 9 wants new ones). `IceRestart` gives
the transport a second Connection with fresh local credentials and candidates, lets it
connect beside the old one, then moves the data path over and closes the old one. DTLS (its
keys, hence the SRTP contexts) and the SCTP association never notice: they only ever see
`RTCIceTransport._recv`/`_send` and one receive queue.

The seams (checked by tests/test_ice_restart.py):
- `RTCIceTransport._connection` and `RTCIceGatherer._connection` name the session that
  signaling describes (local credentials and candidates written into SDP, where remote
  candidates go): they point at the new Connection as soon as the restart offer arrives;
- `RTCIceTransport._recv`/`_send` carry DTLS/SCTP records: they move when it has connected;
- every Connection of the transport delivers into the same `_queue`, the one the DTLS reader
  waits on; a Connection that goes gets a queue of its own first, so that its `close()`
  (which wakes readers with None) does not end the DTLS session;
- `RTCIceTransport._monitor` (a failed Connection fails the transport) follows the new one.

Until the new Connection has connected, media keeps flowing on the old one. A restart that
does not connect within `timeout_s` (or fails) is dropped: the transport goes on with the old
Connection, as if no restart had been asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aioice import Connection
from aiortc.rtcicetransport import RTCIceTransport

logger = logging.getLogger(__name__)

Hook = Callable[[Connection], None]


class IceRestart:
    """ICE restarts of one RTCIceTransport (one at a time; a newer one replaces an unfinished one).

    install(conn): called on each new Connection before it gathers (the server binds its own
    sockets there, and routes SRTP). on_switch(conn): called when the data path moves to it.
    """

    def __init__(
        self,
        ice: RTCIceTransport,
        *,
        install: Hook | None = None,
        on_switch: Hook | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.ice = ice
        self.active: Connection = ice._connection  # carries DTLS, SRTP and SCTP
        self.pending: Connection | None = None  # described in SDP, still connecting
        self.timeout_s = timeout_s
        self.started = 0
        self.completed = 0
        self.failed = 0
        self._install = install
        self._on_switch = on_switch
        self._saved_end = False
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    def remote_changed(self, ufrag: str | None, pwd: str | None) -> bool:
        """Whether a remote description with these credentials restarts ICE."""
        conn = self.ice._connection
        return (
            bool(ufrag and pwd)
            and self.ice.state == "completed"  # connected once; else aiortc's start() still runs
            and conn.remote_username is not None
            and (ufrag, pwd) != (conn.remote_username, conn.remote_password)
        )

    async def prepare(self, *, controlling: bool, remote: tuple[str, str] | None = None) -> None:
        """A new Connection with fresh credentials, gathered; signaling now describes it."""
        if self._closed or self.ice.state == "closed":
            raise ConnectionError("ICE transport is closed")
        self._drop_pending()
        active = self.active
        conn = Connection(
            ice_controlling=controlling,
            stun_server=active.stun_server,
            turn_server=active.turn_server,
            turn_username=active.turn_username,
            turn_password=active.turn_password,
            turn_ssl=active.turn_ssl,
            turn_transport=active.turn_transport,
            use_ipv4=active._use_ipv4,
            use_ipv6=active._use_ipv6,
            transport_policy=active._transport_policy,
        )
        conn._queue = active._queue  # what the DTLS reader waits on, whichever path fills it
        try:
            if self._install is not None:
                self._install(conn)
            await conn.gather_candidates()
            if not conn.local_candidates:
                raise ConnectionError("no local ICE candidate")
        except BaseException:
            self._close_later(conn)
            raise
        if remote is not None:
            conn.remote_username, conn.remote_password = remote
        gatherer = self.ice.iceGatherer
        self._saved_end = gatherer._remote_candidates_end
        gatherer._remote_candidates_end = False  # the new session takes candidates again
        self.pending = conn
        self._describe(conn)
        self.started += 1

    def set_remote(self, ufrag: str, pwd: str) -> None:
        """The remote credentials of the pending restart (when we offered it)."""
        if self.pending is not None:
            self.pending.remote_username, self.pending.remote_password = ufrag, pwd

    def start(self) -> None:
        """Connect the pending Connection in the background; switch to it when connected."""
        conn = self.pending
        if conn is None or self._closed:
            return
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = asyncio.ensure_future(self._connect(conn))

    def abandon(self) -> None:
        """The pending restart goes (its description was refused, or it failed)."""
        conn = self.pending
        if conn is None:
            return
        self.pending = None
        self._describe(self.active)
        self.ice.iceGatherer._remote_candidates_end = self._saved_end
        self._close_later(conn)

    async def close(self) -> None:
        """Before the transport stops: the pending Connection and closing ones go too."""
        self._closed = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.abandon()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- internals --------------------------------------------------------------------------

    def _describe(self, conn: Connection) -> None:
        self.ice._connection = conn
        self.ice.iceGatherer._connection = conn

    def _drop_pending(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
        self.abandon()

    async def _connect(self, conn: Connection) -> None:
        try:
            await asyncio.wait_for(conn.connect(), self.timeout_s)
        except (ConnectionError, TimeoutError) as exc:
            if self.pending is conn:
                self.failed += 1
                logger.warning("ICE restart did not connect (%s): keeping the old session", exc)
                self.abandon()
            return
        if self.pending is conn and not self._closed and self.ice.state != "closed":
            self._switch(conn)

    def _switch(self, conn: Connection) -> None:
        """Move DTLS/SCTP records and media to `conn` (no await: nothing runs in between)."""
        ice: Any = self.ice
        old = self.active
        self.active = conn
        self.pending = None
        ice._recv = conn.recv
        ice._send = conn.send
        if self._on_switch is not None:
            self._on_switch(conn)
        monitor = ice._RTCIceTransport__monitor_task
        if monitor is not None:
            monitor.cancel()  # it waits on the old Connection, whose close must not fail us
        ice._RTCIceTransport__monitor_task = asyncio.ensure_future(ice._monitor())
        self.completed += 1
        logger.info("ICE restart completed")
        self._close_later(old)

    def _close_later(self, conn: Connection) -> None:
        conn._queue = asyncio.Queue()  # its close() wakes this queue's readers, not DTLS's
        task = asyncio.ensure_future(conn.close())
        self._closing.add(task)
        task.add_done_callback(self._closed_one)

    def _closed_one(self, task: asyncio.Task[None]) -> None:
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("closing a replaced ICE connection failed: %r", task.exception())
