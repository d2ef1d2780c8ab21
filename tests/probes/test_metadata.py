"""`--endpoint auto` asks each cloud's metadata service the way that cloud documents it.

The metadata services exist only inside the clouds: these tests answer as they do, through
httpx's transport interface (the requests are checked, not just the parsing)."""

from __future__ import annotations

import httpx
import pytest

from probes.metadata import public_endpoint


def service(expect: dict[str, str], answer: str, status: int = 200) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and request.url.path == "/latest/api/token":
            assert request.headers["X-aws-ec2-metadata-token-ttl-seconds"] == "60"
            return httpx.Response(200, text="TOKEN")
        for header, value in expect.items():
            assert request.headers.get(header) == value, (header, dict(request.headers))
        return httpx.Response(status, text=answer)

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


def test_no_public_ip_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="aws metadata service gave no public IP"):
        public_endpoint("aws:us-east-1", 51820, service({}, "not found", status=404))
    with pytest.raises(RuntimeError, match="give --endpoint IP:PORT"):
        public_endpoint("oci:us-ashburn-1", 51820)
