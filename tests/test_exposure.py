"""Secrets, TLS and exposure (issue 11, items 8 and 9): secret files and their strength, HTTPS
and WSS, the Origin allow-list, /metrics behind a key or on a port of its own, the demo page in
dev mode only, dev mode on loopback only, and log lines that cannot be forged.

The TLS and log tests start a real node (`python -m signaling run`) and read its stderr."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import ipaddress
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp
import pytest
import yarl
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from signaling.app import METRICS_ADDRESS, STATIC_DIR
from signaling.auth import encode_token
from signaling.client import ConsultClient
from signaling.config import ServerConfig, add_run_arguments, config_from_args

from .conftest import API_KEY, ServerFactory

ROOT = Path(__file__).resolve().parent.parent
NODE_KEY = "exposure-test-api-key-0123456789abcdef"  # 32+ bytes: the minimum outside dev
NODE_SECRET = "exposure-test-token-secret-0123456789abcdef"
METRICS_KEY = "exposure-test-metrics-key-0123456789abcdef"
ALLOWED = "https://app.example.org"
# The nodes started here keep their media in-process, as the test servers do (`signaling run`
# defaults to a worker a core; the log tests read every stderr line of one process)
WORKERS = ("--workers", "0")
FORGED = "2026-01-01 00:00:00,000 WARNING signaling.auth: FORGED"


def _config(argv: list[str], env: Mapping[str, str] | None = None) -> ServerConfig:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return config_from_args(parser.parse_args(argv), env=env or {})


def _secret_file(path: Path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m signaling run --port <free> ARGS`, for configurations that must not start."""
    return subprocess.run(
        [sys.executable, "-m", "signaling", "run", "--port", str(_free_port()), *WORKERS, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- secrets ------------------------------------------------------------------------------------


def test_secrets_are_read_from_files(tmp_path: Path) -> None:
    key = _secret_file(tmp_path / "key", NODE_KEY + "\n")
    secret = _secret_file(tmp_path / "secret", NODE_SECRET + "\r\n")
    config = _config(["--api-key-file", key, "--token-secret-file", secret])
    assert (config.api_key, config.token_secret) == (NODE_KEY, NODE_SECRET)
    env = {"CONSULT_API_KEY_FILE": key, "CONSULT_TOKEN_SECRET_FILE": secret}
    config = _config([], env)
    assert (config.api_key, config.token_secret) == (NODE_KEY, NODE_SECRET)
    metrics = _secret_file(tmp_path / "metrics", METRICS_KEY + "\n")
    assert _config(["--metrics-key-file", metrics], env).metrics_key == METRICS_KEY


def test_bad_secret_files_are_refused(tmp_path: Path) -> None:
    key = _secret_file(tmp_path / "key", NODE_KEY)
    secret = _secret_file(tmp_path / "secret", NODE_SECRET)
    with pytest.raises(ValueError, match="not both"):
        _config(["--api-key", NODE_KEY, "--api-key-file", key, "--token-secret-file", secret])
    with pytest.raises(ValueError, match="cannot read"):
        _config(["--api-key-file", str(tmp_path / "missing"), "--token-secret-file", secret])
    with pytest.raises(ValueError, match="empty"):
        _config(["--api-key-file", _secret_file(tmp_path / "empty", "\n")])
    shared = _secret_file(tmp_path / "shared", NODE_KEY, mode=0o666)
    with pytest.raises(ValueError, match="writable by others"):
        _config(["--api-key-file", shared, "--token-secret-file", secret])


@pytest.mark.parametrize(
    "argv",
    [
        ["--api-key", "short", "--token-secret", NODE_SECRET],
        ["--api-key", NODE_KEY, "--token-secret", "a-secret-of-20-bytes"],
        ["--api-key", NODE_KEY, "--token-secret", "x" * 64],  # long, but one symbol
        ["--api-key", NODE_KEY, "--token-secret", "dev-token-secret-not-for-production"],
        ["--api-key", NODE_KEY, "--token-secret", NODE_SECRET, "--metrics-key", "short"],
    ],
)
def test_weak_secrets_are_refused_outside_dev(argv: list[str]) -> None:
    with pytest.raises(ValueError, match=r"too weak|dev-mode value"):
        _config(argv)
    _config(["--dev", *argv])  # dev mode takes anything


def test_a_weak_secret_stops_the_node_with_a_clear_message() -> None:
    proc = _run_cli("--api-key", "short", "--token-secret", NODE_SECRET)
    assert proc.returncode == 2, proc.stderr
    assert "configuration error: the API key is too weak" in proc.stderr


# -- dev mode -----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.10", "node.example.org"])
def test_dev_mode_refuses_a_non_loopback_address_unless_forced(host: str) -> None:
    with pytest.raises(ValueError, match="--dev-allow-remote"):
        _config(["--dev", "--host", host])
    assert _config(["--dev", "--host", host, "--dev-allow-remote"]).host == host
    assert _config(["--dev", "--host", host], {"CONSULT_DEV_ALLOW_REMOTE": "1"}).dev


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_dev_mode_takes_loopback(host: str) -> None:
    assert _config(["--dev", "--host", host]).host == host


def test_dev_mode_on_every_address_stops_the_node() -> None:
    proc = _run_cli("--dev", "--host", "0.0.0.0")
    assert proc.returncode == 2, proc.stderr
    assert "--dev-allow-remote" in proc.stderr


async def test_demo_page_only_in_dev_mode(make_server: ServerFactory) -> None:
    assert (STATIC_DIR / "demo.html").is_file() and (STATIC_DIR / "consult.js").is_file()
    prod = await make_server()
    dev = await make_server(dev=True)
    async with aiohttp.ClientSession() as http:
        for path in ("/client/demo.html", "/demo"):
            async with http.get(prod.url + path) as r:
                assert r.status == 404, path
            async with http.get(dev.url + path) as r:
                assert r.status == 200 and r.content_type == "text/html", path
        async with http.get(prod.url + "/client/consult.js") as r:
            assert r.status == 200 and r.content_type == "text/javascript"


# -- Origin allow-list --------------------------------------------------------------------------


async def test_origin_allow_list_on_ws(make_server: ServerFactory) -> None:
    server = await make_server(allowed_origins=(ALLOWED + ":443/",))  # normalised
    ws_url = server.url.replace("http", "ws", 1) + "/ws"
    token = server.token("doctor")
    async with aiohttp.ClientSession() as http:
        for origin in ("https://evil.example.org", "http://app.example.org", "null"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(ws_url, origin=origin)
            assert refused.value.status == 403, origin
        async with http.ws_connect(ws_url, origin="HTTPS://App.Example.org") as ws:
            await ws.send_json({"type": "join", "id": "j1", "v": 1, "token": token})
            joined = await ws.receive_json(timeout=30)
            assert joined["type"] == "joined", joined
    # A program sends no Origin: its token is what counts.
    client = ConsultClient(server.url)
    try:
        assert (await client.connect(server.token("patient")))["type"] == "joined"
    finally:
        await client.close()


def test_bad_allowed_origins_are_refused() -> None:
    for origins in ("app.example.org", "https://app.example.org/path", "ftp://x.example"):
        with pytest.raises(ValueError, match="bad origin"):
            _config(["--dev", "--allowed-origins", origins])
    config = _config(["--dev", "--allowed-origins", f"{ALLOWED}, http://127.0.0.1:8080"])
    assert config.allowed_origins == (ALLOWED, "http://127.0.0.1:8080")


# -- /metrics -----------------------------------------------------------------------------------


async def test_metrics_behind_a_key(make_server: ServerFactory) -> None:
    server = await make_server(metrics_key=METRICS_KEY)
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
            async with http.get(server.url + "/metrics", headers=headers) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
        auth = {"Authorization": f"Bearer {METRICS_KEY}"}
        async with http.get(server.url + "/metrics", headers=auth) as r:
            assert r.status == 200
            assert "consult_rooms" in await r.text()


async def test_metrics_on_a_port_of_their_own(make_server: ServerFactory) -> None:
    server = await make_server(metrics_port=0, metrics_key=METRICS_KEY)
    host, port = server.app[METRICS_ADDRESS]
    metrics_url = f"http://{host}:{port}"
    auth = {"Authorization": f"Bearer {METRICS_KEY}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/metrics", headers=auth) as r:
            assert r.status == 404  # not on the public port
        async with http.get(metrics_url + "/metrics", headers=auth) as r:
            assert r.status == 200
            assert "consult_rooms" in await r.text()
        async with http.get(metrics_url + "/metrics") as r:
            assert r.status == 401  # the key holds there too
        for path in ("/healthz", "/api/v1/rooms", "/client/consult.js"):
            async with http.get(metrics_url + path, headers=auth) as r:
                assert r.status == 404, path  # nothing else on the metrics port


# -- a real node: TLS and logs ------------------------------------------------------------------


@dataclasses.dataclass
class NodeProcess:
    url: str
    proc: asyncio.subprocess.Process
    stderr: Path

    def lines(self) -> list[str]:
        return self.stderr.read_text(errors="replace").splitlines()

    async def wait_for_log(self, text: str, timeout: float = 30) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            if any(text in line for line in lines):
                return lines
            assert time.monotonic() < deadline, f"{text!r} not logged:\n" + "\n".join(lines)
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def node_process(
    tmp_path: Path, *args: str, context: ssl.SSLContext | None = None
) -> AsyncIterator[NodeProcess]:
    port = _free_port()
    stderr = tmp_path / "node.stderr"
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "signaling", "run", "--port", str(port), *WORKERS),
            *("--api-key", NODE_KEY, "--token-secret", NODE_SECRET, "--ice-host", "127.0.0.1"),
            *args,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    node = NodeProcess(f"{'https' if context else 'http'}://127.0.0.1:{port}", proc, stderr)
    try:
        deadline = time.monotonic() + 60
        connector = aiohttp.TCPConnector(ssl=context or True)  # True: the default checks
        async with aiohttp.ClientSession(connector=connector) as http:
            while True:
                assert proc.returncode is None, "node exited:\n" + "\n".join(node.lines())
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(node.url + "/healthz") as r:
                        if r.status == 200:
                            break
                assert time.monotonic() < deadline, "node did not start:\n" + "\n".join(
                    node.lines()
                )
                await asyncio.sleep(0.3)
        yield node
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 that is its own CA, and its key (both PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


async def test_tls_serves_https_and_wss(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(cafile=cert)
    tls = ("--tls-cert", cert, "--tls-key", key, "--auto-create-rooms", "true")
    async with node_process(tmp_path, *tls, context=context) as node:
        assert node.url.startswith("https://")
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(node.url + "/healthz")  # not trusted without the CA: real TLS
            with pytest.raises(aiohttp.ClientError):
                await http.get(node.url.replace("https", "http", 1) + "/healthz")
        token = encode_token(
            secret=NODE_SECRET, room="r1", sub="u1", role="doctor", name="Dr", ttl_s=600
        )
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
            async with http.get(node.url + "/readyz") as r:
                assert r.status == 200
            client = ConsultClient(node.url, http=http)  # wss://, the same context
            assert client.ws_url.startswith("wss://")
            try:
                joined = await client.connect(token)
            finally:
                await client.close()
        assert joined["type"] == "joined"


def test_tls_options_are_checked(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    with pytest.raises(ValueError, match="go together"):
        _config(["--dev", "--tls-cert", cert])
    config = _config(["--dev", "--tls-cert", key, "--tls-key", key])  # a key is no certificate
    from signaling.app import create_app

    with pytest.raises(ValueError, match="cannot load --tls-cert"):
        create_app(config=config)
    missing = _config(["--dev", "--tls-cert", cert, "--tls-key", str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="cannot load --tls-cert"):
        create_app(config=missing)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    locked = _config(["--dev", "--tls-cert", cert, "--tls-key", str(encrypted)])
    with pytest.raises(ValueError, match="encrypted"):
        create_app(config=locked)


async def _forge(node: NodeProcess) -> None:
    """The request of the issue: a path that decodes to CR, LF and other controls."""
    path = "/nothing%0A" + FORGED.replace(" ", "%20") + "%0D%0A%1B[2J%7F%C2%85end"
    async with aiohttp.ClientSession() as http:
        async with http.get(yarl.URL(node.url + path, encoded=True)) as r:
            assert r.status == 404


async def test_a_forged_path_is_one_escaped_log_line(tmp_path: Path) -> None:
    async with node_process(tmp_path) as node:
        await _forge(node)
        lines = await node.wait_for_log("FORGED")
    hits = [line for line in lines if "FORGED" in line]
    assert len(hits) == 1, lines  # the whole path on the access log's line
    assert "aiohttp.access: GET /nothing\\n2026-01-01 00:00:00,000 WARNING" in hits[0]
    assert hits[0].endswith("FORGED\\r\\n\\x1b[2J\\x7f\\x85end 404 " + hits[0].split()[-1])
    assert not any(line.startswith(("2026-01-01", "end")) for line in lines)
    assert not any(c in line for line in lines for c in "\r\x1b\x7f\x85")


async def test_json_log_format(tmp_path: Path) -> None:
    async with node_process(tmp_path, "--log-format", "json") as node:
        await _forge(node)
        lines = await node.wait_for_log("FORGED")
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
        datetime.datetime.fromisoformat(record["time"])
    access = [r for r in records if "FORGED" in r["message"]]
    assert len(access) == 1 and access[0]["logger"] == "aiohttp.access"
    assert access[0]["message"].startswith("GET /nothing\\n2026-01-01")
    assert "\n" not in access[0]["message"]


async def test_media_workers_log_as_the_node_does(tmp_path: Path) -> None:
    """A media worker's records come out in the node's format (JSON here), tagged with the
    worker's name, and escaped like the node's own."""
    async with node_process(tmp_path, "--log-format", "json", "--workers", "1") as node:
        lines = await node.wait_for_log("media worker w0 ready")
    records = [json.loads(line) for line in lines]  # the worker's lines are JSON too
    ready = [r for r in records if r["message"].startswith("media worker w0 ready")]
    assert len(ready) == 1 and ready[0]["process"] == "w0", ready
    assert ready[0]["logger"] == "mediaserver.worker"
    assert all("process" not in r for r in records if r["logger"].startswith("signaling"))


def test_escaping_formatter_tags_a_workers_records() -> None:
    from mediaserver.logs import EscapingFormatter

    record = logging.LogRecord("mediaserver.room", logging.INFO, "x", 1, "a\nb", None, None)
    line = EscapingFormatter(process="w1").format(record)
    assert line.endswith(" INFO [w1] mediaserver.room: a\\nb"), line


def test_env_log_format_is_checked() -> None:
    proc = _run_cli("--dev", env={**os.environ, "CONSULT_LOG_FORMAT": "xml"})
    assert proc.returncode == 2, proc.stderr
    assert "configuration error: log format must be one of text, json" in proc.stderr


def test_escape_covers_c0_c1_del_and_line_separators() -> None:
    from mediaserver.logs import escape

    text = "".join(map(chr, [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]))
    escaped = escape("a" + text + "é\\z")
    assert escaped.isprintable() and escaped.startswith("a\\x00") and escaped.endswith("é\\z")
    assert "\\n" in escaped and "\\r" in escaped and "\\x85" in escaped and "\\u2028" in escaped
