"""one tenant per spelling: a UUID id is the same tenant dashed or not

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Events carry a UUID dashless and lowercase (the seed client's convention), so two
spellings of one UUID would be two registry tenants but one tenant on the wire.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE tenants ADD COLUMN canonical text;
        UPDATE tenants SET canonical = CASE
            WHEN id ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
            THEN lower(replace(id, '-', '')) ELSE id END;
        ALTER TABLE tenants ALTER COLUMN canonical SET NOT NULL;
        CREATE UNIQUE INDEX tenants_canonical ON tenants (canonical);
        """
    )


def downgrade() -> None:
    op.execute("DROP INDEX tenants_canonical; ALTER TABLE tenants DROP COLUMN canonical")
