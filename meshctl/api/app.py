"""The app factory: settings in, a FastAPI app out; the controller starts in the lifespan."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from meshctl import __version__
from meshctl.api.routers import events, nodes, regions, reports, routes, system, tokens
from meshctl.service.controller import Controller, ServiceError
from meshctl.service.loop import ControlLoop
from meshctl.settings import Settings
from meshctl.store.db import Store

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class BodyLimit:
    """Refuse request bodies over the limit with 413, before they are read whole."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _too_large(send, self.limit)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(send, self.limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Callable[[Message], Awaitable[None]], limit: int) -> None:
    body = b'{"detail":"request body larger than %d bytes"}' % limit
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings | None = None, announce: Callable[[str], None] | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctl = Controller(settings, Store(settings.database_url))
        await ctl.start()
        if ctl.bootstrap_token is not None:
            (announce or _print_stderr)(
                f"created the first admin token (shown once, store it now): {ctl.bootstrap_token}"
            )
        loop = ControlLoop(ctl)
        loop.start()
        app.state.controller = ctl
        try:
            yield
        finally:
            await loop.stop()
            await ctl.stop()
            ctl.store.close()

    app = FastAPI(
        title="meshctl controller",
        version=__version__,
        lifespan=lifespan,
        description="Routes, health and drains of a multi-cloud media mesh.",
    )
    for module in (system, regions, tokens, nodes, reports, routes, events):
        app.include_router(module.router)

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.message, "field": exc.field}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        """422 naming each bad field; the offending input is not echoed (it may not even be JSON)."""
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        fields = ", ".join(".".join(x["loc"][1:] if x["loc"][:1] == ["body"] else x["loc"]) or "body" for x in errors)
        return JSONResponse({"detail": errors, "message": f"invalid input: {fields}"}, status_code=422)

    @app.exception_handler(OperationalError)
    async def _store_down(_: Request, exc: OperationalError) -> JSONResponse:
        return JSONResponse({"detail": "the database is unreachable; reads still work, writes do not"}, status_code=503)

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)  # type: ignore[arg-type]
    return app


def _print_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
