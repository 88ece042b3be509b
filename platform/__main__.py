"""Entry point for ``pulumi -C platform up``: shared databases and the Vault mount."""

from tenant_infra.program import platform_program

platform_program()
