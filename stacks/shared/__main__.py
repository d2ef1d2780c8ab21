"""An environment's shared stack: what its node stacks (dev-aws, dev-gcp, dev-azure) read through a
`pulumi.StackReference` (their `mesh.sharedStack`) instead of repeating it in each stack file.

Outputs, one per config key of the same name (`meshctl-shared:<key>`): `controllerUrl` (required),
`agentWheelUrl`, `agentWheelSha256`, `agentWheelhouseUrl`, `agentWheelhouseSha256` (a release sets
them once for every cloud). The node stacks validate what they read as they validate their own
config, and fail naming this stack and the output when one is missing or wrong.
"""

from __future__ import annotations

import os
import sys

import pulumi

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from meshstack.model import SHARED_OUTPUTS

config = pulumi.Config("meshctl-shared")
pulumi.export("controllerUrl", config.require("controllerUrl"))
for key in SHARED_OUTPUTS[1:]:
    value = config.get(key)
    if value is not None:
        pulumi.export(key, value)
