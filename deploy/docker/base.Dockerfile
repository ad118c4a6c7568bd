# syntax=docker/dockerfile:1
# Shared stages of every neobatch image; build from the repository root:
#   docker build -f deploy/docker/base.Dockerfile --target builder -t neobatch-builder:local .
#   docker build -f deploy/docker/base.Dockerfile --target runtime -t neobatch-runtime:local .
# (deploy/build-images.sh does both, then the four services.)
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# builder: uv plus every third-party dependency of the services, resolved from uv.lock only.
FROM ${PYTHON_IMAGE} AS builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# uv needs every workspace member's pyproject.toml to read the workspace; sources come later
# (per service), so this layer is rebuilt only when dependencies change.
COPY pyproject.toml uv.lock ./
COPY libs/common/pyproject.toml libs/common/
COPY libs/sim/pyproject.toml libs/sim/
COPY services/console/pyproject.toml services/console/
COPY services/planner/pyproject.toml services/planner/
COPY services/resource-manager/pyproject.toml services/resource-manager/
COPY services/runtime-agent/pyproject.toml services/runtime-agent/
COPY services/notifier/pyproject.toml services/notifier/
COPY clients/cli/pyproject.toml clients/cli/
RUN uv sync --frozen --no-dev --no-install-workspace --all-packages

# runtime: what every final image starts from; no compiler, no uv, no sources, non-root.
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 neobatch \
    && useradd --system --uid 10001 --gid neobatch --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin neobatch
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NEOBATCH_HEALTH_HOST=0.0.0.0 \
    NEOBATCH_HEALTH_PORT=9090
WORKDIR /app
USER 10001:10001
EXPOSE 9090
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "neobatch.common.healthcheck", "/healthz"]
