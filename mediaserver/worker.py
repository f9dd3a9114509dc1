"""A media worker process: `python -m mediaserver.worker --fd N --parent PID`.

It runs a LocalMediaPlane (its own Node, rooms and slice of the UDP port range) on its own
event loop (uvloop when installed) and serves the control process (mediaserver/workers.py)
over one stream socket inherited as fd N. Frames are length-prefixed pickles (`write_frame`,
`read_frame`); nothing per packet crosses the channel, only:

control -> worker
    ("init", name, MediaConfig, refresh_s, heartbeat_s, log_level, log_format)   first frame
    ("cmd", id, Command)              answered by ("reply", id, ok, value, rooms)
    ("batch", id, [Command, ...])     run in order; ("reply", id, True, [(ok, value)], rooms)
    ("close", CloseReason)            close every room, answer ("closed",), exit
worker -> control
    ("ready", pid, WorkerSnapshot)    once the plane is started
    ("events", [MediaEvent], rooms)   in the order the plane produced them
    ("beat", WorkerSnapshot, rooms)   every heartbeat_s; `rooms` every refresh_s, else {}

`rooms` maps a room id to its RoomSnapshot (None: the room is gone): the rooms an event or a
command touched, sent before the events or the reply that depend on them, so the control
process's mirror is never older than what it is told. The worker exits when the control
process goes: end of file on the channel, and PR_SET_PDEATHSIG (SIGKILL) where available.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

from .api import Command, MediaEvent, MediaPlaneError, RoomSnapshot, WorkerSnapshot
from .config import MediaConfig
from .events import CloseReason
from .logs import configure_logging
from .plane import LocalMediaPlane

logger = logging.getLogger("mediaserver.worker")  # not `__main__` (run with -m)

HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20
PR_SET_PDEATHSIG = 1


def encode_frame(obj: object) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next frame's object; EOFError at the end of the stream."""
    try:
        header = await reader.readexactly(HEADER.size)
        (size,) = HEADER.unpack(header)
        if size > MAX_FRAME:
            raise EOFError(f"frame of {size} bytes")
        data = await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise EOFError("channel closed") from exc
    return pickle.loads(data)  # our own process on the other end


