"""``tenantctl migrate``: argument parsing only; the work is :func:`migrate_fleet`.

Register with ``app.command("migrate")(migrate)``. Invalid input raises
:class:`InvalidInput` (printed as one line, exit 2); a run with any failed tenant
exits 1 after the report. A sharded run (``--shard``/``--shards``: a pod of an Indexed
Job) exits 2 instead when no failure is worth retrying (see :func:`migrate`'s help).
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from tenant_infra.errors import EXIT_FAILED, EXIT_INVALID, InvalidInput
from tenant_infra.migrate.connection import ADMIN_DSN_ENV, parse_dsn, refuse_password_in_argv
from tenant_infra.migrate.shards import INDEX_ENV, Shard, resolve_shard, select

if TYPE_CHECKING:
    from tenant_infra.migrate.executors import Mode
    from tenant_infra.migrate.fleet import FleetReport
    from tenant_infra.migrate.snapshot import Snapshot
    from tenant_infra.migrate.targets import MigrationTarget
    from tenant_infra.registry import Registry


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


def _resolve(
    product: str | None,
    tenants: list[str],
    connections: list[Path],
    script_location: Path | None,
    schemas_like: str | None,
    databases_like: str | None,
    schema: str,
    params: dict[str, str],
    shard: Shard | None = None,
    snapshot: Snapshot | None = None,
) -> tuple[list[MigrationTarget], Path, dict[str, str], list[str]]:
    """Targets, script directory, the connection parameters of targets without
    their own (``{}`` for ``--product``: each tenant connects as its own role), and the
    tenants left out because none of their logins may log in (suspended or retained).

    ``snapshot``: the tenants are the snapshot's rather than the server's (each one
    the server lacks fails alone). ``shard``: only that shard's tenants, chosen
    before any credential is looked up.
    """
    from tenant_infra.migrate.targets import (
        connects_as_superuser,
        discover_databases_like,
        discover_product,
        discover_schemas_like,
        snapshot_targets,
        without_login,
    )
    from tenant_infra.tenant import validate_tenant_id

    for tenant in tenants:  # as the positional ids are: never echoed raw into a report
        validate_tenant_id(tenant)
    if product and (schemas_like or databases_like):
        raise InvalidInput("--product discovers its tenants; do not combine it with --*-like")
    if product:
        from tenant_infra.catalog import load_catalog
        from tenant_infra.migrate.credentials import attach_credentials, load_documents

        spec = load_catalog().product(product)
        location = script_location or spec.script_location
        if location is None:
            raise InvalidInput(f"product {product!r} has no migrations")
        if sum(str(c) == "-" for c in connections) > 1:
            raise InvalidInput("--connections - (standard input) can be given once")
        documents = load_documents(connections)  # bad files: exit 2 before any connection
        # The admin connection only lists schemas and databases (catalog reads).
        if connects_as_superuser(params):
            sys.stderr.write(
                "warning: tenant discovery connects as a superuser; it needs only CONNECT "
                "(README: Security model)\n"
            )
        if snapshot is not None:
            entries = select(snapshot.entries, shard, lambda e: (e.tenant, product))
            if tenants:
                unknown = sorted(set(tenants) - {e.tenant for e in snapshot.entries})
                if unknown:
                    raise InvalidInput(f"not in the targets snapshot: {', '.join(unknown)}")
                entries = [e for e in entries if e.tenant in tenants]
            found = snapshot_targets(params, product, entries)
        else:
            found = select(
                discover_product(params, product, tenants),
                shard,
                lambda t: (t.tenant or "", product),
            )
        found, resting = without_login(params, product, found)
        return attach_credentials(found, documents), location, {}, resting
    if tenants or shard is not None or snapshot is not None:
        raise InvalidInput("--tenant, --shard, --shards and --targets need --product")
    if connections:
        raise InvalidInput("--connections needs --product (generic mode connects with --dsn)")
    if script_location is None:
        raise InvalidInput(
            "give --product, or --script-location with --schemas-like/--databases-like"
        )
    if bool(schemas_like) == bool(databases_like):
        raise InvalidInput("give exactly one of --schemas-like and --databases-like")
    if schemas_like:
        return discover_schemas_like(params, schemas_like), script_location, params, []
    assert databases_like
    found = discover_databases_like(params, databases_like, schema)
    return found, script_location, params, []


def _registry() -> Registry | None:
    """The platform's registry when one is configured (each service's revision is
    recorded there); configured but unreachable, nothing runs."""
    import os

    from tenant_infra.project import project_root
    from tenant_infra.registry import Registry
    from tenant_infra.registry.store import PLATFORM_STACK_ENV

    if not os.environ.get(PLATFORM_STACK_ENV):
        return None
    return Registry.from_platform(project_root()).open()


def _destination(location: str | Path, revision: str | None, down: bool) -> str:
    """``heads`` by default, else a revision the script directory declares (``base``
    too, downward): refused before any tenant is touched."""
    if revision is None:
        return "heads"
    from tenant_infra.migrate.revisions import declared_revisions

    known = {r.revision for r in declared_revisions(location)}
    if revision in known or (down and revision == "base"):
        return revision
    shown = ", ".join(sorted(known)) or "none"
    raise InvalidInput(f"revision {revision!r} is not in {location} (it has: {shown})")


def migrate(
    product: Annotated[
        str | None, typer.Option("--product", "-p", help="Migrate the tenants of this product.")
    ] = None,
    tenant: Annotated[
        list[str] | None,
        typer.Option("--tenant", "-t", help="Only these tenants (repeatable; with --product)."),
    ] = None,
    connections: Annotated[
        list[Path] | None,
        typer.Option(
            "--connections",
            "-c",
            metavar="FILE",
            help="With --product: connections documents holding each tenant's own "
            "credentials (README: The connections document); repeatable; - reads standard "
            "input. Tenants without one are read from Vault (VAULT_ADDR, VAULT_TOKEN).",
        ),
    ] = None,
    script_location: Annotated[
        Path | None,
        typer.Option(help="An Alembic script directory (generic mode, or override for --product)."),
    ] = None,
    dsn: Annotated[
        str | None,
        typer.Option(
            help="Connection without a password (libpq or SQLAlchemy URL): --product"
            " discovers tenants with it (catalog reads: give it a role with CONNECT only);"
            f" default ${ADMIN_DSN_ENV}, then the PG* variables."
            " Passwords: the variable, PGPASSWORD or ~/.pgpass.",
            show_default=False,
        ),
    ] = None,
    schemas_like: Annotated[
        str | None, typer.Option(help="Generic mode: schemas of the DSN's database LIKE this.")
    ] = None,
    databases_like: Annotated[
        str | None, typer.Option(help="Generic mode: databases on the server LIKE this.")
    ] = None,
    schema: Annotated[
        str, typer.Option(help="With --databases-like: the schema migrated in each database.")
    ] = "public",
    concurrency: Annotated[
        int,
        typer.Option(
            "--concurrency", "-k", min=1, max=64, help="Worker processes (connections); at most 64."
        ),
    ] = 1,
    canary: Annotated[
        int, typer.Option(min=0, help="Migrate N tenants first; stop if any of them fails.")
    ] = 0,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds one tenant may take; past it, its migration is killed and "
            "rolled back, and it fails alone.",
            show_default=False,
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option("--to", metavar="REV", help="Upgrade to this revision, not head."),
    ] = None,
    downgrade_to: Annotated[
        str | None,
        typer.Option(
            "--downgrade-to",
            metavar="REV",
            help="Downgrade to this revision (or base), one transaction per tenant.",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="List pending revisions per tenant.")] = False,
    sql: Annotated[bool, typer.Option(help="Print the SQL per tenant without running it.")] = False,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="Report format.")
    ] = OutputFormat.table,
    bulk_read: Annotated[
        bool,
        typer.Option(
            help="On the way to head, first read the version tables through the --dsn"
            " connection, a few statements per 500 schemas, and report tenants already"
            " there as current without a process or connection of their own (README:"
            " The bulk read). --no-bulk-read asks each tenant on its own connection.",
        ),
    ] = True,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            metavar="I/K",
            help="With --product: only shard I of K, 0-based (I = 0..K-1, as "
            f"{INDEX_ENV}); a stable hash of each tenant decides its shard.",
            show_default=False,
        ),
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option(
            "--shards",
            metavar="K",
            help=f"With --product in an Indexed Job: shard ${INDEX_ENV} of K "
            "(the same as --shard $JOB_COMPLETION_INDEX/K).",
            show_default=False,
        ),
    ] = None,
    targets_file: Annotated[
        Path | None,
        typer.Option(
            "--targets",
            metavar="FILE",
            help="With --product: the tenants come from this targets snapshot "
            "(tenantctl render migrate-job), not from the server; each one the server "
            "lacks fails alone.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Bring every tenant of a product (or every matching schema/database) to head.

    One transaction and one lock (its own version table) per tenant; a tenant's failure never stops
    the others. In --product mode each tenant is migrated on a connection as its own
    role <product>_<key> (credentials from --connections or Vault); the --dsn user
    only lists the tenants. Generic mode runs with the DSN user's privileges.

    Exit codes: 0 every tenant at the destination; 1 a tenant failed, or a server was
    unreachable (running again may succeed); 2 invalid input, nothing ran. With --shard
    or --shards, also 2 when every failure is deterministic (a revision's error, no
    credentials, a snapshot's tenant missing on the server): not worth retrying.
    """
    import os

    refuse_password_in_argv(dsn)
    chosen = resolve_shard(shard, shards, os.environ)  # before any connection
    snapshot = None
    if targets_file is not None:
        if not product:
            raise InvalidInput("--targets needs --product")
        from tenant_infra.migrate.snapshot import load_snapshot

        snapshot = load_snapshot(targets_file, product)
    if dry_run and sql:
        raise InvalidInput("--dry-run and --sql are exclusive")
    if to is not None and downgrade_to is not None:
        raise InvalidInput("choose one of --to and --downgrade-to")
    if downgrade_to is not None and (dry_run or sql):
        raise InvalidInput("--downgrade-to runs: --dry-run and --sql show upgrades only")
    params = parse_dsn(dsn)
    platform = params  # discovery's (--product) or the runner's (generic) connection
    if to is not None or downgrade_to is not None:
        # Checked before any tenant is discovered or touched.
        early = script_location
        if early is None and product:
            from tenant_infra.catalog import load_catalog

            early = load_catalog().product(product).script_location
        if early is not None:
            _destination(early, to or downgrade_to, downgrade_to is not None)
    targets, location, params, resting = _resolve(
        product,
        tenant or [],
        connections or [],
        script_location,
        schemas_like,
        databases_like,
        schema,
        params,
        chosen,
        snapshot,
    )
    from tenant_infra.migrate.fleet import migrate_fleet
    from tenant_infra.migrate.report import ProgressSink, render_table, to_json
    from tenant_infra.migrate.targets import sort_for_reuse

    destination = _destination(location, to or downgrade_to, downgrade_to is not None)
    mode: Mode = (
        "sql" if sql else "pending" if dry_run else "downgrade" if downgrade_to else "upgrade"
    )
    registry = _registry() if product and mode in ("upgrade", "downgrade") else None
    targets = sort_for_reuse(targets)
    with ProgressSink(len(targets)) as progress:
        report = migrate_fleet(
            targets,
            location,
            params,
            concurrency=concurrency,
            canary=canary,
            mode=mode,
            destination=destination,
            on_result=None if sql else progress,
            registry=registry,
            timeout=timeout,
            read_in_bulk=platform if bulk_read else None,
        )
    report.without_login = resting
    if sql:
        for result in report.results:
            sys.stdout.write(
                f"-- {result.label}: {result.where} {result.before or '-'} -> "
                f"{result.after or '-'}\n"
            )
            sys.stdout.write(result.sql or f"-- error: {result.error}\n")
    elif output is OutputFormat.json:
        sys.stdout.write(to_json(report) + "\n")
    else:
        render_table(report, Console())
    if not report.ok:
        raise typer.Exit(exit_code(report, sharded=chosen is not None))


def exit_code(report: FleetReport, *, sharded: bool) -> int:
    """A failed run's exit code (the help's "Exit codes"). Unsharded runs keep exiting 1 on
    any failure; a shard exits 2 when a retry of its pod would meet the same failures."""
    if sharded and not report.worth_retrying:
        return EXIT_INVALID
    return EXIT_FAILED
