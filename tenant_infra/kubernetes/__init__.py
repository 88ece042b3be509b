"""Manifests that run the fleet on Kubernetes (``tenantctl render kubernetes`` and
``tenantctl render migrate-job``).

Rendering only: nothing here talks to a cluster. The README's "Beyond one machine" says
how the platform team applies what is written.
"""

from typing import Final

#: The uid and gid every pod runs as: the workspace image's numeric ``USER`` (the
#: ``Dockerfile``), and the ids the operator's default ``restricted`` securityProfile gives
#: workspace pods. A number, so the kubelet can check ``runAsNonRoot``.
RUN_AS: Final = 1000
