"""Errors the service raises; the API answers each as RFC 9457 problem details.

    ServiceError            status  slug (urn:meshctl:problem:<slug>)
    ├── Invalid             422     invalid-input
    ├── Missing             404     not-found
    ├── Forbidden           403     forbidden
    ├── Unauthorized        401     unauthorized
    ├── Conflict            409     conflict
    └── Unavailable         503     unavailable

Titles come from the one table of problem types in `meshctl.wire.schemas.PROBLEMS`.
"""

from __future__ import annotations

from meshctl.wire.schemas import PROBLEMS


class ServiceError(Exception):
    """An error the API turns into a 4xx/5xx problem with this message (`detail`) and field."""

    status = 400
    slug = "bad-request"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    @property
    def title(self) -> str:
        return PROBLEMS[self.slug][1]


class Invalid(ServiceError):
    status = 422
    slug = "invalid-input"


class Missing(ServiceError):
    status = 404
    slug = "not-found"


class Forbidden(ServiceError):
    status = 403
    slug = "forbidden"


class Unauthorized(ServiceError):
    status = 401
    slug = "unauthorized"


class Conflict(ServiceError):
    status = 409
    slug = "conflict"


class Unavailable(ServiceError):
    status = 503
    slug = "unavailable"


class NodeRemoved(ServiceError):
    """The credential belongs to a node that was removed: the agent stops (it must join again)."""

    status = 410
    slug = "node-removed"
