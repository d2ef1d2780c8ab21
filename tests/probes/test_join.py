"""The agent's join: which way it joins, the token file's rules, and an attested join end to end.

The controller here is an httpx MockTransport that does what the controller's attested join will do
with the real `meshctl.attest` code (verify the document against the test signers' trust roots, check
the nonce, apply join policies) and answers in problem details; the metadata service is
`tests.probes.fake_imds`, holding every request to its cloud's protocol. So the agent's documents are
shown to pass the controller's verification, and each refusal to reach the operator as one line that
names its cause.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import meshctl.files
from meshctl.attest import (
    AttestError,
    Identity,
    JoinPolicy,
    NonceIssuer,
    NonceMismatch,
    Refused,
    decide,
    verify_aws,
    verify_azure,
    verify_gcp,
)
from meshctl.attest.testing import AwsSigner, AzureSigner, GcpSigner
from probes import cli
from probes import join as joining
from probes.agent import CREDENTIAL_FILE, Agent
from probes.config import AgentConfig
from tests.probes.fake_imds import FakeImds, fake, signer, transport

CONTROLLER = "http://ctl:8080"
REGION = {"aws": "aws:us-east-1", "gcp": "gcp:europe-west1", "azure": "azure:westeurope"}
POLICIES = [
    JoinPolicy(id="aws-prod", cloud="aws", accounts=("111122223333",), any_region=True),
    JoinPolicy(id="gcp-prod", cloud="gcp", accounts=("mesh-prod",), any_region=True),
    JoinPolicy(id="az-prod", cloud="azure", accounts=("8d10da13-8125-4ba9-a717-bf7490507b3d",),
               fixed_region="azure:westeurope"),
]  # fmt: skip
NEVER = httpx.MockTransport(lambda r: pytest.fail(f"the metadata service was asked: {r.method} {r.url}"))


def cfg(tmp_path: Path, region: str = "aws:us-east-1", **kw: Any) -> AgentConfig:
    return AgentConfig(CONTROLLER, region, "192.0.2.1:51820", "mt0", tmp_path / "state", **kw)


def problem(status: int, slug: str, detail: str) -> httpx.Response:
    body = {"type": f"urn:meshctl:problem:{slug}", "title": slug, "status": status, "detail": detail, "field": None}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json"})


class Controller:
    """`POST /v1/nodes` and `GET /v1/join-nonce` as the controller will answer them, with meshctl.attest.

    `typed`: refusals carry a specific problem type (attestation-<slug>, join-policy); otherwise only
    the generic unauthorized/forbidden ones, and the reason is in `detail` alone.
    """

    def __init__(self, now: datetime | None = None, typed: bool = True, policies: list[JoinPolicy] = POLICIES):
        self.now, self.typed, self.policies = now, typed, policies
        self.issuer = NonceIssuer(b"shared-secret-of-the-replicas")
        self.nonces: list[str] = []
        self.bodies: list[dict[str, Any]] = []

    def verify(self, attestation: dict[str, Any]) -> Identity:
        now = self.now or datetime.now(UTC)
        kind, document, signature = attestation["kind"], attestation["document"], attestation["signature"]
        if kind == "aws":
            aws = signer("aws")
            assert isinstance(aws, AwsSigner)
            return verify_aws(document, signature, aws.trust(), now)
        if kind == "gcp":
            gcp = signer("gcp")
            assert isinstance(gcp, GcpSigner) and signature is None
            return verify_gcp(document, gcp.trust(), audience=CONTROLLER, now=now)
        azure = signer("azure")
        assert isinstance(azure, AzureSigner) and kind == "azure" and signature is None
        self.issuer.check(self.nonces[-1], now)  # ours and unexpired; then the document must sign exactly it
        return verify_azure(document, azure.trust(), self.nonces[-1], now)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/v1/join-nonce":
            nonce = self.issuer.issue(datetime.now(UTC))
            self.nonces.append(nonce)
            return httpx.Response(200, json={"nonce": nonce, "expires_at": "2030-01-01T00:00:00Z"})
        assert (request.method, request.url.path) == ("POST", "/v1/nodes")
        body = json.loads(request.content)
        self.bodies.append(body)
        assert ("attestation" in body) != ("join_token" in body), "one of the two, never both"
        if "attestation" in body:
            try:
                identity = self.verify(body["attestation"])
            except AttestError as exc:
                slug = "attestation-nonce" if isinstance(exc, NonceMismatch) else f"attestation-{exc.slug}"
                return problem(401, slug if self.typed else "unauthorized", exc.reason)
            verdict = decide(identity, self.policies, {}, body["region"])
            if isinstance(verdict, Refused):
                return problem(403, "join-policy" if self.typed else "forbidden", verdict.reason)
        elif body["join_token"] != "msh_j_good":
            return problem(403, "forbidden", "join token expired")
        return httpx.Response(
            201,
            json={
                "node_id": "n-1",
                "node_token": "msh_n_x",
                "overlay_ip": "10.0.0.9",
                "overlay_cidr": "10.0.0.0/16",
                "region": body["region"],
                "peers": {"generation": 1, "peers": []},
            },
        )


def agent(config: AgentConfig, controller: Controller, imds: FakeImds | httpx.MockTransport | None) -> Agent:
    a = Agent(config)
    a.http = httpx.AsyncClient(base_url=config.controller, transport=httpx.MockTransport(controller))
    a.metadata_transport = transport(imds) if isinstance(imds, FakeImds) else imds or NEVER
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    a._sleep = sleep
    a.slept = slept  # type: ignore[attr-defined]
    return a


# --- which way ---------------------------------------------------------------------------------


def test_a_token_joins_by_token_without_asking_the_metadata_service(tmp_path: Path) -> None:
    token_file = tmp_path / "join-token"
    token_file.write_text("msh_j_good\n")
    token_file.chmod(0o600)
    for config in (cfg(tmp_path, join_token="msh_j_good"), cfg(tmp_path, join_token_file=token_file)):
        assert joining.choose(config, NEVER) == joining.Plan("token", token="msh_j_good")
    assert joining.choose(cfg(tmp_path, join="token", join_token="msh_j_good"), NEVER).mode == "token"


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_no_token_and_a_metadata_service_joins_attested(cloud: str, tmp_path: Path) -> None:
    assert joining.choose(cfg(tmp_path, REGION[cloud]), transport(fake(cloud))) == joining.Plan("attested", cloud=cloud)
    # --join attested takes the cloud identity even when a token is at hand
    with_token = cfg(tmp_path, REGION[cloud], join="attested", join_token="msh_j_good")
    assert joining.choose(with_token, transport(fake(cloud))).mode == "attested"


def nothing_listens(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("Network is unreachable", request=request)


@pytest.mark.parametrize(
    ("join", "message"),
    [
        ("auto", "not joined yet: no join token, and no cloud metadata service answers at http://169.254.169.254 "
                 "for an attested join: give --join-token-file FILE (mode 0600) or MESH_JOIN_TOKEN"),
        ("attested", "--join attested: no cloud metadata service (aws, gcp, azure) answers at http://169.254.169.254"),
        ("token", "--join token: no join token: give --join-token-file FILE (mode 0600) or MESH_JOIN_TOKEN"),
    ],
)  # fmt: skip
def test_no_way_to_join_is_one_line(join: str, message: str, tmp_path: Path) -> None:
    a = agent(cfg(tmp_path, join=join), Controller(), httpx.MockTransport(nothing_listens))
    with pytest.raises(joining.JoinError) as err:
        asyncio.run(a.join("PUBKEY"))
    assert str(err.value) == message and "\n" not in message
    assert not (tmp_path / "state" / CREDENTIAL_FILE).exists()


# --- the token file ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_token_file_of_mode_0600_or_stricter_is_read(mode: int, tmp_path: Path) -> None:
    path = tmp_path / "join-token"
    path.write_text("  msh_j_good\n")
    path.chmod(mode)
    assert joining.read_token_file(path) == "msh_j_good"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_token_file_open_to_others_is_refused(mode: int, tmp_path: Path) -> None:
    path = tmp_path / "join-token"
    path.write_text("msh_j_good\n")
    path.chmod(mode)
    with pytest.raises(joining.JoinError) as err:
        joining.read_token_file(path)
    assert str(err.value) == f"join token file {path} is open to others (mode {mode:04o}): chmod 600 {path}"


def test_token_file_of_another_user_empty_or_missing_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "join-token"
    path.write_text("msh_j_good\n")
    path.chmod(0o600)
    me = os.geteuid()
    monkeypatch.setattr(meshctl.files.os, "geteuid", lambda: me + 1)  # the shared secret-file reader
    with pytest.raises(joining.JoinError, match=rf"belongs to uid {me}, not to this user \(uid {me + 1}\)$"):
        joining.read_token_file(path)
    monkeypatch.undo()
    path.write_text(" \n")
    with pytest.raises(joining.JoinError, match=r"is empty$"):
        joining.read_token_file(path)
    with pytest.raises(joining.JoinError, match=r"No such file or directory$"):
        joining.read_token_file(tmp_path / "absent")
    with pytest.raises(joining.JoinError, match=r"is not a regular file$"):
        joining.read_token_file(tmp_path)


def test_a_token_file_open_to_others_stops_the_join_before_any_request(tmp_path: Path) -> None:
    path = tmp_path / "join-token"
    path.write_text("msh_j_good\n")
    path.chmod(0o644)
    controller = Controller()
    a = agent(cfg(tmp_path, join_token_file=path), controller, NEVER)
    with pytest.raises(joining.JoinError, match=r"\(mode 0644\): chmod 600"):
        asyncio.run(a.join("PUBKEY"))
    assert controller.bodies == [], "no attested join instead, no request"


def test_token_join_sends_the_files_token(tmp_path: Path) -> None:
    path = tmp_path / "join-token"
    path.write_text("msh_j_good\n")
    path.chmod(0o600)
    controller = Controller()
    a = agent(cfg(tmp_path, join_token_file=path), controller, NEVER)
    cred = asyncio.run(a.join("PUBKEY"))
    assert cred["node_id"] == "n-1" and controller.bodies[0]["join_token"] == "msh_j_good"
    assert "attestation" not in controller.bodies[0]


# --- attested, end to end ----------------------------------------------------------------------


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_attested_join_passes_the_controllers_verification(cloud: str, tmp_path: Path) -> None:
    controller, imds = Controller(), fake(cloud)
    a = agent(cfg(tmp_path, REGION[cloud]), controller, imds)
    cred = asyncio.run(a.join("PUBKEY"))
    assert cred["node_id"] == "n-1" and (tmp_path / "state" / CREDENTIAL_FILE).exists()
    assert imds.violations == []
    (body,) = controller.bodies
    assert set(body) == {"attestation", "region", "name", "public_key", "endpoint"}
    assert body["attestation"]["kind"] == cloud and body["region"] == REGION[cloud]
    assert len(controller.nonces) == (1 if cloud == "azure" else 0)
    if cloud == "azure":
        assert imds.nonces == controller.nonces
    if cloud == "gcp":
        assert imds.audiences == [CONTROLLER]


def test_azure_nonce_from_cache_is_asked_again_once(tmp_path: Path) -> None:
    """IMDS answers from its cache with an older nonce: the controller refuses it, the agent asks again."""
    controller = Controller()
    stale = controller.issuer.issue(datetime.now(UTC))
    imds = fake("azure", cached_nonce=stale)
    a = agent(cfg(tmp_path, REGION["azure"]), controller, imds)
    asyncio.run(a.join("PUBKEY"))
    assert len(controller.bodies) == 2 and len(controller.nonces) == 2
    assert imds.nonces == controller.nonces and a.slept == [joining.NONCE_RETRY_S]  # type: ignore[attr-defined]


def test_azure_nonce_refused_twice_is_an_error(tmp_path: Path) -> None:
    controller = Controller()

    def always_stale(request: httpx.Request) -> httpx.Response:
        imds.cached_nonce = "0000000000000000000000000000000A"
        return imds.handle(request)

    imds = fake("azure")
    a = agent(cfg(tmp_path, REGION["azure"]), controller, httpx.MockTransport(always_stale))
    with pytest.raises(joining.JoinError) as err:
        asyncio.run(a.join("PUBKEY"))
    assert str(err.value).startswith("attested join (azure) refused (401, nonce refused): ")
    assert len(controller.bodies) == 2 and not (tmp_path / "state" / CREDENTIAL_FILE).exists()


def clock_ahead(tmp_path: Path, controller: Controller) -> Agent:
    """The node's clock (and so its GCP token's iat) an hour ahead of the controller's."""
    imds = fake("gcp", now=datetime.now(UTC) + timedelta(hours=1))
    return agent(cfg(tmp_path, REGION["gcp"]), controller, imds)


