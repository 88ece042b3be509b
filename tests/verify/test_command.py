"""What verify decides to check, and from which source, without the optional servers."""

from __future__ import annotations

import copy

import pytest

from tenant_infra.errors import InvalidInput
from tenant_infra.guardrails import parse_policy
from tenant_infra.verify import verify_tenant
from tenant_infra.verify.checks import CheckResult, describe
from tenant_infra.verify.command import ServiceReport, VerifyReport
from tenant_infra.verify.connections import VaultAccess, load_connections
from tenant_infra.verify.mongodb import mongodb_checks, mongodb_gate
from tenant_infra.verify.vault import policy_problems, vault_checks

DOC = {
    "tenant": "globex",
    "product": "ledger",
    "isolation": "SCHEMA",
    "postgresql": {
        "host": "127.0.0.1",
        "port": 5432,
        "database": "ledger",
        "schema": "tenant_globex",
        "user": "ledger_globex",
        "password": "pw-1",
    },
    "rabbitmq": {
        "host": "127.0.0.1",
        "port": 5672,
        "vhost": "globex",
        "user": "ledger_globex",
        "password": "pw-2",
    },
    "mongodb": {
        "host": "127.0.0.1",
        "port": 27017,
        "database": "globex",
        "user": "ledger_globex",
        "password": "pw-3",
        "authSource": "globex",
    },
}


def document(**changes):
    doc = copy.deepcopy(DOC)
    doc.update(changes)
    return load_connections({k: v for k, v in doc.items() if v is not None})[0]


def test_mongodb_is_checked_only_when_the_document_has_it_and_it_answers() -> None:
    probed = []

    def reachable(host: str, port: int) -> bool:
        probed.append((host, port))
        return False

    assert mongodb_checks(document(mongodb=None), reachable) == []
    (result,) = mongodb_checks(document(), reachable)
    assert (result.name, result.ok, result.skipped) == ("mongodb.reachable", True, True)
    assert "127.0.0.1:27017 not reachable" in result.reason
    assert probed == [("127.0.0.1", 27017)]
    assert mongodb_gate(document(), lambda h, p: True) is None


def test_atlas_srv_hosts_are_left_to_the_driver() -> None:
    srv = copy.deepcopy(DOC["mongodb"])
    del srv["port"]
    srv["host"] = "tenants-eu.abcde.mongodb.net"

    def never(host: str, port: int) -> bool:
        raise AssertionError("no TCP probe for an SRV host")

    assert mongodb_gate(document(mongodb=srv), never) is None


def test_vault_is_skipped_without_access() -> None:
    (result,) = vault_checks(document(), None)
    assert result.skipped and result.ok and "VAULT_ADDR" in result.reason


OWN = (
    'path "kv/data/tenants/globex/ledger" {\n  capabilities = ["read"]\n}\n'
    'path "kv/metadata/tenants/globex/ledger" {\n  capabilities = ["read"]\n}\n'
    # What the token may do to itself, in place of the default policy it does not carry.
    'path "auth/token/lookup-self" {\n  capabilities = ["read"]\n}\n'
    'path "auth/token/renew-self" {\n  capabilities = ["update"]\n}\n'
    'path "auth/token/revoke-self" {\n  capabilities = ["update"]\n}\n'
)


def test_the_components_policy_reads_only_its_own_path() -> None:
    from tenant_infra.components.vault import read_policy

    generated = read_policy("kv", "tenants/globex/ledger")
    assert parse_policy(generated) == parse_policy(OWN)
    assert policy_problems(generated, "kv", "tenants/globex/ledger") == []


@pytest.mark.parametrize(
    ("hcl", "problem"),
    [
        (
            OWN.replace('["read"]', '["read", "update"]', 1),
            "grants ['update'] on kv/data/tenants/globex/ledger",
        ),
        (OWN + 'path "kv/data/tenants/*" { capabilities = ["read"] }', "on kv/data/tenants/*"),
        (
            OWN + 'path "kv/data/tenants/acme/ledger" {capabilities=["read"]}',
            "kv/data/tenants/acme/ledger",
        ),
        (
            'path "kv/metadata/tenants/globex/ledger" { capabilities = ["read"] }',
            "does not grant read",
        ),
        (
            OWN.replace('["update"]', '["update", "sudo"]', 1),
            "grants ['sudo'] on auth/token/renew-self",
        ),
        (OWN + 'path "auth/token/create" { capabilities = ["update"] }', "auth/token/create"),
    ],
)
def test_policies_reaching_further_are_named(hcl, problem) -> None:
    problems = policy_problems(hcl, "kv", "tenants/globex/ledger")
    assert any(problem in p for p in problems), problems


def test_vault_unreachable_is_a_failure_not_a_skip() -> None:
    access = VaultAccess("http://127.0.0.1:9", "token-xyz", "secret")
    (result,) = vault_checks(document(), access)
    assert not result.ok and "unreachable" in result.reason
    assert "token-xyz" not in result.reason


def test_describe_keeps_one_line_and_scrubs_secrets() -> None:
    text = describe(RuntimeError("FATAL: bad pw-1 here\nDETAIL: more"), ["pw-1"])
    assert text == "FATAL: bad [secret] here"


def test_strict_turns_skips_into_failures() -> None:
    report = VerifyReport(
        "globex",
        (
            ServiceReport(
                "globex",
                "ledger",
                "SCHEMA",
                (
                    CheckResult("pg.connect_own", True, "ok"),
                    CheckResult("mongodb.reachable", True, "not reachable", skipped=True),
                ),
            ),
        ),
    )
    assert report.ok
    strict = report.strict()
    assert not strict.ok
    assert [c.name for c in strict.services[0].failed()] == ["mongodb.reachable"]


def test_without_connections_or_vault_verify_says_what_to_pass() -> None:
    with pytest.raises(InvalidInput, match="pass --connections FILE, or set VAULT_ADDR"):
        verify_tenant("globex", environ={})


def test_service_filter_must_match_a_document() -> None:
    with pytest.raises(InvalidInput, match="no connections document for service 'tracer'"):
        verify_tenant("globex", services=["tracer"], connections=[DOC], environ={})
    with pytest.raises(InvalidInput, match="unknown product"):
        verify_tenant("globex", services=["payroll"], connections=[DOC], environ={})


def test_two_documents_for_one_service_are_refused() -> None:
    with pytest.raises(InvalidInput, match="two connections documents"):
        verify_tenant("globex", connections=[DOC, DOC], environ={})


def test_a_store_the_product_uses_without_its_section_fails_never_skips() -> None:
    from tenant_infra.verify.command import verify_document
    from tenant_infra.verify.connections import AdminAccess

    report = verify_document(document(mongodb=None, rabbitmq=None), AdminAccess())
    failed = {c.name: c.reason for c in report.checks if not c.ok}
    assert failed["mongodb.section"] == "product ledger uses mongodb: no mongodb section"
    assert failed["rabbitmq.section"] == "product ledger uses rabbitmq: no rabbitmq section"
    complete = verify_document(document(), AdminAccess())
    assert not any(c.name.endswith(".section") for c in complete.checks)
