"""tenants, services, history, outbox: the control plane's registry

Revision ID: 0001
Revises:
Create Date: 2026-12-02

Names are unqualified: the runner pins search_path to the registry's schema. No
column holds a secret: connection info is host, port, names and the Vault path.
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE tenants (
            id          text PRIMARY KEY,
            metadata    jsonb NOT NULL DEFAULT '{}',
            tier        text NOT NULL,
            state       text NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            updated_at  timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX tenants_state ON tenants (state);

        CREATE TABLE services (
            tenant_id            text NOT NULL REFERENCES tenants (id),
            product              text NOT NULL,
            isolation            text NOT NULL,
            state                text NOT NULL,
            reason               text NOT NULL DEFAULT '',
            revision             text,
            vault_path           text NOT NULL,
            connection           jsonb NOT NULL DEFAULT '{}',
            modules              jsonb NOT NULL DEFAULT '{}',
            connection_settings  jsonb NOT NULL DEFAULT '{}',
            announced            boolean NOT NULL DEFAULT false,
            created_at           timestamptz NOT NULL DEFAULT now(),
            updated_at           timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, product)
        );
        CREATE INDEX services_product_state ON services (product, state);

        CREATE TABLE history (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at          timestamptz NOT NULL DEFAULT clock_timestamp(),
            tenant_id   text NOT NULL,
            product     text,
            operation   text NOT NULL,
            old_state   text,
            new_state   text NOT NULL,
            reason      text NOT NULL DEFAULT '',
            actor       text NOT NULL
        );
        CREATE INDEX history_tenant ON history (tenant_id, id);

        -- Append-only: the control plane inserts; nobody updates or deletes history.
        CREATE FUNCTION history_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the registry history is append-only';
        END $$;
        CREATE TRIGGER history_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON history
            FOR EACH STATEMENT EXECUTE FUNCTION history_is_append_only();

        CREATE TABLE outbox (
            id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            event_id      uuid NOT NULL UNIQUE,
            tenant_id     text NOT NULL,
            event_type    text NOT NULL,
            channel       text NOT NULL,
            body          text NOT NULL,
            created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
            published_at  timestamptz
        );
        CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE outbox, history, services, tenants CASCADE")
    op.execute("DROP FUNCTION history_is_append_only()")
