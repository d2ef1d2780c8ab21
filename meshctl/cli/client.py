"""The CLI's HTTP client: one method per endpoint, errors turned into one-line advice.

Exceptions (all `ApiError`, each with an exit code):
    Unreachable (4)   the controller does not answer
    AuthError (5)     401 missing/bad token, 403 wrong scope
    NotFound (6)      404
    Invalid (7)       409 conflict, 413, 422 bad input
    ServerError (1)   5xx
"""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(Exception):
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unreachable(ApiError):
    exit_code = 4


class AuthError(ApiError):
    exit_code = 5


class NotFound(ApiError):
    exit_code = 6


class Invalid(ApiError):
    exit_code = 7


class ServerError(ApiError):
    exit_code = 1


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200] or resp.reason_phrase
    if isinstance(body, dict):
        if isinstance(body.get("message"), str):
            return str(body["message"])
        d = body.get("detail")
        if isinstance(d, list):
            return "; ".join(f"{'.'.join(str(x) for x in e.get('loc', [])[1:])}: {e.get('msg')}" for e in d)
        if d is not None:
            return str(d)
    return str(body)[:200]


class Client:
    def __init__(self, base_url: str, token: str | None, timeout: float = 10.0) -> None:
        self.base_url = base_url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)
        self.has_token = bool(token)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise Unreachable(
                f"cannot reach the controller at {self.base_url} ({type(exc).__name__}): is it running? "
                "set --controller or MESHCTL_CONTROLLER, or `meshctl config use-context`"
            ) from exc
        if resp.status_code == 401:
            hint = "the token was refused" if self.has_token else "no token given"
            raise AuthError(
                f"{hint} (401: {_detail(resp)}): set --token or MESHCTL_TOKEN, "
                "or `meshctl config set-context NAME --token ...`"
            )
        if resp.status_code == 403:
            raise AuthError(f"not allowed (403): {_detail(resp)}; ask an admin for a token with that scope")
        if resp.status_code == 404:
            msg = _detail(resp)
            hint = "see `meshctl regions list`" if "region" in msg else "check the name or id"
            raise NotFound(f"{msg} (404): {hint}")
        if resp.status_code in (409, 413, 422):
            raise Invalid(f"{_detail(resp)} ({resp.status_code})")
        if resp.status_code >= 500:
            raise ServerError(f"the controller failed ({resp.status_code}): {_detail(resp)}")
        if resp.status_code == 304 or not resp.content:
            return None
        return resp.json()

    # one method per endpoint ------------------------------------------------------------
    def status(self) -> Any:
        return self.request("GET", "/v1/status")

    def regions(self) -> Any:
        return self.request("GET", "/v1/regions")

    def region(self, rid: str) -> Any:
        return self.request("GET", f"/v1/regions/{rid}")

    def put_region(self, rid: str, body: dict[str, Any]) -> Any:
        return self.request("PUT", f"/v1/regions/{rid}", json=body)

    def drain(self, rid: str, reason: str, dry_run: bool = False) -> Any:
        return self.request(
            "POST", f"/v1/regions/{rid}/drain", json={"reason": reason}, params={"dry_run": "true"} if dry_run else None
        )

    def undrain(self, rid: str) -> Any:
        return self.request("DELETE", f"/v1/regions/{rid}/drain")

    def nodes(self) -> Any:
        return self.request("GET", "/v1/nodes")

    def node(self, node_id: str) -> Any:
        return self.request("GET", f"/v1/nodes/{node_id}")

    def remove_node(self, node_id: str) -> Any:
        return self.request("DELETE", f"/v1/nodes/{node_id}")

    def peers(self, node_id: str) -> Any:
        return self.request("GET", f"/v1/nodes/{node_id}/peers")

    def links(self) -> Any:
        return self.request("GET", "/v1/links")

    def routes(self) -> Any:
        return self.request("GET", "/v1/routes")

    def route(self, src: str, dst: str, explain: bool = False) -> Any:
        return self.request("GET", f"/v1/routes/{src}/{dst}", params={"explain": "true"} if explain else None)

    def placement(self, near: str | None, lat: float | None, lon: float | None) -> Any:
        params = {k: v for k, v in {"near": near, "lat": lat, "lon": lon}.items() if v is not None}
        return self.request("GET", "/v1/placement", params=params)

    def events(self, since: str | None = None, limit: int = 100, wait: float = 0) -> Any:
        params: dict[str, Any] = {"limit": limit}
        if since is not None:
            params["since"] = since
        if wait:
            params["wait"] = wait
        return self.request("GET", "/v1/events", params=params, timeout=wait + 10)

    def create_token(self, name: str, scope: str, ttl_s: int | None) -> Any:
        body: dict[str, Any] = {"name": name, "scope": scope}
        if ttl_s:
            body["ttl_s"] = ttl_s
        return self.request("POST", "/v1/tokens", json=body)

    def tokens(self) -> Any:
        return self.request("GET", "/v1/tokens")

    def revoke_token(self, token_id: str) -> Any:
        return self.request("DELETE", f"/v1/tokens/{token_id}")

    def create_join_token(self, region: str, ttl_s: int, uses: int) -> Any:
        return self.request("POST", "/v1/join-tokens", json={"region": region, "ttl_s": ttl_s, "uses": uses})
