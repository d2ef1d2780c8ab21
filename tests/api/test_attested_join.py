"""Attested join through the real HTTP API: documents in each cloud's real format, signed by keys and
certificates made here, served to a real controller process whose trust roots are those keys.

A good document joins (201: node credential, overlay address, peers). Each bad one is refused with its
reason (401 `attestation-<cause>`, 403 `join-policy` naming the rule, 409 for a second join of one
instance), leaves no node behind, and records a `join_refused` event that never holds the document.
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import meshctl.attest as attest
from meshctl.attest.testing import AwsSigner, AzureSigner, GcpSigner, write_trust_dir
from meshctl.wire.schemas import PROBLEMS
from tests.api.test_problems import assert_problem
from tests.conftest import ControllerProcess

AUDIENCE = "https://mesh.example:8443"
AWS_ACCOUNT, GCP_PROJECT, AZURE_SUB = "111122223333", "mesh-prod", "8d10da13-8125-4ba9-a717-bf7490507b3d"
REGIONS = ("aws:us-east-1", "aws:eu-west-1", "gcp:europe-west1", "azure:westeurope")
POLICIES: list[dict[str, Any]] = [
    {"id": "aws-prod", "cloud": "aws", "accounts": [AWS_ACCOUNT], "regions": {"us-east-1": "aws:us-east-1"}},
    {"id": "gcp-prod", "cloud": "gcp", "accounts": [GCP_PROJECT], "any_region": True, "max_nodes_per_region": 2},
    {"id": "azure-weu", "cloud": "azure", "accounts": [AZURE_SUB], "fixed_region": "azure:westeurope"},
]


@functools.cache
def signers() -> tuple[AwsSigner, AwsSigner, GcpSigner, AzureSigner]:
    """The clouds' signing keys, made once (RSA keys take a moment)."""
    return AwsSigner("us-east-1"), AwsSigner("eu-west-1"), GcpSigner(), AzureSigner()


@pytest.fixture
def controller_env(tmp_path: Path) -> dict[str, str]:
    aws, aws_eu, gcp, azure = signers()
    trust = write_trust_dir(tmp_path / "trust", aws=[aws, aws_eu], gcp=gcp, azure=azure)
    return {"MESH_ATTEST_TRUST_DIR": str(trust), "MESH_PUBLIC_URL": AUDIENCE + "/"}  # the trailing / is dropped


@pytest.fixture
def mesh(controller: ControllerProcess) -> Iterator[ControllerProcess]:
    for region in REGIONS:
        controller.add_region(region)
    with controller.client() as c:
        for policy in POLICIES:
            r = c.post("/v1/join-policies", json=policy)
            assert r.status_code == 201, r.text
    yield controller


def key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def join(ctl: ControllerProcess, attestation: dict[str, Any], region: str, **kw: Any) -> httpx.Response:
    body = {
        "attestation": attestation,
        "region": region,
        "name": kw.pop("name", f"n-{secrets.token_hex(3)}"),
        "public_key": kw.pop("public_key", None) or key(),
        "endpoint": "192.0.2.10:51820",
        **kw,
    }
    with ctl.client("") as anon:  # no bearer token: the document is the proof
        return anon.post("/v1/nodes", json=body)


def aws_doc(signer: AwsSigner | None = None, **kw: Any) -> dict[str, Any]:
    signer = signer or signers()[0]
    document, signature = signer.sign(signer.document(**kw))
    return {"kind": "aws", "document": document, "signature": signature}


def gcp_doc(now: datetime | None = None, **kw: Any) -> dict[str, Any]:
    kw.setdefault("audience", AUDIENCE)
    return {"kind": "gcp", "document": signers()[2].token(now=now or datetime.now(UTC), **kw), "signature": None}


def nonce(ctl: ControllerProcess) -> str:
    with ctl.client("") as anon:
        r = anon.get("/v1/join-nonce")
    assert r.status_code == 200, r.text
    value = str(r.json()["nonce"])
    assert len(value) == 32 and value.isalnum()
    return value


def azure_doc(the_nonce: str, **kw: Any) -> dict[str, Any]:
    body = json.loads(signers()[3].attested(the_nonce, now=datetime.now(UTC), **kw))
    return {"kind": "azure", "document": body["signature"], "signature": None}  # as the agent sends it


