"""`Client` (sync) and `AsyncClient`: the endpoints of `_endpoints`, sent with httpx.

All share everything but the send: request building lives in `Endpoints`, decoding and
error mapping in `finish`. The lab uses `Client`, the CLI `JsonClient` (the answers as JSON, no
pydantic); services and the agent, which are async, use `AsyncClient`.

Start-up (the CLI makes one `Client` per command): the local route table (`routes`, with
asyncio and threads) is made on first use, and a client of an `http://` controller loads no
certificate authorities (see `plain_http_tls`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from meshctl.client._endpoints import Call, Endpoints
from meshctl.client._errors import Unreachable, from_response
from meshctl.client.config import DEFAULT_CONTROLLER, resolve

if TYPE_CHECKING:
    import ssl

    from meshctl.client._routes import AsyncRoutes, SyncRoutes
    from meshctl.wire import schemas as s

T = TypeVar("T")
C = TypeVar("C", bound="_Base")

DEFAULT_TIMEOUT_S = 10.0


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def unreachable(base_url: str, exc: Exception) -> Unreachable:
    return Unreachable(f"cannot reach the controller at {base_url} ({type(exc).__name__})", url=base_url)


def check(resp: httpx.Response) -> None:
    """Raise the named error of a failed answer."""
    if resp.status_code >= 400:
        raise from_response(
            resp.status_code, resp.content, resp.reason_phrase, str(resp.request.url), resp.request.headers
        )


def finish(call: Call[T], resp: httpx.Response) -> T:
    """The decoded body of a success, or the named error of a failure."""
    check(resp)
    return call.decode(resp.content)


def plain_http_tls(base_url: str) -> ssl.SSLContext | bool:
    """httpx's `verify` for a client of `base_url`.

    httpx builds its TLS context when the client is made, loading certifi's ~150 certificate
    authorities (30-40 ms, a fifth of a CLI command), even for an `http://` controller that
    never speaks TLS. For `http://` this gives a context that still checks certificates and
    host names but trusts no authority: nothing is loaded, and an https request through such a
    client (none is made: every path is relative to the base URL) fails closed. `https://` gets
    httpx's default (certifi, or SSL_CERT_FILE / SSL_CERT_DIR).
    """
    if not base_url.lower().startswith("http://"):
        return True
    import ssl

    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verify_mode CERT_REQUIRED, check_hostname on


def _timeout(call: Call[Any]) -> Any:
    return httpx.USE_CLIENT_DEFAULT if call.timeout is None else call.timeout


class _Base(Endpoints):
    base_url: str
    token: str | None
    timeout: float

    @classmethod
    def from_context(
        cls: type[C],
        controller: str | None = None,
        token: str | None = None,
        context: str | None = None,
        **kwargs: Any,
    ) -> C:
        """A client for the controller chosen as `meshctl` would: arguments > environment
        (MESHCTL_CONTROLLER, MESHCTL_TOKEN) > the named or current context of the config file."""
        url, tok, _ = resolve(controller, token, context)
        return cls(url, tok, **kwargs)  # type: ignore[call-arg]  # both subclasses take (url, token)

    def route(self, src: str, dst: str) -> s.RouteOut:
        """The route from the local table in microseconds, no request (see `routes.watch()`).

        Raises NotFound for a region the table does not know, TableNotLoaded before the first load.
        """
        return self.routes.get(src, dst)

    if TYPE_CHECKING:  # each client defines its own kind, made on first use

        @property
        def routes(self) -> SyncRoutes | AsyncRoutes: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r}, token={'set' if self.token else None})"


class Client(_Base):
    """A synchronous client of the controller's REST API.

    >>> with Client("http://127.0.0.1:8080", token) as mesh:
    ...     mesh.status().generation
    """

    def __init__(
        self,
        base_url: str = DEFAULT_CONTROLLER,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
        event_hooks: dict[str, list[Any]] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=auth_headers(token),
            timeout=timeout,
            transport=transport,
            event_hooks=event_hooks,
            verify=plain_http_tls(self.base_url),
        )
        self._routes: SyncRoutes | None = None

    @property
    def routes(self) -> SyncRoutes:
        """The local route table (`routes.watch()` keeps it in sync), made on first use."""
        if self._routes is None:
            from meshctl.client._routes import SyncRoutes

            self._routes = SyncRoutes(self.base_url, auth_headers(self.token), self.timeout)
        return self._routes

    def _send(self, call: Call[Any]) -> httpx.Response:
        try:
            return self._http.request(
                call.method, call.path, params=call.params, json=call.json, timeout=_timeout(call)
            )
        except httpx.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc

    def _run(self, call: Call[T]) -> T:
        return finish(call, self._send(call))

    def close(self) -> None:
        """Stop the route watch (if any) and close the connections."""
        if self._routes is not None:
            self._routes.stop()
        self._http.close()

    def __enter__(self: C) -> C:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class JsonClient(Client):
    """`Client` whose methods return the answers' JSON as the API sends it (dicts and lists), not
    validated into wire models: what `meshctl` prints. It never imports pydantic or the models
    (~80 ms of a command's start-up); errors are the same named `MeshError`s."""

    def _run(self, call: Call[Any]) -> Any:
        resp = self._send(call)
        check(resp)
        return json.loads(resp.content)


class AsyncClient(_Base):
    """An asyncio client of the controller's REST API: the same methods as `Client`, awaited.

    >>> async with AsyncClient("http://127.0.0.1:8080", token) as mesh:
    ...     await mesh.routes.watch()
    ...     mesh.route("aws:us-east-1", "gcp:europe-west1").path
    """

    def __init__(
        self,
        base_url: str = DEFAULT_CONTROLLER,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        event_hooks: dict[str, list[Any]] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=auth_headers(token),
            timeout=timeout,
            transport=transport,
            event_hooks=event_hooks,
            verify=plain_http_tls(self.base_url),
        )
        self._routes: AsyncRoutes | None = None

    @property
    def routes(self) -> AsyncRoutes:
        """The local route table (`await routes.watch()` keeps it in sync), made on first use."""
        if self._routes is None:
            from meshctl.client._routes import AsyncRoutes

            self._routes = AsyncRoutes(self._http)
        return self._routes

    async def _run(self, call: Call[T]) -> T:
        try:
            resp = await self._http.request(
                call.method, call.path, params=call.params, json=call.json, timeout=_timeout(call)
            )
        except httpx.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc
        return finish(call, resp)

    async def aclose(self) -> None:
        """Stop the route watch (if any) and close the connections."""
        if self._routes is not None:
            await self._routes.stop()
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()
