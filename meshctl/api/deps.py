"""Request dependencies: the controller of this app, and who is calling with which scope."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from meshctl.service.auth import Principal
from meshctl.service.controller import Controller
from meshctl.service.errors import Forbidden


async def get_controller(request: Request) -> Controller:
    ctl: Controller = request.app.state.controller
    return ctl


Ctl = Annotated[Controller, Depends(get_controller)]


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def get_principal(request: Request, ctl: Ctl) -> Principal:
    return await ctl.authenticate(bearer(request))


def require(scope: str):  # type: ignore[no-untyped-def]
    """A dependency that admits tokens with at least `scope` (node credentials only for 'node')."""

    async def check(who: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not who.allows(scope):
            have = "a node credential" if who.kind == "node" else f"scope {who.scope}"
            raise Forbidden(f"this needs the {scope} scope; the token has {have}")
        return who

    return check


Reader = Annotated[Principal, Depends(require("reader"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]
Node = Annotated[Principal, Depends(require("node"))]
AnyCaller = Annotated[Principal, Depends(get_principal)]
