"""organizations, ledgers, accounts

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Names are unqualified: the runner pins search_path to the tenant schema.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATUS = "status IN ('ACTIVE', 'INACTIVE', 'BLOCKED')"


def _id() -> sa.Column[str]:
    return sa.Column("id", UUID(as_uuid=False), primary_key=True,
                     server_default=sa.text("gen_random_uuid()"))


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.Column("updated_at", sa.TIMESTAMP(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.Column("deleted_at", sa.TIMESTAMP(timezone=True), nullable=True),
    ]


def upgrade() -> None:
    op.create_table(
        "organizations",
        _id(),
        sa.Column("legal_name", sa.String(256), nullable=False),
        sa.Column("legal_document", sa.String(256), nullable=False),
        sa.Column("doing_business_as", sa.String(256)),
        sa.Column("status", sa.String(16), nullable=False, server_default="ACTIVE"),
        sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        *_timestamps(),
        sa.UniqueConstraint("legal_document", name="organizations_legal_document_key"),
        sa.CheckConstraint(STATUS, name="organizations_status_check"),
    )
    op.create_table(
        "ledgers",
        _id(),
        sa.Column("organization_id", UUID(as_uuid=False), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="ACTIVE"),
        sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        *_timestamps(),
        sa.ForeignKeyConstraint(["organization_id"], ["organizations.id"],
                                name="ledgers_organization_id_fkey", ondelete="RESTRICT"),
        sa.UniqueConstraint("organization_id", "name", name="ledgers_organization_id_name_key"),
        sa.CheckConstraint(STATUS, name="ledgers_status_check"),
    )
    op.create_table(
        "accounts",
        _id(),
        sa.Column("ledger_id", UUID(as_uuid=False), nullable=False),
        sa.Column("parent_account_id", UUID(as_uuid=False)),
        sa.Column("alias", sa.String(100), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("asset_code", sa.String(10), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="ACTIVE"),
        sa.Column("allow_sending", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("allow_receiving", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        *_timestamps(),
        sa.ForeignKeyConstraint(["ledger_id"], ["ledgers.id"],
                                name="accounts_ledger_id_fkey", ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["parent_account_id"], ["accounts.id"],
                                name="accounts_parent_account_id_fkey"),
        sa.UniqueConstraint("ledger_id", "alias", name="accounts_ledger_id_alias_key"),
        sa.CheckConstraint(STATUS, name="accounts_status_check"),
        sa.CheckConstraint("alias ~ '^@?[A-Za-z0-9_.:-]+$'", name="accounts_alias_check"),
        sa.CheckConstraint("asset_code ~ '^[A-Z0-9]{1,10}$'", name="accounts_asset_code_check"),
    )
    op.create_index("ledgers_organization_id_idx", "ledgers", ["organization_id"])
    op.create_index("accounts_ledger_id_asset_code_idx", "accounts", ["ledger_id", "asset_code"])
    op.create_index("accounts_parent_account_id_idx", "accounts", ["parent_account_id"],
                    postgresql_where=sa.text("parent_account_id IS NOT NULL"))


def downgrade() -> None:
    op.drop_table("accounts")
    op.drop_table("ledgers")
    op.drop_table("organizations")
