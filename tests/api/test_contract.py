"""The published contract: a valid OpenAPI document, and schemathesis finds nothing against it.

schemathesis runs as its own CLI (`schemathesis run`, default checks) against a real controller,
once with an admin token and once with a reader token; tests/api/schemathesis.toml names the
only tuning (rules OpenAPI cannot state). The reader is also walked over every documented
mutation by hand: each must be refused with a 403 problem.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from tests.api.test_problems import assert_problem
from tests.conftest import ControllerProcess

HERE = Path(__file__).parent
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
# long polls are held to 0 s here (tests/api/test_problems.py covers them): the run stays short
PINNED = '\n[parameters]\n"query.wait" = 0\n'


def _token(ctl: ControllerProcess, scope: str) -> str:
    with ctl.client() as c:
        r = c.post("/v1/tokens", json={"name": f"c-{scope}", "scope": scope})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


def test_openapi_document_is_valid_and_complete(controller: ControllerProcess) -> None:
    with controller.client() as c:
        doc: dict[str, Any] = c.get("/openapi.json").json()
    validate(doc)  # raises on an invalid document or an unresolvable $ref
    assert "$defs" not in str(doc["paths"]), "a schema reference outside components"
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    assert set(doc["components"]["schemas"]["Problem"]["required"]) == {"type", "title", "status", "detail"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            errors = {code for code in responses if code.startswith(("4", "5"))}
            for code in errors:
                assert responses[code]["content"] == problem, (method, path, code)
            if op.get("security"):
                assert {"401", "403"} <= errors, (method, path)
            if "requestBody" in op:
                assert {"400", "413", "422"} <= errors, (method, path)
            if any(p["in"] in ("path", "query") for p in op.get("parameters", [])):
                assert "422" in errors, (method, path)
            upsert = (method, path) == ("put", "/v1/regions/{region_id}")
            if re.search(r"\{(region_id|node_id|token_id|src)\}", path) and not upsert:
                assert "404" in errors, (method, path)
    assert doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"].keys() == {"text/plain"}
    public_key = doc["components"]["schemas"]["NodeJoin"]["properties"]["public_key"]
    assert public_key["pattern"] and public_key["minLength"] == public_key["maxLength"] == 44
    assert doc["components"]["schemas"]["NodeJoin"]["properties"]["endpoint"]["pattern"]
    region = next(p for p in doc["paths"]["/v1/regions/{region_id}"]["get"]["parameters"] if p["name"] == "region_id")
    assert region["schema"]["pattern"] and region["schema"]["maxLength"] == 64


def test_reader_is_refused_every_mutation(controller: ControllerProcess) -> None:
    controller.add_region("aws:us-east-1")
    reader = _token(controller, "reader")
    with controller.client() as c:
        doc = c.get("/openapi.json").json()
    values = {
        "region_id": "aws:us-east-1",
        "node_id": "n-0123456789abcdef",
        "token_id": "0123456789abcdef",
        "policy_id": "prod-aws",
    }
    mutations = 0
    with controller.client(reader) as c:
        for path, item in doc["paths"].items():
            for method, op in item.items():
                if method not in ("post", "put", "patch", "delete") or not op.get("security"):
                    continue
                url = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
                r = c.request(method.upper(), url, json={})
                assert_problem(r, 403, "forbidden")
                mutations += 1
    assert mutations >= 10


def _schemathesis(url: str, token: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "schemathesis.toml"
    config.write_text((HERE / "schemathesis.toml").read_text() + PINNED)
    return subprocess.run(
        [
            str(SCHEMATHESIS),
            "--no-color",
            "--config-file",
            str(config),
            "run",
            f"{url}/openapi.json",
            "-H",
            f"Authorization: Bearer {token}",
            "--max-examples",
            "6",
            "--workers",
            "2",
            "--seed",
            "17",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=170,
    )


@pytest.mark.timeout(400)
def test_schemathesis_finds_nothing(controller: ControllerProcess, tmp_path: Path) -> None:
    """Default checks, an admin and a reader token, a few hundred generated requests, zero failures."""
    for region in ("aws:us-east-1", "gcp:us-east4"):
        controller.add_region(region, 10.0, 20.0)
    reader = _token(controller, "reader")
    for name, token, extra in [
        # the admin run may not revoke its own token (every later request would be a 401)
        ("admin", controller.admin_token, ("--exclude-path", "/v1/tokens/{token_id}")),
        ("reader", reader, ()),
    ]:
        done = _schemathesis(controller.url, token, tmp_path, *extra)
        out = done.stdout + done.stderr
        summary = re.search(r"Test cases:\s*\n\s*(\d+) generated, (\d+) passed", out)
        assert done.returncode == 0 and summary, f"{name}:\n{out[-6000:]}"
        assert int(summary.group(1)) >= 100 and summary.group(1) == summary.group(2), f"{name}:\n{out[-3000:]}"
        assert "failure" not in out.splitlines()[-1], out[-3000:]
