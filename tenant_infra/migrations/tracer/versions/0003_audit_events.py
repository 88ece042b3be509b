"""hash-chained, append-only audit events

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

Each event stores sha256(prev_hash || payload) in ``hash``; ``prev_hash`` is unique,
so the chain cannot fork, and a trigger refuses UPDATE and DELETE.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("event_id", UUID(as_uuid=False), nullable=False,
                  server_default=sa.text("gen_random_uuid()")),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("aggregate_type", sa.String(32), nullable=False),
        sa.Column("aggregate_id", UUID(as_uuid=False), nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("prev_hash", sa.LargeBinary),
        sa.Column("hash", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.UniqueConstraint("event_id", name="audit_events_event_id_key"),
        sa.UniqueConstraint("hash", name="audit_events_hash_key"),
        sa.UniqueConstraint("prev_hash", name="audit_events_prev_hash_key"),
        sa.CheckConstraint("octet_length(hash) = 32", name="audit_events_hash_check"),
        sa.CheckConstraint("prev_hash IS NULL OR octet_length(prev_hash) = 32",
                           name="audit_events_prev_hash_check"),
    )
    op.create_index("audit_events_aggregate_idx", "audit_events",
                    ["aggregate_type", "aggregate_id", "seq"])
    op.execute(
        """
        CREATE FUNCTION audit_events_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_events is append-only (% refused)', TG_OP;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events"
        " FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()"
    )


def downgrade() -> None:
    op.drop_table("audit_events")
    op.execute("DROP FUNCTION audit_events_append_only()")
