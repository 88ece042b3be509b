"""Entry point for ``pulumi up`` / ``pulumi preview`` on a tenant stack."""

from tenant_infra.program import tenant_program

tenant_program()