def forged(tmp_path: Path, controller: Controller) -> Agent:
    """A GCP token signed by a key of the same id that is not Google's."""
    gcp = signer("gcp")
    assert isinstance(gcp, GcpSigner)
    other = GcpSigner()
    other.kid = gcp.kid
    return agent(cfg(tmp_path, REGION["gcp"]), controller, fake("gcp", gcp=other))


def unlisted_account(tmp_path: Path, controller: Controller) -> Agent:
    controller.policies = [replace_policy(POLICIES[0], accounts=("999999999999",)), *POLICIES[1:]]
    return agent(cfg(tmp_path, REGION["aws"]), controller, fake("aws"))


def replace_policy(policy: JoinPolicy, **kw: Any) -> JoinPolicy:
    return JoinPolicy(**{**policy.model_dump(), **kw})


@pytest.mark.parametrize("typed", [True, False], ids=["typed-problems", "generic-problems"])
@pytest.mark.parametrize(
    ("make", "line"),
    [
        (unlisted_account, "attested join (aws) refused (403, join policy refused): "
                           "aws account 111122223333 is not in any join policy"),
        (forged, "attested join (gcp) refused (401, signature invalid): "
                 "GCP token: the signature does not verify: forged or altered"),
        (clock_ahead, "attested join (gcp) refused (401, clock skew): GCP token: issued 3600 s in the future: "
                      "check the clocks"),
    ],
)  # fmt: skip
def test_attested_refusals_name_the_cause(make: Any, line: str, typed: bool, tmp_path: Path) -> None:
    controller = Controller(typed=typed)
    a = make(tmp_path, controller)
    with pytest.raises(joining.JoinError) as err:
        asyncio.run(a.join("PUBKEY"))
    message = str(err.value)
    if "clock skew" in line:  # the seconds may be off by one between the two clocks read
        head, _, _ = line.partition("issued ")
        assert message.startswith(head) and message.endswith("s in the future: check the clocks"), message
    else:
        assert message == line
    assert "\n" not in message and not (tmp_path / "state" / CREDENTIAL_FILE).exists()


