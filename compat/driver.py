"""Python side of the puppeteer-core driver (compat/driver/driver.mjs), JSON lines on a pipe.

The driver runs as a child of the run (inside its network namespace), so every browser it
launches is there too. Every call has a timeout; a driver that exits fails every pending call
with its exit status and the tail of its stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

from compat.browsers import BrowserSpec

DRIVER_DIR = Path(__file__).resolve().parent / "driver"
SCRIPT = DRIVER_DIR / "driver.mjs"


class DriverError(Exception):
    pass


def driver_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (make test installs nodejs and npm)"
    if not (DRIVER_DIR / "node_modules" / "puppeteer-core").is_dir():
        return f"puppeteer-core is not installed: run `npm ci --prefix {DRIVER_DIR}`"
    return None


class Driver:
    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._stderr: list[str] = []
        self._err_task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30) -> None:
        if why := driver_missing():
            raise DriverError(why)
        env = {**os.environ, "PUPPETEER_SKIP_DOWNLOAD": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            "node",
            str(SCRIPT),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=DRIVER_DIR,
            limit=64 * 1024 * 1024,
            start_new_session=True,
        )
        ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[0] = ready
        self._reader = asyncio.create_task(self._read())
        self._err_task = asyncio.create_task(self._read_err())
        try:
            await asyncio.wait_for(ready, timeout)
        except TimeoutError as exc:
            raise DriverError(f"driver did not start within {timeout:.0f}s") from exc

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                fut = self._pending.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        finally:
            code = await self.proc.wait()
            why = f"driver exited ({code}): {' | '.join(self._stderr[-5:])}"
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(DriverError(why))
            self._pending.clear()

    async def _read_err(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self._stderr.append(line.decode(errors="replace").rstrip()[:500])
            del self._stderr[:-50]

    async def call(self, op: str, timeout: float = 60, **fields: Any) -> dict[str, Any]:
        """Run one driver operation; the driver enforces `timeout`, we wait 10 s more."""
        if self.proc is None or self.proc.returncode is not None or self.proc.stdin is None:
            raise DriverError("driver is not running")
        ident = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = fut
        msg = {"id": ident, "op": op, "timeout": timeout, **fields}
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        try:
            await self.proc.stdin.drain()
            reply = await asyncio.wait_for(fut, timeout + 10)
        except TimeoutError as exc:
            raise DriverError(f"{op}: no reply from the driver within {timeout + 10:.0f}s") from exc
        finally:
            self._pending.pop(ident, None)
        if not reply.get("ok"):
            raise DriverError(f"{op}: {reply.get('error')}")
        result: dict[str, Any] = reply.get("result") or {}
        return result

    async def launch(self, ident: str, spec: BrowserSpec, timeout: float = 60) -> dict[str, Any]:
        return await self.call(
            "launch",
            timeout,
            browser=ident,
            engine=spec.engine,
            executable=spec.executable,
            args=spec.launch_args(),
            prefs=spec.launch_prefs(),
        )

    async def close(self) -> None:
        """Quit the driver (closing its browsers); kill it if it does not go."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.call("quit", timeout=15)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 5)
        for task in (self._reader, self._err_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self.proc = None
