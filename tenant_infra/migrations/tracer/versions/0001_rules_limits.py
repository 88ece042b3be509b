"""rules and limits

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


def upgrade() -> None:
    op.create_table(
        "rules",
        sa.Column("id", UUID(as_uuid=False), primary_key=True,
                  server_default=sa.text("gen_random_uuid()")),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("expression", sa.Text, nullable=False),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, server_default="100"),
        sa.Column("status", sa.String(16), nullable=False, server_default="DRAFT"),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.Column("updated_at", sa.TIMESTAMP(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.UniqueConstraint("name", name="rules_name_key"),
        sa.CheckConstraint("action IN ('ALLOW', 'DENY', 'REVIEW')", name="rules_action_check"),
        sa.CheckConstraint("priority BETWEEN 0 AND 10000", name="rules_priority_check"),
        sa.CheckConstraint("status IN ('DRAFT', 'ACTIVE', 'INACTIVE')", name="rules_status_check"),
    )
    op.create_index("rules_active_priority_idx", "rules", ["priority"],
                    postgresql_where=sa.text("status = 'ACTIVE'"))
    op.create_table(
        "limits",
        sa.Column("id", UUID(as_uuid=False), primary_key=True,
                  server_default=sa.text("gen_random_uuid()")),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("limit_type", sa.String(16), nullable=False),
        sa.Column("max_amount", sa.Numeric(38, 18), nullable=False),
        sa.Column("currency", sa.CHAR(3), nullable=False),
        sa.Column("scope", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("status", sa.String(16), nullable=False, server_default="ACTIVE"),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.UniqueConstraint("name", name="limits_name_key"),
        sa.CheckConstraint("max_amount > 0", name="limits_max_amount_check"),
        sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name="limits_currency_check"),
        sa.CheckConstraint("limit_type IN ('DAILY', 'MONTHLY', 'PER_TRANSACTION')",
                           name="limits_limit_type_check"),
    )


def downgrade() -> None:
    op.drop_table("limits")
    op.drop_table("rules")
