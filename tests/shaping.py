"""Impaired links for tests: a veth pair between the host and a client namespace, shaped in the
kernel (this machine's kernel has no netem).

    with NetNS("consult5") as ns, ShapedLink(ns) as link:
        server binds link.host_ip; a client runs in `ns` (link.client_ip)
        link.rate(150)          # kbit/s both ways (tc tbf on each end's egress)
        link.loss(40)           # % random loss both ways (nftables netdev ingress, numgen)
        link.outage(True)       # drop everything both ways
        link.udp_outage(True)   # drop UDP both ways (media cannot connect; the socket can)
        link.move_client()      # the client's address changes (Wi-Fi -> 4G)
        link.clear()

Both ends of the veth are ours, so each direction is shaped on the egress of the end that
sends it (`tbf`); no `ifb` is needed for ingress shaping. Loss is an nftables `netdev` table
on the ingress hook of each end: a drop in a local output chain would return EPERM to the
sending socket instead of losing the packet. `close()` deletes the veth (both ends, their
qdiscs) and the host-side table even when a test failed; the namespace itself is `NetNS`'s.
The pair is made by `add_veth`, as for the load test's `VethNS`.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from typing import Self

from .netns import IP, CreateClose, NetNS, add_veth, netns_available

NFT = "nft"
TC = "tc"


def shaping_available() -> tuple[bool, str]:
    ok, why = netns_available()
    if not ok:
        return ok, why
    for tool in (NFT, TC):
        if shutil.which(tool) is None:
            return False, f"`{tool}` is not installed (nftables / iproute2)"
    return True, ""


def _run(args: Sequence[str], *, check: bool = True, stdin: str | None = None) -> str:
    done = subprocess.run(
        list(args), input=stdin, capture_output=True, text=True, timeout=30, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


class ShapedLink(CreateClose):
    """A veth pair host <-> `ns`, with rate caps, random loss and outages on demand."""

    def __init__(self, ns: NetNS) -> None:
        tag = uuid.uuid4().hex[:6]
        self.ns = ns
        self.host_dev = f"c5h{tag}"
        self.client_dev = f"c5c{tag}"
        self.table = f"consult5_{tag}"
        net = f"10.{random.randrange(100, 200)}.{random.randrange(256)}"
        self.prefix = net
        self.host_ip = f"{net}.1"
        self.client_ip = f"{net}.2"
        self._created = False

    # -- lifecycle -----------------------------------------------------------------------------
    def create(self) -> Self:
        add_veth(self.ns, self.host_dev, self.host_ip, self.client_dev, self.client_ip)
        self._created = True
        try:
            for host_side in (True, False):
                self._nft(
                    host_side,
                    f"table netdev {self.table} {{\n"
                    f"  chain in {{ type filter hook ingress device "
                    f'"{self._dev(host_side)}" priority 0; policy accept; }}\n'
                    "}\n",
                )
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Delete the veth (both ends) and the host-side table. Idempotent; never raises."""
        if not self._created:
            return
        self._created = False
        with contextlib.suppress(Exception):
            _run([NFT, "delete", "table", "netdev", self.table], check=False)
        with contextlib.suppress(Exception):
            _run([IP, "link", "del", self.host_dev], check=False)

    # -- impairments ---------------------------------------------------------------------------
    def rate(self, kbps: int | None, *, latency_ms: int = 100) -> None:
        """Cap both directions at `kbps` kbit/s (tc tbf), or lift the cap (None)."""
        for host_side in (True, False):
            dev = self._dev(host_side)
            if kbps is None:
                self._cmd(host_side, [TC, "qdisc", "del", "dev", dev, "root"], check=False)
                continue
            burst = max(3000, kbps * 1000 // 8 // 20)  # >= 2 MTU, ~50 ms at that rate
            self._cmd(
                host_side,
                [
                    TC,
                    "qdisc",
                    "replace",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    f"{kbps}kbit",
                    "burst",
                    str(burst),
                    "latency",
                    f"{latency_ms}ms",
                ],
            )

    def loss(self, percent: int) -> None:
        """Drop `percent`% of packets at random, both directions (0 = none)."""
        self._set_rule(f"numgen random mod 100 < {percent} drop" if percent > 0 else None)

    def outage(self, down: bool) -> None:
        """Drop every packet both ways (True) or let them through again (False)."""
        self._set_rule("drop" if down else None)

    def udp_outage(self, down: bool) -> None:
        """Drop every UDP packet both ways (ICE and media; TCP, the WebSocket, goes on)."""
        self._set_rule("meta l4proto udp drop" if down else None)

    def clear(self) -> None:
        self.rate(None)
        self._set_rule(None)

    def move_client(self) -> str:
        """Give the client a new address and remove the old one (its sockets die)."""
        old = self.client_ip
        new_host = int(old.rsplit(".", 1)[1]) + 1
        self.client_ip = f"{self.prefix}.{new_host}"
        # Old one first: deleting a subnet's primary address also deletes its secondaries.
        self._in_ns([IP, "addr", "del", f"{old}/24", "dev", self.client_dev])
        self._in_ns([IP, "addr", "add", f"{self.client_ip}/24", "dev", self.client_dev])
        return self.client_ip

    # -- helpers -------------------------------------------------------------------------------
    def _dev(self, host_side: bool) -> str:
        return self.host_dev if host_side else self.client_dev

    def _set_rule(self, rule: str | None) -> None:
        for host_side in (True, False):
            script = f"flush chain netdev {self.table} in\n"
            if rule:
                script += f"add rule netdev {self.table} in {rule}\n"
            self._nft(host_side, script)

    def _nft(self, host_side: bool, script: str) -> None:
        self._cmd(host_side, [NFT, "-f", "-"], stdin=script)

    def _in_ns(self, args: Sequence[str]) -> str:
        return self._cmd(False, args)

    def _cmd(
        self, host_side: bool, args: Sequence[str], *, check: bool = True, stdin: str | None = None
    ) -> str:
        full = list(args) if host_side else self.ns.cmd(args)
        return _run(full, check=check, stdin=stdin)
