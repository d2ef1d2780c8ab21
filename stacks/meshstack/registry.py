"""The clouds this program knows: name -> its module's CloudProvider (imported only when used)."""

from __future__ import annotations

import importlib

from meshstack.base import CloudProvider

MODULES = {"aws": "meshstack.aws", "gcp": "meshstack.gcp", "azure": "meshstack.azure"}
# the valid region names per cloud, without importing the (slow) cloud SDKs
KNOWN_REGIONS: dict[str, frozenset[str]] = {}


def provider(cloud: str) -> CloudProvider:
    module = importlib.import_module(MODULES[cloud])
    found: CloudProvider = module.PROVIDER
    return found


def known_regions(cloud: str) -> dict[str, frozenset[str]]:
    """Valid regions of the given cloud (and the names of all clouds, for the error message)."""
    out = dict.fromkeys(MODULES, frozenset[str]())
    out[cloud] = provider(cloud).regions if cloud in MODULES else frozenset()
    return {k: v for k, v in out.items() if k in MODULES}
