"""Receiver's cost of a datagram over the load test's veth pair: one `recvmsg` each vs UDP_GRO.

    .venv/bin/python -m benchmarks.veth_receive [--cpu 1]

A sender inside the namespace (the SFU's place) sends 20000 datagrams of 1200 bytes to a
reader on the host side (the generator's place), one `sendto` each (Janus; our node for
audio) or in UDP GSO batches of four (our node for video, mediaserver/rtc/batch.py). The
reader receives with or without UDP_GRO on its socket, and with the host-side veth's GRO
(`ethtool -K IF gro on`) off or on. Prints the reader's CPU per datagram, how many
`recvmsg` calls it needed (also for bursts of four back-to-back `sendto`, as Janus forwards
a frame) and how many buffers carried a UDP_GRO segment size. Needs root
(namespaces) and ethtool. Prints only (numbers from a shared machine are not kept).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys

from benchmarks.common import table
from loadtest.netns import VethNS

SIZE = 1200
COUNT = 20000
UDP_GRO = 104
SO_TIMESTAMPNS = 35


def sender_code(addr: tuple[str, int], per_call: int) -> str:
    """per_call < 0: bursts of -per_call back-to-back `sendto` (a frame forwarded by Janus)."""
    if per_call < 0:
        return (
            "import socket, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"n = {-per_call}; data = bytes({SIZE}); addr = {addr!r}\n"
            f"for _ in range({COUNT} // n):\n"
            "    for _ in range(n):\n"
            "        s.sendto(data, addr)\n"
            "    time.sleep(0.0001 * n)\n"
        )
    return (
        "import socket, struct, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"n = {per_call}; data = bytes({SIZE}) * n; addr = {addr!r}\n"
        f"cm = [(17, 103, struct.pack('=H', {SIZE}))]\n"
        f"for _ in range({COUNT} // n):\n"
        "    s.sendto(data, addr) if n == 1 else s.sendmsg([data], cm, 0, addr)\n"
        "    time.sleep(0.0001 * n)\n"  # ~10 k datagrams/s
    )


def measure(ns: VethNS, per_call: int, sock_gro: bool, veth_gro: bool) -> list[str]:
    state = "on" if veth_gro else "off"
    subprocess.run(["ethtool", "-K", ns.host_if, "gro", state], check=True, capture_output=True)
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    r.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # as the generator does
    if sock_gro:
        r.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
    r.bind((ns.outside, 0))
    r.settimeout(5)
    proc = ns.popen([sys.executable, "-c", sender_code((ns.outside, r.getsockname()[1]), per_call)])
    got = calls = gro = 0
    t = None
    try:
        while got < COUNT * SIZE:
            data, anc, _, _ = r.recvmsg(65536, 64)
            if t is None:
                t = os.times()  # from the first datagram on
            calls += 1
            got += len(data)
            gro += sum(1 for level, kind, _v in anc if level == socket.SOL_UDP and kind == UDP_GRO)
    except TimeoutError:
        pass
    t2 = os.times()
    proc.wait(30)
    r.close()
    n = max(1, got // SIZE)
    user = (t2.user - t.user) / n * 1e6 if t else 0.0
    system = (t2.system - t.system) / n * 1e6 if t else 0.0
    send = "sendto" if per_call == 1 else f"GSO x{per_call}"
    if per_call < 0:
        send = f"sendto, bursts of {-per_call}"
    return [
        send,
        "on" if sock_gro else "off",
        state,
        str(n),
        str(calls),
        str(gro),
        f"{system:.1f}",
        f"{user:.1f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", type=int, default=None, help="pin the reader to one CPU")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    with VethNS() as ns:
        for per_call, sock_gro, veth_gro in [
            (1, False, False),
            (1, True, False),
            (1, True, True),
            (-4, True, False),
            (-4, True, True),
            (4, False, False),
            (4, True, False),
            (4, True, True),
        ]:
            rows.append(measure(ns, per_call, sock_gro, veth_gro))
    head = ["sent", "UDP_GRO", "veth gro", "datagrams", "recvmsg", "GRO buffers"]
    print(table([*head, "system us per datagram", "user us per datagram"], rows))


if __name__ == "__main__":
    main()
