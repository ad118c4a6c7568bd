# syntax=docker/dockerfile:1
# neobatch console. Build from the repository root after the shared stages (base.Dockerfile):
#   docker build -f deploy/docker/console.Dockerfile -t neobatch/console:local .
ARG BUILDER_IMAGE=neobatch-builder:local
ARG RUNTIME_IMAGE=neobatch-runtime:local

FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
COPY libs/common /src/libs/common
COPY services/console /src/services/console
# Exactly this service's packages (uv sync removes the others), installed non-editable so
# the final image needs no sources.
RUN uv sync --frozen --no-dev --no-editable --package neobatch-console

FROM ${RUNTIME_IMAGE}
COPY --from=build /app/.venv /app/.venv
# Non-root (uid 10001 from the runtime stage); stated again so a different base cannot undo it.
USER 10001:10001
# The console serves the API and /healthz, /readyz on 8080; /metrics only on 9090 (the API
# port faces every tenant, the metrics port only the operator's scraper).
ENV NEOBATCH_CONSOLE_HOST=0.0.0.0 \
    NEOBATCH_CONSOLE_PORT=8080 \
    NEOBATCH_METRICS_PORT=9090
EXPOSE 8080 9090
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "neobatch.common.healthcheck", "/healthz", "--port-env", "NEOBATCH_CONSOLE_PORT"]
CMD ["python", "-m", "neobatch.console"]
