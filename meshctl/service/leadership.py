"""The leader lease as this replica sees it: who leads, since when, and our own fence; and the
start-up check that an explicit replica id is not held by another live replica.

Only the control loop changes it (`observe`, `become_leader`, `renewed`, `step_down`); everyone
else reads. The store checks the fence (replica id, process instance, epoch) in the same
statement as every write the leader makes on its own authority (automatic drains, publications).
The instance is made at start, so two processes given the same replica id never share a lease.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from meshctl.service.metrics import Metrics
from meshctl.settings import Settings
from meshctl.store.db import Store
from meshctl.store.values import Fence, Lease

log = logging.getLogger("meshctl.leadership")


class ReplicaIdInUse(Exception):
    """Another live replica sends heartbeats under the replica id this one was given."""


def heartbeat_every_s(settings: Settings) -> float:
    """The longest a replica normally goes between two heartbeats (one per loop tick)."""
    return max(settings.recompute_interval_s, 4 * settings.follower_poll_s)


def check_replica_id(
    store: Store,
    settings: Settings,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Refuse (ReplicaIdInUse) an explicit replica id while another live replica holds it.

    Live means its heartbeat row moves: a replica that stopped cleanly removed its row, and one
    that crashed leaves a row that stops moving, so a restart under the same id waits at most
    two heartbeat intervals (plus a second) before it goes ahead. Two processes that pass this
    check at the same instant still never both lead: the lease is fenced by process instance.
    """
    replica_id = settings.replica_id
    seen = store.replica_seen(replica_id)
    if seen is None or clock() - seen > 60.0:  # never seen, said goodbye, or long gone
        return
    watch_s = 2 * heartbeat_every_s(settings) + 1.0
    step, waited = min(0.2, watch_s / 5), 0.0
    while waited < watch_s:
        sleep(step)
        waited += step
        now_seen = store.replica_seen(replica_id)
        if now_seen is not None and now_seen != seen:
            raise ReplicaIdInUse(
                f"replica id {replica_id!r} is in use by a live replica (heartbeat moved "
                f"{max(0.0, now_seen - seen):.1f} s ago); give another --replica-id or leave it out"
            )
    log.info("replica id %s: its previous holder stopped sending heartbeats; taking it", replica_id)


class Leadership:
    def __init__(self, replica_id: str, metrics: Metrics) -> None:
        self.replica_id = replica_id
        self.instance = secrets.token_hex(8)  # this process: fencing holds whatever the ids
        self._metrics = metrics
        self._is_leader = False
        self._leader: str | None = None
        self._leader_since: float | None = None
        self._epoch = 0
        self._expires_at = 0.0

    @property
    def is_leader(self) -> bool:
        """This replica holds the lease (as of its last renewal)."""
        return self._is_leader

    @property
    def leader(self) -> str | None:
        """The replica holding an unexpired lease, as last read from the store."""
        return self._leader

    @property
    def leader_since(self) -> float | None:
        return self._leader_since

    @property
    def epoch(self) -> int:
        """Our lease epoch while we lead (the last one we held otherwise)."""
        return self._epoch

    @property
    def expires_at(self) -> float:
        return self._expires_at

    @property
    def writer_id(self) -> str:
        """This process, as it signs the reports it accepts (`reports.replica_id`): two processes
        with one replica id still tell their reports apart (the leader pulls the other's)."""
        return f"{self.replica_id[:47]}#{self.instance}"

    @property
    def fence(self) -> Fence:
        """What the store checks before a leader's write: replica id, process instance, epoch."""
        return Fence(self.replica_id, self.instance, self._epoch)

    def observe(self, lease: Lease, now: float) -> bool:
        """Note who holds the lease; True when it is ours (this replica id AND this process)."""
        self._leader = lease.holder if lease.expires_at > now else None
        self._leader_since = lease.acquired_at if self._leader is not None else None
        return lease.holder == self.replica_id and lease.instance == self.instance

    def become_leader(self, epoch: int, since: float) -> None:
        self._is_leader, self._epoch, self._leader_since = True, epoch, since
        self._metrics.is_leader.set(1)
        self._metrics.leader_since.set(since)
        log.info("leading with lease epoch %d", epoch)

    def renewed(self, lease: Lease) -> None:
        """Our lease was renewed (or taken): its epoch and expiry."""
        self._epoch, self._expires_at = lease.epoch, lease.expires_at

    def step_down(self, why: str) -> None:
        if self._is_leader:
            log.warning("stepping down: %s", why)
        self._is_leader = False
        self._metrics.is_leader.set(0)

    def lapsed(self, now: float) -> bool:
        """We lead but our lease has run out (the store could not renew it)."""
        return self._is_leader and now >= self._expires_at
