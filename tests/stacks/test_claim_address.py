"""The AWS node's boot step that claims a free Elastic IP of its pool (stacks/meshstack/claim_address.py).

Its SigV4 signer against AWS's published test vectors; the script itself, as the user data
carries it (gzip+base64 in write_files), run as a process against a fake EC2 Query API and fake
IMDSv2 servers over real HTTP (tests/stacks/fake_aws.py) that check every signature the way AWS
does and model the addresses' association state, including nodes booting at the same moment.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from meshstack import claim_address, cloudinit
from meshstack.claim_address import Credentials, Ec2, Imds, claim, sign

from tests.stacks.fake_aws import FakeEc2, FakeImds, verify

REGION = "eu-west-1"
POOL = "media-mesh-dev-eu-west-1"
EXAMPLE = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
AT = datetime.datetime(2015, 8, 30, 12, 36, tzinfo=datetime.UTC)


# --- the signer, against AWS's published vectors -------------------------------------------------


def test_signer_reproduces_aws_published_sigv4_vectors() -> None:
    # "Signature Version 4 signing process" example: IAM ListUsers (the whole Authorization header)
    form = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    url = "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08"
    headers = sign("GET", url, form, b"", EXAMPLE, "us-east-1", "iam", AT)
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date, "
        "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
    )
    assert headers["X-Amz-Date"] == "20150830T123600Z" and headers["Host"] == "iam.amazonaws.com"
    unsigned = {k: v for k, v in headers.items() if k != "Authorization"}
    canonical, signed = claim_address.canonical_request("GET", url, unsigned, b"")
    assert signed == "content-type;host;x-amz-date"
    documented = "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"  # its canonical request's hash
    assert hashlib.sha256(canonical.encode()).hexdigest() == documented
    # the AWS SigV4 test suite: get-vanilla, get-vanilla-query-order-key-case, post-vanilla
    for method, target, signature in (
        ("GET", "/", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        ("GET", "/?Param2=value2&Param1=value1", "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
        ("POST", "/", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    ):
        got = sign(method, f"https://example.amazonaws.com{target}", {}, b"", EXAMPLE, "us-east-1", "service", AT)
        assert got["Authorization"].endswith(f"SignedHeaders=host;x-amz-date, Signature={signature}"), target
    # temporary credentials: the session token is sent and signed
    temporary = sign(
        "POST", "https://ec2.eu-west-1.amazonaws.com/", {}, b"x", EXAMPLE._replace(token="T0k"), REGION, "ec2", AT
    )
    assert temporary["X-Amz-Security-Token"] == "T0k"
    assert "SignedHeaders=host;x-amz-date;x-amz-security-token," in temporary["Authorization"]


def test_the_fake_ec2s_own_check_accepts_the_aws_vector_and_refuses_any_change() -> None:
    """The fake's verifier is code of its own: held to the same published vector."""
    headers = {
        "content-type": "application/x-www-form-urlencoded; charset=utf-8",
        "host": "iam.amazonaws.com",
        "x-amz-date": "20150830T123600Z",
        "authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date, "
        "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
    }
    keys: dict[str, tuple[str, str | None]] = {"AKIDEXAMPLE": (EXAMPLE.secret_key, None)}
    target = "/?Action=ListUsers&Version=2010-05-08"
    assert verify("GET", target, headers, b"", keys, "us-east-1", "iam", AT) is None
    assert verify("GET", target.replace("ListUsers", "ListRoles"), headers, b"", keys, "us-east-1", "iam", AT)
    assert verify("GET", target, headers, b"body", keys, "us-east-1", "iam", AT) == "SignatureDoesNotMatch"
    assert verify("GET", target, headers, b"", keys, "eu-west-1", "iam", AT) == "AuthFailure"
    late = AT + datetime.timedelta(minutes=6)
    assert verify("GET", target, headers, b"", keys, "us-east-1", "iam", late) == "RequestExpired"


# --- the script against a fake EC2 and fake metadata services --------------------------------------


@pytest.fixture
def ec2() -> Iterator[FakeEc2]:
    fake = FakeEc2(REGION)
    fake.start()
    yield fake
    fake.stop()


