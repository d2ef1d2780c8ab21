"""The dashboard at `/ui/`: static files shipped in the package, served by the controller.

No CDN and no build step: `meshctl/api/ui/` holds one HTML page, one JavaScript module, one
stylesheet and a land outline (Natural Earth 1:110m, public domain). The page signs in with an
API token kept in the tab's sessionStorage and calls the same REST API as `meshctl`, with an
`Authorization: Bearer` header; the token never goes into a URL.

Every answer carries a strict Content-Security-Policy (only this origin; no inline script or
style; no frames), `nosniff` and `no-referrer`. Files are revalidated on every load with a
strong ETag (`Cache-Control: no-cache`), so an upgrade is seen at once and an unchanged file
costs a 304; files are gzipped once at start for browsers that accept it (116 KB -> 41 KB).
This router also carries `stream.router` (the event stream and `/v1/whoami`), so the app
registers the dashboard with one include.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from meshctl.api.responses import GZIP_MIN_BYTES, accepts_gzip, answer
from meshctl.api.routers import stream
from meshctl.service.encoded import Encoded

router = APIRouter(tags=["ui"])
router.include_router(stream.router)

CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True)
class Asset:
    body: Encoded  # the file and its gzip, made once
    media_type: str
    etag: str  # of the file as it is; the gzip's is the same with "-gz" (a strong tag per encoding)

    def tag(self, gzipped: bool) -> str:
        return self.etag[:-1] + '-gz"' if gzipped else self.etag


@cache
def assets() -> dict[str, Asset]:
    """Every file of the dashboard, read once from the package."""
    out: dict[str, Asset] = {}
    for entry in resources.files("meshctl.api").joinpath("ui").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            out[entry.name] = Asset(Encoded.of(body), TYPES[suffix], etag)
    return out


def _serve(name: str, request: Request) -> Response:
    asset = assets().get(name)
    if asset is None:
        return Response("not found\n", status_code=404, media_type="text/plain", headers=SECURITY_HEADERS)
    gzipped = len(asset.body.body) >= GZIP_MIN_BYTES and accepts_gzip(request)
    headers = {**SECURITY_HEADERS, "ETag": asset.tag(gzipped), "Cache-Control": "no-cache"}
    if asset.tag(gzipped) in {t.strip() for t in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers={**headers, "Vary": "Accept-Encoding"})
    return answer(asset.body, request, headers, asset.media_type)


@router.get("/ui", include_in_schema=False)
async def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=308)


@router.get("/ui/", include_in_schema=False)
async def ui_index(request: Request) -> Response:
    """The dashboard page."""
    return _serve("index.html", request)


@router.get("/ui/{name}", include_in_schema=False)
async def ui_asset(name: str, request: Request) -> Response:
    """One of the dashboard's files (only those shipped; no paths)."""
    return _serve(name, request)
