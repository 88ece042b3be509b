"""The tenant id grammar and every name derived from it."""

from __future__ import annotations

import re
import string
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenant_infra.errors import InvalidInput
from tenant_infra.tenant import (
    K8S_STACK_NAME_MAX,
    PG_IDENTIFIER_MAX,
    RESERVED_TENANT_IDS,
    TENANT_ID_MAX,
    TenantNames,
    canonical_id,
    requested_id,
    tenant_from_database,
    tenant_from_schema,
    validate_tenant_id,
)

PRODUCTS = ["ledger", "tracer", "reporter", "abcdefghijklmnop"]  # the last is PRODUCT_MAX long

valid_ids = st.from_regex(r"\A[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){1,39}\Z").filter(
    lambda s: s not in RESERVED_TENANT_IDS
)

MONGO_FORBIDDEN = set('/\\. "$*<>:|?\0')
PG_BARE = re.compile(r"^[a-z_][a-z0-9_]*$")


def all_names(tenant: str, product: str) -> dict[str, str]:
    names = TenantNames(tenant)
    svc = names.service(product)
    return {
        "stack": names.stack,
        "vhost": names.vhost,
        "mongo_database": names.mongo_database,
        "pg_schema": names.pg_schema,
        "pg_role": svc.pg_role,
        "pg_database": svc.pg_dedicated_database,
        "vault_secret": svc.vault_secret,
        "vault_policy": svc.vault_policy,
        "vault_auth_role": svc.vault_auth_role,
    }


@given(valid_ids, st.sampled_from(PRODUCTS))
def test_every_valid_id_maps_to_safe_names_in_every_backend(tenant: str, product: str) -> None:
    names = all_names(tenant, product)
    for key in ("pg_schema", "pg_role", "pg_database"):
        assert PG_BARE.match(names[key]), names[key]
        assert len(names[key].encode()) <= PG_IDENTIFIER_MAX
        assert names[key] not in {"postgres", "template0", "template1", "public"}
    assert not set(names["mongo_database"]) & MONGO_FORBIDDEN
    assert names["mongo_database"] not in {"admin", "local", "config"}
    assert len(names["mongo_database"].encode()) < 64
    assert names["vhost"] != "/"
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", names["stack"])
    for segment in names["vault_secret"].split("/"):
        assert segment not in ("", ".", "..")
    # Vault's role-name grammar (framework.GenericNameRegex), one path segment.
    assert re.fullmatch(r"\w(?:[\w.@-]*\w)?", names["vault_auth_role"])
    assert len(names["vault_auth_role"]) <= 64


@given(valid_ids, valid_ids, st.sampled_from(PRODUCTS), st.sampled_from(PRODUCTS))
def test_distinct_services_never_share_a_name(t1: str, t2: str, p1: str, p2: str) -> None:
    if (t1, p1) == (t2, p2):
        return
    a, b = all_names(t1, p1), all_names(t2, p2)
    per_service = ("pg_role", "pg_database", "vault_secret", "vault_policy", "vault_auth_role")
    for key in per_service:
        assert a[key] != b[key], key
    if t1 != t2:
        for key in ("stack", "vhost", "mongo_database", "pg_schema"):
            assert a[key] != b[key], key


@given(valid_ids, st.sampled_from(PRODUCTS))
def test_names_map_back_to_the_tenant(tenant: str, product: str) -> None:
    names = TenantNames(tenant)
    assert tenant_from_schema(names.pg_schema) == tenant
    assert tenant_from_database(product, names.service(product).pg_dedicated_database) == tenant


def test_uuids_are_valid_tenant_ids() -> None:
    tenant = str(uuid.UUID("3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b"))
    assert validate_tenant_id(tenant) == tenant
    assert TenantNames(tenant).pg_schema == "tenant_3f2b8c1e_9a4d_4e6f_8b2a_1c3d5e7f9a0b"


HOSTILE = {
    "acme'; drop role postgres; --": "may contain only",
    'ac"me': "may contain only",
    "acme;x": "may contain only",
    "acme/evil": "may contain only",
    "../acme": "may contain only",
    "acme.eu": "may contain only",
    "acme eu": "may contain only",
    " acme": "may contain only",
    "acme\n": "may contain only",
    "ac\x00me": "may contain only",
    "ac\x1bme": "may contain only",
    "acme_eu": "may contain only",
    "acme--eu": "may contain only",
    "-acme": "may contain only",
    "acme-": "may contain only",
    "ACME": "must be lowercase",
    "3F2B8C1E-9A4D-4E6F-8B2A-1C3D5E7F9A0B": "must be lowercase",
    "acmé": "must be ASCII",
    "аcme": "must be ASCII",  # Cyrillic a
    "a" * (TENANT_ID_MAX + 1): "longer than",
    "a": "shorter than",
    "": "non-empty",
    "admin": "reserved",
    "local": "reserved",
    "config": "reserved",
    "postgres": "reserved",
    "template0": "reserved",
    "template1": "reserved",
    "public": "reserved",
}


