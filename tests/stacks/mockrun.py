"""Run the Pulumi program under Pulumi's mocks, in its own process, and print what it made.

Usage: python tests/stacks/mockrun.py STACK CONFIG_JSON  ->  JSON {resources, outputs, error}
A fresh process per run: Pulumi's runtime keeps global state that must not leak between tests.
"""

from __future__ import annotations

import json
import runpy
import sys
import traceback
from pathlib import Path
from typing import Any

import pulumi

STACKS = Path(__file__).resolve().parents[2] / "stacks"
resources: list[dict[str, Any]] = []
exports: dict[str, Any] = {}
ip_counter = [10]


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        state = dict(args.inputs)
        ip_counter[0] += 1
        ip = f"203.0.113.{ip_counter[0]}"
        if args.typ == "aws:ec2/instance:Instance":
            state["publicIp"] = ip
        elif args.typ == "gcp:compute/address:Address":
            state["address"] = ip
        elif args.typ == "azure-native:network:PublicIPAddress":
            state["ipAddress"] = ip
        if "name" not in state:
            state["name"] = args.name
        resources.append({"type": args.typ, "name": args.name, "inputs": _plain(args.inputs)})
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        return {}


def _plain(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return json.loads(json.dumps(value, default=str))


def main() -> None:
    stack, config = sys.argv[1], json.loads(sys.argv[2])
    pulumi.runtime.set_all_config(
        {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}, ["meshctl-stacks:joinToken"]
    )
    pulumi.runtime.set_mocks(Mocks(), project="meshctl-stacks", stack=stack, preview=False)
    pulumi.export = lambda name, value: exports.__setitem__(name, value)  # type: ignore[assignment]
    result: dict[str, Any] = {"error": None}

    @pulumi.runtime.test
    def run() -> Any:
        runpy.run_path(str(STACKS / "__main__.py"), run_name="__main__")
        return pulumi.Output.from_input(exports).apply(lambda v: result.__setitem__("outputs", v))

    try:
        run()
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-3000:]
    result["resources"] = resources
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
