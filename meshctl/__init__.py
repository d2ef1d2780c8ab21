"""meshctl: multi-cloud mesh control plane for real-time media."""

__version__ = "0.1.0"
