"""Answers gzipped for the clients that accept it (a 150-region JSON answer is megabytes).

Per endpoint rather than Starlette's GZipMiddleware: the hot route lookup (10k requests/s) and
the event stream stay outside any wrapper, and a body compressed once per snapshot
(`meshctl.service.encoded`) is sent as it is.
"""

from __future__ import annotations

import gzip

from starlette.requests import Request
from starlette.responses import Response

from meshctl.service.encoded import GZIP_LEVEL, Encoded

GZIP_MIN_BYTES = 1400  # smaller answers fit a packet as they are


def accepts_gzip(request: Request) -> bool:
    return "gzip" in request.headers.get("accept-encoding", "")


def answer(
    body: bytes | Encoded, request: Request, headers: dict[str, str] | None = None, media_type: str = "application/json"
) -> Response:
    """`body`, gzipped when the client accepts it and it is worth it."""
    headers = {**(headers or {}), "Vary": "Accept-Encoding"}
    raw = body.body if isinstance(body, Encoded) else body
    if len(raw) >= GZIP_MIN_BYTES and accepts_gzip(request):
        headers["Content-Encoding"] = "gzip"
        raw = body.gzipped if isinstance(body, Encoded) else gzip.compress(raw, compresslevel=GZIP_LEVEL)
    return Response(raw, media_type=media_type, headers=headers)


def json_answer(body: bytes | Encoded, request: Request, headers: dict[str, str] | None = None) -> Response:
    """`body` as JSON, gzipped when the client accepts it and it is worth it."""
    return answer(body, request, headers)
