"""`--endpoint auto` asks each cloud's metadata service the way that cloud documents it.

The metadata services exist only inside the clouds: these tests answer as they do, through
httpx's transport interface (the requests are checked, not just the parsing). The identity
documents are signed in each cloud's real format by `meshctl.attest.testing`, and what the agent
would send is checked with the controller's own `meshctl.attest.verify_*`: both sides agree on the
format end to end."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from meshctl.attest import NonceIssuer, verify_aws, verify_azure, verify_gcp
from probes.metadata import MetadataError, NoMetadataService, attestation, detect_cloud, public_endpoint
from tests.probes.fake_imds import fake, transport


def service(expect: dict[str, str], answer: str, status: int = 200) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and request.url.path == "/latest/api/token":
            assert request.headers["X-aws-ec2-metadata-token-ttl-seconds"] == "60"
            return httpx.Response(200, text="TOKEN")
        for header, value in expect.items():
            assert request.headers.get(header) == value, (header, dict(request.headers))
        google = request.headers.get("Metadata-Flavor") == "Google"  # Google answers with the header too
        return httpx.Response(status, text=answer, headers={"Metadata-Flavor": "Google"} if google else {})

    return httpx.MockTransport(handle)


def test_each_cloud() -> None:
    assert (
        public_endpoint("aws:us-east-1", 51820, service({"X-aws-ec2-metadata-token": "TOKEN"}, "198.51.100.7"))
        == "198.51.100.7:51820"
    )
    assert (
        public_endpoint("gcp:us-east4", 51821, service({"Metadata-Flavor": "Google"}, "203.0.113.9\n"))
        == "203.0.113.9:51821"
    )
    assert public_endpoint("azure:westeurope", 51820, service({"Metadata": "true"}, "192.0.2.44")) == "192.0.2.44:51820"


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_each_cloud_by_its_protocol(cloud: str) -> None:
    imds = fake(cloud, public_ip="192.0.2.77")
    assert public_endpoint(f"{cloud}:somewhere-1", 51820, transport(imds)) == "192.0.2.77:51820"
    assert imds.violations == [] and imds.requests


def test_no_public_ip_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="aws metadata service gave no public IP"):
        public_endpoint("aws:us-east-1", 51820, service({}, "not found", status=404))
    with pytest.raises(RuntimeError, match="give --endpoint IP:PORT"):
        public_endpoint("oci:us-ashburn-1", 51820)


# --- the signed identity (attested join) ---------------------------------------------------------

CONTROLLER = "https://mesh.example:8443"


def no_nonce() -> str:
    raise AssertionError("only Azure asks the controller for a nonce")


def test_aws_imdsv2_identity_verifies() -> None:
    """PUT for a session token with its TTL header, then both GETs with the token; AWS's own check agrees."""
    imds = fake("aws")
    proof = attestation("aws", CONTROLLER, no_nonce, transport(imds))
    assert imds.violations == []
    assert [(m, p) for m, p, _ in imds.requests] == [
        ("PUT", "/latest/api/token"),
        ("GET", "/latest/dynamic/instance-identity/document"),
        ("GET", "/latest/dynamic/instance-identity/rsa2048"),
    ]
    put = imds.requests[0][2]
    assert put["x-aws-ec2-metadata-token-ttl-seconds"] == "60" and "x-aws-ec2-metadata-token" not in put
    assert all(h["x-aws-ec2-metadata-token"] == imds.tokens[0] for _, _, h in imds.requests[1:])
    assert proof["kind"] == "aws" and set(proof) == {"kind", "document", "signature"}
    assert imds.aws is not None
    identity = verify_aws(proof["document"], proof["signature"], imds.aws.trust(), datetime.now(UTC))
    assert (identity.cloud, identity.account, identity.cloud_region) == ("aws", "111122223333", "us-east-1")


def test_gcp_identity_token_verifies_for_the_controller() -> None:
    imds = fake("gcp")
    proof = attestation("gcp", CONTROLLER + "/", no_nonce, transport(imds))
    assert imds.violations == [] and imds.audiences == [CONTROLLER + "/"]
    (method, path, headers), *_ = imds.requests
    assert (method, path) == ("GET", "/computeMetadata/v1/instance/service-accounts/default/identity")
    assert headers["metadata-flavor"] == "Google"
    assert proof == {"kind": "gcp", "document": proof["document"], "signature": None}
    assert imds.gcp is not None
    identity = verify_gcp(proof["document"], imds.gcp.trust(), audience=CONTROLLER + "/", now=datetime.now(UTC))
    assert (identity.account, identity.zone) == ("mesh-prod", "europe-west1-b")


