#!/usr/bin/python3
"""meshctl-claim-address: give this AWS node a free Elastic IP of its pool, at boot.

cloud-init writes this file to /usr/local/sbin and runs it before the agent is installed
(`runcmd`). Python's standard library only: Ubuntu's images have no AWS CLI, and the agent
carries no cloud-API code. It never fails the boot: on any error it logs and exits 0, and the
node keeps its launch-time public IPv4.

1. IMDSv2 (a session token first): the instance id, the region, and the instance role's
   temporary credentials (no role: nothing to do).
2. EC2 DescribeAddresses (Query API 2016-11-15, SigV4-signed) filtered on tag:meshctl-pool=POOL;
   an address already on this instance ends it (a reboot, a re-run).
3. AssociateAddress of a free one (random order), AllowReassociation=false: a node booting at
   the same moment that took it first makes this call fail (Resource.AlreadyAssociated) and the
   next free one is tried. None free (an instance refresh starts the new node before the old
   one goes): ask again, backing off, until --wait seconds have passed.
4. Wait (up to 30 s) until the metadata service reports the address, so that the agent, which
   asks it for its public address, starts with the new one.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import hmac
import json
import random
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import NamedTuple

POOL_TAG = "meshctl-pool"
API_VERSION = "2016-11-15"
ALGORITHM = "AWS4-HMAC-SHA256"
TAKEN = frozenset({"Resource.AlreadyAssociated", "InvalidAllocationID.NotFound"})
DENIED = frozenset({"UnauthorizedOperation", "AuthFailure"})  # retried a little: a new role propagates
THROTTLED = frozenset({"RequestLimitExceeded", "Throttling", "InternalError", "Unavailable", "ServiceUnavailable"})


class Credentials(NamedTuple):
    access_key: str
    secret_key: str
    token: str | None = None


class Address(NamedTuple):
    allocation_id: str
    public_ip: str
    association_id: str | None
    instance_id: str | None


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"EC2 {status} {code}: {message}")
        self.status, self.code = status, code


def log(message: str) -> None:
    print(f"meshctl-claim-address: {message}", file=sys.stderr, flush=True)


# --- Signature Version 4 ------------------------------------------------------------------------


def _quote(s: str) -> str:
    return urllib.parse.quote(s, safe="-_.~")


def canonical_request(method: str, url: str, headers: dict[str, str], payload: bytes) -> tuple[str, str]:
    """(canonical request, signed headers) of a request whose headers include Host."""
    parts = urllib.parse.urlsplit(url)
    query = sorted((_quote(k), _quote(v)) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    values = {k.lower(): " ".join(v.split()) for k, v in headers.items()}
    names = sorted(values)
    return "\n".join(
        [
            method,
            urllib.parse.quote(parts.path or "/", safe="/-_.~"),
            "&".join(f"{k}={v}" for k, v in query),
            "".join(f"{n}:{values[n]}\n" for n in names),
            ";".join(names),
            hashlib.sha256(payload).hexdigest(),
        ]
    ), ";".join(names)


def signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign(
    method: str,
    url: str,
    headers: dict[str, str],
    payload: bytes,
    creds: Credentials,
    region: str,
    service: str,
    now: datetime.datetime,
) -> dict[str, str]:
    """`headers` plus Host, X-Amz-Date, X-Amz-Security-Token (temporary credentials), Authorization."""
    stamp = now.astimezone(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = {"Host": urllib.parse.urlsplit(url).netloc, **headers, "X-Amz-Date": stamp}
    if creds.token:
        out["X-Amz-Security-Token"] = creds.token
    canonical, signed = canonical_request(method, url, out, payload)
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{digest}"
    key = signing_key(creds.secret_key, stamp[:8], region, service)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    credential = f"{creds.access_key}/{scope}"
    out["Authorization"] = f"{ALGORITHM} Credential={credential}, SignedHeaders={signed}, Signature={signature}"
    return out


# --- the instance metadata service (IMDSv2) and EC2 ---------------------------------------------


class Imds:
    def __init__(self, base: str) -> None:
        self.base, self._token = base.rstrip("/"), ""

    def get(self, path: str) -> str | None:
        """The value at /latest/<path>, None when there is none (404)."""
        if not self._token:
            put = urllib.request.Request(
                f"{self.base}/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "3600"}
            )
            with urllib.request.urlopen(put, timeout=5) as r:
                self._token = r.read().decode()
        req = urllib.request.Request(f"{self.base}/latest/{path}", headers={"X-aws-ec2-metadata-token": self._token})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return str(r.read().decode())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def credentials(self) -> Credentials | None:
        """The instance role's temporary credentials; None without a role."""
        role = self.get("meta-data/iam/security-credentials/")
        if not role:
            return None
        doc = json.loads(self.get(f"meta-data/iam/security-credentials/{role.split()[0]}") or "{}")
        if doc.get("Code") != "Success":
            raise OSError(f"instance role credentials not ready: {doc.get('Code')}")
        return Credentials(doc["AccessKeyId"], doc["SecretAccessKey"], doc.get("Token"))


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