@pytest.mark.parametrize(("tenant", "rule"), HOSTILE.items(), ids=[ascii(k)[:30] for k in HOSTILE])
def test_hostile_ids_are_refused_naming_the_rule(tenant: str, rule: str) -> None:
    with pytest.raises(InvalidInput, match=rule) as info:
        validate_tenant_id(tenant)
    message = str(info.value)
    assert "\n" not in message and "\x00" not in message and "\x1b" not in message


@given(st.text(min_size=1, max_size=60))
def test_anything_accepted_matches_the_documented_grammar(text: str) -> None:
    try:
        validate_tenant_id(text)
    except InvalidInput:
        return
    assert set(text) <= set(string.ascii_lowercase + string.digits + "-")
    assert 2 <= len(text) <= TENANT_ID_MAX
    assert "--" not in text and text[0] != "-" and text[-1] != "-"
    assert text not in RESERVED_TENANT_IDS


@given(st.uuids(), st.booleans(), st.booleans())
def test_a_uuid_names_one_tenant_dashed_or_not_in_any_case(
    value: uuid.UUID, dashed: bool, upper: bool
) -> None:
    spelling = str(value) if dashed else value.hex
    spelling = spelling.upper() if upper else spelling
    assert requested_id(spelling) == canonical_id(spelling) == value.hex
    assert canonical_id(str(value)) == canonical_id(value.hex)


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        ("acme", "acme"),
        ("globex-eu", "globex-eu"),
        ("Acme", None),  # a valid claim, but no tenant can have it: ids are lowercase
        ("acme_eu", None),
        ("-acme", None),
        ("a" * 41, None),
        ("../etc", None),
        ("acme\n", None),
        (
            "0f8fad5b-d9cb469f-a165-70867728950e",
            "0f8fad5b-d9cb469f-a165-70867728950e",
        ),  # not a UUID: a slug
        ("0f8fad5bd9cb469fa16570867728950e0", "0f8fad5bd9cb469fa16570867728950e0"),  # a slug
        ("{0f8fad5b-d9cb-469f-a165-70867728950e}", None),
    ],
)
def test_a_claim_maps_to_the_tenant_it_can_name(claim: str, expected: str | None) -> None:
    assert requested_id(claim) == expected


def test_slugs_are_their_own_canonical_id() -> None:
    assert canonical_id("acme") == "acme"
    assert canonical_id("0f8fad5b-d9cb-469f") == "0f8fad5b-d9cb-469f"


# ------------------------------------------------------------ the operator Stack's name

_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: Ids of every length up to the longest, many past 34 (where the hash starts): segments
#: of a few letters and digits joined by single hyphens (cheap to draw, always valid).
edge_ids = (
    st.lists(st.text("ab0z9", min_size=1, max_size=9), min_size=1, max_size=8)
    .map("-".join)
    .filter(lambda s: 2 <= len(s) <= TENANT_ID_MAX and s not in RESERVED_TENANT_IDS)
)


@given(st.lists(edge_ids, min_size=1, max_size=50, unique=True))
def test_k8s_stack_names_are_short_dns_labels_and_unique(tenants: list[str]) -> None:
    names = [TenantNames(t).k8s_stack for t in tenants]
    assert len(set(names)) == len(names)
    for name in names:
        assert len(name) <= K8S_STACK_NAME_MAX
        assert _DNS_LABEL.fullmatch(name), name
        assert name.startswith("tenant-")


@given(
    st.text(alphabet="abc0-", min_size=12, max_size=17).filter(
        lambda s: "--" not in s and s[-1] != "-" and s[0] != "-"
    )
)
def test_k8s_stack_names_differ_for_long_ids_sharing_a_prefix(tail: str) -> None:
    """Ids of 35..40 characters keep only their first 23 in the name: the hash tells apart
    ids that differ only after it."""
    prefix = "tenant-with-a-long-prefix"[:23]
    first, second = f"{prefix}-{tail}", f"{prefix}-{tail[::-1]}"
    if first == second or validate_or_none(first) is None or validate_or_none(second) is None:
        return
    assert TenantNames(first).k8s_stack != TenantNames(second).k8s_stack


@given(valid_ids)
def test_k8s_stack_name_is_stable_and_readable(tenant: str) -> None:
    name = TenantNames(tenant).k8s_stack
    assert name == TenantNames(tenant).k8s_stack
    if len(tenant) <= 34:
        assert name == f"tenant-{tenant}"
    else:
        assert name.startswith(f"tenant-{tenant[:23]}--") and len(name) == K8S_STACK_NAME_MAX
    assert TenantNames(tenant).k8s_config_map == f"{name}-config"


def test_k8s_stack_name_of_the_longest_ids() -> None:
    assert TenantNames("a" * 34).k8s_stack == "tenant-" + "a" * 34
    long = TenantNames("a" * 40).k8s_stack
    assert len(long) == 42 and long.startswith("tenant-" + "a" * 23 + "--")
    assert TenantNames("a" * 39 + "b").k8s_stack != long


def validate_or_none(tenant: str) -> str | None:
    try:
        return validate_tenant_id(tenant)
    except InvalidInput:
        return None
