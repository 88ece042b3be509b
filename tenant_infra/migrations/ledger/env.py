"""Plain-``alembic`` entry point; the shared design lives in tenant_infra.migrate.envpy."""

from tenant_infra.migrate.envpy import run

run()
