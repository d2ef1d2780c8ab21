"""A fake EC2 Query API and per-node instance metadata services (IMDSv2), over real HTTP.

`FakeEc2` checks every request's SigV4 signature the way AWS does, with its own code (not the
node script's): the credential scope (date, region, `ec2`), the signed headers (host and
x-amz-date at least, sorted), the time (5 minutes), the session token of temporary credentials,
and the signature recomputed from the request as received with the secret of its access key. It
models the Elastic IPs' association state as EC2 does: `AllowReassociation=false` on an address
another instance holds fails with Resource.AlreadyAssociated, otherwise the address moves (and
the move is recorded in `stolen`). `describe_barrier` holds each DescribeAddresses until that
many are waiting (each node's first one only), so that nodes booting together all see the same
free addresses (a real race).

`FakeImds` is one node's metadata service: a session token first (PUT), 401 without it; the
instance id, the region, the role's temporary credentials, and the public IPv4 (the Elastic IP
once associated, else the launch-time one).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import itertools
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape

NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
Answer = tuple[int, dict[str, str], bytes]  # status, headers, body
AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<akid>[^/]+)/(?P<day>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request, "
    r"SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})"
)


def expected_signature(
    method: str, target: str, headers: dict[str, str], body: bytes, secret: str, signed: list[str], scope: str
) -> str:
    """The signature AWS computes for a request as received (`headers` lower-cased)."""
    path, _, query = target.partition("?")
    pairs = sorted(
        (urllib.parse.quote(k, safe="-_.~"), urllib.parse.quote(v, safe="-_.~"))
        for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True)
    )
    canonical = "\n".join(
        [
            method,
            path,
            "&".join("=".join(p) for p in pairs),
            "".join(name + ":" + " ".join(headers[name].split()) + "\n" for name in signed),
            ";".join(signed),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    day, region, service, _ = scope.split("/")
    key = b"AWS4" + secret.encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    text = "\n".join(["AWS4-HMAC-SHA256", headers["x-amz-date"], scope, hashlib.sha256(canonical.encode()).hexdigest()])
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def verify(
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes,
    keys: dict[str, tuple[str, str | None]],
    region: str,
    service: str,
    now: datetime.datetime,
) -> str | None:
    """None if the request is signed as AWS requires, else the error code AWS would answer."""
    m = AUTH.fullmatch(headers.get("authorization", ""))
    if m is None:
        return "IncompleteSignature"
    if m["akid"] not in keys:
        return "AuthFailure"
    secret, token = keys[m["akid"]]
    signed = m["signed"].split(";")
    if signed != sorted(signed) or not {"host", "x-amz-date"} <= set(signed) or not set(signed) <= set(headers):
        return "IncompleteSignature"
    if (m["region"], m["service"]) != (region, service):
        return "AuthFailure"
    stamp = headers["x-amz-date"]
    when = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    if stamp[:8] != m["day"] or abs((now - when).total_seconds()) > 300:
        return "RequestExpired"
    if token is not None and headers.get("x-amz-security-token") != token:
        return "AuthFailure"
    scope = f"{m['day']}/{m['region']}/{m['service']}/aws4_request"
    expected = expected_signature(method, target, headers, body, secret, signed, scope)
    return None if hmac.compare_digest(expected, m["signature"]) else "SignatureDoesNotMatch"


@dataclass
class Eip:
    allocation_id: str
    public_ip: str
    tags: dict[str, str]
    instance_id: str | None = None
    association_id: str | None = None


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 answering through `answer(method, target, headers, body)`."""

    url = ""

    def start(self) -> _Server:
        """Serve on a free port of 127.0.0.1 (`url`)."""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, extra, data = owner.answer(self.command, self.path, headers, body)
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        raise NotImplementedError


