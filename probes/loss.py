"""Consecutive probe losses per peer: which peers just went down (N losses in a row) or came back.

The agent's early windows (a window is closed and sent as soon as a peer crosses the threshold,
instead of at the window's end) and local fast reroute (a next hop is down after N losses) read
the same tracker, so "down" means the same thing to both.

A probe is lost when no reply came within `timeout_s` of sending it (the agent's reply timeout:
a reply later than that is useless to real-time media and counts as lost in the window too).
The count is of consecutive losses in *send order*: a reply to any probe resets it, and a probe
sent before the newest answered one is not counted when it expires (its reply was overtaken).

Pure and clock-free: every call takes the time (`time.monotonic()` in the agent), so tests drive
it with made-up times. Usage::

    tracker = LossTracker(threshold=3, timeout_s=0.6)
    tracker.sent("n-peer", seq, now)
    tracker.replied("n-peer", seq, now)    # True when this reply brought a down peer back
    change = tracker.expire(now)           # call often (every send slot): Change(down, up)
    tracker.is_down("n-peer"); tracker.down

Listeners (`tracker.listeners.append(fn)`, `fn(node_id, down: bool)`) are called at each
transition, after the state changed, in the order the transitions happened.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

DEFAULT_THRESHOLD = 3


@dataclass(frozen=True)
class Change:
    """Peers that just crossed the threshold (`expire`); `up` is for callers that merge in `replied`."""

    down: frozenset[str] = frozenset()
    up: frozenset[str] = frozenset()
    missed: frozenset[str] = frozenset()  # peers that lost a probe (down or not yet)

    def __bool__(self) -> bool:
        return bool(self.down or self.up)


_NO_CHANGE = Change()


@dataclass
class _Peer:
    outstanding: dict[int, float] = field(default_factory=dict)  # seq -> sent at, in send order
    misses: int = 0  # consecutive losses since the newest answered probe
    newest_answered: float = float("-inf")  # send time of the newest probe that got a reply
    down: bool = False


class LossTracker:
    """Per peer (node id): consecutive probe losses and whether the peer is down (>= threshold).

    Every probe has the same timeout, so send order is expiry order: one queue of every
    outstanding probe makes `expire` cost the probes that expired, not the peers (an agent with
    300 targets calls it at every tick)."""

    def __init__(self, threshold: int = DEFAULT_THRESHOLD, timeout_s: float = 0.6) -> None:
        if threshold < 1:
            raise ValueError("threshold must be >= 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.threshold = threshold
        self.timeout_s = timeout_s
        self.listeners: list[Callable[[str, bool], None]] = []
        self._peers: dict[str, _Peer] = {}
        self._queue: deque[tuple[float, str, int]] = deque()  # (sent at, node id, seq), in send order

    # --- feeding ---------------------------------------------------------------------------

    def sent(self, node_id: str, seq: int, at: float) -> None:
        """A probe `seq` was sent to `node_id` at time `at` (send order is call order)."""
        peer = self._peers.get(node_id)
        if peer is None:
            peer = self._peers[node_id] = _Peer()
        peer.outstanding[seq] = at
        self._queue.append((at, node_id, seq))

    def replied(self, node_id: str, seq: int, at: float) -> bool:
        """A reply to probe `seq` from `node_id` came at `at`; True when it brought a down peer back.

        A reply to a probe that is not outstanding (already expired, never sent, a duplicate) or
        later than the timeout changes nothing: it was counted lost, as the window counts it.
        """
        peer = self._peers.get(node_id)
        if peer is None:
            return False
        sent_at = peer.outstanding.get(seq)
        if sent_at is None:
            return False
        if at - sent_at > self.timeout_s:
            return False  # too late: left for expire() to count as lost, as the window counts it
        del peer.outstanding[seq]
        if sent_at > peer.newest_answered:
            peer.newest_answered = sent_at
        peer.misses = 0
        if peer.down:
            peer.down = False
            self._tell(node_id, False)
            return True
        return False

    def expire(self, now: float) -> Change:
        """Count every probe unanswered for longer than the timeout as lost; return the transitions
        (and in `missed`, every peer that lost a probe in this call)."""
        down: set[str] = set()
        missed: set[str] = set()
        queue, peers, timeout = self._queue, self._peers, self.timeout_s
        while queue and now - queue[0][0] > timeout:
            sent_at, node_id, seq = queue.popleft()
            peer = peers.get(node_id)
            if peer is None or peer.outstanding.pop(seq, None) is None:
                continue  # answered, or a peer forgotten since
            if sent_at < peer.newest_answered:
                continue  # a later probe was answered: this one was overtaken, not a run of losses
            peer.misses += 1
            missed.add(node_id)
            if peer.misses >= self.threshold and not peer.down:
                peer.down = True
                down.add(node_id)
                self._tell(node_id, True)
        if not missed:
            return _NO_CHANGE
        return Change(down=frozenset(down), missed=frozenset(missed))

    # --- reading ---------------------------------------------------------------------------

    def misses(self, node_id: str) -> int:
        """Consecutive losses of `node_id` so far (0 for an unknown peer)."""
        peer = self._peers.get(node_id)
        return peer.misses if peer else 0

    def is_down(self, node_id: str) -> bool:
        peer = self._peers.get(node_id)
        return bool(peer and peer.down)

    @property
    def down(self) -> frozenset[str]:
        """Peers currently down (at least `threshold` consecutive losses, no reply since)."""
        return frozenset(n for n, p in self._peers.items() if p.down)

    def forget(self, keep: Iterable[str]) -> None:
        """Drop every peer not in `keep` (peers that left the peer list); no transition is reported."""
        wanted = set(keep)
        for node_id in [n for n in self._peers if n not in wanted]:
            del self._peers[node_id]

    def _tell(self, node_id: str, is_down: bool) -> None:
        for listener in list(self.listeners):
            listener(node_id, is_down)
