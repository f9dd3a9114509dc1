"""Kernel cost of sending one UDP datagram over a veth pair: plain `sendto` against UDP GSO.

    .venv/bin/python -m benchmarks.veth [--cpu 1] [--no-docs]

The load test puts the SFU in a network namespace behind a veth pair (docs/loadtest.md). A
1200-byte datagram sent there costs the sender the whole path through both network stacks
(softirq work is charged to the sending process), which dominates the generator's CPU per
packet. This measures the sender's CPU time per datagram (utime and stime from os.times)
with one `sendto` each, and with 2, 4 and 8 datagrams per `sendmsg` with UDP_SEGMENT (GSO),
towards a reader inside the namespace. Needs root (namespaces). Section "veth".
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import struct
import sys
import time

from benchmarks.common import table
from loadtest.netns import VethNS
from loadtest.report import machine_summary, write_section

SIZE = 1200
COUNT = 20000
UDP_SEGMENT = 103


def measure(sock: socket.socket, addr: tuple[str, int], per_call: int) -> tuple[float, float]:
    data = bytes(SIZE)
    calls = COUNT // per_call
    big = data * per_call
    cmsg = [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("=H", SIZE))]
    t = os.times()
    for _ in range(calls):
        if per_call == 1:
            sock.sendto(data, addr)
        else:
            sock.sendmsg([big], cmsg, 0, addr)
        time.sleep(0.0001 * per_call)  # ~10 k datagrams/s: the reader keeps up
    t2 = os.times()
    n = calls * per_call
    return (t2.user - t.user) / n * 1e6, (t2.system - t.system) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", type=int, default=None, help="pin the sender to one CPU")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    rows = []
    load = os.getloadavg()[0]
    with VethNS() as ns:
        reader = (
            "import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.bind(('{ns.inside}', 5000))\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)\n"
            "while True:\n    s.recv(2048)\n"
        )
        ns.popen([sys.executable, "-c", reader])
        time.sleep(1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((ns.outside, 0))
        for per_call in (1, 2, 4, 8):
            user, system = measure(sock, (ns.inside, 5000), per_call)
            label = "sendto" if per_call == 1 else f"sendmsg + UDP_SEGMENT, {per_call} datagrams"
            rows.append([label, f"{system:.1f}", f"{user:.1f}"])
        sock.close()
    text = table(["send", "system us per datagram", "user us per datagram"], rows)
    print(text)
    if args.no_docs:
        return
    command = ".venv/bin/python -m benchmarks.veth " + shlex.join(sys.argv[1:])
    body = "\n".join(
        [
            "## Kernel cost of a datagram over the load test's veth pair",
            "",
            f"Command: `{command.strip()}`",
            "",
            f"Machine: {machine_summary()}.",
            f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average"
            f" {load:.1f} (the machine was shared with other work).",
            "",
            f"{COUNT} datagrams of {SIZE} bytes from the host side of a veth pair to a reader in",
            "the namespace, ~10 k datagrams/s; CPU time of the sending process per datagram",
            "(user time includes the pacing sleeps). Both the SFU (mediaserver/rtc/batch.py: a",
            "video frame's packets forwarded in one loop pass) and the generator",
            "(loadtest.generator) batch with GSO; audio packets pay the `sendto` row.",
            "",
            text,
        ]
    )
    write_section("veth", body)


if __name__ == "__main__":
    main()
