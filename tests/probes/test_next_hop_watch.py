"""Next-hop heartbeats count the agent's probes: a probed next hop gets no heartbeat of its own,
and probe replies and losses move the same tracker (real UDP sockets on loopback, a real reflector)."""

from __future__ import annotations

import asyncio
import socket
import time

from probes.dataplane import HEARTBEAT_THRESHOLD, HEARTBEAT_TIMEOUT_S, WARMUP_S, NextHopWatch
from probes.stamp import reflect

INTERVAL = 0.1


def _reflector(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.setblocking(False)
    return sock


def _answer_all(sock: socket.socket) -> int:
    answered = 0
    while True:
        try:
            data, addr = sock.recvfrom(2048)
        except BlockingIOError:
            return answered
        now = time.time()
        reply = reflect(data, now, now, answered)
        assert reply is not None
        sock.sendto(reply, addr)
        answered += 1


def test_a_probed_next_hop_gets_no_heartbeat_and_probe_replies_count() -> None:
    async def main() -> None:
        reflector = _reflector("127.0.0.2")
        port = reflector.getsockname()[1]
        changes: list[bool] = []
        watch = NextHopWatch(port, lambda: changes.append(True))
        watch.set_targets("127.0.0.1", {"n-probed": "127.0.0.2", "n-quiet": "127.0.0.2"})
        now = time.monotonic() + WARMUP_S + 1.0  # both tunnels warm
        watch.probe_sent("n-probed", 7, now - 0.02)  # the agent probed it 20 ms ago
        assert watch.send_heartbeats(now, INTERVAL) == 1  # the other one only
        await asyncio.sleep(0.05)
        assert _answer_all(reflector) == 1
        # the probe's reply, as the agent hands it over (monotonic, when the kernel had it)
        watch.probe_replied("n-probed", 7, now)
        assert watch.answered == {"n-probed"}
        await asyncio.sleep(0.05)
        watch._receive()
        assert watch.answered == {"n-probed", "n-quiet"}
        assert watch.tracker.misses("n-probed") == watch.tracker.misses("n-quiet") == 0
        # a probe older than 3/4 interval does not stand in for a heartbeat
        assert watch.send_heartbeats(now + INTERVAL, INTERVAL) == 2
        # probes that go unanswered are losses like heartbeats: the next hop goes down, on_change fires
        later = now + 1.0
        for i in range(HEARTBEAT_THRESHOLD):
            watch.probe_sent("n-probed", 100 + i, later + i * INTERVAL)
        watch.tracker.expire(later + HEARTBEAT_THRESHOLD * INTERVAL + HEARTBEAT_TIMEOUT_S)
        assert "n-probed" in watch.down
        await asyncio.sleep(0)
        assert changes == [True]
        watch.close()
        reflector.close()

    asyncio.run(main())


def test_probes_to_a_next_hop_still_warming_up_or_not_watched_are_not_counted() -> None:
    async def main() -> None:
        watch = NextHopWatch(862, lambda: None)
        watch.set_targets("127.0.0.1", {"n-new": "127.0.0.2"})
        now = time.monotonic()
        watch.probe_sent("n-new", 1, now)  # its tunnel may still be handshaking
        watch.probe_sent("n-other", 2, now + WARMUP_S)  # not a next hop
        watch.tracker.expire(now + 10 * WARMUP_S)
        assert watch.tracker.misses("n-new") == watch.tracker.misses("n-other") == 0
        watch.close()

    asyncio.run(main())