def node(ec2: FakeEc2, instance_id: str, **kw: object) -> FakeImds:
    imds = FakeImds(ec2, instance_id, launch_ip=f"198.51.100.{len(ec2.keys) + 1}", **kw)  # type: ignore[arg-type]
    imds.start()
    return imds


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The claim script exactly as the user data makes cloud-init write it (gz+b64 in write_files)."""
    text = cloudinit.render("https://ctl.example", f"aws:{REGION}", address_pool=POOL)
    doc = yaml.safe_load(text)
    assert doc["runcmd"] == [[cloudinit.ADDRESS_CLAIMER, "--pool", POOL], [cloudinit.INSTALLER]], "before the agent"
    (entry,) = [f for f in doc["write_files"] if f["path"] == cloudinit.ADDRESS_CLAIMER]
    assert entry["encoding"] == "gz+b64" and entry["permissions"] == "0755"
    path = tmp_path_factory.mktemp("node") / "meshctl-claim-address"
    path.write_bytes(gzip.decompress(base64.b64decode(entry["content"])))
    assert path.read_bytes() == Path(claim_address.__file__).read_bytes()
    # and cloud-init's own write_files decodes it the same (Debian's cloud-init, the system python)
    decode = (
        "import sys; from cloudinit.config import cc_write_files as w; "
        "sys.stdout.buffer.write(w.extract_contents(sys.stdin.read(), w.canonicalize_extraction('gz+b64')))"
    )
    done = subprocess.run(["/usr/bin/python3", "-c", decode], input=entry["content"].encode(), capture_output=True)
    if done.returncode == 0:
        assert done.stdout == path.read_bytes()
    elif b"No module named 'cloudinit'" not in done.stderr:
        raise AssertionError(done.stderr.decode())
    path.chmod(0o755)
    return path


def boot(
    script: Path, ec2: FakeEc2, imds: FakeImds, *extra: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(script), "--pool", POOL, "--imds", imds.url, "--endpoint", ec2.url + "/", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def test_a_booting_node_claims_a_free_address_of_its_own_pool(script: Path, ec2: FakeEc2) -> None:
    ec2.add("203.0.113.10", POOL, instance_id="i-0aaaaaaaaaaaaaaa1")  # a running node's
    free = ec2.add("203.0.113.11", POOL)
    other_pool = ec2.add("203.0.113.99", "media-mesh-dev-us-east-1")
    imds = node(ec2, "i-0bbbbbbbbbbbbbbb2")
    try:
        r = boot(script, ec2, imds)
    finally:
        imds.stop()
    assert r.returncode == 0, r.stderr
    assert f"claimed 203.0.113.11 ({free.allocation_id}) of pool {POOL}" in r.stderr
    assert ec2.holder("i-0bbbbbbbbbbbbbbb2") == free and other_pool.instance_id is None
    assert ec2.refused == [] and [a for a, _ in ec2.calls] == ["DescribeAddresses", "AssociateAddress"]
    assert ec2.calls[0][1] == {"Filter.1.Name": "tag:meshctl-pool", "Filter.1.Value.1": POOL}
    assert ec2.calls[1][1] == {
        "AllocationId": free.allocation_id,
        "InstanceId": "i-0bbbbbbbbbbbbbbb2",
        "AllowReassociation": "false",
    }
    assert imds.paths[0] == "PUT /latest/api/token", "IMDSv2: a session token first"
    assert "GET /latest/meta-data/public-ipv4" in imds.paths, "waits until the metadata service shows it"


def test_a_node_that_already_holds_a_pool_address_keeps_it(script: Path, ec2: FakeEc2) -> None:
    held = ec2.add("203.0.113.20", POOL, instance_id="i-0ccccccccccccccc3")
    ec2.add("203.0.113.21", POOL)
    imds = node(ec2, "i-0ccccccccccccccc3")
    try:
        r = boot(script, ec2, imds)
    finally:
        imds.stop()
    assert r.returncode == 0 and "203.0.113.20" in r.stderr, r.stderr
    assert [a for a, _ in ec2.calls] == ["DescribeAddresses"] and ec2.holder("i-0ccccccccccccccc3") == held


def test_nodes_booting_together_race_and_each_ends_with_its_own_address(ec2: FakeEc2) -> None:
    """Five nodes see the same four free addresses at once and all try the same one first (same
    random order): one wins each round, the others are refused (AllowReassociation=false) and try
    the next. Four end with four distinct addresses, none taken from another; the fifth gives up."""
    addresses = [ec2.add(f"203.0.113.{30 + i}", POOL) for i in range(4)]
    nodes = [node(ec2, f"i-0d{i:015x}") for i in range(5)]
    ec2.describe_barrier = threading.Barrier(5)
    got: dict[str, str | None] = {}

    def boot_node(imds: FakeImds) -> None:
        metadata = Imds(imds.url)
        client = Ec2(ec2.url + "/", REGION, lambda: metadata.credentials() or Credentials("", ""))
        got[imds.instance_id] = claim(client, imds.instance_id, POOL, wait=2.0, rng=random.Random(7))

    threads = [threading.Thread(target=boot_node, args=(n,)) for n in nodes]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for n in nodes:
            n.stop()
    ec2.describe_barrier = None
    claimed = [ip for ip in got.values() if ip is not None]
    assert sorted(claimed) == sorted(a.public_ip for a in addresses), got
    assert list(got.values()).count(None) == 1, "the fifth node keeps its launch-time address"
    assert all(ec2.holder(i) is None or ec2.holder(i).public_ip == ip for i, ip in got.items())  # type: ignore[union-attr]
    assert ec2.races >= 4, "they really raced (1 + 2 + 3 + 4 refusals with one shared order)"
    assert ec2.stolen == [] and ec2.refused == []


def test_a_replacement_node_waits_for_the_address_its_predecessor_frees(script: Path, ec2: FakeEc2) -> None:
    """An instance refresh starts the new node while the old one still holds the pool's only address."""
    only = ec2.add("203.0.113.40", POOL, instance_id="i-0eeeeeeeeeeeeeee1")
    imds = node(ec2, "i-0eeeeeeeeeeeeeee2")
    threading.Timer(2.0, ec2.release, args=("i-0eeeeeeeeeeeeeee1",)).start()
    started = time.monotonic()
    try:
        r = boot(script, ec2, imds, "--wait", "30")
    finally:
        imds.stop()
    assert r.returncode == 0 and f"claimed 203.0.113.40 ({only.allocation_id})" in r.stderr, r.stderr
    assert "no free address in pool" in r.stderr and time.monotonic() - started >= 2.0
    assert ec2.holder("i-0eeeeeeeeeeeeeee2") == only