def picklable_error(exc: BaseException) -> BaseException:
    """The exception itself when it pickles (MediaPlaneError, NegotiationError, ...), else a
    MediaPlaneError naming it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return MediaPlaneError(f"{type(exc).__name__}: {exc}")
    return exc


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when the control process dies (Linux); exit if it already did."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if parent and os.getppid() != parent:
        os._exit(0)


class Worker:
    """Serves one LocalMediaPlane over the channel."""

    def __init__(
        self,
        name: str,
        plane: LocalMediaPlane,
        writer: asyncio.StreamWriter,
        *,
        refresh_s: float,
        heartbeat_s: float,
    ) -> None:
        self.name = name
        self.plane = plane
        self.writer = writer
        self.refresh_s = refresh_s
        self.heartbeat_s = heartbeat_s
        self._events: list[MediaEvent] = []
        self._dirty: set[str] = set()
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        plane.subscribe(self._on_event)

    # -- outgoing ---------------------------------------------------------------------------

    def send(self, obj: object) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode_frame(obj))

    def _room(self, room_id: str) -> RoomSnapshot | None:
        snapshot = self.plane.room(room_id)
        return None if snapshot is None else dataclasses.replace(snapshot, worker=self.name)

    def _rooms(self, room_ids: set[str]) -> dict[str, RoomSnapshot | None]:
        return {rid: self._room(rid) for rid in room_ids}

    def _on_event(self, event: MediaEvent) -> None:
        self._events.append(event)
        self._dirty.add(event.room_id)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Send the events produced so far, after the snapshots of the rooms they touched."""
        self._flush_scheduled = False
        if not self._events and not self._dirty:
            return
        events, self._events = self._events, []
        rooms = self._rooms(self._dirty)
        self._dirty = set()
        self.send(("events", events, rooms))

    def snapshot(self) -> WorkerSnapshot:
        worker = self.plane.snapshot().workers[0]
        return dataclasses.replace(worker, worker=self.name)

    async def heartbeat(self) -> None:
        refreshed = 0.0
        while True:
            rooms: dict[str, RoomSnapshot | None] = {}
            now = time.monotonic()
            if now - refreshed >= self.refresh_s:
                refreshed = now
                rooms = self._rooms(set(self.plane.node.rooms))
            self.send(("beat", self.snapshot(), rooms))
            await asyncio.sleep(self.heartbeat_s)

    # -- incoming ---------------------------------------------------------------------------

    async def serve(self, reader: asyncio.StreamReader) -> None:
        beat = asyncio.create_task(self.heartbeat())
        try:
            while True:
                try:
                    frame = await read_frame(reader)
                except (EOFError, ConnectionError):
                    logger.info("worker %s: control process gone", self.name)
                    return
                kind = frame[0]
                if kind == "cmd":
                    self._spawn(self._command(frame[1], frame[2]))
                elif kind == "batch":
                    self._spawn(self._batch(frame[1], frame[2]))
                elif kind == "close":
                    await self._close(frame[1])
                    return
        finally:
            beat.cancel()
            for task in list(self._tasks):
                task.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, command: Command[Any]) -> tuple[bool, Any]:
        try:
            return True, await self.plane.execute(command)
        except Exception as exc:
            return False, picklable_error(exc)
        finally:
            room_id = getattr(command, "room_id", None)
            if isinstance(room_id, str):
                self._dirty.add(room_id)

    async def _command(self, ref: int, command: Command[Any]) -> None:
        ok, value = await self._run(command)
        self._reply(ref, ok, value)

    async def _batch(self, ref: int, commands: Sequence[Command[Any]]) -> None:
        results = [await self._run(command) for command in commands]
        self._reply(ref, True, results)

    def _reply(self, ref: int, ok: bool, value: Any) -> None:
        rooms = self._rooms(self._dirty)
        self._dirty = set()
        events, self._events = self._events, []
        if events:  # they come before the reply, as in-process listeners run before it returns
            self.send(("events", events, rooms))
            rooms = {}
        try:
            frame = encode_frame(("reply", ref, ok, value, rooms))
        except Exception as exc:  # a value that does not pickle: an error instead
            frame = encode_frame(("reply", ref, False, picklable_error(exc), rooms))
        if not self.writer.is_closing():
            self.writer.write(frame)

    async def _close(self, reason: CloseReason) -> None:
        self._closing = True
        await self.plane.close(reason)
        self.flush()
        self.send(("closed",))
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()


async def run(fd: int, parent: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    init = await read_frame(reader)
    _, name, config, refresh_s, heartbeat_s, log_level, log_format = init
    configure_logging(logging.getLevelName(log_level), log_format, process=name)
    assert isinstance(config, MediaConfig)
    plane = LocalMediaPlane(config)
    await plane.start()
    worker = Worker(name, plane, writer, refresh_s=refresh_s, heartbeat_s=heartbeat_s)
    worker.send(("ready", os.getpid(), worker.snapshot()))
    logger.info("media worker %s ready (pid %d)", name, os.getpid())
    gc.collect()
    gc.freeze()  # as the node does (signaling/__main__.py): no full passes over the imports
    try:
        await worker.serve(reader)
    finally:
        if not plane.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(plane.close(CloseReason.SHUTDOWN), 5)
        writer.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mediaserver.worker", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="the channel to the control process")
    parser.add_argument("--parent", type=int, default=0, help="the control process's pid")
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    # A terminal's Ctrl-C and a service manager's SIGTERM to the whole group: the control
    # process decides (it closes each worker's rooms, then the channel; the worker follows).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        import uvloop

        uvloop.run(run(args.fd, args.parent))
    except ImportError:
        asyncio.run(run(args.fd, args.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