class Ec2:
    def __init__(self, endpoint: str, region: str, credentials: Callable[[], Credentials]) -> None:
        self.endpoint, self.region, self.credentials = endpoint, region, credentials

    def call(self, action: str, params: dict[str, str]) -> ET.Element:
        body = urllib.parse.urlencode({"Action": action, "Version": API_VERSION, **params}).encode()
        plain = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        now = datetime.datetime.now(datetime.UTC)
        headers = sign("POST", self.endpoint, plain, body, self.credentials(), self.region, "ec2", now)
        req = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return ET.fromstring(r.read())
        except urllib.error.HTTPError as exc:
            text = exc.read()
            try:
                fields = {_local(e.tag): e.text or "" for e in ET.fromstring(text).iter()}
            except ET.ParseError:
                fields = {"Message": text[:200].decode(errors="replace")}
            raise ApiError(exc.code, fields.get("Code", "?"), fields.get("Message", "")) from None

    def addresses(self, pool: str) -> list[Address]:
        root = self.call("DescribeAddresses", {"Filter.1.Name": f"tag:{POOL_TAG}", "Filter.1.Value.1": pool})
        found = []
        for table in (e for e in root.iter() if _local(e.tag) == "addressesSet"):
            for item in table:
                f = {_local(c.tag): (c.text or "").strip() for c in item}
                association, instance = f.get("associationId") or None, f.get("instanceId") or None
                found.append(Address(f["allocationId"], f["publicIp"], association, instance))
        return found

    def associate(self, allocation_id: str, instance_id: str) -> None:
        params = {"AllocationId": allocation_id, "InstanceId": instance_id, "AllowReassociation": "false"}
        self.call("AssociateAddress", params)


# --- the claim ------------------------------------------------------------------------------------


def claim(
    ec2: Ec2,
    instance_id: str,
    pool: str,
    wait: float,
    rng: random.Random,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str | None:
    """The public IP of the pool's address now on this instance, or None (logged why)."""
    deadline, delay, denied = clock() + wait, 1.0, 0
    while True:
        try:
            found = ec2.addresses(pool)
            mine = [a for a in found if a.instance_id == instance_id]
            if mine:
                log(f"{mine[0].public_ip} ({mine[0].allocation_id}) of pool {pool} is on this node")
                return mine[0].public_ip
            free = [a for a in found if a.association_id is None]
            rng.shuffle(free)
            for a in free:
                try:
                    ec2.associate(a.allocation_id, instance_id)
                except ApiError as exc:
                    if exc.code not in TAKEN:
                        raise
                    log(f"{a.public_ip} was taken meanwhile ({exc.code}); trying the next")
                    continue
                log(f"claimed {a.public_ip} ({a.allocation_id}) of pool {pool}")
                return a.public_ip
            why = f"no free address in pool {pool} ({len(found)} in it)" if not free else "all free ones were taken"
        except ApiError as exc:
            denied += exc.code in DENIED
            if not (exc.code in THROTTLED or exc.status >= 500 or (exc.code in DENIED and denied < 3)):
                log(f"{exc}; giving up")
                return None
            why = str(exc)
        except OSError as exc:  # connection refused, timeouts, DNS
            why = f"EC2 unreachable: {exc}"
        if clock() + delay > deadline:
            log(f"{why}; giving up after {wait:.0f} s")
            return None
        log(f"{why}; asking again in {delay:.0f} s")
        sleep(delay)
        delay = min(delay * 2, 15.0)


def run(args: argparse.Namespace) -> str | None:
    imds = Imds(args.imds)
    instance_id, region = imds.get("meta-data/instance-id"), imds.get("meta-data/placement/region")
    if not instance_id or not region:
        log("the metadata service has no instance id or region: not on EC2?")
        return None
    if imds.credentials() is None:
        log("this instance has no role (staticAddresses off?): nothing to claim")
        return None

    def credentials() -> Credentials:
        creds = imds.credentials()
        assert creds is not None
        return creds

    ec2 = Ec2(args.endpoint or f"https://ec2.{region}.amazonaws.com/", region, credentials)
    ip = claim(ec2, instance_id, args.pool, args.wait, random.Random())
    for _ in range(30):  # the agent reads its public address from the metadata service
        if ip is None or imds.get("meta-data/public-ipv4") == ip:
            break
        time.sleep(1)
    return ip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshctl-claim-address", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pool", required=True, help=f"the {POOL_TAG} tag of the region's Elastic IPs")
    parser.add_argument("--wait", type=float, default=900.0, help="seconds to wait for a free address")
    parser.add_argument("--imds", default="http://169.254.169.254", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", default=None, help=argparse.SUPPRESS)  # tests: a fake EC2
    args = parser.parse_args(argv)
    try:
        ip = run(args)
    except Exception as exc:  # never fail the boot
        log(f"{type(exc).__name__}: {exc}")
        ip = None
    if ip is None:
        log("keeping the launch-time public IPv4")
    return 0


if __name__ == "__main__":
    sys.exit(main())