def node_ids(ctl: ControllerProcess) -> set[str]:
    with ctl.client() as c:
        return {n["id"] for n in c.get("/v1/nodes").json()}


def refused_events(ctl: ControllerProcess) -> list[dict[str, Any]]:
    with ctl.client() as c:
        r = c.get("/v1/events", params={"kind": "join_refused", "limit": 1000})
    assert r.status_code == 200, r.text
    return list(r.json())


def assert_refused(
    ctl: ControllerProcess, r: httpx.Response, status: int, slug: str, sent: dict[str, Any], rule: str
) -> dict[str, Any]:
    """Refused with this problem, no node added, and a join_refused event naming the rule, without the document."""
    body = assert_problem(r, status, slug)
    event = refused_events(ctl)[-1]
    assert event["data"]["rule"] == rule and event["data"]["cloud"] == sent["kind"], event
    text = json.dumps(event)
    for part in (sent["document"], sent.get("signature") or "", *sent["document"].split(".")):
        if len(part) > 40:
            assert part not in text and part.strip()[:60] not in text, "the event holds the document"
    return body


def test_good_documents_of_each_cloud_join(mesh: ControllerProcess) -> None:
    a = join(mesh, aws_doc(), "aws:us-east-1", name="aws-1")
    assert a.status_code == 201, a.text
    g = join(mesh, gcp_doc(), "gcp:europe-west1", name="gcp-1")
    assert g.status_code == 201, g.text
    z = join(mesh, azure_doc(nonce(mesh)), "azure:westeurope", name="azure-1")
    assert z.status_code == 201, z.text
    joined = [a.json(), g.json(), z.json()]
    assert [j["region"] for j in joined] == ["aws:us-east-1", "gcp:europe-west1", "azure:westeurope"]
    assert len({j["overlay_ip"] for j in joined}) == 3 and all(j["node_token"].startswith("msh_") for j in joined)
    assert {p["name"] for p in joined[2]["peers"]["peers"]} == {"aws-1", "gcp-1"}
    assert node_ids(mesh) == {j["node_id"] for j in joined}
    with mesh.client(joined[0]["node_token"]) as node:  # the credential works
        assert node.get(f"/v1/nodes/{joined[0]['node_id']}/peers").status_code == 200
    assert refused_events(mesh) == []


def test_bad_documents_are_refused_with_their_reason(mesh: ControllerProcess) -> None:
    aws_eu = signers()[1]
    now = datetime.now(UTC)
    good = aws_doc()
    altered = {**good, "document": good["document"].replace(AWS_ACCOUNT, "999988887777")}
    forged_gcp = signers()[2].encode(
        signers()[2].claims(audience=AUDIENCE, now=now), key=AwsSigner("us-east-1").key
    )  # Google's key id, another key
    cases: list[tuple[str, dict[str, Any], str, int, str, str]] = [
        ("altered", altered, "aws:us-east-1", 401, "attestation-signature-invalid", "signature-invalid"),
        ("forged", aws_doc(AwsSigner("us-east-1")), "aws:us-east-1", 401, "attestation-unknown-key", "unknown-key"),
        (
            "forged gcp",
            {"kind": "gcp", "document": forged_gcp, "signature": None},
            "gcp:europe-west1",
            401,
            "attestation-signature-invalid",
            "signature-invalid",
        ),
        (
            "wrong audience",
            gcp_doc(audience="https://evil.example"),
            "gcp:europe-west1",
            401,
            "attestation-wrong-audience",
            "wrong-audience",
        ),
        (
            "expired token",
            gcp_doc(now=now - timedelta(hours=2)),
            "gcp:europe-west1",
            401,
            "attestation-expired",
            "expired",
        ),
        (
            "gcp sent as aws",
            {**gcp_doc(), "kind": "aws"},
            "aws:us-east-1",
            401,
            "attestation-wrong-cloud",
            "wrong-cloud",
        ),
        ("aws sent as gcp", {**good, "kind": "gcp"}, "gcp:europe-west1", 401, "attestation-wrong-cloud", "wrong-cloud"),
        (
            "aws sent as azure",
            {**good, "kind": "azure", "document": good["signature"], "signature": None},
            "azure:westeurope",
            401,
            "attestation-wrong-cloud",
            "wrong-cloud",
        ),
        ("account", aws_doc(account="444455556666"), "aws:us-east-1", 403, "join-policy", "account"),
        ("region not mapped", aws_doc(aws_eu), "aws:eu-west-1", 403, "join-policy", "region"),
        ("claimed region", aws_doc(), "aws:eu-west-1", 403, "join-policy", "claimed_region"),
        ("gcp project", gcp_doc(project="other-project"), "gcp:europe-west1", 403, "join-policy", "account"),
        (
            "mapped to a region not registered",
            gcp_doc(zone="asia-east1-a"),
            "gcp:asia-east1",
            403,
            "join-policy",
            "region",
        ),
    ]
    before = node_ids(mesh)
    for what, sent, region, status, slug, rule in cases:
        r = join(mesh, sent, region)
        body = assert_refused(mesh, r, status, slug, sent, rule)
        assert node_ids(mesh) == before, what
        if status == 403:
            assert rule in body["detail"], (what, body)
    events = refused_events(mesh)
    assert len(events) == len(cases)
    by_rule = {(e["data"]["cloud"], e["data"]["rule"]): e["data"] for e in events}
    assert by_rule["aws", "account"]["account"] == "444455556666"
    assert by_rule["gcp", "account"]["account"] == "other-project"
    altered_event = by_rule["aws", "signature-invalid"]
    assert altered_event["account"] is None and altered_event["claimed_account"] == "999988887777"  # unverified
    assert by_rule["aws", "region"]["policy_id"] == "aws-prod"


