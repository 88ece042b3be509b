"""Day-2 operations of a tenant's service, each a list of named steps run by :mod:`steps`."""
