"""validations (one row per decision) and limit usage per period

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, UUID

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

MONEY = sa.Numeric(38, 18)


def upgrade() -> None:
    op.create_table(
        "validations",
        sa.Column("id", UUID(as_uuid=False), primary_key=True,
                  server_default=sa.text("gen_random_uuid()")),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("transaction_type", sa.String(32), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("currency", sa.CHAR(3), nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("matched_rule_ids", ARRAY(UUID(as_uuid=False)), nullable=False,
                  server_default=sa.text("'{}'")),
        sa.Column("exceeded_limit_ids", ARRAY(UUID(as_uuid=False)), nullable=False,
                  server_default=sa.text("'{}'")),
        sa.Column("processing_ms", sa.Integer, nullable=False),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.UniqueConstraint("request_id", name="validations_request_id_key"),
        sa.CheckConstraint("decision IN ('ALLOW', 'DENY', 'REVIEW')",
                           name="validations_decision_check"),
        sa.CheckConstraint("amount >= 0", name="validations_amount_check"),
        sa.CheckConstraint("processing_ms >= 0", name="validations_processing_ms_check"),
    )
    op.create_index("validations_decision_created_at_idx", "validations",
                    ["decision", "created_at"])
    op.create_table(
        "limit_usage",
        sa.Column("limit_id", UUID(as_uuid=False), nullable=False),
        sa.Column("period_start", sa.Date, nullable=False),
        sa.Column("used_amount", MONEY, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("limit_id", "period_start", name="limit_usage_pkey"),
        sa.ForeignKeyConstraint(["limit_id"], ["limits.id"], name="limit_usage_limit_id_fkey",
                                ondelete="CASCADE"),
        sa.CheckConstraint("used_amount >= 0", name="limit_usage_used_amount_check"),
    )


def downgrade() -> None:
    op.drop_table("limit_usage")
    op.drop_table("validations")
