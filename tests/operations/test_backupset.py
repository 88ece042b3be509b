"""A backup set's manifest, integrity and storage, and what a MongoDB backup sends."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tenant_infra.errors import InvalidInput
from tenant_infra.operations.backup import _fifo, mongo_backup, mongodump_command
from tenant_infra.operations.backupset import (
    LocalDirectory,
    Manifest,
    file_entries,
    new_stamp,
    read_set,
    write_manifest,
)


def a_set(storage: LocalDirectory, stamp: str = "20261202T101010000000Z") -> Path:
    staging = storage.staging("acme", "ledger", stamp)
    (staging / "postgresql.dump").write_bytes(b"PGDMP" + bytes(range(256)))
    manifest = Manifest(
        tenant="acme",
        product="ledger",
        isolation="SCHEMA",
        stamp=stamp,
        createdAt=datetime.now(UTC),
        tools={},
        files=file_entries(staging, ["postgresql.dump"]),
    )
    write_manifest(staging, manifest)
    return Path(storage.publish("acme", "ledger", stamp))


def test_a_set_is_listed_only_once_published(tmp_path: Path) -> None:
    storage = LocalDirectory(tmp_path)
    storage.staging("acme", "ledger", new_stamp())
    assert storage.sets("acme", "ledger") == []  # a killed backup's staging is no set
    published = a_set(storage)
    assert storage.sets("acme", "ledger") == [str(published)]
    assert read_set(published, "acme", "ledger").stamp == published.name
    assert oct((published / "manifest.json").stat().st_mode)[-3:] == "600"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: (s / "manifest.json").unlink(), "has no manifest.json"),
        (lambda s: (s / "manifest.json").write_text("{"), "cannot be read"),
        (lambda s: _edit(s, lambda m: m.pop("tenant")), "not a valid manifest: tenant"),
        (lambda s: _edit(s, lambda m: m.update(tenant="globex")), "is the backup of globex/ledger, not of acme/ledger"),
        (lambda s: _edit(s, lambda m: m.update(format=2)), "format 2 is not 1"),
        (lambda s: (s / "postgresql.dump").unlink(), "is missing postgresql.dump"),
        (lambda s: (s / "postgresql.dump").write_bytes(b"PGDMP" + bytes(range(255)) + b"\x00"), "postgresql.dump is damaged"),
        (lambda s: _edit(s, lambda m: m["files"].update({"../x": m["files"]["postgresql.dump"]})), "names a file outside its set"),
    ],
)
def test_a_bad_set_is_refused_in_one_line(tmp_path: Path, damage: object, message: str) -> None:
    published = a_set(LocalDirectory(tmp_path))
    damage(published)  # type: ignore[operator]
    with pytest.raises(InvalidInput, match=message) as refused:
        read_set(published, "acme", "ledger")
    assert "\n" not in str(refused.value)


def _edit(directory: Path, change: object) -> None:
    manifest = json.loads((directory / "manifest.json").read_text())
    change(manifest)  # type: ignore[operator]
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_mongodump_gets_the_url_through_a_pipe_never_its_argv(tmp_path: Path) -> None:
    url = "mongodb://admin:s3cr%22et@mongo:27017/?authSource=admin"
    argv, settings = mongodump_command("/usr/bin/mongodump", url, "acme", tmp_path / "mongodb.archive")
    assert all("s3cr" not in a for a in argv)
    assert argv[1:3] == ["--db=acme", f"--archive={tmp_path / 'mongodb.archive'}"]
    assert settings == f'uri: "{url}"\n'
    with _fifo(settings) as path:
        assert path.is_fifo() and oct(path.stat().st_mode)[-3:] == "600"
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.append(path.read_text()))
        reader.start()
        reader.join(5)
    assert got == [settings] and not path.parent.exists()
    with _fifo(settings) as unread:
        pass  # nobody read it: the writer still ends, and nothing is left
    assert not unread.parent.exists()


def test_mongodb_is_skipped_with_its_reason(tmp_path: Path) -> None:
    from tenant_infra.config import TenantConfig

    config = TenantConfig.model_validate(
        {"tenant": "acme", "platform": json.loads(json.dumps(_platform())), "services": []}
    )
    part, version = mongo_backup(config, tmp_path, {})
    assert (part.skipped, version) == ("MONGODB_URL is not set", None)
    part, _ = mongo_backup(config, tmp_path, {"MONGODB_URL": "mongodb://x", "PATH": str(tmp_path)})
    assert part.skipped == "mongodump is not installed"


def _platform() -> dict[str, object]:
    import yaml

    root = Path(__file__).resolve().parents[2]
    raw = yaml.safe_load((root / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    return raw["tenant-infra:platform"]  # type: ignore[no-any-return]
