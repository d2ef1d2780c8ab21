"""A cloud instance metadata service that answers as AWS, GCP or Azure does, for the agent's tests.

It serves documents signed by `meshctl.attest.testing` signers and holds every request to its cloud's
protocol: a request without the cloud's headers is refused as the real service refuses it (IMDSv2:
401 without a session token, GCP: 403 without `Metadata-Flavor: Google`, Azure: 400 without
`Metadata: true`) and recorded in `violations`, so a test can assert there were none. Paths of the
other clouds get 404. `FakeImds.handle` is an httpx MockTransport handler; `answer` is the same as
plain values, should a test want to serve it over a socket.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import httpx

from meshctl.attest.testing import AwsSigner, AzureSigner, GcpSigner

Answer = tuple[int, dict[str, str], str]


@dataclass
class FakeImds:
    """One cloud's metadata service; `cached_nonce` makes Azure answer once with that (older) nonce."""

    cloud: str
    aws: AwsSigner | None = None
    gcp: GcpSigner | None = None
    azure: AzureSigner | None = None
    now: datetime | None = None
    public_ip: str = "198.51.100.7"
    cached_nonce: str | None = None
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    nonces: list[str] = field(default_factory=list)
    audiences: list[str] = field(default_factory=list)
    _aws_signed: tuple[str, str] | None = None

    def handle(self, request: httpx.Request) -> httpx.Response:
        status, headers, body = self.answer(
            request.method, str(request.url), {k.lower(): v for k, v in request.headers.items()}
        )
        return httpx.Response(status, headers=headers, text=body)

    def _refuse(self, status: int, why: str) -> Answer:
        self.violations.append(why)
        return status, {}, why

    def answer(self, method: str, url: str, headers: dict[str, str]) -> Answer:
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.requests.append((method, parts.path, headers))
        if parts.hostname != "169.254.169.254":
            return self._refuse(502, f"asked {parts.hostname}, not the link-local metadata address")
        if self.cloud == "aws" and parts.path.startswith("/latest/"):
            return self._aws(method, parts.path, headers)
        if self.cloud == "gcp" and parts.path.startswith("/computeMetadata/"):
            return self._gcp(parts.path, query, headers)
        if self.cloud == "azure" and parts.path.startswith("/metadata/"):
            return self._azure(parts.path, query, headers)
        return 404, {}, "Not Found"

    def _aws(self, method: str, path: str, headers: dict[str, str]) -> Answer:
        if path == "/latest/api/token":
            if method != "PUT":
                return self._refuse(405, "IMDSv2 token asked with GET, not PUT")
            ttl = headers.get("x-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return self._refuse(400, f"IMDSv2 token without a TTL of 1..21600 s ({ttl!r})")
            token = f"AQAEA{len(self.tokens)}xyz=="
            self.tokens.append(token)
            return 200, {"X-aws-ec2-metadata-token-ttl-seconds": ttl}, token
        if method != "GET":
            return self._refuse(405, f"{method} {path}")
        if headers.get("x-aws-ec2-metadata-token") not in self.tokens:
            return self._refuse(401, f"{path} without a valid IMDSv2 session token")
        assert self.aws is not None
        if path == "/latest/meta-data/public-ipv4":
            return 200, {}, self.public_ip
        if self._aws_signed is None:  # an instance's document does not change: sign it once, as IMDS serves it
            self._aws_signed = self.aws.sign(self.aws.document())
        document, signature = self._aws_signed
        if path == "/latest/dynamic/instance-identity/document":
            return 200, {}, document
        if path == "/latest/dynamic/instance-identity/rsa2048":
            return 200, {}, signature
        return 404, {}, "Not Found"

    def _gcp(self, path: str, query: dict[str, str], headers: dict[str, str]) -> Answer:
        google = {"Metadata-Flavor": "Google"}
        if headers.get("metadata-flavor") != "Google":
            self.violations.append(f"{path} without Metadata-Flavor: Google")
            return 403, google, "Missing Metadata-Flavor:Google header."
        if path == "/computeMetadata/v1/":
            return 200, google, "instance/\nproject/\n"
        if path == "/computeMetadata/v1/instance/network-interfaces/0/access-configs/0/external-ip":
            return 200, google, self.public_ip
        if path == "/computeMetadata/v1/instance/service-accounts/default/identity":
            assert self.gcp is not None
            if "audience" not in query:
                return self._refuse(400, "identity token without an audience")
            if query.get("format") != "full":
                self.violations.append("identity token without format=full")
            self.audiences.append(query["audience"])
            return 200, google, self.gcp.token(audience=query["audience"], now=self.now or datetime.now(UTC))
        return 404, google, "Not Found"

    def _azure(self, path: str, query: dict[str, str], headers: dict[str, str]) -> Answer:
        if headers.get("metadata") != "true":
            self.violations.append(f"{path} without Metadata: true")
            return 400, {}, '{"error": "Bad request. Required metadata header not specified"}'
        if "x-forwarded-for" in headers:
            return self._refuse(403, "came through a proxy (X-Forwarded-For)")
        if path == "/metadata/versions":
            return 200, {"Content-Type": "application/json"}, '{"apiVersions": ["2020-09-01", "2021-02-01"]}'
        if path == "/metadata/instance/network/interface/0/ipv4/ipAddress/0/publicIpAddress":
            return 200, {}, self.public_ip
        if path == "/metadata/attested/document":
            assert self.azure is not None
            if query.get("api-version") != "2020-09-01":
                return self._refuse(400, f"attested document with api-version {query.get('api-version')!r}")
            nonce = query.get("nonce", "")
            self.nonces.append(nonce)
            signed, self.cached_nonce = (self.cached_nonce or nonce), None
            body = self.azure.attested(signed, now=self.now or datetime.now(UTC))
            return 200, {"Content-Type": "application/json"}, body
        return 404, {}, "Not Found"


@functools.cache
def signer(cloud: str) -> AwsSigner | GcpSigner | AzureSigner:
    """One signer per cloud for the session (RSA keys take a while to make)."""
    return {"aws": AwsSigner, "gcp": GcpSigner, "azure": AzureSigner}[cloud]()


def fake(cloud: str, **kw: object) -> FakeImds:
    """A metadata service of `cloud`, signing with the session's signer of that cloud."""
    return FakeImds(cloud, **{cloud: signer(cloud), **kw})  # type: ignore[arg-type]


def transport(imds: FakeImds) -> httpx.MockTransport:
    return httpx.MockTransport(imds.handle)
