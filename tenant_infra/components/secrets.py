"""Per-resource credentials. One generator, so every password has the same shape."""

from __future__ import annotations

import pulumi
import pulumi_random as random

#: Characters that survive URLs, DSNs, AMQP URIs and MongoDB URIs without escaping.
_SPECIAL = "-_.~"


def generated_password(name: str, parent: pulumi.Resource) -> pulumi.Output[str]:
    """A fresh 32-character password, marked secret explicitly.

    ``RandomPassword.result`` is secret in a real engine, but not under the mock
    runtime, and a secret must stay secret whoever evaluates the program.
    """
    password = random.RandomPassword(
        name,
        length=32,
        special=True,
        override_special=_SPECIAL,
        min_upper=2,
        min_lower=2,
        min_numeric=2,
        opts=pulumi.ResourceOptions(parent=parent, additional_secret_outputs=["result"]),
    )
    return pulumi.Output.secret(password.result)
