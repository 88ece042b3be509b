"""Pulumi's DIY backend locks, laid out in tmp dirs as the CLI writes them (lock.go)."""

from __future__ import annotations

import json
import os
import secrets
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tenant_infra import backendlocks
from tenant_infra.backendlocks import (
    BackendLock,
    FileLocks,
    LockChanged,
    LockInspectionUnavailable,
    PostgresLocks,
    Verdict,
    inspect,
    judge,
    open_store,
    parse_go_time,
)
from tenant_infra.errors import InvalidInput, OperationFailed
from tenant_infra.workspace import InProgress
from tests.support.registry import ADMIN

PROJECT = "tenant-infra"
HERE = "this-host"
NOW = datetime(2026, 12, 2, 22, 0, tzinfo=UTC)
DEAD, LIVING = 4_000_001, 4_000_002


def go_time(at: datetime) -> str:
    """``time.Time`` as Go's encoding/json writes it (RFC 3339, nanoseconds)."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


def lock_content(pid: int, host: str, at: datetime, user: str = "ci") -> bytes:
    """``json.Marshal(lockContent{...})``: Go's field order, no spaces."""
    return json.dumps(
        {"pid": pid, "username": user, "hostname": host, "timestamp": go_time(at)},
        separators=(",", ":"),
    ).encode()


def write_lock(state: Path, stack: str, content: bytes, *, legacy: bool = False) -> Path:
    """``.pulumi/locks/organization/<project>/<stack>/<lockID>.json`` (or the old layout)."""
    folder = state / ".pulumi" / "locks"
    folder = folder / stack if legacy else folder / "organization" / PROJECT / stack
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4()}.json"
    path.write_bytes(content)
    return path


def alive(pid: int) -> bool:
    return pid == LIVING


def findings(
    state: Path, *stacks: str, stale_after: timedelta = timedelta(hours=1)
) -> list[backendlocks.Finding]:
    store = FileLocks(state, PROJECT)
    return list(
        inspect(store, list(stacks), stale_after=stale_after, now=NOW, hostname=HERE, alive=alive)
    )


def test_go_timestamps_parse_with_nanoseconds_and_zones() -> None:
    assert parse_go_time("2026-12-02T21:00:00.123456789Z") == datetime(
        2026, 12, 2, 21, 0, 0, 123456, tzinfo=UTC
    )
    assert parse_go_time("2026-12-02T23:00:00+02:00") == datetime(2026, 12, 2, 21, 0, tzinfo=UTC)
    for bad in ("yesterday", "2026-12-02", "2026-13-02T00:00:00Z", "2026-12-02T21:00:00Z\n"):
        assert parse_go_time(bad) is None


@pytest.mark.parametrize(
    ("pid", "host", "age", "verdict"),
    [
        (DEAD, HERE, timedelta(minutes=1), Verdict.STALE),  # same host, process gone
        (LIVING, HERE, timedelta(days=3), Verdict.LIVE),  # same host, still running: never stale
        (DEAD, "pod-7", timedelta(hours=2), Verdict.STALE),  # another host, old
        (DEAD, "pod-7", timedelta(minutes=10), Verdict.LIVE),  # another host, fresh
        (DEAD, "pod-7", timedelta(minutes=-5), Verdict.LIVE),  # a clock ahead of ours
    ],
)
def test_staleness(tmp_path: Path, pid: int, host: str, age: timedelta, verdict: Verdict) -> None:
    write_lock(tmp_path, "acme", lock_content(pid, host, NOW - age))
    (found,) = findings(tmp_path, "acme")
    assert found.verdict is verdict
    assert found.same_host is (host == HERE)
    assert (found.lock.pid, found.lock.hostname, found.lock.username) == (pid, host, "ci")


def test_the_older_layout_and_other_stacks(tmp_path: Path) -> None:
    write_lock(tmp_path, "acme", lock_content(DEAD, HERE, NOW), legacy=True)
    write_lock(tmp_path, "globex", lock_content(DEAD, HERE, NOW))
    # A stack named like the organization holds only folders in the old layout: no lock.
    assert findings(tmp_path, "organization") == []
    assert [f.lock.stack for f in findings(tmp_path, "acme", "globex", "initech")] == [
        "acme",
        "globex",
    ]


