"""The PostgreSQL data of one tenant schema: what it holds, its checksums, and moving it.

Used by promotion today (and by backup and restore): everything here reads a
tenant's objects as the platform's admin with ``search_path`` pinned to
``pg_catalog``, so nothing the tenant defined is resolved by name, and writes them
only as the tenant's own login.
"""
