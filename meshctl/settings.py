"""Controller settings: environment (MESH_*) first, then flags given to `meshctl serve`."""

from __future__ import annotations

import socket
from pathlib import Path

from platformdirs import user_data_dir
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from meshctl.core.health import HealthPolicy
from meshctl.core.routing import RoutingWeights


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
    replica_id: str = Field(default_factory=lambda: f"{socket.gethostname()}")

    # control loop and leadership
    recompute_interval_s: float = Field(default=1.0, gt=0, le=60)
    lease_s: float = Field(default=10.0, gt=0.5, le=300)
    follower_poll_s: float = Field(default=0.5, gt=0, le=30)

    # routing weights (reported by the API so a route can be explained)
    loss_weight: float = 5.0
    jitter_weight: float = 1.0
    relay_penalty_ms: float = 1.0
    hysteresis_ratio: float = 0.05
    max_relays: int = Field(default=2, ge=0, le=2)
    stale_after_s: float = 20.0
    # weight of a new window's loss against the node pair's running figure (1.0: no smoothing);
    # a window of a few probes measures loss coarsely, and routes should not follow its noise
    loss_smoothing: float = Field(default=0.5, gt=0, le=1)

    # health and drain
    bad_loss_percent: float = 20.0
    bad_rtt_ratio: float = 1.5
    bad_rtt_extra_ms: float = 25.0
    degrade_after: int = 3
    recover_after: int = 5
    hold_s: float = 30.0
    max_auto_drain_fraction: float = 0.34
    freeze_fraction: float = 0.5
    report_timeout_s: float = 15.0
    flap_window_s: float = 900.0
    max_hold_s: float = 600.0

    # overlay
    overlay_cidr: str = "100.96.0.0/12"
    region_prefix: int = 22

    # input limits
    max_body_bytes: int = 1_048_576
    report_max_future_s: float = 60.0
    report_max_age_s: float = 3600.0
    node_down_after_s: float = 20.0

    def routing_weights(self) -> RoutingWeights:
        return RoutingWeights(
            loss_weight=self.loss_weight,
            jitter_weight=self.jitter_weight,
            relay_penalty_ms=self.relay_penalty_ms,
            hysteresis_ratio=self.hysteresis_ratio,
            max_relays=self.max_relays,
            stale_after_s=self.stale_after_s,
        )

    def health_policy(self) -> HealthPolicy:
        return HealthPolicy(
            bad_loss_percent=self.bad_loss_percent,
            bad_rtt_ratio=self.bad_rtt_ratio,
            bad_rtt_extra_ms=self.bad_rtt_extra_ms,
            degrade_after=self.degrade_after,
            recover_after=self.recover_after,
            hold_s=self.hold_s,
            max_auto_drain_fraction=self.max_auto_drain_fraction,
            freeze_fraction=self.freeze_fraction,
            report_timeout_s=self.report_timeout_s,
            flap_window_s=self.flap_window_s,
            max_hold_s=self.max_hold_s,
        )
