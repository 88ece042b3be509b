"""The tenant-infra policy pack. Constructing ``PolicyPack`` starts its gRPC server,
so this module does nothing else; the policies are in ``tenant_policies.py``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pulumi_policy import PolicyPack
from tenant_policies import policies

PolicyPack(name="tenant-infra-guardrails", policies=policies())
