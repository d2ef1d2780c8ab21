"""Every error as RFC 9457 problem details: one builder, the app's handlers, the body limit, the docs.

`problem_response` is the only place an error body is made; the exception handlers, the hot
routes and the body-size limit all go through it. `problem_responses(...)` documents the
statuses an operation can answer, each as a `Problem` under `application/problem+json`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshctl.service.errors import ServiceError
from meshctl.wire import schemas as s

log = logging.getLogger(__name__)

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def problem_response(
    slug: str,
    detail: str,
    *,
    field: str | None = None,
    errors: Sequence[s.FieldError] = (),
    status: int | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The one error response: a Problem as application/problem+json (401 says `WWW-Authenticate`)."""
    body = s.problem(slug, detail, field, list(errors), status)
    content = body.model_dump_json(exclude=None if body.errors else {"errors"}, exclude_none=False)
    if body.status == 401:
        headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
    return Response(content, status_code=body.status, media_type=s.PROBLEM_MEDIA_TYPE, headers=headers)


def service_error_response(exc: ServiceError) -> Response:
    """A ServiceError as a problem; an invalid field is also listed in `errors`."""
    errors: list[s.FieldError] = []
    if exc.status == 422 and exc.field:
        message = exc.message.removeprefix(f"{exc.field}: ")
        errors.append(s.FieldError(field=exc.field, message=message))
    return problem_response(exc.slug, exc.message, field=exc.field, errors=errors, status=exc.status)


def field_path(loc: Iterable[Any]) -> str:
    """pydantic's loc as a field path: ("body", "peers", 0, "sent") -> "peers[0].sent"."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    out = ""
    for p in parts:
        if isinstance(p, int) or (isinstance(p, str) and p.isdecimal()):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out or "body"


def validation_errors(errors: Sequence[Any]) -> list[s.FieldError]:
    out = []
    for e in errors:
        kind = str(e.get("type", "")) or None
        # FastAPI's own JSON decode error points at a character offset: the field is the body
        field = "body" if kind == "json_invalid" else field_path(e.get("loc", ()))
        out.append(s.FieldError(field=field, message=str(e.get("msg", "")), code=kind))
    return out


def validation_response(exc: RequestValidationError) -> Response:
    """422 naming each bad field; the offending input is not echoed (it may not even be JSON)."""
    errors = validation_errors(exc.errors())
    detail = "invalid input: " + "; ".join(f"{e.field}: {e.message}" for e in errors)
    if len(detail) > 500:
        detail = detail[:497] + "..."
    return problem_response("invalid-input", detail, field=errors[0].field if errors else None, errors=errors)


def route_methods(routes: Sequence[Any]) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """(path regex, methods) of every route, included routers' too, for `Allow`."""
    table = []
    for rc in iter_route_contexts(routes):
        methods = getattr(rc, "methods", None)
        if rc.path and methods:
            table.append((compile_path(rc.path)[0], frozenset(methods)))
    return table


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on this path (for `Allow`), OPTIONS included."""
    methods = {"OPTIONS"}
    path = request.url.path
    for regex, route_methods in getattr(request.app.state, "route_methods", ()):
        if regex.match(path):
            methods.update(route_methods)
    return sorted(methods)


def http_error_response(request: Request, exc: StarletteHTTPException) -> Response:
    """Starlette's own errors (unknown path, method not allowed, body too large) as problems."""
    status = exc.status_code
    headers = dict(exc.headers or {})
    path = request.url.path
    if status == 405:
        allow = ", ".join(allowed_methods(request))
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": allow})
        headers["Allow"] = allow
        detail = f"{request.method} is not allowed on {path}; allowed: {allow}"
    elif status == 404:
        detail = f"no such path: {path}"
    elif isinstance(exc.detail, str) and exc.detail:
        detail = exc.detail
    else:
        detail = HTTPStatus(status).phrase
    slug = s.SLUG_BY_STATUS.get(status) or ("internal" if status >= 500 else "bad-request")
    return problem_response(slug, detail, status=status, headers=headers or None)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem."""

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> Response:
        return service_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        return validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return http_error_response(request, exc)

    @app.exception_handler(OperationalError)
    async def _store_down(_: Request, exc: OperationalError) -> Response:
        log.warning("the store is unreachable: %s", exc.__class__.__name__)
        return problem_response("store-unavailable", "the database is unreachable; reads still work, writes do not")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        # Starlette's ServerErrorMiddleware sends this, then re-raises: the traceback goes to the log only
        return problem_response("internal", "internal error: the controller's log has the details")


class BodyLimit:
    """Refuse request bodies over `max_bytes` with a 413 problem (announced or streamed).

    A pure ASGI middleware: a Content-Length over the limit is answered before any route runs; a
    body that grows past it while a route reads it raises a 413 the handlers answer as a problem.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> StarletteHTTPException:
        return StarletteHTTPException(413, f"the request body is larger than {self.max_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    exc = self._too_large() if value.isdigit() else StarletteHTTPException(400, "bad Content-Length")
                    slug = "payload-too-large" if exc.status_code == 413 else "bad-request"
                    response = problem_response(slug, str(exc.detail), status=exc.status_code)
                    await response(scope, receive, send)
                    return
                break
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, limited, send)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry documenting these error statuses, each a Problem."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted(set(statuses)):
        slugs = [slug for slug, (st, _) in s.PROBLEMS.items() if st == status]
        out[status] = {
            "description": f"{HTTPStatus(status).phrase} ({', '.join(slugs)})",
            "content": {s.PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}},
        }
        if status == 401:
            out[status]["headers"] = {
                "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}},
            }
        if status == 405:
            out[status]["headers"] = {"Allow": {"description": "Allowed methods", "schema": {"type": "string"}}}
    return out


# the statuses by kind of operation
AUTH = (401, 403)  # any operation behind a token
BODY = (400, 413, 422)  # any operation with a request body (400: not JSON at all)