def test_a_status_line_says_who_when_and_how_to_clear(tmp_path: Path) -> None:
    write_lock(tmp_path, "acme", lock_content(DEAD, HERE, NOW - timedelta(minutes=90)))
    write_lock(tmp_path, "globex", lock_content(DEAD, "pod-7", NOW - timedelta(hours=3)))
    acme, globex = findings(tmp_path, "acme", "globex")
    line = acme.line(PROJECT)
    assert f"pid {DEAD} on host {HERE} (user ci) since 2026-12-02T20:30:00Z, 1h30m ago" in line
    assert (
        "`tenantctl unlock acme`" in line
        and "pulumi cancel --stack organization/tenant-infra/acme" in line
    )
    assert "`tenantctl unlock globex --force`" in globex.line(PROJECT)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "not a JSON lock"),
        (b"\xff\xfe", "not a JSON lock"),
        (b"[" * 50_000, "not a JSON lock"),  # nesting deep enough to overflow a parser
        (b"[]", "not a JSON object"),
        (
            b'{"pid":0,"username":"u","hostname":"h","timestamp":"2026-12-02T21:00:00Z"}',
            "no valid pid",
        ),
        (
            b'{"pid":-1,"username":"u","hostname":"h","timestamp":"2026-12-02T21:00:00Z"}',
            "no valid pid",
        ),
        (
            b'{"pid":true,"username":"u","hostname":"h","timestamp":"2026-12-02T21:00:00Z"}',
            "no valid pid",
        ),
        (
            b'{"pid":1e400,"username":"u","hostname":"h","timestamp":"2026-12-02T21:00:00Z"}',
            "no valid pid",
        ),
        (
            b'{"pid":7,"username":"u","hostname":["h"],"timestamp":"2026-12-02T21:00:00Z"}',
            "no hostname",
        ),
        (b'{"pid":7,"username":"u","hostname":"h","timestamp":"soon"}', "no valid timestamp"),
        (b"x" * (backendlocks.MAX_LOCK_BYTES + 1), "larger than 64 KiB"),
    ],
)
def test_malformed_locks_are_named_never_fatal(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    write_lock(tmp_path, "acme", content)
    write_lock(tmp_path, "globex", lock_content(DEAD, HERE, NOW))
    acme, globex = findings(tmp_path, "acme", "globex")
    assert acme.verdict is Verdict.UNREADABLE and problem in acme.why
    assert globex.verdict is Verdict.STALE  # the fleet goes on
    assert (
        "unreadable backend lock: acme: .pulumi/locks/organization/tenant-infra/acme/"
        in acme.line(PROJECT)
    )


def test_hostile_text_is_escaped(tmp_path: Path) -> None:
    content = lock_content(DEAD, "evil\x1b[2J\nhost", NOW - timedelta(hours=2), user="root\r\u202e")
    write_lock(tmp_path, "acme", content)
    (found,) = findings(tmp_path, "acme")
    line = found.line(PROJECT)
    assert all(" " <= c <= "~" for c in line)
    assert "evil\\x1b[2J\\nhost" in line and "root\\r\\u202e" in line


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    state, outside = tmp_path / "state", tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.json"
    secret.write_bytes(lock_content(DEAD, HERE, NOW))
    folder = write_lock(state, "acme", lock_content(DEAD, HERE, NOW)).parent
    (folder / "link.json").symlink_to(secret)
    found = {f.lock.where.rsplit("/", 1)[-1]: f for f in findings(state, "acme")}
    assert found["link.json"].verdict is Verdict.UNREADABLE
    assert "symbolic link" in found["link.json"].why
    # A linked folder anywhere on the way leads nowhere either.
    os.symlink(outside, state / ".pulumi" / "locks" / "organization" / PROJECT / "globex")
    (globex,) = findings(state, "globex")
    assert globex.verdict is Verdict.UNREADABLE and "not followed" in globex.why
    # Removing the link (with --force, once old) removes the link, not what it names.
    link = found["link.json"]
    FileLocks(state, PROJECT).remove(link.lock)
    assert not (folder / "link.json").exists() and secret.exists()


def test_names_that_would_climb_out_are_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    write_lock(tmp_path, "acme", lock_content(DEAD, HERE, NOW))  # beside the backend, not in it
    for name in ("..", ".", "", "a/../../..", "x\0y"):
        (found,) = findings(state, name)
        assert found.verdict is Verdict.UNREADABLE and "not a stack name" in found.why


def test_a_fifo_is_not_read(tmp_path: Path) -> None:
    folder = write_lock(tmp_path, "acme", lock_content(DEAD, HERE, NOW)).parent
    os.mkfifo(folder / "pipe.json")
    found = sorted(findings(tmp_path, "acme"), key=lambda f: f.verdict)
    assert [f.verdict for f in found] == [Verdict.STALE, Verdict.UNREADABLE]
    assert found[1].why == "not a regular file"


def test_a_folder_stuffed_with_files_is_named_not_read(tmp_path: Path) -> None:
    for _ in range(backendlocks.MAX_LOCKS_PER_STACK + 5):
        write_lock(tmp_path, "acme", lock_content(DEAD, HERE, NOW))
    found = findings(tmp_path, "acme")
    assert len(found) == backendlocks.MAX_LOCKS_PER_STACK + 1
    assert found[-1].verdict is Verdict.UNREADABLE and "too many" in found[-1].why


def test_removal_takes_only_the_file_that_was_read(tmp_path: Path) -> None:
    mine = write_lock(tmp_path, "acme", lock_content(DEAD, HERE, NOW))
    other = write_lock(tmp_path, "globex", lock_content(DEAD, HERE, NOW))
    store = FileLocks(tmp_path, PROJECT)
    (lock,) = store.locks("acme")
    mine.write_bytes(lock_content(LIVING, HERE, NOW + timedelta(seconds=1)))  # replaced since
    os.utime(mine, ns=(1, 1))
    with pytest.raises(LockChanged, match="changed since it was read"):
        store.remove(lock)
    (lock,) = store.locks("acme")
    store.remove(lock)
    assert not mine.exists() and other.exists()


@pytest.mark.parametrize(
    ("pid", "host", "age", "force", "refusal", "match"),
    [
        (LIVING, HERE, timedelta(days=2), True, InProgress, "an update is running"),
        (DEAD, "pod-7", timedelta(minutes=5), True, InProgress, "may still run there"),
        (DEAD, "pod-7", timedelta(hours=2), False, InvalidInput, "then pass --force"),
        (DEAD, "pod-7", timedelta(hours=2), True, None, ""),
        (DEAD, HERE, timedelta(seconds=5), False, None, ""),
    ],
)
def test_what_may_be_removed(
    pid: int, host: str, age: timedelta, force: bool, refusal: type[Exception] | None, match: str
) -> None:
    lock = BackendLock("acme", "x.json", pid, "ci", host, NOW - age, key="x.json", identity=1)
    finding = judge(lock, now=NOW, hostname=HERE, alive=alive)
    if refusal is None:
        backendlocks.check_removable(finding, force=force, stale_after=timedelta(hours=1))
        return
    with pytest.raises(refusal, match=match) as info:
        backendlocks.check_removable(finding, force=force, stale_after=timedelta(hours=1))
    assert "\n" not in str(info.value)


def test_an_unreadable_lock_needs_force_and_age() -> None:
    def finding(age: timedelta, key: str = "x.json") -> backendlocks.Finding:
        lock = BackendLock(
            "acme", "x.json", written=NOW - age, problem="not a JSON lock", key=key, identity=1
        )
        return judge(lock, now=NOW, hostname=HERE, alive=alive)

    hour = timedelta(hours=1)
    with pytest.raises(InProgress, match="an update may be writing it"):
        backendlocks.check_removable(finding(timedelta(minutes=1)), force=True, stale_after=hour)
    with pytest.raises(InvalidInput, match="--force"):
        backendlocks.check_removable(finding(timedelta(hours=2)), force=False, stale_after=hour)
    backendlocks.check_removable(finding(timedelta(hours=2)), force=True, stale_after=hour)
    with pytest.raises(OperationFailed):  # a folder that could not be read: nothing to remove
        backendlocks.check_removable(
            finding(timedelta(hours=2), key=""), force=True, stale_after=hour
        )


def test_the_process_probe() -> None:
    assert backendlocks.process_alive(os.getpid())
    assert not backendlocks.process_alive(0) and not backendlocks.process_alive(-1)
    assert backendlocks.process_alive(1)  # EPERM (or ours): it exists


@pytest.mark.parametrize("scheme", ["s3", "gs", "azblob"])
def test_object_stores_say_in_one_line_what_to_use(scheme: str) -> None:
    with pytest.raises(
        LockInspectionUnavailable, match="needs the Pulumi CLI: `pulumi cancel"
    ) as info:
        open_store(f"{scheme}://bucket/state?region=x", PROJECT)
    assert "\n" not in str(info.value)
    with pytest.raises(LockInspectionUnavailable, match="Pulumi Cloud"):
        open_store("https://api.pulumi.com", PROJECT)


def test_file_urls(tmp_path: Path) -> None:
    spaced = tmp_path / "a b"
    assert backendlocks.file_root(spaced.as_uri()) == spaced
    assert backendlocks.file_root("file://~/state") == Path.home() / "state"
    assert backendlocks.file_root(f"file://{tmp_path}?no_tmp_dir=true") == tmp_path
    assert backendlocks.backend_url(tmp_path, {}) == (tmp_path / ".pulumi-state").as_uri()
    assert backendlocks.backend_url(tmp_path, {"PULUMI_BACKEND_URL": "s3://b"}) == "s3://b"


# ---------------------------------------------------------------- postgres://


@pytest.fixture
def pg_state() -> Iterator[tuple[str, str]]:
    """A ``pulumi_state`` table as pkg/backend/diy/postgres/bucket.go creates it."""
    table = f"pulumi_state_{secrets.token_hex(4)}"
    with psycopg.connect(**ADMIN, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {table} (key TEXT PRIMARY KEY, data BYTEA NOT NULL,"
            " updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now())"
        )
    try:
        yield table, f"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable&table={table}"
    finally:
        with psycopg.connect(**ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {table}")


def test_postgres_backend_locks(pg_state: tuple[str, str]) -> None:
    table, url = pg_state
    base = ".pulumi/locks/organization/tenant-infra"
    rows = [
        (f"{base}/acme/{uuid.uuid4()}.json", lock_content(DEAD, HERE, NOW)),
        (f"{base}/globex/{uuid.uuid4()}.json", b"{broken"),
        (".pulumi/stacks/tenant-infra/acme.json", b"{}"),  # state, never a lock
    ]
    with psycopg.connect(**ADMIN, autocommit=True) as conn:
        for key, data in rows:
            conn.execute(f"INSERT INTO {table} (key, data) VALUES (%s, %s)", (key, data))
    store = open_store(url, PROJECT)
    assert isinstance(store, PostgresLocks)
    try:
        acme, globex = inspect(
            store, ["acme", "globex", "initech"], now=NOW, hostname=HERE, alive=alive
        )
        assert acme.verdict is Verdict.STALE and acme.lock.pid == DEAD
        assert globex.verdict is Verdict.UNREADABLE
        store.remove(acme.lock)
        assert store.locks("acme") == [] and len(store.locks("globex")) == 1
    finally:
        store.close()
    with psycopg.connect(**ADMIN) as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (2,)


def test_a_postgres_lock_rewritten_since_it_was_read_is_not_removed(
    pg_state: tuple[str, str],
) -> None:
    table, url = pg_state
    base = ".pulumi/locks/organization/tenant-infra"
    keys = [f"{base}/acme/{uuid.uuid4()}.json", f"{base}/acme/{uuid.uuid4()}.json"]
    with psycopg.connect(**ADMIN, autocommit=True) as conn:
        for key in keys:
            conn.execute(
                f"INSERT INTO {table} (key, data) VALUES (%s, %s)",
                (key, lock_content(DEAD, HERE, NOW)),
            )
    store = open_store(url, PROJECT)
    try:
        by_key = {f.lock.key: f.lock for f in inspect(store, ["acme"], now=NOW, hostname=HERE)}
        with psycopg.connect(**ADMIN, autocommit=True) as conn:
            conn.execute(
                f"UPDATE {table} SET updated_at = updated_at + interval '1 s' WHERE key = %s",
                (keys[0],),
            )
            conn.execute(f"DELETE FROM {table} WHERE key = %s", (keys[1],))
        with pytest.raises(LockChanged, match="changed since it was read: not removed"):
            store.remove(by_key[keys[0]])
        store.remove(by_key[keys[1]])  # gone already: nothing to do
    finally:
        store.close()
    with psycopg.connect(**ADMIN) as conn:
        assert conn.execute(f"SELECT key FROM {table}").fetchall() == [(keys[0],)]


def test_an_unreachable_postgres_backend_is_one_line_without_its_password() -> None:
    store = open_store("postgres://u:hunter22@127.0.0.1:1/x?connect_timeout=1", PROJECT)
    (found,) = inspect(store, ["acme"], now=NOW, hostname=HERE, alive=alive)
    assert found.verdict is Verdict.UNREADABLE and "hunter22" not in found.why
