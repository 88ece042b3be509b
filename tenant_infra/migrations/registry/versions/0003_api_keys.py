"""api_keys: who may ask the multi-tenancy API for what

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

A key is shown once, when created; only its SHA-256 is kept. ``product`` keys read
their own product's connections; ``operator`` keys (never a product's) may also
call the write endpoints. Revoking keeps the row, so who made and revoked it stays.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE api_keys (
            id          text PRIMARY KEY,
            scope       text NOT NULL CHECK (scope IN ('product', 'operator')),
            product     text CHECK ((scope = 'product') = (product IS NOT NULL)),
            hash        bytea NOT NULL CHECK (length(hash) = 32),
            note        text NOT NULL DEFAULT '',
            created_at  timestamptz NOT NULL DEFAULT now(),
            created_by  text NOT NULL,
            revoked_at  timestamptz,
            revoked_by  text
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE api_keys")
