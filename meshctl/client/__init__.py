"""meshctl.client: a typed client of the controller's REST API, with a local route table.

    from meshctl.client import Client, NotFound

    with Client.from_context() as mesh:          # flags > MESHCTL_* > the meshctl context
        mesh.routes.watch()                      # a local copy of GET /v1/routes, kept in sync
        mesh.route("aws:us-east-1", "gcp:europe-west1").path   # microseconds, no request
        mesh.drain("aws:us-east-1", reason="provider incident")

`AsyncClient` has the same methods, awaited. Every method returns the wire models of
`meshctl.wire.schemas`; every failure is a `MeshError` named by its meaning (see `_errors`).
`Client` and `AsyncClient` (httpx, pydantic) are imported on first use, so a program can
import the errors and the contexts cheaply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshctl.client._errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    MeshError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    TableNotLoaded,
    Unauthorized,
    Unavailable,
    Unreachable,
)
from meshctl.client.config import DEFAULT_CONTROLLER, Config, ConfigError, config_path, resolve

if TYPE_CHECKING:
    from meshctl.client._client import AsyncClient, Client, JsonClient
    from meshctl.client._routes import AsyncRoutes, RouteTable, SyncRoutes

__all__ = [
    "DEFAULT_CONTROLLER",
    "AsyncClient",
    "AsyncRoutes",
    "Client",
    "Config",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "JsonClient",
    "MeshError",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RouteTable",
    "ServerError",
    "SyncRoutes",
    "TableNotLoaded",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "config_path",
    "resolve",
]

_LAZY = {
    "Client": "meshctl.client._client",
    "AsyncClient": "meshctl.client._client",
    "JsonClient": "meshctl.client._client",
    "RouteTable": "meshctl.client._routes",
    "SyncRoutes": "meshctl.client._routes",
    "AsyncRoutes": "meshctl.client._routes",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'meshctl.client' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
