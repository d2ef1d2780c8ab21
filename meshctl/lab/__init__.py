"""Local lab: real WireGuard nodes in network namespaces on one machine."""