def test_azure_nonce_single_use_and_fresh(mesh: ControllerProcess) -> None:
    first = azure_doc(nonce(mesh))
    assert join(mesh, first, "azure:westeurope").status_code == 201
    before = node_ids(mesh)
    replay = join(mesh, first, "azure:westeurope")  # the same document again, another key
    assert_refused(mesh, replay, 401, "attestation-nonce", first, "nonce")
    other_vm = azure_doc(nonce(mesh), vm_id="0badc0de-74ef-476e-8182-f6d2ba4166a6")
    assert join(mesh, other_vm, "azure:westeurope").status_code == 201
    before = node_ids(mesh)
    # a nonce this controller never gave out, and one it gave out that has expired (made with its key)
    not_ours = azure_doc(secrets.token_hex(16), vm_id="1badc0de-74ef-476e-8182-f6d2ba4166a6")
    assert_refused(mesh, join(mesh, not_ours, "azure:westeurope"), 401, "attestation-nonce", not_ours, "nonce")
    old = attest.NonceIssuer(bytes.fromhex(_nonce_key(mesh))).issue(datetime.now(UTC) - timedelta(hours=1))
    expired = azure_doc(old, vm_id="2badc0de-74ef-476e-8182-f6d2ba4166a6")
    r = join(mesh, expired, "azure:westeurope")
    body = assert_refused(mesh, r, 401, "attestation-nonce", expired, "nonce")
    assert "expired" in body["detail"]
    assert node_ids(mesh) == before


