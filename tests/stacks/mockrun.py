"""Run the Pulumi program under Pulumi's mocks, in its own process, and print what it made.

Usage: python tests/stacks/mockrun.py STACK CONFIG_JSON [STACK_OUTPUTS_JSON [PROGRAM_DIR]]
  ->  JSON {resources, calls, outputs, error}
STACK_OUTPUTS_JSON ({"org/project/stack": {output: value}}) is what a StackReference to each of
those stacks reads (a stack not listed has no outputs); PROGRAM_DIR defaults to stacks/.
A fresh process per run: Pulumi's runtime keeps global state that must not leak between tests.

Each resource is recorded with its type, name, id (`<name>-id`, so wiring can be followed) and
inputs; the `call` hook answers the program's look-ups (zones, AMI parameters) like the clouds
would, and records them.
"""

from __future__ import annotations

import hashlib
import json
import runpy
import sys
import traceback
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime.mocks import MockMonitor

STACKS = Path(__file__).resolve().parents[2] / "stacks"
resources: list[dict[str, Any]] = []
calls: list[dict[str, Any]] = []
exports: dict[str, Any] = {}
ip_counter = [10]
stack_outputs: dict[str, dict[str, Any]] = {}
IP_FIELD = {
    "aws:ec2/instance:Instance": "publicIp",
    "aws:ec2/eip:Eip": "publicIp",
    "gcp:compute/address:Address": "address",
    "azure-native:network:PublicIPAddress": "ipAddress",
}


protected: dict[tuple[str, str], bool] = {}
urns: dict[tuple[str, str], str] = {}
_register = MockMonitor.RegisterResource


def _record_protect(self: MockMonitor, request: Any) -> Any:
    """The mocks' resource args lack `protect` and the URN: read them from the registration request itself."""
    protected[(request.type, request.name)] = bool(request.protect)
    urns[(request.type, request.name)] = self.make_urn(request.parent, request.type, request.name)
    return _register(self, request)


MockMonitor.RegisterResource = _record_protect  # type: ignore[method-assign]


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        # the mock monitor hands over the resource's transforms without running them: run them as the
        # engine does (each on the props the previous one gave), so the record holds what a cloud gets
        for transform in args.transforms:
            done = transform(
                pulumi.ResourceTransformArgs(
                    custom=bool(args.custom),
                    type_=args.typ,
                    name=args.name,
                    props=args.inputs,
                    opts=pulumi.ResourceOptions(),
                )
            )
            if done is not None:
                args.inputs = dict(done.props)  # type: ignore[union-attr]
        state = dict(args.inputs)
        record = {"type": args.typ, "name": args.name, "id": f"{args.name}-id", "inputs": _plain(args.inputs)}
        record["provider"] = args.provider  # "<urn>::<id>" of an explicit provider, else None
        if args.typ in IP_FIELD:
            ip_counter[0] += 1
            state[IP_FIELD[args.typ]] = record["ip"] = f"203.0.113.{ip_counter[0]}"
        if args.typ == "azure-native:network:PublicIPPrefix":  # Azure picks the range
            ip_counter[0] += 1
            state["ipPrefix"] = record["ipPrefix"] = f"198.51.{ip_counter[0]}.0/{int(args.inputs['prefixLength'])}"
        if args.typ == "aws:ec2/launchTemplate:LaunchTemplate":
            state["latestVersion"] = 1
        if args.typ == "gcp:compute/instanceTemplate:InstanceTemplate":
            state["selfLinkUnique"] = f"{args.name}-id"  # as the id: the wiring can be followed
        if args.typ == "pulumi:pulumi:StackReference":  # a read of another stack: its outputs
            state = {"name": args.inputs["name"], "outputs": stack_outputs.get(args.inputs["name"], {})}
            state["secretOutputNames"] = []
        if "name" not in state:
            state["name"] = args.name
        if args.typ.startswith("aws:") and "arn" not in state:  # e.g. an instance profile's, on a launch template
            state["arn"] = record["arn"] = f"arn:aws:mock::123456789012:{args.typ.rsplit(':', 1)[-1]}/{args.name}"
        resources.append(record)
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:  # type: ignore[override]
        calls.append({"token": args.token, "args": _plain(dict(args.args))})
        return answer(args.token, dict(args.args))


def mock_ami(name: str, region: str) -> str:
    """The AMI id the mock SSM parameter holds: differs per region and per parameter (architecture)."""
    return "ami-" + hashlib.sha256(f"{region}|{name}".encode()).hexdigest()[:17]


def answer(token: str, args: dict[str, Any]) -> dict[str, Any]:
    """What the clouds would answer; GCP zones without `-a`, as in us-east1 (b, c, d)."""
    if token == "gcp:compute/getZones:getZones":
        region = args["region"]
        return {"id": region, "names": [f"{region}-d", f"{region}-b", f"{region}-c"], "project": "p", "region": region}
    if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
        region = args["region"]
        names = [f"{region}{z}" for z in "abcdef"]
        return {
            "id": region,
            "names": names,
            "zoneIds": [f"z-{n}" for n in names],
            "groupNames": names,
            "region": region,
        }
    if token == "aws:ssm/getParameter:getParameter":
        name, region = args["name"], args["region"]
        return {
            "id": name,
            "name": name,
            "arn": f"arn:aws:ssm:{region}::parameter{name}",
            "type": "String",
            "value": mock_ami(name, region),
            "insecureValue": mock_ami(name, region),
            "version": 1,
            "withDecryption": True,
            "region": region,
        }
    raise ValueError(f"mockrun: no mock answer for {token}")


def _plain(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return json.loads(json.dumps(value, default=str))


def main() -> None:
    stack, config = sys.argv[1], json.loads(sys.argv[2])
    stack_outputs.update(json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
    program = Path(sys.argv[4]) if len(sys.argv) > 4 else STACKS
    pulumi.runtime.set_all_config({k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()})
    pulumi.runtime.set_mocks(Mocks(), project="meshctl-stacks", stack=stack, preview=False)
    pulumi.export = lambda name, value: exports.__setitem__(name, value)
    result: dict[str, Any] = {"error": None}

    @pulumi.runtime.test
    def run() -> Any:
        runpy.run_path(str(program / "__main__.py"), run_name="__main__")
        return pulumi.Output.from_input(exports).apply(lambda v: result.__setitem__("outputs", v))

    try:
        run()
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-3000:]
    for r in resources:
        r["protect"] = protected.get((r["type"], r["name"]), False)
        r["urn"] = urns.get((r["type"], r["name"]))
    result["resources"] = resources
    result["calls"] = calls
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
