# syntax=docker/dockerfile:1
# The workspace image of the Pulumi Kubernetes Operator's Stacks (tenantctl render
# kubernetes --image): the Pulumi CLI, Python, the tenant-infra wheel with every dependency
# in /opt/venv, the provider plugins, and the project in /home/pulumi/tenant-infra, the
# directory each Stack names in spec.workspaceTemplate.spec.local.dir (the operator's
# examples/custom-source). Nothing is installed when a workspace pod starts.
#
#   docker build -t REGISTRY/tenant-infra:$(git describe --tags --always) .
#
# PULUMI_VERSION: a CLI of 3.202 or later reads the ConfigMap's structured config
# (configRef with json: true); keep it at the pulumi SDK version the wheel resolves.
ARG PULUMI_VERSION=3.272.0
ARG BASE=pulumi/pulumi-python-3.12:${PULUMI_VERSION}

# ---- build: the wheel, then a virtualenv with it and its dependencies
FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tenant_infra ./tenant_infra
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --no-cache-dir /wheels/*.whl

# ---- the workspace image: same base (same Python), the virtualenv copied in
# It runs as uid/gid 1000 by NUMBER: the operator's default `restricted` securityProfile
# runs workspace pods as 1000:1000 with runAsNonRoot, and the kubelet refuses runAsNonRoot
# for an image whose USER is a name it cannot check. The migration Job's pods run as the
# same ids (tenant_infra/kubernetes/migrate_job.py).
FROM ${BASE}
RUN getent passwd 1000 >/dev/null \
 || useradd --uid 1000 --user-group --home-dir /home/pulumi --shell /bin/bash pulumi \
 && mkdir -p /home/pulumi/tenant-infra /home/pulumi/.pulumi \
 && chown -R 1000:1000 /home/pulumi
COPY --from=build /opt/venv /opt/venv
COPY --chown=1000:1000 deploy/workspace/Pulumi.yaml __main__.py /home/pulumi/tenant-infra/
USER 1000:1000
ENV HOME=/home/pulumi \
    PULUMI_HOME=/home/pulumi/.pulumi \
    PULUMI_SKIP_UPDATE_CHECK=true \
    TENANT_INFRA_PROJECT=/home/pulumi/tenant-infra \
    PATH=/opt/venv/bin:${PATH}
WORKDIR /home/pulumi/tenant-infra
# The provider plugins the installed SDKs ask for, into PULUMI_HOME, now rather than in
# every pod (the virtualenv exists and there is no requirements.txt: pip is not run).
RUN pulumi install