@dataclass
class FakeEc2(_Server):
    region: str
    keys: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # access key -> (secret, token)
    addresses: dict[str, Eip] = field(default_factory=dict)
    denied: set[str] = field(default_factory=set)  # actions answered UnauthorizedOperation
    describe_barrier: threading.Barrier | None = None
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # signature checks that failed
    races: int = 0  # Resource.AlreadyAssociated answers
    stolen: list[tuple[str, str, str]] = field(default_factory=list)  # (address, from, to) reassociations
    lock: threading.Lock = field(default_factory=threading.Lock)
    described: set[str] = field(default_factory=set)  # access keys that have asked DescribeAddresses
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def add(self, public_ip: str, pool: str, instance_id: str | None = None) -> Eip:
        n = next(self._ids)
        eip = Eip(f"eipalloc-{n:017x}", public_ip, {"meshctl-pool": pool, "Name": f"{pool}-{n}"})
        if instance_id:
            eip.instance_id, eip.association_id = instance_id, f"eipassoc-{n:017x}"
        self.addresses[eip.allocation_id] = eip
        return eip

    def holder(self, instance_id: str) -> Eip | None:
        return next((e for e in self.addresses.values() if e.instance_id == instance_id), None)

    def release(self, instance_id: str) -> None:
        """The instance terminates: its Elastic IP is disassociated (EC2 does so)."""
        with self.lock:
            for e in self.addresses.values():
                if e.instance_id == instance_id:
                    e.instance_id = e.association_id = None

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        now = datetime.datetime.now(datetime.UTC)
        problem = verify(method, target, headers, body, self.keys, self.region, "ec2", now)
        if problem is not None:
            self.refused.append(problem)
            return self._error(401 if problem == "AuthFailure" else 403, problem, "signature check failed")
        if method != "POST" or headers.get("content-type", "").split(";")[0] != "application/x-www-form-urlencoded":
            return self._error(400, "InvalidRequest", f"{method} {headers.get('content-type')}")
        params = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
        action = params.pop("Action", "")
        if params.pop("Version", "") != "2016-11-15":
            return self._error(400, "InvalidParameterValue", "Version")
        self.calls.append((action, params))
        if action in self.denied:
            return self._error(403, "UnauthorizedOperation", f"You are not authorized to perform: ec2:{action}")
        if action == "DescribeAddresses":
            caller = AUTH.fullmatch(headers["authorization"])["akid"]  # type: ignore[index]
            first = caller not in self.described
            self.described.add(caller)
            if self.describe_barrier is not None and first:
                self.describe_barrier.wait(timeout=10)
            return self._describe(params)
        if action == "AssociateAddress":
            return self._associate(params)
        return self._error(400, "InvalidAction", action)

    def _describe(self, params: dict[str, str]) -> Answer:
        wanted: dict[str, set[str]] = {}
        for k, v in params.items():
            m = re.fullmatch(r"Filter\.(\d+)\.Name", k)
            if m:
                if not v.startswith("tag:"):
                    return self._error(400, "InvalidParameterValue", f"filter {v} not modelled here")
                wanted[v[4:]] = {pv for pk, pv in params.items() if pk.startswith(f"Filter.{m[1]}.Value.")}
        with self.lock:
            items = [e for e in self.addresses.values() if all(e.tags.get(t) in vs for t, vs in wanted.items())]
            xml = "".join(
                "<item>"
                f"<publicIp>{e.public_ip}</publicIp><allocationId>{e.allocation_id}</allocationId><domain>vpc</domain>"
                + (f"<instanceId>{e.instance_id}</instanceId>" if e.instance_id else "")
                + (f"<associationId>{e.association_id}</associationId>" if e.association_id else "")
                + "<tagSet>"
                + "".join(f"<item><key>{escape(k)}</key><value>{escape(v)}</value></item>" for k, v in e.tags.items())
                + "</tagSet></item>"
                for e in items
            )
        return self._ok("DescribeAddressesResponse", f"<addressesSet>{xml}</addressesSet>")

    def _associate(self, params: dict[str, str]) -> Answer:
        if "AllocationId" not in params or "InstanceId" not in params:
            return self._error(400, "MissingParameter", "AllocationId and InstanceId (a VPC address)")
        instance = params["InstanceId"]
        with self.lock:
            eip = self.addresses.get(params["AllocationId"])
            if eip is None:
                return self._error(400, "InvalidAllocationID.NotFound", params["AllocationId"])
            if eip.instance_id not in (None, instance):
                if params.get("AllowReassociation", "true") == "false":
                    self.races += 1
                    return self._error(400, "Resource.AlreadyAssociated", f"{eip.public_ip} is already associated")
                self.stolen.append((eip.public_ip, eip.instance_id, instance))
            for other in self.addresses.values():  # an instance's previous Elastic IP is disassociated
                if other.instance_id == instance and other is not eip:
                    other.instance_id = other.association_id = None
            eip.instance_id, eip.association_id = instance, f"eipassoc-{eip.allocation_id[9:]}"
            association = eip.association_id
        return self._ok(
            "AssociateAddressResponse", f"<return>true</return><associationId>{association}</associationId>"
        )

    @staticmethod
    def _ok(root: str, inner: str) -> Answer:
        xml = f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{NS}"><requestId>r-1</requestId>{inner}</{root}>'
        return 200, {"Content-Type": "text/xml;charset=UTF-8"}, xml.encode()

    @staticmethod
    def _error(status: int, code: str, message: str) -> Answer:
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{code}</Code><Message>{escape(message)}</Message></Error></Errors><RequestID>r-1</RequestID></Response>"
        )
        return status, {"Content-Type": "text/xml;charset=UTF-8"}, xml.encode()


