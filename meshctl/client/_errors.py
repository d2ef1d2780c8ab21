"""The client's exceptions, named by what went wrong (never by an exit code).

    MeshError                  anything this client raises; .status, .detail, .field, .problem
    ├── Unreachable            no answer: connection refused, DNS, TLS, timeout (.status is None)
    ├── TableNotLoaded         `client.route()` before the local route table was ever loaded
    ├── Unauthorized           401: no token, or the token was refused
    ├── Forbidden              403: the token lacks the scope
    ├── NotFound               404: unknown region, node, token
    ├── Conflict               409: e.g. undrain of a region that is not drained
    ├── PayloadTooLarge        413
    ├── InvalidInput           400, 422: bad input; .errors lists (field, message)
    ├── RateLimited            429
    └── ServerError            5xx
        └── Unavailable        503: the controller or its store cannot serve now

Error bodies are RFC 9457 problem details (`application/problem+json`); the shapes the
controller used before (`{"detail": "...", "field": ...}` and pydantic's
`{"detail": [{"loc": ..., "msg": ...}], "message": ...}`) are read too.
This module imports no HTTP library; `from_response` takes the status, headers and body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class MeshError(Exception):
    """Base of every error the client raises. `str(exc)` is one line for a person."""

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        field: str | None = None,
        problem: dict[str, Any] | None = None,
        url: str | None = None,
        had_token: bool | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.field = field
        self.problem: dict[str, Any] = problem if problem is not None else {}
        self.url = url
        self.had_token = had_token  # whether the request carried a bearer token

    def __str__(self) -> str:
        return self.detail


class Unreachable(MeshError):
    """The controller did not answer (connect error, DNS, TLS or timeout)."""


class TableNotLoaded(MeshError):
    """The local route table was never loaded: call `client.routes.watch()` first."""


class Unauthorized(MeshError):
    """401: no token, or the token is unknown, revoked or expired."""


class Forbidden(MeshError):
    """403: the token is valid but lacks the scope (reader < operator < admin)."""


class NotFound(MeshError):
    """404: no such region, node or token."""


class Conflict(MeshError):
    """409: the request conflicts with the current state."""


class PayloadTooLarge(MeshError):
    """413: the body is larger than the controller accepts."""


class InvalidInput(MeshError):
    """400 or 422: the input is invalid; `errors` names each bad field."""

    def __init__(self, detail: str, *, errors: list[tuple[str, str]] | None = None, **kw: Any) -> None:
        super().__init__(detail, **kw)
        self.errors: list[tuple[str, str]] = list(errors or [])

    def __str__(self) -> str:
        listed = "; ".join(f"{f}: {m}" if f else m for f, m in self.errors)
        if not listed or listed in self.detail:
            return self.detail
        return f"{self.detail} ({listed})"


class RateLimited(MeshError):
    """429: too many requests; retry later."""


class ServerError(MeshError):
    """5xx: the controller failed."""


class Unavailable(ServerError):
    """503: the controller (or its store) cannot serve the request now."""


_BY_STATUS: dict[int, type[MeshError]] = {
    400: InvalidInput,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidInput,
    429: RateLimited,
    503: Unavailable,
}


def error_class(status: int) -> type[MeshError]:
    """The exception class for an HTTP error status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else MeshError


def _dotted(loc: Any) -> str:
    parts = [str(x) for x in loc] if isinstance(loc, list | tuple) else [str(loc)]
    if parts[:1] in (["body"], ["query"], ["path"], ["header"]):
        parts = parts[1:]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


def parse_problem(status: int, body: bytes, reason: str = "") -> dict[str, Any]:
    """An RFC 9457 problem dict from any error body the controller has ever sent.

    Always has `status`, `detail` (a string), `field` (or None) and `errors`
    (a list of {"field", "message"}); other members of a real problem are kept.
    """
    try:
        data: Any = json.loads(body) if body else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        text = body.decode("utf-8", "replace").strip()[:200] if body else ""
        return {"status": status, "detail": text or reason or f"HTTP {status}", "field": None, "errors": []}
    problem = dict(data)
    errors: list[dict[str, str]] = []
    raw_errors = data.get("errors")
    detail = data.get("detail")
    if isinstance(raw_errors, list):  # RFC 9457 as meshctl writes it
        for e in raw_errors:
            if isinstance(e, dict):
                errors.append({"field": str(e.get("field") or ""), "message": str(e.get("message", ""))})
    elif isinstance(detail, list):  # the old pydantic shape
        for e in detail:
            if isinstance(e, dict):
                errors.append({"field": _dotted(e.get("loc", [])), "message": str(e.get("msg", ""))})
        listed = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        detail = data.get("message") if isinstance(data.get("message"), str) else listed
    if not isinstance(detail, str) or not detail:
        detail = data.get("title") if isinstance(data.get("title"), str) else None
    field = data.get("field")
    if not isinstance(field, str) or not field:
        field = (errors[0]["field"] or None) if errors else None
    problem.update(status=status, detail=str(detail or reason or f"HTTP {status}"), field=field, errors=errors)
    return problem


def from_response(
    status: int,
    body: bytes,
    reason: str = "",
    url: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> MeshError:
    """The exception for an error response (status >= 400)."""
    problem = parse_problem(status, body, reason)
    cls = error_class(status)
    had_token = None if headers is None else "authorization" in {k.lower() for k in headers}
    kw: dict[str, Any] = dict(status=status, field=problem["field"], problem=problem, url=url, had_token=had_token)
    if cls is InvalidInput:
        return InvalidInput(problem["detail"], errors=[(e["field"], e["message"]) for e in problem["errors"]], **kw)
    return cls(problem["detail"], **kw)