@pytest.mark.parametrize("case", ["denied", "wrong-secret", "no-role", "ec2-unreachable", "pool-full"])
def test_the_boot_goes_on_when_no_address_can_be_claimed(script: Path, ec2: FakeEc2, case: str) -> None:
    ec2.add("203.0.113.50", POOL, instance_id="i-0fffffffffffffff0")
    imds = node(ec2, "i-0fffffffffffffff1", role=None if case == "no-role" else "meshctl-node")
    if case == "denied":
        ec2.denied.add("DescribeAddresses")
    if case == "wrong-secret":
        ec2.keys[imds.access_key] = ("not-the-secret", imds.session_token)
    endpoint = ["--endpoint", "http://127.0.0.1:9/"] if case == "ec2-unreachable" else []
    started = time.monotonic()
    try:
        argv = [
            sys.executable,
            str(script),
            "--pool",
            POOL,
            "--imds",
            imds.url,
            "--wait",
            "10" if case == "denied" else "3",
        ]
        r = subprocess.run(
            [*argv, *(endpoint or ["--endpoint", ec2.url + "/"])], capture_output=True, text=True, timeout=60
        )
    finally:
        imds.stop()
    assert r.returncode == 0, "never fails the boot"
    assert r.stderr.rstrip().endswith("keeping the launch-time public IPv4"), r.stderr
    assert time.monotonic() - started < 20
    assert ec2.holder("i-0fffffffffffffff1") is None and all(a != "AssociateAddress" for a, _ in ec2.calls)
    expected = {
        "denied": "UnauthorizedOperation",
        "wrong-secret": "SignatureDoesNotMatch",
        "no-role": "has no role",
        "ec2-unreachable": "EC2 unreachable",
        "pool-full": "no free address in pool",
    }[case]
    assert expected in r.stderr, r.stderr
    if case == "denied":
        assert len(ec2.calls) == 3, "a new role may take a moment to propagate: three tries, then it stops"
    if case == "wrong-secret":
        assert ec2.refused == ["SignatureDoesNotMatch"], "the fake checks signatures; one try, no retry"
    if case == "no-role":
        assert ec2.calls == [] and ec2.refused == []


def test_aws_user_data_with_the_claim_step_stays_under_ec2s_16_kb() -> None:
    from meshstack import aws

    longest = "x" * 58
    text = cloudinit.render(
        "https://" + "c" * 200 + ".example",
        "aws:ap-southeast-4",
        "https://artifacts.example/" + "a" * 150 + ".whl",
        "a" * 64,
        wheelhouse_url="https://artifacts.example/" + "b" * 150 + ".tar.gz",
        wheelhouse_sha256="b" * 64,
        address_pool=longest,
    )
    assert len(text.encode()) < aws.USER_DATA_LIMIT - 2048, len(text.encode())
    assert base64.b64decode(aws._user_data(text)).decode() == text
    with pytest.raises(ValueError, match="EC2 takes at most 16384"):
        aws._user_data(text + "#" * aws.USER_DATA_LIMIT)
