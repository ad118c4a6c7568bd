# syntax=docker/dockerfile:1
# neobatch runtime-agent. Build from the repository root after the shared stages (base.Dockerfile):
#   docker build -f deploy/docker/runtime-agent.Dockerfile -t neobatch/runtime-agent:local .
ARG BUILDER_IMAGE=neobatch-builder:local
ARG RUNTIME_IMAGE=neobatch-runtime:local

FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
COPY libs/common /src/libs/common
COPY services/runtime-agent /src/services/runtime-agent
# Exactly this service's packages (uv sync removes the others), installed non-editable so
# the final image needs no sources.
RUN uv sync --frozen --no-dev --no-editable --package neobatch-runtime-agent

FROM ${RUNTIME_IMAGE}
# The data path to each engine is OpenSSH's client (`ssh -N -L`, see runtime_agent/tunnel.py).
USER 0
# Unpinned on purpose: the base image (python:3.11.11-slim-bookworm, base.Dockerfile) fixes the Debian
# release, and within it the security updates of openssh-client are what we want.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssh-client \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /app/.venv /app/.venv
# Non-root (uid 10001 from the runtime stage); stated again so a different base cannot undo it.
USER 10001:10001
CMD ["python", "-m", "neobatch.runtime_agent"]
