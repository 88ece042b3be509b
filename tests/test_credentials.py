"""Platform credentials: from the environment, secret, and never shown."""

from __future__ import annotations

import pytest

from tenant_infra.components.providers import Providers
from tenant_infra.config import TenantConfig
from tenant_infra.credentials import PlatformCredentials
from tenant_infra.errors import InvalidInput

SECRETS = {"VAULT_TOKEN": "hvs.vault-Secret-9", "TENANT_INFRA_RABBITMQ_PASSWORD": "mq-Secret-8"}


def test_repr_never_shows_the_environment() -> None:
    credentials = PlatformCredentials(environ=SECRETS)
    assert "Secret" not in repr(credentials)


def test_providers_repr_never_shows_credentials(plan_for) -> None:
    config = TenantConfig.model_validate(
        {
            "tenant": "acme",
            "services": [{"product": "tracer", "isolation": "SCHEMA"}],
            "platform": {
                "postgres": {"default": {"host": "db"}},
                "vault": {"address": "https://v:8200"},
                "rabbitmq": {"managementUrl": "http://mq:15672", "amqpHost": "mq"},
            },
        }
    )
    providers = Providers("acme", config.platform, PlatformCredentials(environ=SECRETS))
    assert "Secret" not in repr(providers)


def test_a_missing_required_credential_names_the_variable() -> None:
    with pytest.raises(InvalidInput, match="VAULT_TOKEN is not set"):
        PlatformCredentials(environ={}).vault_token()


def test_plain_admin_passwords_follow_the_same_variables() -> None:
    """The operator's own admin sessions (suspension) read the program's variables."""
    credentials = PlatformCredentials(
        environ={"TENANT_INFRA_PG_PASSWORD": "all", "TENANT_INFRA_PG_PASSWORD_LEDGER": "ledger"}
    )
    assert credentials.postgres_password_value("ledger") == "ledger"
    assert credentials.postgres_password_value("tracer") == "all"
    assert PlatformCredentials(environ={}).postgres_password_value("ledger") is None
    with pytest.raises(InvalidInput, match="TENANT_INFRA_RABBITMQ_PASSWORD is not set"):
        credentials.rabbitmq_password_value()


def test_the_program_sends_the_token_only_to_the_operators_vault() -> None:
    """A stack file alone never decides where the Vault token goes."""
    declared = "https://vault.internal:8200/"
    with pytest.raises(InvalidInput, match="set VAULT_ADDR"):
        PlatformCredentials(environ=SECRETS).vault_address(declared)
    other = {**SECRETS, "VAULT_ADDR": "https://vault.ops.internal:8200"}
    with pytest.raises(InvalidInput, match="not the operator's Vault"):
        PlatformCredentials(environ=other).vault_address(declared)
    same = {**SECRETS, "VAULT_ADDR": "https://vault.internal:8200"}
    assert PlatformCredentials(environ=same).vault_address(declared) == same["VAULT_ADDR"]
    assert PlatformCredentials.for_plan().vault_address(declared) == declared  # offline
