"""tenant-infra: provision and migrate isolated tenant services."""
