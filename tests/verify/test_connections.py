"""The connections document: the README's shape, validated, never echoing a password."""

from __future__ import annotations

import copy
import json

import pytest

from tenant_infra.config import Platform
from tenant_infra.errors import InvalidInput
from tenant_infra.vaultclient import operator_vault
from tenant_infra.verify.connections import AdminAccess, load_connections

SECRET = "s3cr3t-Pa55word-never-shown"

DOC = {
    "tenant": "globex",
    "product": "ledger",
    "isolation": "SCHEMA",
    "postgresql": {
        "host": "db.internal",
        "port": 5432,
        "database": "ledger",
        "schema": "tenant_globex",
        "user": "ledger_globex",
        "password": SECRET,
        "sslmode": "verify-full",
    },
    "rabbitmq": {
        "host": "mq.internal",
        "port": 5671,
        "vhost": "globex",
        "user": "ledger_globex",
        "password": SECRET,
    },
    "mongodb": {
        "host": "mongo.internal",
        "port": 27017,
        "database": "globex",
        "user": "ledger_globex",
        "password": SECRET,
        "authSource": "globex",
        "tls": True,
    },
}


def changed(path: str, value: object) -> dict:
    doc = copy.deepcopy(DOC)
    *parents, key = path.split(".")
    target = doc
    for part in parents:
        target = target[part]
    if value is None:
        del target[key]
    else:
        target[key] = value
    return doc


def test_the_readme_shape_loads_from_a_file(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(DOC))
    (doc,) = load_connections(path)
    assert (doc.tenant, doc.product, doc.isolation.value) == ("globex", "ledger", "SCHEMA")
    assert doc.postgresql.schema_name == "tenant_globex"
    assert doc.rabbitmq is not None and doc.rabbitmq.tls
    assert doc.mongodb is not None and doc.mongodb.auth_source == "globex"
    assert SECRET not in repr(doc) and SECRET not in str(doc.model_dump())


def test_sections_follow_the_products_stores() -> None:
    """A migration needs PostgreSQL only: a missing section loads, and says so; a
    section for a store the product does not use is refused."""
    (doc,) = load_connections(changed("rabbitmq", None))
    assert doc.missing() == ["rabbitmq"]
    (doc,) = load_connections(changed("mongodb", None))
    assert doc.missing() == ["mongodb"]
    tracer = json.loads(
        json.dumps(changed("product", "tracer"))
        .replace("ledger_globex", "tracer_globex")
        .replace('"database": "ledger"', '"database": "tracer"')
    )
    with pytest.raises(InvalidInput, match="product 'tracer' uses no mongodb: the document's mongodb section is not its"):
        load_connections(tracer)


def test_a_list_of_documents_loads_each(tmp_path) -> None:
    path = tmp_path / "c.json"
    tracer = changed("product", "tracer")
    tracer = json.loads(
        json.dumps(tracer)
        .replace("ledger_globex", "tracer_globex")
        .replace('"database": "ledger"', '"database": "tracer"')
    )
    del tracer["mongodb"]
    path.write_text(json.dumps([DOC, tracer]))
    assert [d.product for d in load_connections(path)] == ["ledger", "tracer"]


def test_database_mode_uses_the_dedicated_database() -> None:
    doc = changed("isolation", "DATABASE")
    with pytest.raises(InvalidInput, match=r"postgresql\.database is 'ledger'.*'ledger_globex'"):
        load_connections(doc)
    doc["postgresql"]["database"] = "ledger_globex"
    assert load_connections(doc)[0].postgresql.database == "ledger_globex"