def _nonce_key(ctl: ControllerProcess) -> str:
    from sqlalchemy import text

    from meshctl.store.db import make_engine

    engine = make_engine(ctl.database_url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SELECT value FROM service_secrets WHERE name = 'join_nonce_key'")).scalar())
    finally:
        engine.dispose()


def test_one_instance_joins_once_until_removed(mesh: ControllerProcess) -> None:
    doc, first_key = aws_doc(instance_id="i-0aaaabbbbccccdddd"), key()
    r = join(mesh, doc, "aws:us-east-1", public_key=first_key)
    assert r.status_code == 201, r.text
    node = r.json()["node_id"]
    before = node_ids(mesh)
    clone = join(mesh, doc, "aws:us-east-1")  # the same instance id with another key: a clone or a replay
    body = assert_refused(mesh, clone, 409, "conflict", doc, "instance")
    assert node in body["detail"]
    again = join(mesh, doc, "aws:us-east-1", public_key=first_key)  # same key: no second credential either
    assert_refused(mesh, again, 409, "conflict", doc, "instance")
    assert node_ids(mesh) == before
    with mesh.client() as c:
        assert c.delete(f"/v1/nodes/{node}").status_code == 200
    back = join(mesh, doc, "aws:us-east-1")
    assert back.status_code == 201, back.text
    assert back.json()["node_id"] != node


def test_region_cap_counts_live_nodes(mesh: ControllerProcess) -> None:
    ids = [join(mesh, gcp_doc(instance_id=f"77{i}"), "gcp:europe-west1") for i in range(2)]
    assert all(r.status_code == 201 for r in ids), [r.text for r in ids]
    third = gcp_doc(instance_id="773")
    assert_refused(mesh, join(mesh, third, "gcp:europe-west1"), 403, "join-policy", third, "cap")
    with mesh.client() as c:
        assert c.delete(f"/v1/nodes/{ids[0].json()['node_id']}").status_code == 200
    assert join(mesh, gcp_doc(instance_id="773"), "gcp:europe-west1").status_code == 201


def test_exactly_one_way_to_join(mesh: ControllerProcess) -> None:
    with mesh.client("") as anon:
        jt = mesh.client().post("/v1/join-tokens", json={"region": "aws:us-east-1"}).json()["token"]
        base = {"region": "aws:us-east-1", "name": "n1", "public_key": key(), "endpoint": "192.0.2.1:51820"}
        for body in (
            {**base, "join_token": jt, "attestation": aws_doc()},
            base,
            {**base, "attestation": None},
            {**base, "join_token": jt, "attestation": None},
        ):
            r = anon.post("/v1/nodes", json=body)
            problem = assert_problem(r, 422, "invalid-input")
            assert "join_token" in problem["detail"] and "attestation" in problem["detail"], problem
        big = {**base, "attestation": {"kind": "aws", "document": "x" * 20_000, "signature": "y"}}
        assert_problem(anon.post("/v1/nodes", json=big), 422, "invalid-input")
        assert anon.post("/v1/nodes", json={**base, "join_token": jt}).status_code == 201  # tokens still work
    assert len(node_ids(mesh)) == 1


def test_join_policies_api(mesh: ControllerProcess) -> None:
    with mesh.client() as c:
        listed = c.get("/v1/join-policies").json()
        assert [p["id"] for p in listed] == ["aws-prod", "azure-weu", "gcp-prod"]
        assert listed[0]["accounts"] == [AWS_ACCOUNT] and listed[0]["created_at"]
        assert_problem(c.post("/v1/join-policies", json=POLICIES[0]), 409, "conflict")
        # the same Azure subscription in another region: Azure signs no region, so it would be ambiguous
        clash = {**POLICIES[2], "id": "azure-neu", "fixed_region": "azure:northeurope"}
        assert "westeurope" in assert_problem(c.post("/v1/join-policies", json=clash), 409, "conflict")["detail"]
        no_region = {"id": "azure-x", "cloud": "azure", "accounts": ["s"], "any_region": True}
        assert (
            "fixed_region"
            in assert_problem(c.post("/v1/join-policies", json=no_region), 422, "invalid-input")["detail"]
        )
        other_cloud = {"id": "aws-x", "cloud": "aws", "accounts": ["1"], "regions": {"us-east-1": "gcp:us-east4"}}
        assert_problem(c.post("/v1/join-policies", json=other_cloud), 422, "invalid-input")
        assert c.delete("/v1/join-policies/aws-prod").json()["id"] == "aws-prod"
        assert_problem(c.delete("/v1/join-policies/aws-prod"), 404, "not-found")
        assert [p["id"] for p in c.get("/v1/join-policies").json()] == ["azure-weu", "gcp-prod"]
        reader = c.post("/v1/tokens", json={"name": "r", "scope": "reader"}).json()["token"]
    with mesh.client(reader) as r:
        assert_problem(r.get("/v1/join-policies"), 403, "forbidden")
        assert_problem(r.post("/v1/join-policies", json=POLICIES[0]), 403, "forbidden")
    # with its policy gone, the account is refused
    sent = aws_doc()
    assert_refused(mesh, join(mesh, sent, "aws:us-east-1"), 403, "join-policy", sent, "cloud")


def test_every_attestation_cause_is_a_problem_type() -> None:
    """Each meshctl.attest error maps to a registered 401 problem type (the agent reads the slug)."""
    from meshctl.service.join import problem_slug

    causes = [c for c in vars(attest).values() if isinstance(c, type) and issubclass(c, attest.AttestError)]
    assert len(causes) >= 12
    for cause in causes:
        slug = problem_slug(cause("x"))
        assert PROBLEMS[slug][0] == 401, slug
    assert problem_slug(attest.NonceMismatch("x")) == "attestation-nonce"
    assert PROBLEMS["join-policy"][0] == 403
