"""transactions and their double-entry operations

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Money is numeric(38, 18): exact, wide enough for any asset's smallest unit.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

MONEY = sa.Numeric(38, 18)


def upgrade() -> None:
    op.create_table(
        "transactions",
        sa.Column("id", UUID(as_uuid=False), primary_key=True,
                  server_default=sa.text("gen_random_uuid()")),
        sa.Column("ledger_id", UUID(as_uuid=False), nullable=False),
        sa.Column("parent_transaction_id", UUID(as_uuid=False)),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("status", sa.String(16), nullable=False, server_default="CREATED"),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("asset_code", sa.String(10), nullable=False),
        sa.Column("chart_of_accounts_group_name", sa.String(256)),
        sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.ForeignKeyConstraint(["ledger_id"], ["ledgers.id"],
                                name="transactions_ledger_id_fkey", ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["parent_transaction_id"], ["transactions.id"],
                                name="transactions_parent_transaction_id_fkey"),
        sa.UniqueConstraint("ledger_id", "idempotency_key",
                            name="transactions_ledger_id_idempotency_key_key"),
        sa.CheckConstraint("amount >= 0", name="transactions_amount_check"),
        sa.CheckConstraint(
            "status IN ('CREATED', 'APPROVED', 'PENDING', 'CANCELED', 'NOTED')",
            name="transactions_status_check",
        ),
    )
    op.create_table(
        "operations",
        sa.Column("id", UUID(as_uuid=False), primary_key=True,
                  server_default=sa.text("gen_random_uuid()")),
        sa.Column("transaction_id", UUID(as_uuid=False), nullable=False),
        sa.Column("account_id", UUID(as_uuid=False), nullable=False),
        sa.Column("type", sa.String(8), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("asset_code", sa.String(10), nullable=False),
        sa.Column("balance_before", MONEY, nullable=False),
        sa.Column("balance_after", MONEY, nullable=False),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.ForeignKeyConstraint(["transaction_id"], ["transactions.id"],
                                name="operations_transaction_id_fkey", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"],
                                name="operations_account_id_fkey", ondelete="RESTRICT"),
        sa.CheckConstraint("type IN ('DEBIT', 'CREDIT')", name="operations_type_check"),
        sa.CheckConstraint("amount > 0", name="operations_amount_check"),
        sa.CheckConstraint(
            "balance_after = balance_before + CASE type WHEN 'CREDIT' THEN amount ELSE -amount END",
            name="operations_balance_arithmetic_check",
        ),
    )
    op.create_index("transactions_ledger_id_created_at_idx", "transactions",
                    ["ledger_id", sa.text("created_at DESC")])
    op.create_index("operations_transaction_id_idx", "operations", ["transaction_id"])
    op.create_index("operations_account_id_created_at_idx", "operations",
                    ["account_id", "created_at"])


def downgrade() -> None:
    op.drop_table("operations")
    op.drop_table("transactions")
