"""Products' data, written as a tenant's own login into the tables its migrations made.

``ledger(transactions=N)``: organizations, ledgers, accounts, balances, transactions
and two operations each (foreign keys, numeric(38,18) amounts, JSONB); about 0.8 KB
a transaction with indexes, so ``bench/promotion`` asks 1,250,000 for about 1 GB.
``tracer(events=N)``: rules, limits, validations and a hash-chained, append-only
audit trail (identity ``seq``), with :data:`CHAIN_BROKEN` to check the chain.
"""

from __future__ import annotations

from typing import Any

import psycopg

LEDGER = """
INSERT INTO organizations (legal_name, legal_document, metadata)
    SELECT 'Org ' || i, 'DOC-' || i, jsonb_build_object('i', i) FROM generate_series(1, 4) i;
INSERT INTO ledgers (organization_id, name) SELECT id, 'main' FROM organizations;
INSERT INTO accounts (ledger_id, alias, name, asset_code, type)
    SELECT l.id, '@acct' || i, 'Account ' || i, 'BRL', 'deposit'
    FROM ledgers l, generate_series(1, 25) i;
INSERT INTO balances (account_id, asset_code, available, on_hold)
    SELECT id, 'BRL', (hashtext(id::text) % 1000000)::numeric / 7, 0 FROM accounts;
INSERT INTO transactions (ledger_id, idempotency_key, description, status, amount, asset_code,
                          metadata, posted_at)
    SELECT (SELECT id FROM ledgers ORDER BY id LIMIT 1), 'tx-' || g,
           'payment ' || g || repeat(' memo', g % 20), 'APPROVED',
           round((g % 100000)::numeric / 3, 18) + 0.01, 'BRL',
           jsonb_build_object('n', g, 'ref', md5(g::text)), now() - g * interval '1 second'
    FROM generate_series(1, {transactions}) g;
INSERT INTO operations (transaction_id, account_id, type, amount, asset_code, balance_before,
                        balance_after)
    SELECT t.id, ids.a[1 + abs(hashtext(t.id::text || k.type)) % array_length(ids.a, 1)],
           k.type, t.amount, 'BRL', 1000000,
           1000000 + CASE k.type WHEN 'CREDIT' THEN t.amount ELSE -t.amount END
    FROM transactions t
    CROSS JOIN (VALUES ('DEBIT'), ('CREDIT')) k(type)
    CROSS JOIN (SELECT array_agg(id ORDER BY id) AS a FROM accounts) ids;
"""

TRACER = """
INSERT INTO rules (name, expression, action, priority, status)
    SELECT 'rule ' || i, 'amount > ' || i * 100, 'REVIEW', i, 'ACTIVE' FROM generate_series(1, 5) i;
INSERT INTO limits (name, limit_type, max_amount, currency)
    SELECT 'limit ' || i, 'DAILY', i * 1000.5, 'BRL' FROM generate_series(1, 3) i;
INSERT INTO validations (request_id, transaction_type, amount, currency, decision,
                         matched_rule_ids, exceeded_limit_ids, processing_ms)
    SELECT 'req-' || g, 'PIX', g / 3.0, 'BRL', 'ALLOW',
           ARRAY(SELECT id FROM rules ORDER BY id LIMIT 2), '{{}}', g % 50
    FROM generate_series(1, {events}) g;
DO $$
DECLARE prev bytea; body jsonb;
BEGIN
    FOR g IN 1..{events} LOOP
        body := jsonb_build_object('g', g, 'decision', 'ALLOW');
        INSERT INTO audit_events (event_type, aggregate_type, aggregate_id, payload, prev_hash, hash)
        VALUES ('validation.created', 'validation', gen_random_uuid(), body, prev,
                sha256(coalesce(prev, ''::bytea) || convert_to(body::text, 'UTF8')))
        RETURNING hash INTO prev;
    END LOOP;
END $$;
"""

#: Events whose hash is not sha256(prev_hash || payload), or whose prev_hash is not
#: the previous event's hash, in ``seq`` order: 0 for an intact chain.
CHAIN_BROKEN = """
SELECT count(*) FROM (
    SELECT hash, prev_hash, payload, lag(hash) OVER (ORDER BY seq) AS before FROM audit_events
) e
WHERE hash <> sha256(coalesce(prev_hash, ''::bytea) || convert_to(payload::text, 'UTF8'))
   OR prev_hash IS DISTINCT FROM before
"""


def write(params: dict[str, Any], product: str, size: int) -> None:
    """``size`` transactions (ledger) or audit events (tracer), as ``params``' login."""
    script = LEDGER.format(transactions=size) if product == "ledger" else TRACER.format(events=size)
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute(script.encode())
