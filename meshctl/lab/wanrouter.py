"""A userspace WAN: packets routed into a TUN device come back out after a per-pair delay.

Runs inside the lab's "wan" namespace, where every node's veth is policy-routed into the TUN
(`ip rule add iif <veth> lookup 100`, table 100: default dev <tun>). Each IPv4 packet read
is written back after the delay for its (source, destination) pair, or dropped for loss or a
blackhole; written packets re-enter with iif <tun> and follow the main table out. Delays are
scheduled with the event loop's timer (no sleep per packet), so order per pair is kept.

    python -m meshctl.lab.wanrouter --tun mtt0 --delay-ms 40 [--pair SRC DST MS] ...
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import random
import socket
import struct
import subprocess

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    subprocess.run(["ip", "link", "set", "dev", name, "up"], check=True)
    return fd


class WanRouter:
    def __init__(
        self, fd: int, default_delay_ms: float, pairs: dict[tuple[str, str], float], loss: dict[str, float]
    ) -> None:
        self.fd = fd
        self.default_s = default_delay_ms / 1000.0
        self.pairs = {k: v / 1000.0 for k, v in pairs.items()}
        self.loss = loss  # destination ip -> percent (100 = blackhole)
        self.loop = asyncio.get_running_loop()
        self.forwarded = self.dropped = 0

    def on_readable(self) -> None:
        while True:
            try:
                pkt = os.read(self.fd, 65535)
            except BlockingIOError:
                return
            if len(pkt) < 20 or pkt[0] >> 4 != 4:
                continue
            src, dst = socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20])
            pct = max(self.loss.get(dst, 0.0), self.loss.get(src, 0.0))
            if pct and random.random() * 100 < pct:
                self.dropped += 1
                continue
            delay = self.pairs.get((src, dst), self.default_s)
            self.loop.call_at(self.loop.time() + delay, self._write, pkt)

    def _write(self, pkt: bytes) -> None:
        try:
            os.write(self.fd, pkt)
            self.forwarded += 1
        except OSError:
            self.dropped += 1


async def serve(args: argparse.Namespace) -> None:
    fd = open_tun(args.tun)
    pairs = {(a, b): float(ms) for a, b, ms in args.pair or []}
    loss = {ip: float(pct) for ip, pct in args.loss or []}
    router = WanRouter(fd, args.delay_ms, pairs, loss)
    asyncio.get_running_loop().add_reader(fd, router.on_readable)
    print(f"wan router on {args.tun}: {args.delay_ms} ms default, {len(pairs)} pairs", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tun", required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay for every pair not listed")
    ap.add_argument("--pair", nargs=3, action="append", metavar=("SRC", "DST", "MS"), help="one-way delay src->dst")
    ap.add_argument("--loss", nargs=2, action="append", metavar=("IP", "PCT"), help="drop PCT% to and from IP")
    asyncio.run(serve(ap.parse_args()))


if __name__ == "__main__":
    main()
