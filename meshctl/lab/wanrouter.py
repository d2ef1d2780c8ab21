"""A userspace WAN: packets routed into a TUN device come back out after a per-pair delay.

Runs inside the lab's "wan" namespace, where every node's veth is policy-routed into the TUN
(`ip rule add iif <veth> lookup 100`, table 100: default dev <tun>). Each IPv4 packet read is
written back after the one-way delay of its (source region, destination region), or dropped
for loss or a blackhole; written packets re-enter with iif <tun> and follow the main table out.

Timing: one thread reads every packet the TUN has, writes every packet that is due, and sleeps
in `select` (microsecond timeout) until the next due time or packet; it runs SCHED_FIFO so the
lab's agents and wireguard-go never make it late (see `WanRouter`, `realtime`). How late each
packet left is kept (`Lateness`) and reported by the status command. Faults change at run time
through a Unix socket that takes one JSON object per line (see `WanModel.command`).

    python -m meshctl.lab.wanrouter --tun mlt0 --config wan.json --control wan.sock
    python -m meshctl.lab.wanrouter --tun mlt0 --delay-ms 40 [--pair SRC_IP DST_IP MS] ...
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import heapq
import ipaddress
import itertools
import json
import os
import random
import select
import socketserver
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
FAULT_KINDS = ("blackhole", "loss", "delay")
REALTIME_PRIORITY = 10  # SCHED_FIFO 1-99; low: above every normal process, below the kernel's own threads


class FaultError(ValueError):
    """A fault command that cannot be applied; nothing changed."""


@dataclass(frozen=True)
class Fault:
    """blackhole: drop all; loss: drop `value`% each way; delay: add `value` ms to the RTT."""

    kind: str
    value: float = 0.0

    @classmethod
    def make(cls, kind: str, value: float | None) -> Fault:
        if kind not in FAULT_KINDS:
            raise FaultError(f"fault kind must be one of {', '.join(FAULT_KINDS)}, not {kind!r}")
        if kind == "blackhole":
            return cls(kind, 100.0)
        if value is None or value != value:
            raise FaultError(f"{kind} needs a value ({'percent' if kind == 'loss' else 'milliseconds'})")
        if kind == "loss" and not 0 < value <= 100:
            raise FaultError(f"loss must be a percentage in (0, 100], got {value}")
        if kind == "delay" and not 0 < value <= 5000:
            raise FaultError(f"delay must be in (0, 5000] ms, got {value}")
        return cls(kind, float(value))

    def describe(self) -> str:
        return {"blackhole": "blackhole", "loss": f"loss {self.value:g}%", "delay": f"delay +{self.value:g} ms"}[
            self.kind
        ]


@dataclass(frozen=True)
class PathVerdict:
    """What happens to a packet on one directed path: its one-way delay and drop chance."""

    delay_s: float
    drop: float  # probability in [0, 1]


@dataclass
class WanModel:
    """Addresses, base delays and faults; compiles them into a per-packet lookup table (pure)."""

    region_of: dict[str, str]  # node WAN ip -> region id
    one_way_ms: dict[tuple[str, str], float]  # (region or ip, region or ip) -> one-way ms
    default_one_way_ms: float = 0.0
    calibration_ms: float = 0.0  # the lab's own one-way forwarding cost, taken off every delay
    region_faults: dict[str, Fault] = field(default_factory=dict)
    link_faults: dict[frozenset[str], Fault] = field(default_factory=dict)

    def _base_ms(self, src: str, dst: str) -> float:
        rs, rd = self.region_of.get(src, src), self.region_of.get(dst, dst)
        for key in ((src, dst), (rs, rd)):
            if key in self.one_way_ms:
                return self.one_way_ms[key]
        return self.default_one_way_ms

    def verdict(self, src: str, dst: str) -> PathVerdict:
        rs, rd = self.region_of.get(src, src), self.region_of.get(dst, dst)
        faults = [f for f in (self.region_faults.get(rs), self.region_faults.get(rd)) if f is not None]
        if rs != rd and (link := self.link_faults.get(frozenset((rs, rd)))) is not None:
            faults.append(link)
        delay_ms, survive = max(0.0, self._base_ms(src, dst) - self.calibration_ms), 1.0
        for f in faults:
            if f.kind == "delay":
                delay_ms += f.value / 2
            else:
                survive *= 1 - f.value / 100
        return PathVerdict(delay_ms / 1000.0, 1.0 - survive)

    def compile(self) -> dict[tuple[bytes, bytes], PathVerdict]:
        """Every known (src, dst) address pair, packed as the 4-byte fields of an IPv4 header."""
        ips = list(self.region_of) or sorted({ip for pair in self.one_way_ms for ip in pair if _is_ip(ip)})
        return {(_packed(a), _packed(b)): self.verdict(a, b) for a, b in itertools.permutations(ips, 2) if a != b}

    def regions(self) -> set[str]:
        return set(self.region_of.values())

    def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Apply one control command; raise FaultError (nothing changed) when it is wrong.

        {"op": "fault", "region": R, "kind": K, "value": V}
        {"op": "fault-link", "a": R1, "b": R2, "kind": K, "value": V}
        {"op": "heal"} or {"op": "heal", "region": R} or {"op": "heal", "a": R1, "b": R2}
        {"op": "calibrate", "one_way_ms": MS}
        {"op": "status"}
        """
        op = cmd.get("op")
        known = self.regions()

        def region(key: str) -> str:
            r = cmd.get(key)
            if not isinstance(r, str) or r not in known:
                raise FaultError(f"{key}: {r!r} is not a region of this lab ({', '.join(sorted(known))})")
            return r

        if op == "fault":
            self.region_faults[region("region")] = Fault.make(str(cmd.get("kind")), _num(cmd.get("value")))
        elif op == "fault-link":
            a, b = region("a"), region("b")
            if a == b:
                raise FaultError("a link needs two different regions")
            self.link_faults[frozenset((a, b))] = Fault.make(str(cmd.get("kind")), _num(cmd.get("value")))
        elif op == "heal":
            if "region" in cmd:
                self.region_faults.pop(region("region"), None)
            elif "a" in cmd:
                self.link_faults.pop(frozenset((region("a"), region("b"))), None)
            else:
                self.region_faults.clear()
                self.link_faults.clear()
        elif op == "calibrate":
            ms = _num(cmd.get("one_way_ms"))
            if ms is None or not 0 <= ms <= 50:
                raise FaultError(f"one_way_ms must be in [0, 50], got {ms!r}")
            self.calibration_ms = ms
        elif op != "status":
            raise FaultError(f"op must be fault, fault-link, heal, calibrate or status, not {op!r}")
        return {"ok": True, "faults": self.describe_faults(), "calibration_ms": self.calibration_ms}

    def describe_faults(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [
            {"target": r, "kind": f.kind, "value": f.value, "what": f.describe()}
            for r, f in sorted(self.region_faults.items())
        ]
        out += [
            {"target": " <-> ".join(sorted(pair)), "kind": f.kind, "value": f.value, "what": f.describe()}
            for pair, f in sorted(self.link_faults.items(), key=lambda kv: sorted(kv[0]))
        ]
        return out


def _num(x: Any) -> float | None:
    if x is None:
        return None
    try:
        return float(x)
    except (TypeError, ValueError) as exc:
        raise FaultError(f"value must be a number, got {x!r}") from exc


def _is_ip(s: str) -> bool:
    try:
        ipaddress.IPv4Address(s)
        return True
    except ValueError:
        return False


def _packed(ip: str) -> bytes:
    return ipaddress.IPv4Address(ip).packed


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    subprocess.run(["ip", "link", "set", "dev", name, "up"], check=True)
    return fd


class Lateness:
    """How late packets left the router against their due time: a 0.1 ms histogram (pure)."""

    BUCKET_S = 0.0001
    BUCKETS = 1000  # 0 to 100 ms; later than that lands in the last bucket

    def __init__(self) -> None:
        self.counts = [0] * self.BUCKETS
        self.n = 0
        self.worst_s = 0.0

    def add(self, late_s: float) -> None:
        late_s = max(0.0, late_s)
        self.counts[min(self.BUCKETS - 1, int(late_s / self.BUCKET_S))] += 1
        self.n += 1
        self.worst_s = max(self.worst_s, late_s)

    def quantile_ms(self, q: float) -> float:
        """The upper edge of the bucket holding quantile q, in ms (0 with no packets)."""
        if not self.n:
            return 0.0
        rank, seen = q * self.n, 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return round((i + 1) * self.BUCKET_S * 1000, 3)
        return round(self.BUCKETS * self.BUCKET_S * 1000, 3)

    def summary(self) -> dict[str, float]:
        return {
            "packets": self.n,
            "p50_ms": self.quantile_ms(0.5),
            "p99_ms": self.quantile_ms(0.99),
            "p999_ms": self.quantile_ms(0.999),
            "max_ms": round(self.worst_s * 1000, 3),
        }


class WanRouter:
    """One thread around one TUN file descriptor: read what came in, write what is due, sleep until next.

    A single thread because the delay is the product: with a reader and a writer thread the
    writer had to win the GIL back from the reader (and wake from a Condition) before each write,
    and under load packets left 100-200 ms after their due time (measured: p99 over 100 ms at
    15 regions). Here a packet is written by the same loop that sleeps in `select` (microsecond
    timeout) until the earliest due time, so nothing stands between the wake-up and the write.
    """

    MAX_BATCH = 256  # packets read per pass before the due ones are written again

    def __init__(self, fd: int, model: WanModel, rand: Callable[[], float] = random.random) -> None:
        self.fd = fd
        self.model = model
        self.table = model.compile()
        self.default = PathVerdict(model.default_one_way_ms / 1000.0, 0.0)
        self.rand = rand
        self.lock = threading.Lock()  # guards the model while a command changes it
        self.forwarded = self.dropped = 0
        self._due: list[tuple[float, int, bytes]] = []
        self._seq = itertools.count()
        self.late = Lateness()

    def control(self, cmd: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            answer = self.model.command(cmd)
            self.table = self.model.compile()  # swapped in one assignment: the loop never sees half
        answer.update(forwarded=self.forwarded, dropped=self.dropped, late=self.late.summary())
        if cmd.get("reset_late"):
            self.late = Lateness()
        return answer

    def accept(self, pkt: bytes, now: float) -> None:
        """Queue one packet read at `now` for its path's delay, or drop it."""
        if len(pkt) < 20 or pkt[0] >> 4 != 4:
            return
        v = self.table.get((pkt[12:16], pkt[16:20]), self.default)
        if v.drop and (v.drop >= 1.0 or self.rand() < v.drop):
            self.dropped += 1
            return
        heapq.heappush(self._due, (now + v.delay_s, next(self._seq), pkt))

    def flush(self, write: Callable[[bytes], object]) -> float | None:
        """Write every packet that is due; seconds until the next one is (None: nothing queued)."""
        due = self._due
        now = time.monotonic()
        while due and due[0][0] <= now:
            at, _, pkt = heapq.heappop(due)
            try:
                write(pkt)
                self.forwarded += 1
            except OSError:
                self.dropped += 1
            now = time.monotonic()
            self.late.add(now - at)
        return due[0][0] - now if due else None

    def run(self) -> None:
        os.set_blocking(self.fd, False)
        fd = self.fd

        def write(pkt: bytes) -> None:
            os.write(fd, pkt)

        while True:
            wait = self.flush(write)
            readable, _, _ = select.select([fd], [], [], wait)
            if not readable:
                continue
            for _ in range(self.MAX_BATCH):
                try:
                    pkt = os.read(fd, 65535)
                except BlockingIOError:
                    break
                self.accept(pkt, time.monotonic())


def serve_control(router: WanRouter, path: Path) -> None:
    """One JSON command per line on a Unix socket; one JSON answer per line."""

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                try:
                    answer = router.control(json.loads(line))
                except (FaultError, ValueError) as exc:
                    answer = {"ok": False, "error": str(exc)}
                self.wfile.write(json.dumps(answer).encode() + b"\n")

    path.unlink(missing_ok=True)
    server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
    os.chmod(path, 0o600)
    threading.Thread(target=server.serve_forever, daemon=True, name="control").start()


def realtime() -> str:
    """Run the router ahead of every lab process: SCHED_FIFO when allowed (root), as a network would.

    The emulated network must not wait for the CPU behind twelve agents and their wireguard-go:
    a late packet is latency that is not in the topology. It sleeps in `select` between packets
    and uses a few percent of a core at 15 regions; the kernel's real-time throttling
    (sched_rt_runtime_us) keeps even a runaway from taking a whole CPU.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
        return f"SCHED_FIFO {REALTIME_PRIORITY}"
    except (OSError, AttributeError) as exc:
        return f"normal (no real-time priority: {exc})"


def model_from_args(args: argparse.Namespace) -> WanModel:
    if args.config:
        cfg = json.loads(Path(args.config).read_text())
        one_way = {tuple(k.split(" ")): float(v) for k, v in cfg["one_way_ms"].items()}
        return WanModel(dict(cfg["region_of"]), one_way)
    pairs = {(a, b): float(ms) for a, b, ms in args.pair or []}
    return WanModel({}, pairs, default_one_way_ms=args.delay_ms)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--tun", required=True)
    ap.add_argument("--config", help="JSON: region_of {ip: region}, one_way_ms {'regionA regionB': ms}")
    ap.add_argument("--control", help="Unix socket for fault commands")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay for every pair not listed")
    ap.add_argument("--pair", nargs=3, action="append", metavar=("SRC", "DST", "MS"), help="one-way delay src->dst")
    args = ap.parse_args()
    router = WanRouter(open_tun(args.tun), model_from_args(args))
    priority = realtime()  # before the control thread starts: it inherits the policy
    if args.control:
        serve_control(router, Path(args.control))
    gc.freeze()  # what exists now is never garbage: a full collection then walks only new objects
    print(f"wan router on {args.tun}: {len(router.table)} address pairs; scheduling: {priority}", flush=True)
    router.run()


if __name__ == "__main__":
    main()