def test_gcp_answer_without_its_flavor_header_is_not_google() -> None:
    """Whatever answers without `Metadata-Flavor: Google` (a captive portal, a proxy) is not believed."""
    imds = fake("gcp")

    def strip(request: httpx.Request) -> httpx.Response:
        answer = imds.handle(request)
        return httpx.Response(answer.status_code, text=answer.text)

    with pytest.raises(MetadataError, match="did not say Metadata-Flavor: Google"):
        attestation("gcp", CONTROLLER, no_nonce, httpx.MockTransport(strip))
    assert detect_cloud(httpx.MockTransport(strip)) is None


def test_azure_attested_document_carries_the_controllers_nonce() -> None:
    imds = fake("azure")
    issuer = NonceIssuer(b"k" * 32)
    now = datetime.now(UTC)
    asked: list[str] = []

    def nonce() -> str:
        asked.append(issuer.issue(now))
        return asked[-1]

    proof = attestation("azure", CONTROLLER, nonce, transport(imds))
    assert imds.violations == [] and len(asked) == 1 and imds.nonces == asked
    (method, path, headers), *_ = imds.requests
    assert (method, path, headers["metadata"]) == ("GET", "/metadata/attested/document", "true")
    assert proof["kind"] == "azure" and proof["signature"] is None
    assert imds.azure is not None
    identity = verify_azure(proof["document"], imds.azure.trust(), issuer, now)
    assert identity.account == "8d10da13-8125-4ba9-a717-bf7490507b3d"
    assert verify_azure(proof["document"], imds.azure.trust(), asked[0], now).instance_id == identity.instance_id


def test_no_proxy_ever(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy in the environment is not used for the metadata service (it would take the request off the VM)."""
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, "http://proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    imds = fake("azure")
    proof = attestation("azure", CONTROLLER, lambda: "abc123", transport(imds))
    assert proof["kind"] == "azure" and imds.nonces == ["abc123"]
    assert all("x-forwarded-for" not in h and "proxy-authorization" not in h for _, _, h in imds.requests)
    assert detect_cloud(transport(fake("gcp"))) == "gcp"


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_detect_cloud_and_auto(cloud: str) -> None:
    imds = fake(cloud)
    assert detect_cloud(transport(imds)) == cloud
    assert imds.violations == [], "detection speaks each cloud's protocol too"
    proof = attestation("auto", CONTROLLER, lambda: "n0nce", transport(fake(cloud)))
    assert proof["kind"] == cloud


def test_detect_asks_the_preferred_cloud_first() -> None:
    imds = fake("azure")
    assert detect_cloud(transport(imds), prefer="azure") == "azure"
    assert [p for _, p, _ in imds.requests] == ["/metadata/versions"]


def test_nothing_listening_is_no_metadata_service_at_once() -> None:
    calls: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise httpx.ConnectError("Network is unreachable", request=request)

    assert detect_cloud(httpx.MockTransport(refuse)) is None
    assert len(calls) == 1, "one refused connection says it for all three clouds"
    with pytest.raises(NoMetadataService, match=r"no cloud metadata service \(aws, gcp, azure\) answers"):
        attestation("auto", CONTROLLER, no_nonce, httpx.MockTransport(refuse))
    with pytest.raises(
        NoMetadataService, match=r"the gcp metadata service at http://169\.254\.169\.254 does not answer"
    ):
        attestation("gcp", CONTROLLER, no_nonce, httpx.MockTransport(refuse))


def test_something_else_at_the_address_is_no_cloud() -> None:
    """An HTTP server that is none of the three (403 or 404 to everything) is not taken for a cloud."""
    assert detect_cloud(httpx.MockTransport(lambda r: httpx.Response(403, text="Forbidden"))) is None
    with pytest.raises(NoMetadataService):
        attestation("auto", CONTROLLER, no_nonce, httpx.MockTransport(lambda r: httpx.Response(404)))


def test_metadata_refusals_are_one_line() -> None:
    imds = fake("aws")
    with pytest.raises(MetadataError, match="attested join knows aws, gcp, azure, not 'oci'"):
        attestation("oci", CONTROLLER, no_nonce, transport(imds))
    with pytest.raises(MetadataError, match="the aws metadata service answered 401 for an IMDSv2 session token"):
        attestation("aws", CONTROLLER, no_nonce, httpx.MockTransport(lambda r: httpx.Response(401)))
    with pytest.raises(MetadataError, match=r"no \{\"encoding\": \"pkcs7\""):
        attestation("azure", CONTROLLER, lambda: "n", httpx.MockTransport(lambda r: httpx.Response(200, text="{}")))
    with pytest.raises(MetadataError, match="gave no identity token"):
        attestation(
            "gcp",
            CONTROLLER,
            no_nonce,
            httpx.MockTransport(lambda r: httpx.Response(200, headers={"Metadata-Flavor": "Google"}, text="nope")),
        )
