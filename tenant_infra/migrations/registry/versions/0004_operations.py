"""operations: day-2 operations as named steps, so that each one resumes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

One row per operation of a service (a promotion, say): the steps it finished, the
one it is in, and non-secret facts it needs to go on (``detail``). At most one is
open per service. Each step's start and end are also written to ``history``.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE operations (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id   text NOT NULL,
            product     text NOT NULL,
            kind        text NOT NULL,
            state       text NOT NULL CHECK (state IN ('open', 'done', 'aborted')),
            steps_done  text[] NOT NULL DEFAULT '{}',
            step        text,
            detail      jsonb NOT NULL DEFAULT '{}',
            error       text,
            actor       text NOT NULL,
            started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
            updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE UNIQUE INDEX operations_one_open ON operations (tenant_id, product)
            WHERE state = 'open';
        CREATE INDEX operations_service ON operations (tenant_id, product, id);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE operations")