@pytest.mark.parametrize(
    ("path", "value", "rule"),
    [
        ("postgresql.schema", "tenant_acme", "postgresql.schema is 'tenant_acme'"),
        ("postgresql.user", "postgres", "postgresql.user is 'postgres'"),
        ("rabbitmq.vhost", "/", "rabbitmq.vhost is '/'"),
        ("mongodb.database", "admin", "mongodb.database is 'admin'"),
        ("tenant", "Globex", "must be lowercase"),
        ("product", "payroll", "unknown product 'payroll'"),
        ("isolation", "ROW", "isolation"),
        ("postgresql.password", None, "postgresql.password"),
        ("postgresql.port", 0, "postgresql.port"),
        ("postgresql.extra", "x", "postgresql.extra"),
        ("postgresql.host", "db;rm -rf /", "not a hostname"),
        ("rabbitmq.host", "mq host", "not a hostname"),
        ("mongodb.host", "user@evil.example", "not a hostname"),
    ],
)
def test_invalid_documents_are_refused_naming_the_rule(path, value, rule) -> None:
    with pytest.raises(InvalidInput, match=rule) as info:
        load_connections(changed(path, value))
    assert SECRET not in str(info.value)
    assert "\n" not in str(info.value)


def test_a_password_of_the_wrong_type_is_not_echoed() -> None:
    doc = changed("postgresql.password", 1234567890123)
    with pytest.raises(InvalidInput) as info:
        load_connections(doc)
    assert "1234567890123" not in str(info.value)


def test_files_that_are_not_documents(tmp_path) -> None:
    with pytest.raises(InvalidInput, match="cannot read"):
        load_connections(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"password": "' + SECRET + '", ')
    with pytest.raises(InvalidInput, match="is not JSON") as info:
        load_connections(bad)
    assert SECRET not in str(info.value)
    bad.write_text("[]")
    with pytest.raises(InvalidInput, match="holds no document"):
        load_connections(bad)
    bad.write_text('"text"')
    with pytest.raises(InvalidInput, match="must be a JSON object"):
        load_connections(bad)


PLATFORM = Platform.model_validate(
    {
        "postgres": {"default": {"host": "pg", "adminUser": "tenant_admin"}},
        "rabbitmq": {
            "managementUrl": "https://mq.internal:15671",
            "adminUser": "provisioner",
            "amqpHost": "mq.internal",
        },
        "vault": {"address": "https://vault.internal:8200", "kvMount": "tenants-kv"},
    }
)


def test_admin_access_follows_the_platform_and_the_credential_variables() -> None:
    (doc,) = load_connections(DOC)
    env = {
        "TENANT_INFRA_RABBITMQ_PASSWORD": "mq-Secret-1",
        "VAULT_ADDR": "https://v:8200/",
        "VAULT_TOKEN": "vault-Secret-2",
    }
    access = AdminAccess.from_environment(doc, PLATFORM, env)
    assert access.rabbitmq is not None
    assert (access.rabbitmq.management_url, access.rabbitmq.user) == (
        "https://mq.internal:15671",
        "provisioner",
    )
    assert access.vault is not None
    assert (access.vault.address, access.vault.mount) == ("https://v:8200", "tenants-kv")
    for secret in ("mq-Secret-1", "vault-Secret-2"):
        assert secret not in repr(access)


def test_without_a_platform_no_admin_password_is_sent_anywhere() -> None:
    """A connections file must not choose where the admin password goes."""
    (doc,) = load_connections(DOC)
    access = AdminAccess.from_environment(doc, None, {"TENANT_INFRA_RABBITMQ_PASSWORD": "mq"})
    assert access.rabbitmq is None
    assert access.vault is None


def test_a_tenant_stack_file_never_chooses_where_the_token_goes() -> None:
    """The tenant's platform block (PLATFORM) names a Vault; without VAULT_ADDR or a
    platform definition, no token is sent anywhere."""
    (doc,) = load_connections(DOC)
    access = AdminAccess.from_environment(doc, PLATFORM, {"VAULT_TOKEN": "t"})
    assert access.vault is None


@pytest.mark.parametrize("env", [{}, {"VAULT_ADDR": "http://127.0.0.1:8200"}, {"VAULT_TOKEN": "t"}])
def test_vault_is_used_only_with_both_address_and_token(env) -> None:
    assert operator_vault(env) is None
