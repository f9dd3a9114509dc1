"""The matrix run itself (inside the namespace): node, harness page server, driver, pairs.

`python -m compat inner ...` runs this; `compat run` (compat.cli) creates the loopback-only
namespace, starts this inside and removes everything it left there afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from compat import scenarios as sc
from compat.browsers import AIORTC, BrowserSpec
from compat.driver import Driver, DriverError
from compat.peers import AiortcPeer, BrowserPeer, Peer
from signaling.auth import encode_token

ROOT = Path(__file__).resolve().parents[1]
PAGES = Path(__file__).resolve().parent / "pages"
NODE_PORT = 8080
HARNESS_PORT = 8090
NODE = f"http://127.0.0.1:{NODE_PORT}"
HARNESS = f"http://127.0.0.1:{HARNESS_PORT}"
WS = f"ws://127.0.0.1:{NODE_PORT}/ws"


@dataclass
class RunOptions:
    pairs: list[tuple[str, str]]
    scenarios: list[sc.Scenario]
    browsers: dict[str, BrowserSpec]
    report_dir: Path
    sdp_dir: Path | None
    jobs: int = 1
    mode: str = "reduced"
    pair_scenarios: dict[str, list[sc.Scenario]] = field(default_factory=dict)
    fetch_errors: dict[str, str] = field(default_factory=dict)  # browser -> why unavailable


@dataclass
class Context:
    opts: RunOptions
    secret: str = field(default_factory=lambda: secrets.token_hex(24))
    api_key: str = field(default_factory=lambda: "compat-" + secrets.token_hex(12))
    driver: Driver = field(default_factory=Driver)
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: int = 0
    server_log: Path | None = None

    def token(self, room: str, role: str, sub: str) -> str:
        return encode_token(
            secret=self.secret, room=room, sub=sub, role=role, name=f"compat {role}"
        )


# -- the node and the harness page server -------------------------------------------------------


class Node:
    """`python -m signaling run --dev` on loopback (the namespace's only interface)."""

    def __init__(self, ctx: Context, log: Path) -> None:
        self.ctx = ctx
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: ASYNC220 (started once; not awaited on)
            [
                sys.executable,
                "-m",
                "signaling",
                "run",
                "--dev",
                "--host",
                "127.0.0.1",
                "--port",
                str(NODE_PORT),
                f"--token-secret={self.ctx.secret}",
                f"--api-key={self.ctx.api_key}",
                "--ice-host",
                "127.0.0.1",
                # media in-process as before (`signaling run` now defaults to a worker a
                # core); compat has not been run against workers yet
                "--workers=0",
            ],
            cwd=ROOT,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the node exited ({self.proc.returncode}); see {self.log}")
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with http.get(f"{NODE}/healthz", timeout=aiohttp.ClientTimeout(2)) as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.3)
        raise RuntimeError("the node did not answer /healthz within 60s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


async def create_room(ctx: Context, room: str, options: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{NODE}/api/v1/rooms",
            json={"id": room, **options},
            headers={"Authorization": f"Bearer {ctx.api_key}"},
            timeout=aiohttp.ClientTimeout(15),
        ) as r:
            if r.status != 201:
                raise sc.Failed(f"creating room with {options}: HTTP {r.status} {await r.text()}")


async def start_harness() -> web.AppRunner:
    """The harness page, and the node's own /client/* files served beside it (same origin)."""

    async def page(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(PAGES / "call.html", headers={"Cache-Control": "no-store"})

    async def client_file(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        async with request.app["http"].get(f"{NODE}/client/{name}") as r:
            body = await r.read()
            ctype = r.headers.get("Content-Type", "application/octet-stream").split(";")[0]
            return web.Response(
                status=r.status,
                body=body,
                content_type=ctype,
                headers={"Cache-Control": "no-store"},
            )

    async def on_startup(app: web.Application) -> None:
        app["http"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(15))

    async def on_cleanup(app: web.Application) -> None:
        await app["http"].close()

    app = web.Application()
    app.router.add_get("/compat/call.html", page)
    app.router.add_get("/client/{name}", client_file)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", HARNESS_PORT).start()
    return runner


# -- pairs and calls -------------------------------------------------------------------------


async def node_view(ctx: Context, room: str) -> dict[str, Any] | None:
    """The node's view of a room (REST API): members' media state, link stats and tracks."""
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{NODE}/api/v1/rooms/{room}",
            headers={"Authorization": f"Bearer {ctx.api_key}"},
            timeout=aiohttp.ClientTimeout(10),
        ) as r:
            if r.status != 200:
                return None
            info = await r.json()
    members = [
        {"role": p.get("role"), "state": p.get("state"), **p.get("media", {})}
        for p in info.get("participants", [])
    ]
    return {
        "video_codec": info.get("video_codec"),
        "participants": members,
        "tracks": info.get("tracks"),
    }


def cell(
    pair: str,
    scenario: str,
    status: str,
    seconds: float,
    error: str | None,
    evidence: dict[str, Any],
) -> dict[str, Any]:
    return {
        "pair": pair,
        "scenario": scenario,
        "status": status,
        "seconds": round(seconds, 1),
        "error": error,
        "evidence": evidence,
    }


class PairRun:
    def __init__(self, ctx: Context, pair: tuple[str, str], scenarios: list[sc.Scenario]) -> None:
        self.ctx = ctx
        self.a_name, self.b_name = pair
        self.label = f"{self.a_name}-{self.b_name}"
        self.scenarios = scenarios
        self.browser_ids: dict[str, str] = {}
        self.cells: list[dict[str, Any]] = []

    async def launch(self) -> None:
        for side, name in (("a", self.a_name), ("b", self.b_name)):
            if name == AIORTC:
                continue
            spec = self.ctx.opts.browsers[name]
            if why := self.ctx.opts.fetch_errors.get(name) or spec.missing():
                raise DriverError(f"{name}: {why}")
            ident = f"{self.label}-{side}"
            try:
                info = await self.ctx.driver.launch(ident, spec, timeout=90)
            except DriverError as exc:
                raise DriverError(f"{name} failed to launch: {exc}") from exc
            self.browser_ids[side] = ident
            self.ctx.versions[name] = {
                **info,
                "executable": spec.executable,
                "engine": spec.engine,
                "package_version": spec.version,
                "package": spec.package,
            }

    async def new_call(self, room_options: dict[str, Any] | None = None) -> sc.Call:
        self.ctx.calls += 1
        n = self.ctx.calls
        room = f"compat-{self.label}-{n}-{secrets.token_hex(3)}"
        if room_options:
            await create_room(self.ctx, room, room_options)

        def peer(side: str, name: str) -> Peer:
            if name == AIORTC:
                return AiortcPeer(NODE)
            return BrowserPeer(
                self.ctx.driver, self.browser_ids[side], name, f"call{n}-{side}", HARNESS, WS
            )

        return sc.Call(
            a=peer("a", self.a_name),
            b=peer("b", self.b_name),
            tokens=lambda role, sub: self.ctx.token(room, role, sub),
            room=room,
            a_sub=f"compat-doctor-{n}",
            b_sub=f"compat-patient-{n}",
        )

    async def close_call(self, call: sc.Call | None) -> None:
        """End the consultation (the doctor's `end`, the patient's `leave`), then close both
        sides, so that the node drops the call's media sessions before the next call starts
        instead of timing them out meanwhile. Errors are ignored: the call may be broken."""
        if call is None:
            return
        for peer, action in ((call.a, call.a.end), (call.b, call.b.leave)):
            with contextlib.suppress(Exception):
                if (call.last.get("a" if peer is call.a else "b") or {}).get("state") == "admitted":
                    await asyncio.wait_for(action(), 10)
        await asyncio.gather(call.a.close(), call.b.close(), return_exceptions=True)

    async def evidence_base(self, call: sc.Call | None) -> dict[str, Any]:
        ev: dict[str, Any] = {
            "browsers": {
                n: self.ctx.versions.get(n, {}).get("version", n)
                for n in (self.a_name, self.b_name)
            }
        }
        if call is not None:
            ev["room"] = call.room
        return ev

    async def failure_notes(self, call: sc.Call | None, ev: dict[str, Any]) -> None:
        if call is None:
            return
        with contextlib.suppress(Exception):
            ev["node_room"] = await node_view(self.ctx, call.room)
        for side, peer in (("a", call.a), ("b", call.b)):
            if isinstance(peer, BrowserPeer):
                lines = await peer.console()
                if lines:
                    ev.setdefault("console", {})[side] = lines[-15:]
                steps = await peer.debug_log()
                if steps:
                    ev.setdefault("negotiation_log", {})[side] = steps[-120:]
                diag = await peer.diagnose()
                if diag:
                    ev.setdefault("ice", {})[side] = diag
            if side in call.last:
                ev.setdefault("last_status", {})[side] = {
                    k: call.last[side].get(k)
                    for k in (
                        "state",
                        "connection",
                        "signaling",
                        "events",
                        "received",
                        "negotiations",
                    )
                }

    async def run_one(
        self, call: sc.Call, scen: sc.Scenario, state: dict[str, bool]
    ) -> dict[str, Any]:
        ev = await self.evidence_base(call)
        t0 = time.monotonic()

        async def body() -> None:
            if scen.name != "join-admit" and scen.setup_join and not state.get("joined"):
                try:
                    await sc.join_admit(call, {})
                except Exception as exc:
                    raise sc.Failed(f"setup (join and admission) failed: {exc}") from exc
                state["joined"] = True
            if (
                scen.name not in ("join-admit", "media")
                and scen.setup_media
                and not state.get("media")
            ):
                try:
                    await sc._media(call, {}, None)
                except Exception as exc:
                    raise sc.Failed(f"setup (media both ways) failed: {exc}") from exc
                state["media"] = True
            await scen.fn(call, ev)
            if scen.name == "join-admit":
                state["joined"] = True
            if scen.name == "media":
                state["media"] = True

        try:
            await asyncio.wait_for(body(), scen.limit_s)
            return cell(self.label, scen.name, "pass", time.monotonic() - t0, None, ev)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            msg = (
                f"timed out after {scen.limit_s:.0f}s"
                if isinstance(exc, TimeoutError)
                else str(exc)
            )
            if not msg:
                msg = repr(exc)
            await self.failure_notes(call, ev)
            return cell(self.label, scen.name, "fail", time.monotonic() - t0, msg, ev)

    async def run(self) -> list[dict[str, Any]]:
        try:
            await self.launch()
        except (DriverError, OSError) as exc:
            ev = {"browsers": {self.a_name: self.a_name, self.b_name: self.b_name}}
            for s in self.scenarios:
                self.report(cell(self.label, s.name, "fail", 0, str(exc), dict(ev)))
            await self.close_browsers()
            return self.cells
        try:
            call: sc.Call | None = None
            state: dict[str, bool] = {}
            for scen in [s for s in self.scenarios if s.kind == "main"]:
                if call is None:
                    call, state = await self.new_call(), {}
                result = await self.run_one(call, scen, state)
                self.report(result)
                if result["status"] != "pass" or scen.name == "leave":
                    await self.close_call(call)
                    call = None
            await self.close_call(call)
            for scen in [s for s in self.scenarios if s.kind == "fresh"]:
                try:
                    call = await self.new_call(scen.room)
                except Exception as exc:
                    self.report(cell(self.label, scen.name, "fail", 0, f"room: {exc}", {}))
                    continue
                try:
                    self.report(await self.run_one(call, scen, {}))
                finally:
                    await self.close_call(call)
        finally:
            await self.close_browsers()
        return self.cells

    def versions(self) -> dict[str, dict[str, str]]:
        """Each side's browser: engine and version (the Debian version, else the browser's)."""
        out = {}
        for side, name in (("a", self.a_name), ("b", self.b_name)):
            spec = self.ctx.opts.browsers.get(name)
            seen = self.ctx.versions.get(name, {}).get("version", "")
            out[side] = {
                "name": name,
                "engine": spec.engine if spec else AIORTC,
                "version": (spec.version if spec else "") or seen,
            }
        return out

    def report(self, result: dict[str, Any]) -> None:
        result["browsers"] = self.versions()
        self.cells.append(result)
        mark = "ok  " if result["status"] == "pass" else "FAIL"
        err = f"  {result['error'][:300]}" if result["error"] else ""
        print(
            f"  {mark} {self.label:<22} {result['scenario']:<12} {result['seconds']:6.1f}s{err}",
            flush=True,
        )

    async def close_browsers(self) -> None:
        for ident in self.browser_ids.values():
            with contextlib.suppress(Exception):
                await self.ctx.driver.call("close", 20, browser=ident)
        self.browser_ids.clear()


async def run_matrix(opts: RunOptions) -> dict[str, Any]:
    from compat import sdp

    ctx = Context(opts)
    opts.report_dir.mkdir(parents=True, exist_ok=True)
    ctx.server_log = opts.report_dir / "node.log"
    started = time.time()
    result: dict[str, Any] = {
        "mode": opts.mode,
        "started": started,
        "pairs": [f"{a}-{b}" for a, b in opts.pairs],
        "catalogue": {n: s.describe() for n, s in opts.browsers.items()},
        "fetch_errors": opts.fetch_errors,
        "scenarios": [{"name": s.name, "doc": s.doc, "core": s.core} for s in opts.scenarios],
        "cells": [],
        "sdp": [],
        "browsers": ctx.versions,
        "errors": [],
    }
    node = Node(ctx, ctx.server_log)
    harness: web.AppRunner | None = None
    try:
        await node.start()
        if opts.sdp_dir is not None:
            print("SDP suite (recorded offers of browsers that cannot run here):", flush=True)
            result["sdp"] = await sdp.run_suite(
                opts.sdp_dir, NODE, ctx.token, lambda room, o: create_room(ctx, room, o)
            )
        if opts.pairs and opts.scenarios:
            harness = await start_harness()
            try:
                await ctx.driver.start()
            except DriverError as exc:
                result["errors"].append(str(exc))
                for a, b in opts.pairs:
                    result["cells"] += [
                        cell(f"{a}-{b}", s.name, "fail", 0, str(exc), {}) for s in opts.scenarios
                    ]
            else:
                print("Browser matrix:", flush=True)
                sem = asyncio.Semaphore(max(1, min(2, opts.jobs)))

                async def one(pair: tuple[str, str]) -> list[dict[str, Any]]:
                    async with sem:
                        label = f"{pair[0]}-{pair[1]}"
                        only = opts.pair_scenarios.get(label, opts.scenarios)
                        return await PairRun(ctx, pair, only).run()

                for cells in await asyncio.gather(*(one(p) for p in opts.pairs)):
                    result["cells"] += cells
    except Exception as exc:
        result["errors"].append(f"{type(exc).__name__}: {exc}")
    finally:
        await ctx.driver.close()
        if harness is not None:
            await harness.cleanup()
        node.stop()
    result["finished"] = time.time()
    return result
