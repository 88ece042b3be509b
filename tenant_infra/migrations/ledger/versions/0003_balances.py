"""balances per account and asset; transactions.posted_at

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

``version`` supports optimistic locking of balance updates.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

MONEY = sa.Numeric(38, 18)


def upgrade() -> None:
    op.create_table(
        "balances",
        sa.Column("id", UUID(as_uuid=False), primary_key=True,
                  server_default=sa.text("gen_random_uuid()")),
        sa.Column("account_id", UUID(as_uuid=False), nullable=False),
        sa.Column("asset_code", sa.String(10), nullable=False),
        sa.Column("available", MONEY, nullable=False, server_default="0"),
        sa.Column("on_hold", MONEY, nullable=False, server_default="0"),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.TIMESTAMP(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"],
                                name="balances_account_id_fkey", ondelete="CASCADE"),
        sa.UniqueConstraint("account_id", "asset_code", name="balances_account_id_asset_code_key"),
        sa.CheckConstraint("on_hold >= 0", name="balances_on_hold_check"),
        sa.CheckConstraint("version >= 0", name="balances_version_check"),
    )
    op.add_column("transactions", sa.Column("posted_at", sa.TIMESTAMP(timezone=True)))
    op.create_index("transactions_pending_idx", "transactions", ["ledger_id", "created_at"],
                    postgresql_where=sa.text("status = 'PENDING'"))


def downgrade() -> None:
    op.drop_index("transactions_pending_idx", table_name="transactions")
    op.drop_column("transactions", "posted_at")
    op.drop_table("balances")
