"""The tenant registry: tenants, services, states and their history, in one place.

``store.py`` keeps them (PostgreSQL, written by lifecycle operations only),
``records.py`` derives what products need from a tenant's config (never a secret),
and ``events.py`` announces every transition on Redis in the seed platform's contract.
"""

from tenant_infra.registry.store import Change, Registry, ServiceChange

__all__ = ["Change", "Registry", "ServiceChange"]
