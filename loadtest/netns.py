"""Network namespaces for real peers (browsers, servers, the SFU under load test, `compat run`).

A browser on the host's network multicasts mDNS and may probe the internet; inside a
namespace that holds nothing but `lo` it can only reach what the test starts beside it.

    with NetNS() as ns:
        server = ns.popen([sys.executable, "-m", "signaling", "run", ...])
        wrapper = ns.wrapper(tmp_path / "chromium", "/usr/bin/chromium")

`NetNS.close()` (also run by the context manager and the `netns` fixture) kills every
process started in the namespace, then deletes it, even when the test failed. Needs root
(or CAP_SYS_ADMIN) and iproute2; `netns_available()` says whether this machine has both.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

IP = "ip"
PR_SET_PDEATHSIG = 1
_STALE = re.compile(r"^(?P<prefix>[\w.]+)-(?P<pid>\d+)-[0-9a-f]{6}$")


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the test process dies (even by SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def remove_stale(prefix: str = "consult") -> list[str]:
    """Delete namespaces this helper made in test processes that no longer exist."""
    try:
        names = _run([IP, "netns", "list"], check=False).stdout.split("\n")
    except (subprocess.SubprocessError, OSError):
        return []
    removed = []
    for line in names:
        name = line.split(" ", 1)[0].strip()
        m = _STALE.match(name)
        if not m or m["prefix"] != prefix or _alive(int(m["pid"])):
            continue
        for pid in _run([IP, "netns", "pids", name], check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _run([IP, "netns", "delete", name], check=False)
        removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def netns_available() -> tuple[bool, str]:
    """(True, "") when network namespaces can be created here, else (False, why)."""
    if shutil.which(IP) is None:
        return False, "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    return True, ""


def _run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=30)


class CreateClose:
    """Something set up by `create()` (which returns it) and torn down by `close()`; as a context
    manager, created on entry and closed on exit, even when the block failed."""

    def create(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class NetNS(CreateClose):
    """One loopback-only network namespace with a unique name, owning its processes."""

    def __init__(self, prefix: str = "consult") -> None:
        # Names live in /run/netns; keep them short, unique per process and call.
        self.prefix = prefix
        self.name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._procs: list[subprocess.Popen[Any]] = []
        self._created = False

    # -- lifecycle -----------------------------------------------------------------
    def create(self) -> Self:
        remove_stale(self.prefix)
        _run([IP, "netns", "add", self.name])
        self._created = True
        try:
            _run([IP, "-n", self.name, "link", "set", "lo", "up"])
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Kill what runs in the namespace and delete it. Idempotent; never raises."""
        for proc in self._procs:
            self._terminate(proc)
        self._procs.clear()
        if not self._created:
            return
        for pid in self.pids():  # anything else left inside (children of children)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            _run([IP, "netns", "delete", self.name], check=False)
        self._created = False

    # -- running things inside ---------------------------------------------------------
    def cmd(self, args: Sequence[str]) -> list[str]:
        """The command line that runs `args` inside the namespace."""
        return [IP, "netns", "exec", self.name, *args]

    def run(self, args: Sequence[str], *, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a short command inside and wait for it (output captured, never raises)."""
        return subprocess.run(self.cmd(args), capture_output=True, text=True, timeout=timeout)

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a long-running process inside; it is killed (with its group) on close.

        It also dies with the test process, should that be killed before it can clean up.
        """
        kwargs.setdefault("start_new_session", True)
        kwargs.setdefault("preexec_fn", _die_with_parent)
        proc: subprocess.Popen[Any] = subprocess.Popen(self.cmd(args), **kwargs)
        self._procs.append(proc)
        return proc

    def wrapper(self, path: Path, binary: str) -> Path:
        """Write an executable script that runs `binary` with its arguments inside.

        Handy for tools that take an executable path (Playwright's `executable_path`):
        `ip netns exec` keeps file descriptors, so a pipe-driven browser still works.
        """
        path.write_text(
            f'#!/bin/sh\nexec {IP} netns exec {shlex.quote(self.name)} {shlex.quote(binary)} "$@"\n'
        )
        path.chmod(0o755)
        return path

    def pids(self) -> list[int]:
        """Process ids now inside the namespace."""
        if not self._created:
            return []
        try:
            out = _run([IP, "netns", "pids", self.name], check=False).stdout
        except (subprocess.SubprocessError, OSError):
            return []
        return [int(p) for p in out.split() if p.isdigit()]

    @staticmethod
    def _terminate(proc: subprocess.Popen[Any]) -> None:
        if proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)  # its own session: the group id is its pid
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def _used_subnets() -> set[int]:
    """Third octets of the 10.77.X.0/24 addresses already on this host's interfaces."""
    try:
        out = _run([IP, "-o", "-4", "addr", "show"], check=False).stdout
    except (subprocess.SubprocessError, OSError):
        return set()
    return {int(m) for m in re.findall(r"inet 10\.77\.(\d+)\.", out)}


def add_veth(ns: NetNS, host_if: str, outside: str, ns_if: str, inside: str) -> None:
    """Join `ns` to the host by a veth pair, both ends up: `host_if` on the host with address
    `outside`/24, `ns_if` inside `ns` with `inside`/24 (VethNS, and tests/shaping.py's links).

    Deleting either end (or the namespace) deletes the pair. On failure no end is left, and the
    RuntimeError names the `ip` command that failed and what it said.
    """

    def ip(*args: str) -> None:
        done = _run([IP, *args], check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{IP} {' '.join(args)} failed: {done.stderr.strip()}")

    ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
    try:
        ip("link", "set", ns_if, "netns", ns.name)
        ip("addr", "add", f"{outside}/24", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", ns.name, "addr", "add", f"{inside}/24", "dev", ns_if)
        ip("-n", ns.name, "link", "set", ns_if, "up")
    except BaseException:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            _run([IP, "link", "delete", host_if], check=False)
        raise


class VethNS(NetNS):
    """A namespace joined to the host by a veth pair: `outside` (host side) and `inside`.

    The SFU under load test runs inside, the generator outside: real IP routing between two
    addresses of the harness's own test subnet (10.77.X.0/24, a free X picked at creation),
    never the machine's own external address. Deleting the namespace deletes the pair.
    """

    def __init__(self, prefix: str = "loadtest") -> None:
        super().__init__(prefix)
        self.outside = ""
        self.inside = ""
        tag = uuid.uuid4().hex[:6]
        self.host_if = f"lt{tag}o"
        self.ns_if = f"lt{tag}i"

    def create(self) -> Self:
        super().create()
        try:
            used = _used_subnets()
            octet = next((x for x in range(77, 255) if x not in used), None)
            if octet is None:
                raise RuntimeError("no free 10.77.X.0/24 subnet for the veth pair")
            self.outside, self.inside = f"10.77.{octet}.1", f"10.77.{octet}.2"
            add_veth(self, self.host_if, self.outside, self.ns_if, self.inside)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        super().close()
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            _run([IP, "link", "delete", self.host_if], check=False)  # gone with the ns normally
