"""Kubernetes manifests for running the fleet beyond one machine (rendered, never applied)."""
