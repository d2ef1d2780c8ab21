"""The node agent: join, WireGuard tunnel, STAMP probes, windowed statistics, reports (`probes.cli`)."""
