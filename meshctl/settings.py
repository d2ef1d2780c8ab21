"""Controller settings: environment (MESH_*) first, then flags given to `meshctl serve`."""

from __future__ import annotations

import secrets
import socket
from dataclasses import fields
from pathlib import Path

from platformdirs import user_data_dir
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from meshctl.core.health import HealthPolicy
from meshctl.core.ipam import probe_address
from meshctl.core.routing import RoutingWeights

_W, _H = RoutingWeights(), HealthPolicy()  # the defaults of every routing and health knob


def default_replica_id() -> str:
    """The host name plus a suffix made at start: replicas started alike (on one host, in pods
    with one host name, from copied configuration) never share an id by accident."""
    return f"{socket.gethostname()[:48]}-{secrets.token_hex(3)}"


def default_database_url() -> str:
    """The embedded default: a SQLite file in the user's data directory."""
    path = Path(user_data_dir("meshctl")) / "controller.db"
    return f"sqlite:///{path}"


class Settings(BaseSettings):
    """Every knob of the controller; each is also `MESH_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MESH_", extra="ignore")

    database_url: str = Field(default_factory=default_database_url)
    admin_token: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    # default: host name + random suffix; an explicit id is refused while a live replica holds it
    replica_id: str = Field(default_factory=default_replica_id, min_length=1, max_length=64)

    # control loop and leadership
    recompute_interval_s: float = Field(default=1.0, gt=0, le=60)
    lease_s: float = Field(default=10.0, gt=0.5, le=300)
    follower_poll_s: float = Field(default=0.5, gt=0, le=30)

    # routing weights (reported by the API so a route can be explained); the defaults are
    # RoutingWeights' own: one definition, in the core
    loss_weight: float = _W.loss_weight
    jitter_weight: float = _W.jitter_weight
    relay_penalty_ms: float = _W.relay_penalty_ms
    hysteresis_ratio: float = _W.hysteresis_ratio
    max_relays: int = Field(default=_W.max_relays, ge=0, le=2)
    stale_after_s: float = _W.stale_after_s
    # weight of a new window's loss against the node pair's running figure (1.0: no smoothing);
    # a window of a few probes measures loss coarsely, and routes should not follow its noise
    loss_smoothing: float = Field(default=0.5, gt=0, le=1)

    # health and drain (defaults: HealthPolicy's)
    bad_loss_percent: float = _H.bad_loss_percent
    bad_rtt_ratio: float = _H.bad_rtt_ratio
    bad_rtt_extra_ms: float = _H.bad_rtt_extra_ms
    degrade_after: int = _H.degrade_after
    recover_after: int = _H.recover_after
    hold_s: float = _H.hold_s
    max_auto_drain_fraction: float = _H.max_auto_drain_fraction
    freeze_fraction: float = _H.freeze_fraction
    report_timeout_s: float = _H.report_timeout_s
    flap_window_s: float = _H.flap_window_s
    max_hold_s: float = _H.max_hold_s

    # overlay
    overlay_cidr: str = "100.96.0.0/12"
    region_prefix: int = 22
    # probe addresses (never relayed): each node's overlay host bits in this network, same size
    probe_cidr: str = "100.112.0.0/12"
    # the relayed data plane: peers' AllowedIPs follow the route table (a pair relayed through one
    # node of a relay region, both ways), with a backup path per region for local fast reroute.
    # Off by default in a fleet (nodes start forwarding for each other: an operator's decision);
    # false: AllowedIPs are each node's own addresses and routes are advice for applications
    relay_data_plane: bool = False

    # attested join (meshctl.attest): trust roots read once at start (layout: meshctl.attest.trust);
    # the controller's URL as nodes reach it (the GCP identity token's audience, no trailing /);
    # AWS signs only the instance's launch time: with this set, an instance launched longer ago
    # cannot join by attestation (None: any age; one join per instance id holds either way)
    attest_trust_dir: Path | None = None
    public_url: str | None = None
    attest_aws_max_age_s: float | None = Field(default=None, gt=0)

    # input limits
    max_body_bytes: int = 1_048_576
    report_max_future_s: float = 60.0
    report_max_age_s: float = 3600.0
    # a stored window's numbers are kept this long after it was received: other replicas' leaders
    # fold them within a tick, and a new leader rebuilds link state from the last stale_after_s
    # (plus the time the database was unreachable). Default: stale_after_s + 100 s (120 s). Whether
    # a window was accepted at all (409 to a second copy) is kept apart, in a few bytes, for
    # report_max_age_s + report_max_future_s.
    report_window_retention_s: float = Field(default=120.0, gt=0)
    # reports are committed in groups: a group's commit begins at least this long after the one
    # before began, so under load more windows share a commit (and its fsync); 0: as soon as the
    # one before ends
    report_commit_gather_s: float = Field(default=0.01, ge=0, le=1)
    node_down_after_s: float = 20.0
    # a node whose clock is off by more than this has its windows re-timed into the controller's
    # time (and a clock_skew event), rather than refused as "in the future" or judged stale
    clock_tolerance_s: float = Field(default=10.0, gt=0)
    # further off than this, a clock is broken rather than skewed: windows are judged as sent
    clock_max_offset_s: float = Field(default=900.0, gt=0)

    @model_validator(mode="after")
    def _probe_network_fits(self) -> Settings:
        """The probe network is the overlay's size and apart from it (one line at start, not a 500 later)."""
        probe_address(self.overlay_cidr.split("/")[0], self.overlay_cidr, self.probe_cidr)
        return self

    @model_validator(mode="after")
    def _windows_outlive_the_fold(self) -> Settings:
        """A new leader reads back stale_after_s of windows: pruning them sooner would leave it blind."""
        if "report_window_retention_s" not in self.model_fields_set:
            self.report_window_retention_s = self.stale_after_s + 100.0
        elif self.report_window_retention_s < self.stale_after_s:
            raise ValueError(
                f"report_window_retention_s ({self.report_window_retention_s:g}) must be at least "
                f"stale_after_s ({self.stale_after_s:g}): a new leader rebuilds link state from that much"
            )
        return self

    @property
    def report_seen_s(self) -> float:
        """How long an accepted (node, seq) is remembered: as long as the window could be accepted."""
        return self.report_max_age_s + self.report_max_future_s

    @property
    def replica_id_explicit(self) -> bool:
        """The replica id was given (flag or MESH_REPLICA_ID), not made up at start."""
        return "replica_id" in self.model_fields_set

    def routing_weights(self) -> RoutingWeights:
        return RoutingWeights(**{f.name: getattr(self, f.name) for f in fields(RoutingWeights)})

    def health_policy(self) -> HealthPolicy:
        return HealthPolicy(**{f.name: getattr(self, f.name) for f in fields(HealthPolicy)})
