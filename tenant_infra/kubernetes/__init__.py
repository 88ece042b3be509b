"""Manifests that run the fleet on Kubernetes (``tenantctl render kubernetes`` and
``tenantctl render migrate-job``).

Rendering only: nothing here talks to a cluster. The README's "Beyond one machine" says
how the platform team applies what is written.
"""
