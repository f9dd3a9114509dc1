"""Properties of the signaling messages' validation, checked with hypothesis.

Pure functions (signaling/protocol.py, the field checks of signaling/ws.py and
signaling/telemetry.py): any text or JSON value gives a parsed value or the documented error,
never another exception. Then on a live node (a real `signaling` app on loopback and a real
WebSocket): any JSON value for any message type, sent by an admitted doctor, is answered with
a reply or an `error` whose code is documented (never `internal`), and the socket stays open;
any first frame is answered with `joined` or closed with a 4xxx code (never 1011).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from signaling import telemetry
from signaling.app import AccessLogger, create_app
from signaling.auth import encode_token
from signaling.protocol import (
    CLIENT_TYPES,
    ErrorCode,
    ProtocolError,
    parse_codecs,
    parse_message,
    require_sdp,
    require_str,
)
from signaling.ws import _tracks_of_offer
from tests.conftest import SECRET, make_config
from tests.test_props_sdp import OFFERS, mutated

SETTINGS = settings(max_examples=200, deadline=None)
MAX_BYTES = 65536

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()  # NaN and Infinity too: Python's json writes and reads them
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "id",
    "type",
    "v",
    "token",
    "room",
    "resume",
    "codecs",
    "sdp",
    "tracks",
    "candidate",
    "participant",
    "text",
    "readings",
    "seq",
    "after",
]
now_ms = int(time.time() * 1000)
readings = st.lists(
    st.fixed_dictionaries(
        {"kind": st.sampled_from(telemetry.KINDS) | json_values},
        optional={
            "t": st.integers(now_ms - 10**6, now_ms + 10**6) | json_values,
            "unit": st.sampled_from(["%", "bpm", "Cel", "mm[Hg]", "mV"]),
            "value": st.floats(0, 400) | json_values,
            "systolic": st.integers(0, 400),
            "diastolic": st.integers(0, 400),
            "mean": st.floats(),
            "lead": st.sampled_from(sorted(telemetry.ECG_LEADS)),
            "rate": st.integers(200, 600),
            "samples": st.lists(st.floats(-20, 20), max_size=5) | json_values,
        },
    ),
    max_size=3,
)
tracks = st.lists(
    st.fixed_dictionaries(
        {"kind": st.sampled_from(["audio", "video", "text"]) | json_values},
        optional={
            "source": st.sampled_from(["camera", "microphone", "stethoscope", "x"]) | json_values,
            "channels": st.integers(0, 3) | json_values,
        },
    ),
    max_size=3,
)
# Each field: any JSON value, or one that gets past the first checks of some message type.
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "sdp": mutated(OFFERS) | st.just(OFFERS[0]),
    "tracks": tracks
    | st.dictionaries(st.sampled_from(["0", "1", "2"]), tracks.map(lambda t: t[0] if t else {})),
    "candidate": st.fixed_dictionaries(
        {"candidate": st.sampled_from(["", "candidate:1 1 udp 1 127.0.0.1 9 typ host", "x"])},
        optional={"sdpMid": st.sampled_from(["0", "1"]) | json_values},
    ),
    "participant": st.text(max_size=70),
    "text": st.text(max_size=50),
    "readings": readings,
    "seq": st.integers(-1, 2**54),
    "after": st.integers(-1, 10),
    "codecs": st.lists(st.sampled_from(["VP8", "h264", "x"]) | json_values, max_size=3),
}
# The fields each type needs, with plausible values (a valid message now and then).
NEEDS = {
    "offer": ["sdp", "tracks"],
    "answer": ["sdp"],
    "candidate": ["candidate"],
    "chat": ["text"],
    "admit": ["participant"],
    "deny": ["participant"],
    "kick": ["participant"],
    "publish": ["tracks"],
    "telemetry": ["readings", "seq"],
    "telemetry-history": ["after"],
    "join": ["token"],
}


def shaped(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    needs = NEEDS.get(kind, [])
    return st.fixed_dictionaries(
        {f: PLAUSIBLE.get(f, json_values) for f in needs[:1]},
        optional={f: PLAUSIBLE.get(f, json_values) for f in needs[1:]},
    )


fields = st.fixed_dictionaries(
    {}, optional={f: json_values | PLAUSIBLE.get(f, json_values) for f in FIELDS}
) | st.dictionaries(st.text(max_size=8), json_values, max_size=3)
nested = st.integers(1, 60000).map(lambda n: "[" * n + "]" * n) | st.integers(1, 30000).map(
    lambda n: '{"a":' * n + "1" + "}" * n
)


def message(kind: str, body: dict[str, Any], ref: object) -> dict[str, Any]:
    return {**body, "type": kind, "id": ref}


# -- pure validation -----------------------------------------------------------------------------


@SETTINGS
@given(st.one_of(st.text(max_size=200), json_values.map(json.dumps), nested))
@example("[" * 60000 + "]" * 60000)  # deeper than Python's recursion limit: bad-json
def test_parse_message_any_text(raw: str) -> None:
    try:
        msg = parse_message(raw, max_bytes=MAX_BYTES * 4)
    except ProtocolError as exc:
        assert exc.code in ErrorCode
        return
    assert msg["type"] in CLIENT_TYPES
    assert isinstance(msg["id"], str)


@SETTINGS
@given(st.sampled_from(sorted(CLIENT_TYPES)), fields, st.text(max_size=10))
def test_parse_message_keeps_a_valid_message(kind: str, body: dict[str, Any], ref: str) -> None:
    msg = message(kind, body, ref)
    assert parse_message(json.dumps(msg), max_bytes=MAX_BYTES * 4) == json.loads(json.dumps(msg))


@SETTINGS
@given(fields, st.sampled_from(FIELDS), st.none() | st.integers(0, 100))
def test_field_checks_raise_only_protocol_error(
    body: dict[str, Any], key: str, max_len: int | None
) -> None:
    msg = message("offer", body, "r1")
    sdp = msg.get("sdp")
    for check in (
        lambda: require_str(msg, key, max_len=max_len),
        lambda: require_sdp(msg),
        lambda: parse_codecs(msg),
        lambda: _tracks_of_offer(msg, sdp if isinstance(sdp, str) else ""),
    ):
        try:
            check()
        except ProtocolError as exc:
            assert exc.ref == "r1"


@SETTINGS
@given(json_values, json_values)
def test_telemetry_checks_raise_only_telemetry_error(readings: object, seq: object) -> None:
    for check in (
        lambda: telemetry.validate_batch(readings),
        lambda: telemetry.parse_device_seq(seq),
    ):
        try:
            check()
        except telemetry.TelemetryError:
            pass


# -- on a live node ------------------------------------------------------------------------------

# Types whose valid form ends the session under test (tested elsewhere): leave and end.
LIVE_TYPES = sorted(CLIENT_TYPES - {"leave", "end"})
DOCUMENTED = {code.value for code in ErrorCode} - {ErrorCode.INTERNAL.value} | {"rate-limited"}


class LiveNode:
    """A signaling app on 127.0.0.1 on its own event loop, driven from synchronous tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self.http: aiohttp.ClientSession | None = None
        self.url = ""

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 60))

    async def start(self) -> None:
        # a long peer timeout: the doctor never connects media during the test
        app = create_app(config=make_config(peer_timeout_s=600.0))
        self.runner = web.AppRunner(app, access_log_class=AccessLogger)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"ws://127.0.0.1:{self.runner.addresses[0][1]}/ws"
        self.http = aiohttp.ClientSession()

    async def connect(self, first: str) -> aiohttp.ClientWebSocketResponse:
        assert self.http is not None
        ws = await self.http.ws_connect(self.url)
        await ws.send_str(first)
        return ws

    async def join_as_doctor(self) -> aiohttp.ClientWebSocketResponse:
        room = secrets.token_hex(4)
        token = encode_token(
            secret=SECRET, room=room, sub="props-doctor", role="doctor", name="Dr", ttl_s=600
        )
        ws = await self.connect(json.dumps({"type": "join", "id": "j", "v": 1, "token": token}))
        while True:
            reply = await ws.receive_json(timeout=20)
            if reply.get("type") == "joined":
                return ws

    def close(self) -> None:
        async def stop() -> None:
            if self.http is not None:
                await self.http.close()
            if self.runner is not None:
                await self.runner.cleanup()

        self.loop.run_until_complete(stop())
        self.loop.close()


