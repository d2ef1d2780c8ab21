"""The app factory: settings in, a FastAPI app out; the controller starts in the lifespan."""

from __future__ import annotations

import gc
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from meshctl import __version__
from meshctl.api import problems
from meshctl.api.routers import events, history, join_policies, nodes, regions, reports, routes, system, tokens, ui
from meshctl.service.controller import Controller
from meshctl.service.loop import ControlLoop
from meshctl.settings import Settings
from meshctl.store.db import Store
from meshctl.wire import schemas as s


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
        description=(
            "Routes, health and drains of a multi-cloud media mesh. Every error is RFC 9457 problem details "
            "(`application/problem+json`, type `urn:meshctl:problem:<slug>`)."
        ),
    )
    # the body limit is ours, not FastAPI's max_body_size: its 413 is a plain-text body
    app.add_middleware(problems.BodyLimit, max_bytes=settings.max_body_bytes)
    # the hot paths first: plain Starlette routes, matched before the documented FastAPI ones
    app.router.routes[:0] = [routes.fast_route, reports.fast_route]
    # ui: the dashboard and its stream
    modules = (routes, system, regions, tokens, nodes, reports, events, ui, history, join_policies)
    for module in modules:
        app.include_router(module.router)
    app.state.route_methods = problems.route_methods(app.router.routes)  # for `Allow` on a 405
    problems.install(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _finish_openapi(
                get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _finish_openapi(doc: dict[str, Any]) -> dict[str, Any]:
    """Add the Problem schema and the bearer scheme; operations that answer 401 require it."""
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    problem = s.Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem.pop("$defs", {}))
    schemas["Problem"] = problem
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for item in doc.get("paths", {}).values():
        for op in item.values():
            if isinstance(op, dict) and "401" in op.get("responses", {}) and "security" not in op:
                op["security"] = [{"bearer": []}]
    return doc


def _print_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