@dataclass
class FakeImds(_Server):
    """One node's metadata service; `role` None: an instance without an instance profile."""

    ec2: FakeEc2
    instance_id: str
    launch_ip: str
    role: str | None = "meshctl-node"
    tokens: set[str] = field(default_factory=set)
    paths: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.access_key = "ASIA" + hashlib.sha256(self.instance_id.encode()).hexdigest()[:16].upper()
        self.secret = hashlib.sha256(b"secret" + self.instance_id.encode()).hexdigest()[:40]
        self.session_token = "IQoJb3JpZ2luX2VjE" + self.instance_id
        self.ec2.keys[self.access_key] = (self.secret, self.session_token)

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        self.paths.append(f"{method} {target}")
        if target == "/latest/api/token":
            ttl = headers.get("x-aws-ec2-metadata-token-ttl-seconds", "")
            if method != "PUT" or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return 400, {}, b"IMDSv2: PUT with a TTL of 1..21600 s"
            token = f"token-{len(self.tokens)}-{self.instance_id}"
            self.tokens.add(token)
            return 200, {}, token.encode()
        if method != "GET" or headers.get("x-aws-ec2-metadata-token") not in self.tokens:
            return 401, {}, b"Unauthorized"
        held = self.ec2.holder(self.instance_id)
        role_path = "/latest/meta-data/iam/security-credentials/"
        values: dict[str, str] = {
            "/latest/meta-data/instance-id": self.instance_id,
            "/latest/meta-data/placement/region": self.ec2.region,
            "/latest/meta-data/public-ipv4": held.public_ip if held else self.launch_ip,
        }
        if self.role is not None:
            values[role_path] = self.role
            values[role_path + self.role] = json.dumps(
                {
                    "Code": "Success",
                    "LastUpdated": "2026-01-01T00:00:00Z",
                    "Type": "AWS-HMAC",
                    "AccessKeyId": self.access_key,
                    "SecretAccessKey": self.secret,
                    "Token": self.session_token,
                    "Expiration": "2099-01-01T00:00:00Z",
                }
            )
        if target not in values:
            return 404, {}, b"Not Found"
        return 200, {}, values[target].encode()