async def _reply(ws: aiohttp.ClientWebSocketResponse, ref: object) -> dict[str, Any]:
    """The reply to the message with id `ref` (an error with ref null when it was no string);
    server offers and notices in between are skipped."""
    want = ref if isinstance(ref, str) else None
    while True:
        frame = await ws.receive(timeout=20)
        assert frame.type == aiohttp.WSMsgType.TEXT, f"socket closed: {frame}"
        reply = json.loads(frame.data)
        if reply.get("ref") == want and reply.get("type") != "offer":
            if want is not None or reply.get("type") == "error":
                return reply


live = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("kind", LIVE_TYPES)
def test_every_message_type_on_a_live_node(kind: str) -> None:
    node = LiveNode()
    node.run(node.start())
    ws = node.run(node.join_as_doctor())
    counter = iter(range(10**9))
    try:

        @live
        @given(
            fields | shaped(kind),
            st.sampled_from(["string"] * 6 + ["other"]).flatmap(
                lambda r: st.just(r) if r == "string" else json_values
            ),
        )
        def check(body: dict[str, Any], ref: object) -> None:
            ref = f"m{next(counter)}" if ref == "string" else ref
            raw = json.dumps(message(kind, body, ref))

            async def exchange() -> dict[str, Any]:
                await ws.send_str(raw)
                return await _reply(ws, ref)

            reply = node.run(exchange())
            if reply["type"] == "error":
                assert reply["code"] in DOCUMENTED, (raw[:300], reply)

        check()
        # the session is still usable
        pong = node.run(_ping(ws))
        assert pong["type"] == "pong"
    finally:
        node.run(ws.close())
        node.close()


async def _ping(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    await ws.send_str(json.dumps({"type": "ping", "id": "last"}))
    return await _reply(ws, "last")


def test_any_first_frame_on_a_live_node() -> None:
    """Any first frame (text, JSON, a join with any fields) gets `joined` or a 4xxx close."""
    node = LiveNode()
    node.run(node.start())
    try:

        @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(
            st.one_of(
                st.text(max_size=50),
                json_values.map(json.dumps),
                fields.map(lambda body: json.dumps({"type": "join", "id": "j", **body})),
                nested,
            )
        )
        def check(first: str) -> None:
            async def exchange() -> tuple[str, int | None]:
                ws = await node.connect(first)
                try:
                    frame = await ws.receive(timeout=20)
                    if frame.type == aiohttp.WSMsgType.TEXT:
                        return json.loads(frame.data)["type"], None
                    return "closed", ws.close_code
                finally:
                    await ws.close()

            kind, code = node.run(exchange())
            assert kind == "joined" or (code is not None and 4000 <= code < 5000), (
                first[:300],
                kind,
                code,
            )

        check()
    finally:
        node.close()