def test_metadata_failure_during_an_attested_join_is_one_line(tmp_path: Path) -> None:
    imds = fake("aws")

    def no_signature(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/rsa2048"):
            return httpx.Response(404, text="Not Found")
        return imds.handle(request)

    a = agent(cfg(tmp_path, REGION["aws"]), Controller(), httpx.MockTransport(no_signature))
    with pytest.raises(joining.JoinError) as err:
        asyncio.run(a.join("PUBKEY"))
    assert str(err.value) == (
        "attested join (aws): the aws metadata service answered 404 for /latest/dynamic/instance-identity/rsa2048"
    )


def test_controller_away_is_one_line(tmp_path: Path) -> None:
    a = agent(cfg(tmp_path, join_token="msh_j_good"), Controller(), NEVER)
    a.http = httpx.AsyncClient(base_url=CONTROLLER, transport=httpx.MockTransport(nothing_listens))
    with pytest.raises(joining.JoinError, match=r"^join: the controller at http://ctl:8080 does not answer \(Conn"):
        asyncio.run(a.join("PUBKEY"))


# --- the command line --------------------------------------------------------------------------


def test_join_token_on_the_command_line_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[AgentConfig] = []
    monkeypatch.setattr("probes.agent.run", started.append)
    for var in ("MESH_JOIN_TOKEN", "MESH_JOIN_TOKEN_FILE", "MESH_JOIN"):
        monkeypatch.delenv(var, raising=False)
    base = ["run", "--controller", CONTROLLER, "--region", "aws:us-east-1", "--endpoint", "192.0.2.1:51820",
            "--interface", "mt0", "--state-dir", str(tmp_path / "state")]  # fmt: skip
    assert cli.main([*base, "--join-token", "msh_j_good"]) == 0
    err = capsys.readouterr().err
    assert err == cli.TOKEN_ON_COMMAND_LINE and err.count("\n") == 1
    assert "visible" in err or "reads it" in err
    assert started[-1].join_token == "msh_j_good"
    token_file = tmp_path / "join-token"
    token_file.write_text("msh_j_good")
    assert cli.main([*base, "--join-token-file", str(token_file), "--join", "token"]) == 0
    assert capsys.readouterr().err == ""
    assert started[-1].join_token_file == token_file and started[-1].join == "token"
    assert cli.main([*base, "--join", "sometimes"]) == 1
    assert capsys.readouterr().err == "error: join: 'sometimes' is not one of auto, attested, token\n"


def test_a_refused_token_file_exits_1_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """Through `main` and the agent's own start (no controller needed: the file is refused first)."""
    token_file = tmp_path / "join-token"
    token_file.write_text("msh_j_good")
    token_file.chmod(0o644)

    def start(config: AgentConfig) -> None:
        asyncio.run(agent(config, Controller(), NEVER).join("PUBKEY"))

    monkeypatch.setattr("probes.agent.run", start)
    argv = ["run", "--controller", CONTROLLER, "--region", "aws:us-east-1", "--endpoint", "192.0.2.1:1",
            "--interface", "mt0", "--state-dir", str(tmp_path / "s"), "--join-token-file", str(token_file)]  # fmt: skip
    code = cli.main(argv)
    assert code == 1
    assert capsys.readouterr().err == (
        f"error: join token file {token_file} is open to others (mode 0644): chmod 600 {token_file}\n"
    )
