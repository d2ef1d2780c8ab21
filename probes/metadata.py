"""The node's cloud instance metadata service: its public IP (`--endpoint auto`) and its signed identity.

Each cloud is asked the way it documents it, at the link-local address 169.254.169.254 (GCP answers
there too, as `metadata.google.internal`; the address needs no DNS), and never through a proxy
(`trust_env=False`: an `HTTP_PROXY` in the agent's environment must not carry these requests off
the machine; Azure says IMDS must not be reached through one):

- AWS, IMDSv2: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`, then every GET
  with `X-aws-ec2-metadata-token`. Identity: `/latest/dynamic/instance-identity/document` and its
  `/latest/dynamic/instance-identity/rsa2048` PKCS#7 signature (base64, as IMDS returns it).
- GCP: `Metadata-Flavor: Google` on the request, and the same header on the answer (whatever
  answers without it is not Google's metadata server). Identity: the instance identity token,
  `/computeMetadata/v1/instance/service-accounts/default/identity?audience=<controller>&format=full`.
- Azure: `Metadata: true`. Identity: `/metadata/attested/document?api-version=2020-09-01&nonce=<n>`,
  with a nonce the controller gave out (`GET /v1/join-nonce`), so a recorded document cannot be
  replayed.

`attestation()` returns the `attestation` object of `POST /v1/nodes`:
`{"kind": "aws"|"gcp"|"azure", "document": str, "signature": str | None}`. `detect_cloud()` says which
service answers, with short timeouts, and gives up at once when nothing listens at the address.
All I/O goes through an httpx transport the caller may inject (the tests answer as each cloud does).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import httpx

__all__ = [
    "CLOUDS",
    "METADATA",
    "MetadataError",
    "NoMetadataService",
    "attestation",
    "detect_cloud",
    "public_endpoint",
]

METADATA = "http://169.254.169.254"
CLOUDS = ("aws", "gcp", "azure")
AWS_TOKEN_TTL_S = 60  # the IMDSv2 session token only has to outlive the two GETs that follow
TIMEOUT = httpx.Timeout(3.0)
DETECT_TIMEOUT = httpx.Timeout(1.0, connect=0.5)  # a metadata service answers in milliseconds
AZURE_ATTESTED_API = "2020-09-01"


class MetadataError(RuntimeError):
    """The metadata service did not give what was asked; the message says which cloud and what."""


class NoMetadataService(MetadataError):
    """No cloud metadata service answers here (not a cloud VM, or the service is blocked)."""


def _client(transport: httpx.BaseTransport | None, timeout: httpx.Timeout) -> httpx.Client:
    return httpx.Client(timeout=timeout, transport=transport, trust_env=False, follow_redirects=False)


def _ok(r: httpx.Response, cloud: str, what: str) -> str:
    if r.status_code != 200:
        raise MetadataError(f"the {cloud} metadata service answered {r.status_code} for {what}")
    return r.text


# --- AWS (IMDSv2) -----------------------------------------------------------------------------


def _aws_token(client: httpx.Client) -> str:
    r = client.put(
        f"{METADATA}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": str(AWS_TOKEN_TTL_S)}
    )
    token = _ok(r, "aws", "an IMDSv2 session token").strip()
    if not token:
        raise MetadataError("the aws metadata service gave an empty IMDSv2 session token")
    return token


def _aws_get(client: httpx.Client, token: str, path: str) -> str:
    return _ok(client.get(f"{METADATA}{path}", headers={"X-aws-ec2-metadata-token": token}), "aws", path)


def _aws(client: httpx.Client) -> str:
    return _aws_get(client, _aws_token(client), "/latest/meta-data/public-ipv4")


def _aws_identity(client: httpx.Client, _audience: str, _nonce: Callable[[], str]) -> dict[str, Any]:
    token = _aws_token(client)
    document = _aws_get(client, token, "/latest/dynamic/instance-identity/document")
    signature = _aws_get(client, token, "/latest/dynamic/instance-identity/rsa2048")
    if not document.strip() or not signature.strip():
        raise MetadataError("the aws metadata service gave an empty identity document or signature")
    return {"kind": "aws", "document": document, "signature": signature}


def _aws_answers(client: httpx.Client) -> bool:
    r = client.put(f"{METADATA}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "10"})
    return r.status_code == 200 and bool(r.text.strip())


# --- GCP --------------------------------------------------------------------------------------


def _gcp_get(client: httpx.Client, path: str, params: dict[str, str] | None = None) -> str:
    r = client.get(f"{METADATA}/computeMetadata/v1/{path}", params=params, headers={"Metadata-Flavor": "Google"})
    if r.headers.get("Metadata-Flavor") != "Google":
        raise MetadataError("what answered as the gcp metadata service did not say Metadata-Flavor: Google")
    return _ok(r, "gcp", path.split("?")[0])


def _gcp(client: httpx.Client) -> str:
    return _gcp_get(client, "instance/network-interfaces/0/access-configs/0/external-ip")


def _gcp_identity(client: httpx.Client, audience: str, _nonce: Callable[[], str]) -> dict[str, Any]:
    token = _gcp_get(
        client, "instance/service-accounts/default/identity", {"audience": audience, "format": "full"}
    ).strip()
    if token.count(".") != 2:
        raise MetadataError("the gcp metadata service gave no identity token (does the VM have a service account?)")
    return {"kind": "gcp", "document": token, "signature": None}


def _gcp_answers(client: httpx.Client) -> bool:
    r = client.get(f"{METADATA}/computeMetadata/v1/", headers={"Metadata-Flavor": "Google"})
    return r.status_code == 200 and r.headers.get("Metadata-Flavor") == "Google"


# --- Azure ------------------------------------------------------------------------------------


def _azure(client: httpx.Client) -> str:
    r = client.get(
        f"{METADATA}/metadata/instance/network/interface/0/ipv4/ipAddress/0/publicIpAddress",
        params={"api-version": "2021-02-01", "format": "text"},
        headers={"Metadata": "true"},
    )
    return _ok(r, "azure", "the public IP")


def _azure_identity(client: httpx.Client, _audience: str, nonce: Callable[[], str]) -> dict[str, Any]:
    value = nonce()
    r = client.get(
        f"{METADATA}/metadata/attested/document",
        params={"api-version": AZURE_ATTESTED_API, "nonce": value},
        headers={"Metadata": "true"},
    )
    _ok(r, "azure", "the attested document")
    try:
        body = r.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("encoding") != "pkcs7" or not isinstance(body.get("signature"), str):
        raise MetadataError('the azure metadata service gave no {"encoding": "pkcs7", "signature": ...} document')
    return {"kind": "azure", "document": body["signature"], "signature": None}


def _azure_answers(client: httpx.Client) -> bool:
    r = client.get(f"{METADATA}/metadata/versions", headers={"Metadata": "true"})
    try:
        return r.status_code == 200 and "apiVersions" in r.json()
    except ValueError:
        return False


LOOKUPS: dict[str, Callable[[httpx.Client], str]] = {"aws": _aws, "gcp": _gcp, "azure": _azure}
IDENTITY: dict[str, Callable[[httpx.Client, str, Callable[[], str]], dict[str, Any]]] = {
    "aws": _aws_identity,
    "gcp": _gcp_identity,
    "azure": _azure_identity,
}
ANSWERS: dict[str, Callable[[httpx.Client], bool]] = {"aws": _aws_answers, "gcp": _gcp_answers, "azure": _azure_answers}


def detect_cloud(
    transport: httpx.BaseTransport | None = None, prefer: str | None = None, timeout: httpx.Timeout = DETECT_TIMEOUT
) -> str | None:
    """Which cloud's metadata service answers here ('aws', 'gcp', 'azure'), or None.

    `prefer` (e.g. the cloud of the node's region) is asked first. When nothing accepts a connection
    at 169.254.169.254 the answer is None at once, without asking the other clouds.
    """
    order = sorted(CLOUDS, key=lambda cloud: cloud != prefer)
    with _client(transport, timeout) as client:
        for cloud in order:
            try:
                if ANSWERS[cloud](client):
                    return cloud
            except (httpx.ConnectError, httpx.ConnectTimeout):
                return None  # the one address of all three: nothing listens
            except httpx.HTTPError:
                continue
    return None


def attestation(
    kind_or_auto: str,
    controller_url: str,
    nonce_fetcher: Callable[[], str],
    transport: httpx.BaseTransport | None = None,
) -> dict[str, Any]:
    """This node's signed identity as `POST /v1/nodes` takes it (`{"kind", "document", "signature"}`).

    `kind_or_auto`: 'aws', 'gcp', 'azure' or 'auto' (`detect_cloud`). `controller_url` is the GCP
    token's audience; `nonce_fetcher` is called (Azure only) for a fresh nonce from the controller.
    Raises NoMetadataService or MetadataError with a one-line message.
    """
    kind = kind_or_auto
    if kind == "auto":
        found = detect_cloud(transport)
        if found is None:
            raise NoMetadataService(f"no cloud metadata service ({', '.join(CLOUDS)}) answers at {METADATA}")
        kind = found
    fetch = IDENTITY.get(kind)
    if fetch is None:
        raise MetadataError(f"attested join knows {', '.join(CLOUDS)}, not {kind!r}")
    with _client(transport, TIMEOUT) as client:
        try:
            return fetch(client, controller_url, nonce_fetcher)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise NoMetadataService(f"the {kind} metadata service at {METADATA} does not answer ({exc})") from exc
        except httpx.HTTPError as exc:
            raise MetadataError(f"the {kind} metadata service failed: {type(exc).__name__}: {exc}") from exc


def public_endpoint(region: str, listen_port: int, transport: httpx.BaseTransport | None = None) -> str:
    """ip:port for this node, asking the metadata service of the region's cloud."""
    cloud = region.split(":", 1)[0]
    lookup = LOOKUPS.get(cloud)
    if lookup is None:
        raise RuntimeError(f"--endpoint auto knows aws, gcp and azure, not {cloud!r}: give --endpoint IP:PORT")
    with _client(transport, TIMEOUT) as client:
        try:
            ip = lookup(client).strip()
            ipaddress.ip_address(ip)
        except (httpx.HTTPError, MetadataError, ValueError) as exc:
            raise RuntimeError(f"--endpoint auto: the {cloud} metadata service gave no public IP ({exc})") from exc
    return f"{ip}:{listen_port}"
