"""MongoDB versioned collections: the decision logic always, a real server when
``MONGODB_URL`` is set."""

from __future__ import annotations

import os
import secrets

import pytest
from conftest import LEDGER, TRACER

from tenant_infra.errors import InvalidInput
from tenant_infra.migrate.mongo import VERSION_COLLECTION, apply, load_spec, parse_spec, plan


def test_ledger_spec_loads_and_tracer_has_none() -> None:
    versions = load_spec(LEDGER)
    assert [v.version for v in versions] == [1, 2]
    names = {c.name for v in versions for c in v.collections}
    assert {"account_metadata", "idempotency_keys"} <= names
    ttl = [i for v in versions for c in v.collections for i in c.indexes if i.expire_after_seconds]
    assert ttl and ttl[0].options()["expireAfterSeconds"] == 86400
    assert load_spec(TRACER) == []


def test_plan_applies_only_what_is_missing() -> None:
    versions = load_spec(LEDGER)
    assert [v.version for v in plan(versions, 0)] == [1, 2]
    assert [v.version for v in plan(versions, 1)] == [2]
    assert plan(versions, 2) == []
    with pytest.raises(InvalidInput, match="version 3"):
        plan(versions, 3)  # database ahead of the code: refuse, do not guess
    assert plan([], 0) == []


def test_spec_must_be_contiguous_and_unique() -> None:
    with pytest.raises(InvalidInput, match="numbered 2"):
        parse_spec({"versions": [{"version": 1}, {"version": 3}]})
    dup = {"name": "i", "keys": [["a", 1]]}
    with pytest.raises(InvalidInput, match="duplicate index"):
        parse_spec(
            {"versions": [{"version": 1, "collections": [{"name": "c", "indexes": [dup, dup]}]}]}
        )


@pytest.mark.skipif(not os.environ.get("MONGODB_URL"), reason="MONGODB_URL not set")
def test_apply_against_real_mongodb() -> None:
    import pymongo

    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(os.environ["MONGODB_URL"])
    name = f"tmig-{secrets.token_hex(4)}"
    db = client[name]
    try:
        versions = load_spec(LEDGER)
        first = apply(db, versions[:1])
        assert (first.before, first.after, first.applied) == (0, 1, (1,))
        full = apply(db, versions)
        assert (full.before, full.after, full.applied) == (1, 2, (2,))
        again = apply(db, versions)
        assert again.applied == () and again.after == 2
        info = db["idempotency_keys"].index_information()
        assert info["created_at_ttl"]["expireAfterSeconds"] == 86400
        assert info["key_unique"]["unique"] is True
        assert db[VERSION_COLLECTION].count_documents({}) == 1
    finally:
        client.drop_database(name)
        client.close()
