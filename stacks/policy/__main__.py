"""The policy pack: `pulumi preview --policy-pack stacks/policy`. Checks live in rules.py."""

import os
import sys

from pulumi_policy import EnforcementLevel, PolicyPack

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pack import POLICIES

PolicyPack(name="meshctl-guard-rails", enforcement_level=EnforcementLevel.MANDATORY, policies=POLICIES)
