"""The node agent: STAMP probes, windowed statistics (and, to come, join, tunnel and reports)."""
