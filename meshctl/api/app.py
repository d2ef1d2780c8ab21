"""The app factory: settings in, a FastAPI app out; the controller starts in the lifespan."""

from __future__ import annotations

import gc
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

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


def create_app(settings: Settings | None = None, announce: Callable[[str], None] | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctl = Controller(settings, Store(settings.database_url))
        await ctl.start()
        if ctl.bootstrap_token is not None:
            url = f"http://{settings.host}:{settings.port}"
            (announce or _print_stderr)(
                f"created the first admin token (shown once, store it now): {ctl.bootstrap_token}\n"
                f"  use it: meshctl config set-context local --controller {url} --token {ctl.bootstrap_token}"
                " --use && meshctl status"
            )
        loop = ControlLoop(ctl)
        loop.start()
        app.state.controller = ctl
        gc.freeze()  # what start-up loaded lives as long as the process: keep it out of every GC pass
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
        max_body_size=settings.max_body_bytes,
    )
    # the hot paths first: plain Starlette routes, matched before the documented FastAPI ones
    app.router.routes[:0] = [routes.fast_route, reports.fast_route]
    for module in (routes, system, regions, tokens, nodes, reports, events):
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

    return app


def _print_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
