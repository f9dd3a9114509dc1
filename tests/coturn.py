"""A real coturn for the tests: its process on loopback, and a minimal TURN client over UDP.

`Coturn` runs Debian's `turnserver` with a generated configuration: the TURN REST API
(`use-auth-secret`, `static-auth-secret`), loopback only (`listening-ip`, `relay-ip`), peers on
loopback allowed (coturn refuses them by default, and the node under test is on 127.0.0.1),
no TLS, DTLS, CLI or web admin, the log on stdout (a file the tests read).

`TurnClient` speaks just enough STUN/TURN (RFC 8489, RFC 8656), written here from the RFCs
rather than taken from aioice, so that it checks the node's credentials independently of the
aiortc stack under test: Binding (is the server up?), Allocate with the long-term credential
mechanism (first unauthenticated, answered 401 with a realm and a nonce, then with
MESSAGE-INTEGRITY) and Refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import os
import secrets
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

MAGIC_COOKIE = 0x2112A442
BINDING, ALLOCATE, REFRESH = 0x0001, 0x0003, 0x0004
SUCCESS, ERROR = 0x0100, 0x0110  # class bits of a response, or-ed into the method
# attributes
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE, LIFETIME = 0x0006, 0x0008, 0x0009, 0x000D
REALM, NONCE, REQUESTED_TRANSPORT = 0x0014, 0x0015, 0x0019
UDP = 17


@dataclasses.dataclass
class Response:
    """A STUN response: its type, and its attributes by type (the first of each)."""

    type: int
    attributes: dict[int, bytes]

    @property
    def success(self) -> bool:
        return self.type & 0x0110 == SUCCESS

    @property
    def error_code(self) -> int | None:
        value = self.attributes.get(ERROR_CODE)
        if value is None:
            return None
        return (value[2] & 0x07) * 100 + value[3]


def _attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + bytes(-len(value) % 4)


def encode(
    method: int, transaction: bytes, attributes: list[tuple[int, bytes]], *, key: bytes | None
) -> bytes:
    """A STUN request; with `key`, MESSAGE-INTEGRITY (HMAC-SHA1) last."""
    body = b"".join(_attribute(kind, value) for kind, value in attributes)
    if key is None:
        return struct.pack("!HHI", method, len(body), MAGIC_COOKIE) + transaction + body
    # the length the HMAC covers counts the MESSAGE-INTEGRITY attribute (4 + 20 bytes)
    header = struct.pack("!HHI", method, len(body) + 24, MAGIC_COOKIE) + transaction
    digest = hmac.new(key, header + body, hashlib.sha1).digest()
    return header + body + _attribute(MESSAGE_INTEGRITY, digest)


def decode(data: bytes) -> tuple[bytes, Response]:
    """(transaction id, response) of a STUN message."""
    kind, length, cookie = struct.unpack("!HHI", data[:8])
    if cookie != MAGIC_COOKIE or len(data) < 20 + length:
        raise ValueError("not a STUN message")
    attributes: dict[int, bytes] = {}
    offset = 20
    while offset + 4 <= 20 + length:
        attr, size = struct.unpack("!HH", data[offset : offset + 4])
        attributes.setdefault(attr, data[offset + 4 : offset + 4 + size])
        offset += 4 + size + (-size % 4)
    return data[8:20], Response(kind, attributes)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: dict[bytes, asyncio.Future[Response]] = {}

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(ValueError, struct.error):
            transaction, response = decode(data)
            future = self.waiting.pop(transaction, None)
            if future is not None and not future.done():
                future.set_result(response)


class TurnClient:
    """One UDP socket towards a TURN server (one 5-tuple: one allocation at most)."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol = _Protocol()
        self.realm = b""
        self.nonce = b""
        self.key: bytes | None = None
        self.username = b""

    async def __aenter__(self) -> TurnClient:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: self._protocol, remote_addr=self.server
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._transport is not None:
            self._transport.close()

    async def request(
        self,
        method: int,
        attributes: list[tuple[int, bytes]],
        *,
        key: bytes | None = None,
        timeout_s: float = 2.0,
        tries: int = 5,
    ) -> Response:
        """Send until answered (UDP may drop a datagram); TimeoutError after `tries`."""
        assert self._transport is not None
        transaction = secrets.token_bytes(12)
        message = encode(method, transaction, attributes, key=key)
        for _ in range(tries):
            future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
            self._protocol.waiting[transaction] = future
            self._transport.sendto(message)
            try:
                return await asyncio.wait_for(future, timeout_s)
            except TimeoutError:
                continue
        raise TimeoutError(f"no answer from the TURN server at {self.server}")

    async def binding(self, *, timeout_s: float = 0.5, tries: int = 1) -> Response:
        return await self.request(BINDING, [], timeout_s=timeout_s, tries=tries)

    async def allocate(self, username: str, password: str) -> tuple[Response, Response]:
        """The unauthenticated Allocate (401 with realm and nonce), then the authenticated
        one: (first answer, second answer)."""
        transport = [(REQUESTED_TRANSPORT, bytes([UDP, 0, 0, 0]))]
        challenge = await self.request(ALLOCATE, transport)
        self.realm = challenge.attributes.get(REALM, b"")
        self.nonce = challenge.attributes.get(NONCE, b"")
        self.username = username.encode()
        # the long-term credential's key (RFC 8489 section 9.2.2)
        self.key = hashlib.md5(b":".join([self.username, self.realm, password.encode()])).digest()
        answer = await self.request(ALLOCATE, [*transport, *self._auth()], key=self.key)
        return challenge, answer

    async def refresh(self, lifetime_s: int = 600) -> Response:
        """Refresh the allocation with the credentials Allocate used (a 438 stale nonce is
        answered with the new nonce, as a client does)."""
        assert self.key is not None
        lifetime = [(LIFETIME, struct.pack("!I", lifetime_s))]
        answer = await self.request(REFRESH, [*lifetime, *self._auth()], key=self.key)
        if answer.error_code == 438 and NONCE in answer.attributes:
            self.nonce = answer.attributes[NONCE]
            answer = await self.request(REFRESH, [*lifetime, *self._auth()], key=self.key)
        return answer

    def _auth(self) -> list[tuple[int, bytes]]:
        return [(USERNAME, self.username), (REALM, self.realm), (NONCE, self.nonce)]


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (coturn listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


@dataclasses.dataclass
class Coturn:
    """A running `turnserver` on 127.0.0.1:port; `log()` is what it wrote so far."""

    port: int
    secret: str
    realm: str
    log_path: Path
    proc: asyncio.subprocess.Process

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def coturn_config(*, port: int, secret: str, realm: str, workdir: Path) -> str:
    """coturn's configuration for a test: loopback, TURN REST API, nothing else."""
    return "\n".join(
        [
            "listening-ip=127.0.0.1",
            f"listening-port={port}",
            "relay-ip=127.0.0.1",
            "use-auth-secret",  # the TURN REST API: usernames "<expiry>:<id>", HMAC passwords
            f"static-auth-secret={secret}",
            f"realm={realm}",
            "allow-loopback-peers",  # the node under test is on 127.0.0.1 (refused by default)
            "no-multicast-peers",
            "no-cli",
            "no-tls",
            "no-dtls",
            "no-rfc5780",
            "no-stun-backward-compatibility",
            "log-file=stdout",
            "simple-log",
            "verbose",  # a line per request: "ALLOCATE processed, success", permissions
            f"pidfile={workdir / 'turnserver.pid'}",
            f"userdb={workdir / 'turndb'}",  # never the system's /var/lib/turn/turndb
            "",
        ]
    )


def _write_config(workdir: Path, *, port: int, secret: str, realm: str) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "turnserver.conf"
    config.write_text(coturn_config(port=port, secret=secret, realm=realm, workdir=workdir))
    config.chmod(0o600)
    return config


@contextlib.asynccontextmanager
async def coturn(workdir: Path, *, realm: str = "consult.test") -> AsyncIterator[Coturn]:
    """Start coturn and wait until it answers a STUN Binding; stopped on the way out."""
    turnserver = shutil.which("turnserver")
    assert turnserver, "turnserver is not installed (make test installs Debian's coturn)"
    secret = secrets.token_urlsafe(32)
    port = free_port()
    config = _write_config(workdir, port=port, secret=secret, realm=realm)
    log_path = workdir / "turnserver.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *(turnserver, "-c", str(config)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
    server = Coturn(port=port, secret=secret, realm=realm, log_path=log_path, proc=proc)
    try:
        deadline = time.monotonic() + 30
        async with TurnClient(server.address) as client:
            while True:
                assert proc.returncode is None, f"turnserver exited:\n{server.log()}"
                with contextlib.suppress(TimeoutError, ConnectionRefusedError):
                    if (await client.binding()).success:
                        break
                assert time.monotonic() < deadline, f"turnserver did not answer:\n{server.log()}"
                await asyncio.sleep(0.2)
        yield server
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
