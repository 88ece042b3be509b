"""API keys: their format, their check, and ``tenantctl api-key``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tenant_infra.api import keys
from tenant_infra.cli import main
from tests.api.conftest import Served

ROOT = Path(__file__).resolve().parents[2]


def test_a_key_matches_its_own_hash_only() -> None:
    key_id, key = keys.new_key()
    assert keys.key_id(key) == key_id
    stored = keys.digest(key)
    assert keys.matches(key, stored)
    other = keys.new_key()[1]
    assert not keys.matches(other, stored)
    assert not keys.matches(key[:-1] + ("A" if key[-1] != "A" else "B"), stored)


def test_a_malformed_key_is_never_looked_up() -> None:
    key = keys.new_key()[1]
    key_id = key[3:19]
    for bad in (
        key[:-1], key + "A", " " + key, key + "\n", key.upper(), "tk" + key[2:],
        f"ti_{key_id.upper()}_{key[20:]}", f"ti_{key_id}-{key[20:]}", key[:30] + "/" + key[31:],
        f"ti_{key_id}_{key[20:]}\x00", "", "ti_",
    ):
        assert keys.key_id(bad) is None, bad


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_api_key_create_prints_the_key_alone_once_and_stores_a_hash(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(ROOT / "Pulumi.yaml", served.world.root / "Pulumi.yaml")
    monkeypatch.chdir(served.world.root)
    for name, value in served.world.plane.environ.items():
        monkeypatch.setenv(name, value)

    code, out, err = run(capsys, "api-key", "create", "--service", "tracer", "--note", "tracer pods")
    assert code == 0, err
    key = out.strip()
    assert out == key + "\n" and keys.key_id(key) is not None
    assert served.get("/v1/tenants/active?service=tracer", key).json() == []

    code, out, _ = run(capsys, "api-key", "list", "--format", "json")
    listed = json.loads(out)
    assert [(k["id"], k["scope"], k["product"], k["note"]) for k in listed] == [
        (keys.key_id(key), "product", "tracer", "tracer pods")
    ]
    assert key not in out
    stored = served.world.plane.rows("SELECT hash FROM registry.api_keys")
    assert stored == [{"hash": keys.digest(key)}]

    code, out, err = run(capsys, "api-key", "revoke", key)  # the key itself: refused
    assert (code, out) == (2, "") and "by its id" in err
    assert served.get("/v1/tenants/active?service=tracer", key).status_code == 200
    assert run(capsys, "api-key", "revoke", str(keys.key_id(key)))[0] == 0
    assert served.get("/v1/tenants/active?service=tracer", key).status_code == 401

    for argv in (("create",), ("create", "--operator", "--service", "ledger"), ("create", "--service", "nosuch"), ("revoke", "zz")):
        code, out, err = run(capsys, "api-key", *argv)
        assert (code, out) == (2, ""), argv
        assert len(err.strip().splitlines()) == 1
